"""The chat REPL driven by scripted input, on the tiny random model; `lwm chat` one-shot and piped."""

import io
import json
import sys

import numpy as np
import pytest

from lwm import media
from lwm.api import LWM
from lwm.cli import main
from lwm.serve import preview
from lwm.serve.chat import EXIT_HINT, ChatRepl, ChatSettings


@pytest.fixture(scope="module")
def lwm(tiny_model_dir):
    return LWM.from_pretrained(tiny_model_dir)


def script(*items):
    """A `read_line` that returns the scripted lines, raises scripted exceptions, then EOFError (Ctrl+D)."""
    remaining = list(items)

    def read_line(prompt):
        if not remaining:
            raise EOFError
        item = remaining.pop(0)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item

    read_line.remaining = remaining
    return read_line


def make_repl(lwm, *lines, tmp_path, **options):
    out = io.StringIO()
    repl = ChatRepl(lwm, script(*lines), out, output_dir=tmp_path / "out", **options)
    return repl, out


def answer(lwm, *turns, max_new_tokens=4):
    """The greedy reply to a conversation of (text, [parts]) user turns and string assistant turns."""
    messages = []
    for index, turn in enumerate(turns):
        if index % 2:
            messages.append({"role": "assistant", "content": turn})
        else:
            text, parts = turn
            messages.append({"role": "user", "content": [{"type": "text", "text": text}, *parts]})
    return lwm.chat(messages, max_new_tokens=max_new_tokens)


def test_commands_help_unknown_and_bye(lwm, tmp_path):
    repl, out = make_repl(lwm, "/help", "/x", "/?", "/bye", "never read", tmp_path=tmp_path)
    assert repl.run() == 0
    text = out.getvalue()
    assert text.count("Available commands:") == 2
    assert "Unknown command '/x'. Type /help for help" in text
    assert repl.read_line.remaining == ["never read"]


def test_attach_with_slash_command_and_ask(lwm, tmp_path, media_dir):
    photo = media_dir / "photo.png"
    repl, out = make_repl(lwm, "/set max_tokens 4", f"/image {photo}", "What is this?", tmp_path=tmp_path)
    repl.run()
    expected = answer(lwm, ("What is this?", [{"type": "image", "path": str(photo)}]))
    lines = out.getvalue().splitlines()
    assert "Set parameter 'max_tokens' to '4'" in lines and "Added image 'photo.png'" in lines
    assert lines[lines.index("Added image 'photo.png'") + 1] == expected  # streamed, then a newline
    assert repl.messages[-1] == {"role": "assistant", "content": expected}


def test_paths_typed_in_a_message_are_attached_and_removed(lwm, tmp_path, media_dir, monkeypatch):
    monkeypatch.chdir(media_dir)
    clip = media_dir / "clip.mp4"
    repl, out = make_repl(
        lwm, "/set max_tokens 4", "what happens in ./clip.mp4 here", f"{clip} and now?", tmp_path=tmp_path
    )
    repl.run()
    text = out.getvalue()
    assert text.count("Added video 'clip.mp4'") == 2
    assert "Unknown command" not in text  # a message that starts with a path is a message
    video = [{"type": "video", "path": str(clip)}]
    first = answer(lwm, ("what happens in here", video))
    second = answer(lwm, ("what happens in here", video), first, ("and now?", video))
    assert repl.messages[1]["content"] == first and repl.messages[3]["content"] == second
    assert [part["type"] for part in repl.messages[2]["content"]] == ["text", "video"]


def test_multiline_input_and_multi_turn_history(lwm, tmp_path):
    repl, out = make_repl(lwm, "/set max_tokens 3", '"""first line', "second line", 'third"""', '"""one"""',
                          tmp_path=tmp_path)
    repl.run()
    first = answer(lwm, ("first line\nsecond line\nthird", []), max_new_tokens=3)
    second = answer(lwm, ("first line\nsecond line\nthird", []), first, ("one", []), max_new_tokens=3)
    assert [m["content"] for m in repl.messages[1::2]] == [first, second]
    assert repl.messages[0]["content"][0]["text"] == "first line\nsecond line\nthird"


def test_a_single_turn_model_is_asked_each_question_alone_with_the_last_media(lwm, tmp_path, media_dir, monkeypatch):
    photo, clip = media_dir / "photo.png", media_dir / "clip.mp4"
    monkeypatch.setattr(lwm.processor.config, "single_turn", True)
    repl, out = make_repl(lwm, "/set max_tokens 3", f"/image {photo}", "What is this?", "And now?",
                          f"/video {clip}", "Which way?", "/show", tmp_path=tmp_path)
    repl.run()
    image, video = [{"type": "image", "path": str(photo)}], [{"type": "video", "path": str(clip)}]
    expected = [answer(lwm, ("What is this?", image), max_new_tokens=3),
                answer(lwm, ("And now?", image), max_new_tokens=3),
                answer(lwm, ("Which way?", video), max_new_tokens=3)]
    assert [m["content"] for m in repl.messages[1::2]] == expected
    assert "the model is single-turn" in out.getvalue() and "video 'clip.mp4'" in out.getvalue()
    repl.handle("/clear")
    repl.handle("Hello")
    assert repl.messages[-1]["content"] == answer(lwm, ("Hello", []), max_new_tokens=3)


def test_a_conversation_that_outgrows_the_context_says_how_to_start_over(lwm, tmp_path):
    long_message = "tell me about red squares " * 12  # ~300 tokens: the history fills the context
    repl, out = make_repl(lwm, "/set max_tokens 2", *[long_message] * 5, tmp_path=tmp_path)
    repl.run()
    said = out.getvalue()
    assert "maximum context length" in said and "Type /clear to start a new conversation." in said
    turns = len(repl.messages)
    repl.handle("/clear")
    repl.handle(long_message)
    assert len(repl.messages) == 2 and turns >= 2  # answered again once the history is gone


class InterruptedAnswers:
    """Test double: the real model, whose answer streams raise KeyboardInterrupt (Ctrl+C) after one piece,
    and whose drawing is interrupted at once."""

    def __init__(self, lwm):
        self.lwm = lwm
        self.processor = lwm.processor
        self.closed = []

    def chat(self, messages, stream=False, **options):
        real = self.lwm.chat(messages, stream=True, **options)
        closed = self.closed

        class Stream:
            text = ""

            def __iter__(self):
                piece = next(real)
                self.text = real.text
                yield piece
                raise KeyboardInterrupt

            def close(self):
                real.close()
                closed.append(True)

        return Stream()

    def generate_image(self, prompt, **options):
        raise KeyboardInterrupt


def test_ctrl_c_stops_the_answer_not_the_session(lwm, tmp_path):
    double = InterruptedAnswers(lwm)
    repl, out = make_repl(double, KeyboardInterrupt, "hello there", "/draw a cube", "/show", tmp_path=tmp_path)
    assert repl.run() == 0  # Ctrl+D after the script
    text = out.getvalue()
    assert EXIT_HINT in text and text.count("(stopped)") == 2 and "turns        1" in text
    assert not (tmp_path / "out").exists()  # the interrupted drawing saved nothing
    assert double.closed == [True]
    assert repl.messages[1]["content"]  # the part said before Ctrl+C is kept


def test_set_show_and_bad_values(lwm, tmp_path):
    repl, out = make_repl(
        lwm, "/set temperature 0.7", "/set top_k 20", "/set seed none", "/set frames 0", "/set colour red",
        "/set top_p 2", "/set", "/show", tmp_path=tmp_path,
    )
    repl.run()
    text = out.getvalue()
    assert repl.settings.temperature == 0.7 and repl.settings.top_k == 20 and repl.settings.frames is None  # the model's
    assert "Error: 0 is not a valid frames" in text
    assert "Error: unknown parameter 'colour'" in text
    assert "Error: 2 is not a valid top_p" in text
    assert "Error: usage: /set PARAM VALUE" in text
    assert "temperature  0.7" in text


def test_bad_attachments_are_reported(lwm, tmp_path, media_dir):
    repl, out = make_repl(
        lwm, f"/image {media_dir / 'notes.txt'}", f"/image {media_dir / 'clip.mp4'}", f"/video {tmp_path / 'no.mp4'}",
        "/image", tmp_path=tmp_path,
    )
    repl.run()
    text = out.getvalue()
    assert "Error: 'notes.txt' is not an image or a video (judged from its bytes)" in text
    assert "Error: 'clip.mp4' is a video; use /video" in text
    assert "no such file" in text and "usage: /image PATH" in text
    assert repl.pending == []


def test_draw_animate_continue_save_and_clear(lwm, tmp_path):
    repl, out = make_repl(
        lwm, "/continue", "/set seed 3", "/set frames 2", "/draw a red cube", "/animate a ball rolling",
        "/continue 1", "/set max_tokens 2", "hi", "/save", "/clear", "/show", tmp_path=tmp_path, show_previews=True,
    )
    repl.run()
    text = out.getvalue()
    folder = tmp_path / "out"
    assert "Error: nothing to continue" in text
    assert f"Saved image to {folder / 'image-001.png'}" in text
    assert f"Saved video to {folder / 'video-001.mp4'}" in text
    assert f"Saved video to {folder / 'continued-001.mp4'}" in text
    assert media.load_image(folder / "image-001.png").shape == (8, 8, 3)
    assert media.load_video(folder / "video-001.mp4").shape[0] == 2
    assert media.load_video(folder / "continued-001.mp4").shape[0] == 1
    assert text.count(preview.UPPER_HALF_BLOCK) > 0 and "\x1b[38;2;" in text
    saved = json.loads((folder / "chat-001.json").read_text())
    assert saved["settings"]["seed"] == 3 and saved["messages"][0]["content"][0]["text"] == "hi"
    assert "Cleared session context" in text and repl.messages == [] and "turns        0" in text


def test_preview_paints_upper_and_lower_pixels_side_by_side():
    red, blue, green = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    first = np.array([[red, red], [blue, blue]], np.uint8)
    second = np.array([[green, green], [green, green]], np.uint8)
    rows = preview.render(np.stack([first, second]), width=2).split("\n")
    assert len(rows) == 1  # 2 pixel rows -> 1 text row
    cell = f"\x1b[38;2;255;0;0m\x1b[48;2;0;0;255m{preview.UPPER_HALF_BLOCK}"
    other = f"\x1b[38;2;0;255;0m\x1b[48;2;0;255;0m{preview.UPPER_HALF_BLOCK}"
    assert rows[0] == cell * 2 + preview.RESET + " " + other * 2 + preview.RESET
    with pytest.raises(ValueError, match="frames"):
        preview.render(np.zeros((4, 4), np.uint8))
    video = np.zeros((6, 16, 16, 3), np.uint8)
    narrow = preview.render(video, width=24, columns=40).split("\n")
    assert len(narrow) == 2 and narrow[0].count(preview.UPPER_HALF_BLOCK) == 6 * 5  # 5 columns per frame fit


def test_settings_reject_unknown_names():
    settings = ChatSettings()
    with pytest.raises(ValueError, match="unknown parameter"):
        settings.set("speed", "1")
    settings.set("max-tokens", "12")
    assert settings.max_tokens == 12


def test_one_shot_prompt_with_attachments(lwm, tiny_model_dir, media_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    photo = media_dir / "photo.png"
    code = main(["chat", "--model", str(tiny_model_dir), "--image", str(photo), "--max-tokens", "4",
                 "-p", "What is this?"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == answer(lwm, ("What is this?", [{"type": "image", "path": str(photo)}])) + "\n"
    assert "Added image 'photo.png'" in captured.err


def test_one_shot_prompt_on_a_model_offloaded_to_disk(lwm, tiny_model_dir, media_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    photo = media_dir / "photo.png"
    code = main(["chat", "--model", str(tiny_model_dir), "--device-map", "auto", "--offload-folder",
                 str(tmp_path / "offload"), "--image", str(photo), "--max-tokens", "4", "-p", "What is this?"])
    assert code == 0
    assert capsys.readouterr().out == answer(lwm, ("What is this?", [{"type": "image", "path": str(photo)}])) + "\n"


def test_questions_piped_on_stdin(lwm, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first question\n/set max_tokens 2\nsecond question\n"))
    assert main(["chat", "--model", str(tiny_model_dir), "--max-tokens", "3"]) == 0
    out = capsys.readouterr().out
    first = answer(lwm, ("first question", []), max_new_tokens=3)
    second = answer(lwm, ("first question", []), first, ("second question", []), max_new_tokens=2)
    assert out == f"{first}\n{second}\n"


def test_a_missing_video_on_the_command_line_stops_the_chat_before_any_answer(tiny_model_dir, tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("How many objects are there?\n"))
    missing = tmp_path / "clip.mp4"
    assert main(["chat", "--model", str(tiny_model_dir), "--video", str(missing), "--max-tokens", "3"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"'{missing}': no such file" in captured.err


def test_missing_model_is_a_clear_error(capsys):
    assert main(["chat", "--model", "/nonexistent/model", "-p", "hi"]) == 1
    assert "not a model folder" in capsys.readouterr().err
