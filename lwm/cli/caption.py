"""`lwm caption FILE`: describe an image or a video (greedy, streamed)."""

from __future__ import annotations

import argparse
import sys

from lwm.cli.model_loading import add_model_arguments, load_model


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Describe an image or a video. The kind is judged from the file's bytes."
    parser.add_argument("file", help="an image or a video")
    parser.add_argument("--question", default=None, help="ask this instead of the default caption request")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest caption (default: up to 512 tokens)")
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lwm.api import media_kind
    from lwm.media import MediaError
    from lwm.tokenizers import CAPTION_REQUESTS

    lwm = load_model(args)
    if lwm is None:
        return 1
    try:
        kind = media_kind(args.file)
        question = args.question or CAPTION_REQUESTS[kind]
        content = [{"type": "text", "text": question}, {"type": kind, "path": args.file}]
        stream = lwm.chat([{"role": "user", "content": content}], stream=True, max_new_tokens=args.max_tokens)
        for piece in stream:
            print(piece, end="", flush=True)
        print()
    except (ValueError, MediaError, OSError) as error:
        print(f"lwm caption: {error}", file=sys.stderr)
        return 1
    return 0
