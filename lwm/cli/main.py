"""The `lwm` command: every sub-command's parser and the one dispatch.

Each command module of this package adds its arguments in `configure(parser)` and names the function
that runs it with `parser.set_defaults(run=...)`; a command with sub-commands registers each with
`add_command`, whose description is the docstring of the function that runs it. `main` parses and
returns `args.run(args)`. A command's module is imported only when that command is
used, so `lwm --help` stays instant and a missing optional extra breaks only its own command.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable

# name -> (module, one-line help). Order is the order shown by `lwm --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("lwm.cli.chat", "chat with a model about images and videos, or ask it to draw"),
    "generate": ("lwm.cli.generate", "generate an image or a video from a prompt"),
    "caption": ("lwm.cli.caption", "describe an image or a video"),
    "serve": ("lwm.cli.serve", "serve a model over an OpenAI-compatible HTTP API"),
    "train": ("lwm.cli.train", "train or fine-tune a model from a YAML config"),
    "tokenizer": ("lwm.cli.tokenizer", "train, run and evaluate the VQGAN and text tokenizers"),
    "data": ("lwm.cli.data", "build datasets: the synthetic world, pre-tokenized shards"),
    "eval": ("lwm.cli.eval", "evaluate a model on the synthetic world and needle retrieval"),
    "convert": ("lwm.cli.convert", "convert official LWM checkpoints (JAX, VQGAN pickle) to this format"),
    "memory": ("lwm.cli.memory", "memory needs of a model: weights, KV cache, the context that fits a device"),
}


def add_command(commands, name: str, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    """The parser of sub-command `name` of `commands` (an argparse subparsers action), which `main` runs
    as `run(args)`; `run`'s docstring is its description."""
    parser = commands.add_parser(name, help=help, description=inspect.getdoc(run) or help)
    parser.set_defaults(run=run)
    return parser


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of `lwm`; the arguments of command `only` are added (importing its module)."""
    parser = argparse.ArgumentParser(
        prog="lwm",
        description="LWM-PyTorch: a large world model over text, images and video.",
    )
    # The deepspeed launcher puts it before the command: `deepspeed --module lwm train CONFIG`.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module).configure(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    requested = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(requested if requested in COMMANDS else None).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    return args.run(args) or 0
