"""`lwm convert ...`: turn official LWM checkpoints into this project's format."""

from __future__ import annotations

import argparse
import math
import sys

from lwm.cli.main import add_command
from lwm.convert.lwm_jax import DEFAULT_MAX_LENGTH, DEFAULT_SHARD_GB, DEFAULT_THETA, LLAMA_HEAD_DIM


def configure(parser: argparse.ArgumentParser) -> None:
    converters = parser.add_subparsers(dest="converter", metavar="CONVERTER", required=True)
    _configure_lwm_jax(converters)
    _configure_vqgan(converters)


# ----------------------------------------------------------------------------- lwm-jax


def _configure_lwm_jax(converters) -> None:
    parser = add_command(converters, "lwm-jax", _run_lwm_jax,
                         help="LWM's JAX release (params, vqgan, tokenizer) -> an LWMForCausalLM folder")
    parser.add_argument("--params", required=True, metavar="PATH",
                        help="the `params` file of an LWM-Chat/LWM-Text -Jax release (or its folder)")
    parser.add_argument("--vqgan", metavar="PATH",
                        help="the `vqgan` pickle of the release, or its folder (vision-language models)")
    parser.add_argument("--tokenizer", metavar="PATH", help="LLaMA-2 `tokenizer.model` (or a folder holding it)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--theta", type=float, default=DEFAULT_THETA,
                        help="RoPE base θ (default %(default)g, LWM's vision-language scripts; "
                        "LWM-Text-128K/256K: 1e7, 512K: 2.5e7)")
    parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                        help="max_position_embeddings to record (default %(default)d); it sizes no weights")
    parser.add_argument("--num-heads", type=int, default=None,
                        help=f"attention heads (default: hidden size / {LLAMA_HEAD_DIM}, as in every LLaMA-2 size)")
    parser.add_argument("--rms-norm-eps", type=float, default=1e-6, help="RMSNorm epsilon (default %(default)g)")
    parser.add_argument("--num-vision-codes", type=int, default=8192,
                        help="VQGAN codebook size when no --vqgan is given (default %(default)d)")
    parser.add_argument("--eov-after-every-frame", action="store_true",
                        help="processor: end every frame with <eov> as the official chat script does "
                        "(default: <eof> between frames, <eov> after the last, as in training)")
    parser.add_argument("--shard-size", type=float, default=DEFAULT_SHARD_GB, metavar="GB",
                        help="largest safetensors shard in GB (default %(default)g)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_lwm_jax(args: argparse.Namespace) -> int:
    """Convert an official LWM JAX release (the `params` file, a tux streaming msgpack checkpoint; plus its
    `vqgan` pickle and LLaMA-2 `tokenizer.model`) into a folder that LWMForCausalLM.from_pretrained and
    LWMProcessor.from_pretrained load. The file is read one record at a time; params and train-state files,
    scanned and unscanned layers, bf16 and f32 are detected from the file. Nothing is downloaded."""
    from lwm.convert import CheckpointFormatError, ConversionError, VQGANPickleError, convert_release

    try:
        release = convert_release(
            args.params, args.out, vqgan=args.vqgan, tokenizer=args.tokenizer, num_heads=args.num_heads,
            theta=args.theta, max_length=args.max_length, rms_norm_eps=args.rms_norm_eps,
            num_vision_codes=args.num_vision_codes, eov_after_every_frame=args.eov_after_every_frame,
            shard_gb=args.shard_size, progress=not args.quiet,
        )
    except (CheckpointFormatError, ConversionError, VQGANPickleError, FileNotFoundError, ValueError) as error:
        print(f"lwm convert lwm-jax: {error}", file=sys.stderr)
        return 1
    config = release.config
    print(f"read {release.params_path}: {release.layout.describe()}")
    print(f"wrote {args.out}: {type(config).__name__} (θ={config.rope_parameters['rope_theta']:g})"
          + "".join(f", {part}" for part in release.parts))
    if not args.tokenizer:
        print("no --tokenizer given: copy LLaMA-2's tokenizer.model into the folder before chatting")
    if release.layout.vision_vocab_size and not release.vqgan_path:
        print("no --vqgan given: images and videos need the release's VQGAN (lwm convert vqgan)")
    return 0


# ----------------------------------------------------------------------------- vqgan


def _configure_vqgan(converters) -> None:
    parser = add_command(converters, "vqgan", _run_vqgan,
                         help="LWM's `vqgan` pickle -> a VQGAN folder (config.json + model.safetensors)")
    parser.add_argument("pickle", metavar="PICKLE", help="path to the `vqgan` file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created if missing)")
    parser.add_argument(
        "--config",
        default=None,
        help="VQGAN preset name or JSON path the tree must match (default: read the architecture off the tree)",
    )


def _run_vqgan(args: argparse.Namespace) -> int:
    """Convert the `vqgan` file of an LWM release (a pickled Flax parameter tree) into a folder that
    lwm.tokenizers.VQGAN.from_pretrained loads. The pickle is read by a restricted unpickler that refuses
    anything but numpy arrays, so a tampered file cannot run code."""
    from lwm.convert import VQGANPickleError, convert_vqgan_pickle, expected_flax_shapes
    from lwm.tokenizers import VQGANConfig

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
