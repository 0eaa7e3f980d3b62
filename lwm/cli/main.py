"""The `lwm` command.

Each sub-command lives in the package that owns it, as a module exposing `configure(parser)` (adds
its arguments) and `run(args) -> int | None`. Modules are imported only when their sub-command is
used, so `lwm --help` stays instant and a missing optional extra breaks only its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown by `lwm --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("lwm.serve.chat_cli", "chat with a model about images and videos, or ask it to draw"),
    "generate": ("lwm.generation.cli", "generate an image or a video from a prompt"),
    "caption": ("lwm.generation.caption_cli", "describe an image or a video"),
    "serve": ("lwm.serve.server_cli", "serve a model over an OpenAI-compatible HTTP API"),
    "train": ("lwm.training.cli", "train or fine-tune a model from a YAML config"),
    "tokenizer": ("lwm.tokenizers.cli", "train, run and evaluate the VQGAN and text tokenizers"),
    "data": ("lwm.data.cli", "build pre-tokenized datasets from manifests"),
    "eval": ("lwm.eval.cli", "evaluate a model on the synthetic world and needle retrieval"),
    "convert": ("lwm.convert.cli", "convert official LWM checkpoints (JAX, VQGAN pickle) to this format"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (error.name == module_name or module_name.startswith(error.name + ".")):
            return None
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lwm",
        description="LWM-PyTorch: a large world model over text, images and video.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            module = _load(name)
            if module is not None:
                module.configure(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    requested = next((a for a in argv if not a.startswith("-")), None)
    only = requested if requested in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    module = _load(args.command)
    if module is None:
        print(f"lwm {args.command}: this command is not available in this version yet.", file=sys.stderr)
        return 2
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
