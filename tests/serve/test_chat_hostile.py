"""`lwm chat` and `lwm caption` against hostile input: every case prints one line naming the problem
(never a traceback, never an errno number), the interactive REPL goes on, a piped script stops with
status 1 before answering a question whose attachment failed. A fuzz pass types generated lines.

The media are the hostile corpus (tests/helpers/hostile_media.py); the model is the tiny random one,
asked for one token, except where the bundled model's greeting is checked.
"""

from __future__ import annotations

import io
import os
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwm import media
from lwm.api import LWM
from lwm.cli import chat as chat_command
from lwm.cli import main
from lwm.serve.chat import BUNDLED_SAMPLE, GREETING, ChatRepl, ChatSettings, bundled_greeting
from tests.helpers.hostile_media import write_corpus

NO_SUCH_USER = "~no-such-user-lwm"
# What exception text looks like; none of it may reach the person at the terminal.
EXCEPTION_WORDS = ("Traceback", "Errno", "avcodec", "Invalid data found", "TypeError", "RuntimeError",
                   "DecompressionBomb", "surrogates not allowed")


@pytest.fixture(scope="module")
def lwm(tiny_model_dir):
    return LWM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-chat")
    files = write_corpus(folder)
    os.mkfifo(folder / "fifo.mp4")
    files["fifo.mp4"] = folder / "fifo.mp4"
    return files


def script(*lines):
    remaining = list(lines)

    def read_line(prompt):
        if not remaining:
            raise EOFError
        return remaining.pop(0)

    return read_line


def run_repl(lwm, *lines, tmp_path, interactive=True):
    """Runs the lines in a REPL (in a thread, so a line that blocks fails the test) -> (status, output)."""
    out = io.StringIO()
    repl = ChatRepl(lwm, script(*lines), out, output_dir=tmp_path / "out", interactive=interactive,
                    settings=ChatSettings(max_tokens=1))
    result = {}
    thread = threading.Thread(target=lambda: result.update(status=repl.run()), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"the REPL blocked on {lines}"
    return result["status"], out.getvalue()


def assert_one_line_errors(text: str, expected: int | None = None) -> list[str]:
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    for line in errors:
        assert not any(word in line for word in EXCEPTION_WORDS), line
    assert not any(word in text for word in ("Traceback", "Errno")), text
    if expected is not None:
        assert len(errors) == expected, text
    return errors


# ---------------------------------------------------------------------------------------- the REPL


@pytest.mark.parametrize("line, problem", [
    ("/video {bomb.gif}", "decompression bomb"),
    ("/image {bomb.png}", "decompression bomb"),
    ("/video {fifo.mp4}", "not a regular file"),
    ("/video {cut-clip.webm}", "truncated"),
    ("/video {cut-clip.avi}", "truncated"),
    ("/video {cut-clip.gif}", "truncated"),
    ("/video {cut-clip.mp4}", "truncated"),
    ("/image {empty.mp4}", "file is empty"),
    ("/video {text.mp4}", "not an image or a video"),
    ("/video {audio.m4a}", "no video stream"),
    ("/video " + os.devnull, "not a regular file"),
    ("/video clip\x00.mp4", "no such file"),
    (f"/video {NO_SUCH_USER}/clip.mp4", "no such user's home folder"),
    ("/set seed -5", "not a valid seed"),
    ("hello \udcff there", "not valid Unicode"),
    (f"/save {NO_SUCH_USER}/chat.json", "no such user's home folder"),
])
def test_a_bad_line_is_one_error_and_the_repl_goes_on(lwm, corpus, tmp_path, line, problem):
    for name, path in corpus.items():
        line = line.replace(f"{{{name}}}", str(path))
    status, text = run_repl(lwm, line, "How many objects are there?", "/show", tmp_path=tmp_path)
    assert status == 0
    [error] = assert_one_line_errors(text, expected=1)
    assert problem in error
    assert "turns        1" in text  # the next question was answered


def test_save_errors_say_what_is_in_the_way(lwm, tmp_path):
    (tmp_path / "notes").write_text("a file, not a folder")
    status, text = run_repl(lwm, "hi", f"/save {tmp_path / 'notes' / 'chat.json'}", f"/save {tmp_path}",
                            f"/save {tmp_path / 'ok.json'}", tmp_path=tmp_path)
    errors = assert_one_line_errors(text, expected=2)
    notes = tmp_path / "notes"
    assert errors[0] == f"Error: cannot save to {notes / 'chat.json'}: '{notes}' is a file, not a folder"
    assert errors[1] == f"Error: cannot save to {tmp_path}: '{tmp_path}' is a folder"
    assert (tmp_path / "ok.json").is_file() and status == 0  # the conversation was kept for the save that worked


def test_a_path_of_no_users_home_typed_in_a_message_stays_text(lwm, tmp_path):
    status, text = run_repl(lwm, f"what is in {NO_SUCH_USER}/clip.mp4 ?", "/show", tmp_path=tmp_path)
    assert status == 0 and assert_one_line_errors(text) == [] and "turns        1" in text


# ---------------------------------------------------------------------------------------- piped and one-shot


def run_main(argv, stdin: str | bytes, monkeypatch, capsys):
    data = stdin.encode() if isinstance(stdin, str) else stdin
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("name", ["cut-clip.mp4", "cut-clip.webm", "bomb.gif", "fifo.mp4", "empty.mp4"])
def test_a_piped_question_whose_video_failed_is_not_answered(tiny_model_dir, corpus, monkeypatch, capsys, name):
    status, out, err = run_main(["chat", "--model", str(tiny_model_dir), "--max-tokens", "2"],
                                f"/video {corpus[name]}\nHow many objects are there?\n", monkeypatch, capsys)
    assert status == 1 and out == ""
    [error] = assert_one_line_errors(err, expected=1)
    assert error.startswith(f"Error: {corpus[name]}")


def test_piped_bytes_that_are_not_utf8_are_an_error_not_a_crash(tiny_model_dir, monkeypatch, capsys):
    status, out, err = run_main(["chat", "--model", str(tiny_model_dir), "--max-tokens", "2"],
                                b"hello \xff there\n", monkeypatch, capsys)
    assert status == 1 and out == ""
    assert "not valid Unicode" in assert_one_line_errors(err, expected=1)[0]


@pytest.mark.parametrize("name, problem", [
    ("bomb.gif", "decompression bomb"),
    ("empty.mp4", "file is empty"),
    ("cut-clip.webm", "truncated"),
    ("fifo.mp4", "not a regular file"),
    ("text.mp4", "not a supported image or video format"),
])
def test_caption_of_a_bad_file_is_one_line_and_status_1(tiny_model_dir, corpus, capsys, name, problem):
    assert main(["caption", str(corpus[name]), "--model", str(tiny_model_dir), "--max-tokens", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"lwm caption: {corpus[name]}: ") and captured.err.count("\n") == 1
    assert problem in captured.err


class TerminalInput(io.StringIO):
    """Typed lines, as from a terminal (stdin.isatty()); stdout and stderr stay captured files."""

    def isatty(self):
        return True


def test_no_progress_line_is_left_where_no_terminal_clears_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(chat_command, "HISTORY_FILE", tmp_path / "history")
    monkeypatch.setattr(sys, "stdin", TerminalInput("/set frames 1\n/animate a ball\n/continue 1\n"))
    assert main(["chat", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"), "--nohistory"]) == 0
    captured = capsys.readouterr()
    assert "Saved video to" in captured.out and (tmp_path / "out" / "continued-001.mp4").is_file()
    assert captured.err == ""  # no bar: stderr is not a terminal that would clear it


# ---------------------------------------------------------------------------------------- the greeting


def test_the_bundled_greeting_says_what_the_model_knows_and_offers_its_sample(tmp_path, monkeypatch, capsys):
    greeting = bundled_greeting()
    assert "synthetic world" in " ".join(greeting.split())
    assert f"/video {BUNDLED_SAMPLE}" in greeting
    assert media.sniff_media_type(BUNDLED_SAMPLE) == "video"
    monkeypatch.setattr(chat_command, "HISTORY_FILE", tmp_path / "history")
    monkeypatch.setattr(sys, "stdin", TerminalInput(f"/video {BUNDLED_SAMPLE}\nHow many objects are there?\n"))
    assert main(["chat", "--nohistory", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(greeting) and "two" in out  # the sample's question, answered right by the bundled model


def test_another_model_gets_the_plain_greeting(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(chat_command, "HISTORY_FILE", tmp_path / "history")
    monkeypatch.setattr(sys, "stdin", TerminalInput("/bye\n"))
    assert main(["chat", "--model", str(tiny_model_dir), "--nohistory"]) == 0
    assert capsys.readouterr().out.startswith(GREETING)


# ---------------------------------------------------------------------------------------- fuzz


def lines(corpus):
    paths = st.sampled_from(sorted(str(path) for path in corpus.values()) + [NO_SUCH_USER + "/a.mp4", "~",
                                                                             os.devnull, "./x.png", "/", ""])
    words = st.text(max_size=12) | paths | st.sampled_from(["\udcff", "\x00", '"""', "'", "none", "-1", "1e999"])
    commands = st.sampled_from(["/image", "/video", "/set", "/show", "/clear", "/help", "/continue", "/x", "/?",
                                "/set seed", "/set temperature", "/set frames", "/set top_p", "/set max_tokens"])
    command_lines = st.tuples(commands, st.lists(words, max_size=2)).map(lambda t: " ".join([t[0], *t[1]]))
    message_lines = st.lists(words, min_size=1, max_size=3).map(" ".join)
    return command_lines | message_lines


def test_fuzz_typed_lines_never_end_the_repl(lwm, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(typed=st.lists(lines(corpus), min_size=1, max_size=4))
    def check(typed):
        status, text = run_repl(lwm, *typed, "/set max_tokens 1", "hi", "/show", tmp_path=tmp_path)
        assert status == 0
        assert_one_line_errors(text)

    check()
