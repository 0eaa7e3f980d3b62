import subprocess
import sys

import pytest

from lwm.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for name in ("chat", "serve", "generate", "train", "tokenizer", "data", "eval", "convert", "memory"):
        assert name in shown


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    result = subprocess.run([sys.executable, "-m", "lwm", name, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: lwm " + name in result.stdout


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_launcher_s_local_rank_before_the_command_is_accepted(capsys):
    # `deepspeed --module lwm train ...` starts every rank as `python -m lwm --local_rank=N train ...`.
    assert main(["--local_rank=0", "memory", "tiny", "--budgets", "2"]) == 0
    assert "| 2 GiB | fit |" in capsys.readouterr().out


def test_memory_names_an_unknown_model(capsys):
    assert main(["memory", "nope"]) == 1
    assert "unknown model preset 'nope'" in capsys.readouterr().err
