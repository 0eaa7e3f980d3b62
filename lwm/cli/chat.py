"""`lwm chat`: the interactive chat, a one-shot question (`-p`), or questions piped on stdin."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from lwm.cli.model_loading import add_model_arguments, load_model

HISTORY_FILE = Path("~/.lwm/chat_history").expanduser()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Chat with a model about images and videos, or ask it to draw. Interactive by default "
        "(type /help inside); with -p it answers one question and exits; lines piped on stdin are "
        "read as messages (or, with -p, appended to the question)."
    )
    add_model_arguments(parser)
    parser.add_argument("-p", "--prompt", help="ask this one question and exit")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="attach an image (repeatable)")
    parser.add_argument("--video", action="append", default=[], metavar="PATH", help="attach a video (repeatable)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None, help="longest answer (default: up to 512 tokens)")
    parser.add_argument("--output-dir", default="lwm-output", help="where drawn images and videos are saved")
    parser.add_argument("--no-preview", action="store_true", help="do not show terminal thumbnails of drawings")
    parser.add_argument("--nohistory", action="store_true", help=f"do not keep input history in {HISTORY_FILE}")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lwm.api import BUNDLED
    from lwm.serve.chat import GREETING, ChatRepl, ChatSettings, bundled_greeting

    _tolerate_bad_encodings()
    lwm = load_model(args)
    if lwm is None:
        return 1
    settings = ChatSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            max_tokens=args.max_tokens)
    interactive = args.prompt is None and sys.stdin.isatty()
    set_history = None if not interactive else _readline_history(enabled=not args.nohistory)
    repl = ChatRepl(
        lwm,
        read_line=input if interactive else _stdin_lines(),
        out=sys.stdout,
        info=sys.stdout if interactive else sys.stderr,
        output_dir=args.output_dir,
        show_previews=sys.stdout.isatty() and not args.no_preview,
        show_progress=interactive and sys.stderr.isatty(),
        interactive=interactive,
        settings=settings,
        set_history=set_history,
        greeting=bundled_greeting() if args.model == BUNDLED else GREETING,
    )
    for path in args.image:
        repl.handle(f"/image {_quoted(path)}")
    for path in args.video:
        repl.handle(f"/video {_quoted(path)}")
    if len(repl.pending) != len(args.image) + len(args.video):
        return 1  # a command-line attachment failed (its error is printed): answer nothing without it
    if args.prompt is None:
        return repl.run()
    question = args.prompt
    if not sys.stdin.isatty():
        piped = sys.stdin.read().strip()
        question = f"{question}\n{piped}" if piped else question
    return 0 if repl.ask(question) else 1


def _tolerate_bad_encodings() -> None:
    """Input bytes that are not UTF-8 arrive as lone surrogates (the model refuses them with a clear
    error) instead of ending the chat with a UnicodeDecodeError; output escapes what it cannot encode."""
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "backslashreplace"),
                           (sys.stderr, "backslashreplace")):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=errors)


def _quoted(path: str) -> str:
    return f"'{path}'" if " " in path else path


def _stdin_lines():
    def read_line(_prompt: str) -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read_line


def _readline_history(enabled: bool):
    """Input history through readline, kept in HISTORY_FILE; returns the switch for /set [no]history."""
    try:
        import atexit
        import readline
    except ImportError:  # no readline (e.g. Windows): input() still works, without history
        return None
    readline.set_auto_history(enabled)
    HISTORY_FILE.parent.mkdir(parents=True, exist_ok=True)
    if HISTORY_FILE.is_file():
        readline.read_history_file(HISTORY_FILE)
    state = {"enabled": enabled}

    def save() -> None:
        if state["enabled"]:
            readline.write_history_file(HISTORY_FILE)

    def switch(on: bool) -> None:
        state["enabled"] = on
        readline.set_auto_history(on)

    atexit.register(save)
    return switch
