import subprocess
import sys

import pytest

from lwm.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for name in ("chat", "serve", "generate", "train", "tokenizer", "data", "eval", "convert"):
        assert name in shown


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    result = subprocess.run([sys.executable, "-m", "lwm.cli", name, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: lwm " + name in result.stdout


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
