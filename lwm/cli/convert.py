"""`lwm convert ...`: turn official LWM checkpoints into this project's format.

Each converter is a nested sub-command that registers its own arguments and a `convert_run`
function; `run` dispatches to it.
"""

from __future__ import annotations

import argparse
import math
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    converters = parser.add_subparsers(dest="converter", metavar="CONVERTER", required=True)
    _configure_lwm_jax(converters)
    _configure_vqgan(converters)


def run(args: argparse.Namespace) -> int:
    return args.convert_run(args)


def _configure_lwm_jax(converters) -> None:
    from lwm.convert import lwm_jax  # imports no torch: `--help` stays light

    parser = converters.add_parser(
        "lwm-jax", help="LWM's JAX release (params, vqgan, tokenizer) -> an LWMForCausalLM folder"
    )
    lwm_jax.configure(parser)
    parser.set_defaults(convert_run=lwm_jax.run)


# ----------------------------------------------------------------------------- vqgan


def _configure_vqgan(converters) -> None:
    parser = converters.add_parser(
        "vqgan",
        help="LWM's `vqgan` pickle -> a VQGAN folder (config.json + model.safetensors)",
        description=(
            "Convert the `vqgan` file of an LWM release (a pickled Flax parameter tree) into a folder "
            "that lwm.tokenizers.modeling_vqgan.VQGAN.from_pretrained loads. The pickle is read by a "
            "restricted unpickler that refuses anything but numpy arrays, so a tampered file cannot run code."
        ),
    )
    parser.add_argument("pickle", metavar="PICKLE", help="path to the `vqgan` file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created if missing)")
    parser.add_argument(
        "--config",
        default=None,
        help="VQGAN preset name or JSON path the tree must match (default: read the architecture off the tree)",
    )
    parser.set_defaults(convert_run=_run_vqgan)


def _run_vqgan(args: argparse.Namespace) -> int:
    from lwm.convert.vqgan_pickle import VQGANPickleError, convert_vqgan_pickle, expected_flax_shapes
    from lwm.tokenizers.configuration_vqgan import VQGANConfig

    try:
        config = VQGANConfig.from_preset(args.config) if args.config else None
        model = convert_vqgan_pickle(args.pickle, args.out_dir, config)
    except (VQGANPickleError, ValueError) as error:
        print(f"lwm convert vqgan: {error}", file=sys.stderr)
        return 1
    config = model.config
    shapes = expected_flax_shapes(config)
    print(
        f"converted {len(shapes)} leaves, {sum(math.prod(s) for s in shapes.values()):,} parameters: "
        f"{config.resolution}x{config.resolution} frames -> "
        f"{config.grid_size}x{config.grid_size} codes from {config.codebook_size}; wrote {args.out_dir}"
    )
    return 0
