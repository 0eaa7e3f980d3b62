"""The options every command that loads a model shares, and the one place where a command loads it."""

from __future__ import annotations

import argparse
import sys


def add_model_arguments(parser: argparse.ArgumentParser, reads_videos: bool = True) -> None:
    """--model, --device, --dtype, --device-map, --offload-folder (and --max-frames when the command reads videos)."""
    parser.add_argument("--model", default="bundled", metavar="DIR",
                        help="model folder (written by LWM.save_pretrained or `lwm convert`); "
                        "default: the bundled model")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="decoder precision (default: as saved)")
    parser.add_argument("--device-map", default=None, metavar="MAP",
                        help="'auto' spreads a model too big for --device over GPU, CPU and disk (accelerate)")
    parser.add_argument("--offload-folder", default=None, metavar="DIR",
                        help="where --device-map puts layers that fit nowhere else")
    if reads_videos:
        parser.add_argument("--max-frames", type=int, default=None,
                            help="frames sampled uniformly from an input video (default: the model's, or 8)")


def load_model(args: argparse.Namespace):
    """The `LWM` named by `--model` and its options, or None after printing why it cannot be loaded."""
    from transformers.utils import logging as transformers_logging

    from lwm.api import LWM

    if not sys.stderr.isatty():  # transformers' loading bar would stay in a log or a pipe, around our errors
        transformers_logging.disable_progress_bar()
    try:
        return LWM.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                   max_frames=getattr(args, "max_frames", None),
                                   device_map=args.device_map, offload_folder=args.offload_folder)
    except (FileNotFoundError, ValueError) as error:
        print(f"lwm {args.command}: {error}", file=sys.stderr)
        return None
