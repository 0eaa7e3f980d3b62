"""`lwm memory [CONFIG]`: the memory needs of a model (lwm.model.memory) as a table."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    from lwm.model.memory import DEFAULT_RESERVE_GIB, DTYPE_BYTES

    parser.description = "Memory needs of a model config: weights, KV cache, what fits on a device."
    parser.add_argument("config", nargs="?", default="lwm-7b",
                        help="preset name, model folder or config.json (default: %(default)s)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES))
    parser.add_argument("--budgets", type=float, nargs="+", default=[16, 24, 80], metavar="GIB",
                        help="device sizes in GiB")
    parser.add_argument("--reserve", type=float, default=DEFAULT_RESERVE_GIB, metavar="GIB",
                        help="kept free for the CUDA context and workspaces")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lwm.model.memory import load_model_config, memory_table

    try:
        config = load_model_config(args.config)
    except ValueError as error:
        print(f"lwm memory: {error}", file=sys.stderr)
        return 1
    print(memory_table(config, args.budgets, args.dtype, args.reserve))
    return 0
