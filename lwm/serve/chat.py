"""The chat REPL: a multi-turn conversation about images and videos that can also draw.

Conventions follow Ollama and llama.cpp (see /help): slash commands, `/image PATH` and `/video PATH`
or paths typed inside a message, `\"\"\"` for multi-line input, Ctrl+C stops an answer (on an empty
line it says how to leave), Ctrl+D or /bye exits. Answers stream. `/draw`, `/animate` and
`/continue` make images and videos, save them (the path is printed) and preview them.

`ChatRepl` reads lines through a `read_line(prompt)` callable (raising EOFError at the end and
KeyboardInterrupt on Ctrl+C) and writes to text streams, so a test drives it with a script.
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from lwm import media
from lwm.api import BUNDLED_DIR, DEFAULT_FPS, LWM, ContextLengthError, Video
from lwm.serve import preview

MAX_ATTACHMENT_BYTES = 256 << 20
MULTILINE_QUOTES = '"""'
EXIT_HINT = "Use Ctrl + d or /bye to exit."
GREETING = "Type a message, /help for help, /bye to leave."
BUNDLED_SAMPLE = BUNDLED_DIR / "sample.mp4"

HELP = """\
Available commands:
  /image PATH          attach an image to your next message
  /video PATH          attach a video to your next message
                       (a path typed in a message, e.g. ./clip.mp4 or ~/a.png, is attached too)
  /draw PROMPT         draw an image of PROMPT
  /animate PROMPT      draw a video of PROMPT ('/set frames N' frames)
  /continue [N]        continue the last video or image (attached or drawn) by N frames
  /set PARAM VALUE     set temperature, top_k, top_p, seed, max_tokens, guidance, frames, fps
                       ('none' unsets); /set history | nohistory switches input history
  /show                show the settings, attachments and conversation length
  /save [FILE]         save the conversation as JSON
  /clear, /reset       forget the conversation and the attachments
  /help, /?            show this help
  /bye, /exit, /quit   leave (or Ctrl+D)

Use \"\"\" to begin and end a multi-line message. Ctrl+C stops an answer.
temperature, top_k, top_p and max_tokens shape answers (temperature 0 = greedy);
guidance, frames and fps shape drawings; seed both."""


# name: (type, check, may be unset with 'none')
_SETTING_RULES = {
    "temperature": (float, lambda v: v >= 0, False),
    "top_k": (int, lambda v: v >= 1, True),
    "top_p": (float, lambda v: 0 < v <= 1, True),
    "seed": (int, lambda v: 0 <= v < 1 << 63, True),  # the range LWM._generator accepts
    "max_tokens": (int, lambda v: v >= 1, True),
    "guidance": (float, lambda v: True, True),
    "frames": (int, lambda v: v >= 1, True),
    "fps": (float, lambda v: v > 0, False),
}


@dataclass
class ChatSettings:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    guidance: float | None = None  # None: the model's (its drawing_config.json, else LWM's 5)
    frames: int | None = None  # None: the model's
    fps: float = DEFAULT_FPS

    def set(self, name: str, value: str) -> None:
        """Sets a setting from its text value, checking it; 'none' unsets the optional ones."""
        name = name.replace("-", "_")
        if name not in _SETTING_RULES:
            raise ValueError(f"unknown parameter '{name}'; one of {', '.join(_SETTING_RULES)}")
        kind, valid, optional = _SETTING_RULES[name]
        if optional and value.lower() == "none":
            setattr(self, name, None)
            return
        try:
            parsed = kind(value)
        except ValueError:
            raise ValueError(f"{name} needs a {kind.__name__} value, got '{value}'") from None
        if not (math.isfinite(parsed) and valid(parsed)):
            raise ValueError(f"{value} is not a valid {name}")
        setattr(self, name, parsed)

    def answer_options(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "max_new_tokens": self.max_tokens, "seed": self.seed}


@dataclass
class Attachment:
    kind: str  # "image" | "video"
    path: Path
    frames: np.ndarray

    def part(self) -> dict:
        return {"type": self.kind, "frames": self.frames}


class ChatRepl:
    """One chat session. `run()` loops until /bye or end of input and returns the exit status."""

    def __init__(
        self,
        lwm: LWM,
        read_line: Callable[[str], str],
        out: TextIO,
        info: TextIO | None = None,
        *,
        output_dir: str | Path = "lwm-output",
        show_previews: bool = False,
        show_progress: bool = False,
        interactive: bool = True,
        settings: ChatSettings | None = None,
        set_history: Callable[[bool], None] | None = None,
        greeting: str = GREETING,
    ):
        self.lwm = lwm
        self.read_line = read_line
        self.out = out
        self.info = info or out
        self.output_dir = Path(output_dir)
        self.show_previews = show_previews
        self.show_progress = show_progress  # a bar on stderr while drawing: only where a terminal clears it
        self.interactive = interactive
        self.settings = settings or ChatSettings()
        self.set_history = set_history
        self.greeting = greeting
        self.status = 0  # what run() returns: 1 once an error ended a session that is not interactive
        self.messages: list[dict] = []
        self.transcript: list[dict] = []  # the conversation with media as paths, for /save
        self.pending: list[Attachment] = []
        self.last_visual: Attachment | None = None  # what /continue extends
        # A model trained on one user turn per chat (the processor's `single_turn`) is asked each
        # question alone, with the media attached last: earlier turns would only confuse it.
        self.single_turn = lwm.processor.config.single_turn
        self.context_media: list[Attachment] = []

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        if self.interactive:
            self._say(self.greeting)
        while True:
            try:
                line = self._read_message()
            except EOFError:
                if self.interactive:
                    self.out.write("\n")
                return self.status
            except KeyboardInterrupt:
                self.out.write("\n")
                self._say(EXIT_HINT)
                continue
            try:
                if not self.handle(line):
                    return self.status
            except KeyboardInterrupt:  # Ctrl+C while reading media or drawing: stop that, keep the session
                self.out.write("\n")
                self._say("(stopped)")

    def _read_message(self) -> str:
        line = self.read_line(">>> " if self.interactive else "")
        if not line.lstrip().startswith(MULTILINE_QUOTES):
            return line
        text = line.lstrip()[len(MULTILINE_QUOTES) :]
        if text.rstrip().endswith(MULTILINE_QUOTES):  # """one line"""
            return text.rstrip()[: -len(MULTILINE_QUOTES)]
        lines = [text]
        while True:
            line = self.read_line("... " if self.interactive else "")
            if line.rstrip().endswith(MULTILINE_QUOTES):
                lines.append(line.rstrip()[: -len(MULTILINE_QUOTES)])
                return "\n".join(lines).strip("\n")
            lines.append(line)

    def handle(self, line: str) -> bool:
        """Runs one command or message; False means the session is over (/bye, or an error in a script)."""
        stripped = line.strip()
        if not stripped:
            return True
        if stripped.startswith("/") and not self._is_attachable_path(_tokens(stripped)[0]):
            try:
                return self._command(stripped)
            except (ValueError, OSError) as error:  # bad input, media, settings: say so
                self._say(f"Error: {_error_text(error)}")
                return self._goes_on_after_error()
        return self.ask(stripped) or self._goes_on_after_error()

    def _goes_on_after_error(self) -> bool:
        """A person saw the error and decides what next; a script piped on stdin did not, and its next
        lines would run without what failed (a question about a video that was not attached), so it
        ends with status 1."""
        if self.interactive:
            return True
        self.status = 1
        return False

    def ask(self, text: str) -> bool:
        """Sends one message (paths in it are attached) and streams the answer; False after an error."""
        try:
            self._message(text)
        except (ValueError, OSError) as error:
            history_full = isinstance(error, ContextLengthError) and self.messages and not self.single_turn
            self._say(f"Error: {_error_text(error)}"
                      + (" Type /clear to start a new conversation." if history_full else ""))
            return False
        return True

    # ------------------------------------------------------------------ commands

    def _command(self, line: str) -> bool:
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        name = name.lower()
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name in ("/help", "/?"):
            self._say(HELP)
        elif name in ("/clear", "/reset"):
            self.messages, self.transcript, self.pending, self.last_visual = [], [], [], None
            self.context_media = []
            self._say("Cleared session context")
        elif name in ("/image", "/video"):
            if not argument:
                raise ValueError(f"usage: {name} PATH")
            self._attach(_unquote(argument), name[1:])
        elif name == "/set":
            self._set(argument)
        elif name == "/show":
            self._show()
        elif name == "/save":
            self._save(argument)
        elif name == "/draw":
            self._draw(argument)
        elif name == "/animate":
            self._animate(argument)
        elif name == "/continue":
            self._continue(argument)
        else:
            self._say(f"Unknown command '{name}'. Type /help for help")
        return True

    def _set(self, argument: str) -> None:
        words = argument.split()
        if words in (["history"], ["nohistory"]):
            if self.set_history is not None:
                self.set_history(words[0] == "history")
            self._say(f"Set '{words[0]}' mode.")
            return
        if len(words) != 2:
            raise ValueError("usage: /set PARAM VALUE (see /help)")
        self.settings.set(*words)
        self._say(f"Set parameter '{words[0]}' to '{words[1]}'")

    def _show(self) -> None:
        for name, value in asdict(self.settings).items():
            self._say(f"  {name:<12} {value}")
        attached = ", ".join(f"{a.kind} '{a.path.name}'" for a in self.pending) or "none"
        self._say(f"  attached     {attached}")
        self._say(f"  turns        {len(self.messages) // 2}")
        if self.single_turn:
            media = ", ".join(f"{a.kind} '{a.path.name}'" for a in self.context_media) or "none"
            self._say(f"  context      each question alone with the last media ({media}): the model is single-turn")

    def _save(self, argument: str) -> None:
        path = media.user_path(_unquote(argument)) if argument else self._free_path("chat", ".json")
        record = {"settings": asdict(self.settings), "messages": self.transcript}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n")
        except OSError as error:
            raise ValueError(f"cannot save to {path}: {_error_text(error)}") from None
        self._say(f"Saved conversation to {path}")

    # ------------------------------------------------------------------ media in

    def _attach(self, text_path: str, kind: str | None) -> Attachment:
        path = media.user_path(text_path)
        if not path.exists():
            raise ValueError(f"'{text_path}': no such file")
        found = media.sniff_media_type(path)  # refuses what is not a readable regular file, without blocking
        size = path.stat().st_size
        if size > MAX_ATTACHMENT_BYTES:
            raise ValueError(f"'{path.name}' is {size >> 20} MiB, more than the {MAX_ATTACHMENT_BYTES >> 20} MiB limit")
        if found is None:
            raise ValueError(f"'{path.name}' is not an image or a video (judged from its bytes)")
        if kind == "image" and found != "image":
            raise ValueError(f"'{path.name}' is a {found}; use /video")
        kind = kind or found
        attachment = Attachment(kind, path, self.lwm.load_media(path, kind))
        self.pending.append(attachment)
        self.last_visual = attachment
        self._say(f"Added {kind} '{path.name}'")
        return attachment

    def _is_attachable_path(self, token: str) -> bool:
        token = _unquote(token)
        if not token.startswith(("/", "./", "../", "~")):
            return False
        suffix = Path(token).suffix.lower()
        if suffix not in media.IMAGE_SUFFIXES | media.VIDEO_SUFFIXES:
            return False
        try:
            return media.user_path(token).is_file()
        except media.MediaError:  # ~name of no user: plain text
            return False

    # ------------------------------------------------------------------ conversation

    def _message(self, line: str) -> None:
        tokens = _tokens(line)
        words = [token for token in tokens if not self._is_attachable_path(token)]
        for token in tokens:
            if token not in words:
                self._attach(_unquote(token), None)
        text = line if len(words) == len(tokens) else " ".join(words)  # untouched text keeps its layout
        if not text.strip():
            if self.pending:
                self._say("Attached; now ask something about it.")
            return
        attachments = self.pending
        if self.single_turn:
            attachments = self.context_media = self.pending or self.context_media
        parts = [{"type": "text", "text": text}] + [a.part() for a in attachments]
        recorded = [{"type": "text", "text": text}] + [{"type": a.kind, "path": str(a.path)} for a in attachments]
        message = {"role": "user", "content": parts}
        history = [] if self.single_turn else self.messages
        stream = self.lwm.chat(history + [message], stream=True, **self.settings.answer_options())
        self.pending = []
        reply = self._stream(stream)
        self.messages += [message, {"role": "assistant", "content": reply}]
        self.transcript += [{"role": "user", "content": recorded}, {"role": "assistant", "content": reply}]

    def _stream(self, stream) -> str:
        """Prints the pieces as they come; Ctrl+C stops the answer and keeps what was said."""
        try:
            for piece in stream:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()
            self.out.write("\n")
            self._say("(stopped)")
            return stream.text
        self.out.write("\n")
        self.out.flush()
        return stream.text

    # ------------------------------------------------------------------ media out

    def _draw(self, prompt: str) -> None:
        if not prompt:
            raise ValueError("usage: /draw PROMPT")
        self._say(f"Drawing '{prompt}' ...")
        image = self.lwm.generate_image(
            prompt, guidance_scale=self.settings.guidance, seed=self.settings.seed, progress=self.show_progress
        )
        self._keep(np.asarray(image), "image", "image", ".png")

    def _animate(self, prompt: str) -> None:
        if not prompt:
            raise ValueError("usage: /animate PROMPT")
        frames = self.settings.frames or self.lwm.drawing.video_frames
        self._say(f"Animating '{prompt}' ({frames} frames) ...")
        video = self.lwm.generate_video(
            prompt,
            num_frames=frames,
            guidance_scale=self.settings.guidance,
            fps=self.settings.fps,
            seed=self.settings.seed,
            progress=self.show_progress,
        )
        self._keep(video.frames, "video", "video", ".mp4")

    def _continue(self, argument: str) -> None:
        if self.last_visual is None:
            raise ValueError("nothing to continue: attach a video (/video PATH) or make one (/animate) first")
        try:
            num_frames = int(argument) if argument else self.settings.frames or self.lwm.drawing.video_frames
        except ValueError:
            raise ValueError("usage: /continue [N]") from None
        if num_frames < 1:
            raise ValueError("/continue needs at least 1 frame")
        source = self.last_visual
        self._say(f"Continuing '{source.path.name}' by {num_frames} frames ...")
        frames = source.frames if source.frames.ndim == 4 else source.frames[None]
        video = self.lwm.continue_video(
            Video(frames, self.settings.fps), num_frames=num_frames, seed=self.settings.seed,
            progress=self.show_progress,
        )
        self._keep(video.frames, "video", "continued", ".mp4")

    def _keep(self, frames: np.ndarray, kind: str, stem: str, suffix: str) -> None:
        path = self._free_path(stem, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "image":
            media.save_image(frames, path)
        else:
            media.save_video(frames, path, fps=self.settings.fps)
        self.last_visual = Attachment(kind, path, frames)
        if self.show_previews:
            self.out.write(preview.render(frames, columns=shutil.get_terminal_size().columns) + "\n")
        self._say(f"Saved {kind} to {path}")

    def _free_path(self, stem: str, suffix: str) -> Path:
        index = 1
        while (self.output_dir / f"{stem}-{index:03d}{suffix}").exists():
            index += 1
        return self.output_dir / f"{stem}-{index:03d}{suffix}"

    def _say(self, text: str) -> None:
        self.info.write(text + "\n")
        self.info.flush()


def bundled_greeting() -> str:
    """What the bundled model is and a clip to try: it knows its synthetic world and nothing else."""
    return (
        "This is the bundled model: a small model (5.5M parameters) trained from scratch on a synthetic\n"
        "world of coloured shapes that move and bounce in a box. It describes clips of that world, answers\n"
        "questions about them, draws and continues them; it knows nothing else, so plain chat gets nonsense.\n"
        f"Try a clip of its world:\n  /video {BUNDLED_SAMPLE}\n  Describe the video.\n  How many objects are there?\n"
        f"{GREETING}"
    )


def _error_text(error: Exception) -> str:
    """An error as one readable line: an OSError in words, naming its file, without the errno number."""
    if not isinstance(error, OSError) or error.errno is None:
        return str(error)
    where = f"'{error.filename}'" if error.filename else "the file"
    reasons = {
        errno.EEXIST: f"{where} is a file, not a folder",
        errno.ENOTDIR: f"a part of {where} is a file, not a folder",
        errno.EISDIR: f"{where} is a folder",
        errno.EACCES: f"permission denied for {where}",
        errno.EPERM: f"permission denied for {where}",
        errno.EROFS: f"{where} is on a read-only file system",
        errno.ENOSPC: "the disk is full",
    }
    return reasons.get(error.errno, f"{(error.strerror or 'error').lower()}: {where}")


_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|(?:\\ |\S)+""")


def _tokens(line: str) -> list[str]:
    """Whitespace-separated words; quoted ('a b.png') or escaped (a\\ b.png) spaces stay inside a word."""
    return _TOKEN.findall(line) or [""]


def _unquote(token: str) -> str:
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token.replace("\\ ", " ")
