"""VQGAN speed and memory: our VQGAN vs diffusers' VQModel configured to the same architecture.

    .venv/bin/pip install diffusers torch==2.13.0     # for this benchmark only; not a dependency
    .venv/bin/python benchmarks/vqgan.py              # LWM config, 256x256, CPU, 1 thread

Both models are LWM's VQGAN (docs/official-weights.md#the-vqgan: 128 base channels, channel_mult (1,2,2,4,6), 2 res blocks,
no attention, codebook 8192 x 64) with random weights; the script checks that they hold the same
number of parameters. One "frame" is the full round trip a user pays for: pixels -> codes
(encoder, quant conv, nearest codebook entry) and codes -> pixels (codebook lookup, post-quant conv,
decoder). Each model runs in its own fresh process, so its peak resident memory (weights included)
is its own; processes alternate round by round and every cell is a median over all timed repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_bytes, print_table, run_worker  # noqa: E402

MODELS = ("lwm", "diffusers")


def build(name: str):
    import torch

    if name == "lwm":
        from lwm.tokenizers.configuration_vqgan import VQGANConfig
        from lwm.tokenizers.modeling_vqgan import VQGAN

        model = VQGAN(VQGANConfig.from_preset("lwm")).eval()
        return model, model.encode, model.decode, sum(p.numel() for p in model.parameters()) + model.quantize.codebook.numel()

    from diffusers import VQModel

    model = VQModel(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
        block_out_channels=(128, 256, 256, 512, 768), layers_per_block=2, act_fn="silu",
        latent_channels=64, num_vq_embeddings=8192, vq_embed_dim=64, norm_num_groups=32,
        mid_block_add_attention=False, lookup_from_codebook=True,
    ).eval()

    @torch.no_grad()
    def encode(pixels):
        latents = model.encode(pixels).latents
        _, _, (_, _, codes) = model.quantize(latents)
        return codes.reshape(pixels.shape[0], *latents.shape[-2:])

    @torch.no_grad()
    def decode(codes):
        shape = (*codes.shape, 64)
        return model.decode(codes.flatten(), force_not_quantize=True, shape=shape).sample.clamp(-1, 1)

    return model, encode, decode, sum(p.numel() for p in model.parameters())


def worker(name: str, frames: int, resolution: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    _, encode, decode, parameters = build(name)
    pixels = torch.rand(frames, 3, resolution, resolution) * 2 - 1
    codes = encode(pixels)  # warm-up
    decode(codes)
    encode_times, decode_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        codes = encode(pixels)
        middle = time.perf_counter()
        out = decode(codes)
        encode_times.append(middle - start)
        decode_times.append(time.perf_counter() - middle)
    if tuple(codes.shape) != (frames, resolution // 16, resolution // 16) or tuple(out.shape) != tuple(pixels.shape):
        raise RuntimeError(f"{name}: unexpected shapes {tuple(codes.shape)}, {tuple(out.shape)}")
    return {"encode": encode_times, "decode": decode_times, "peak_bytes": peak_bytes(), "parameters": parameters}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2, help="frames per call (the batch)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per process")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per model, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, frames, resolution, repeats, threads = args.worker[0], *map(int, args.worker[1:])
        print(json.dumps(worker(name, frames, resolution, repeats, threads)))
        return

    results = {name: {"encode": [], "decode": [], "peak_bytes": [], "parameters": None} for name in MODELS}
    for round_index in range(args.rounds):
        for name in MODELS:
            result = run_worker(__file__, name, str(args.frames), str(args.resolution), str(args.repeats), str(args.threads))
            if "error" in result:
                sys.exit(f"{name} failed: {result['error']}")
            for key in ("encode", "decode"):
                results[name][key] += result[key]
            results[name]["peak_bytes"].append(result["peak_bytes"])
            results[name]["parameters"] = result["parameters"]
            print(f"round {round_index + 1}/{args.rounds} {name}: done", file=sys.stderr)
    if results["lwm"]["parameters"] != results["diffusers"]["parameters"]:
        sys.exit(f"architectures differ: {results['lwm']['parameters']} vs {results['diffusers']['parameters']} parameters")

    def cells(name):
        encode = statistics.median(results[name]["encode"]) / args.frames
        decode = statistics.median(results[name]["decode"]) / args.frames
        round_trip = statistics.median(e + d for e, d in zip(results[name]["encode"], results[name]["decode"])) / args.frames
        return encode, decode, 1 / round_trip, statistics.median(results[name]["peak_bytes"]) / 2**20

    ours, theirs = cells("lwm"), cells("diffusers")
    print(f"\nVQGAN, LWM config ({results['lwm']['parameters']:,} parameters), {args.resolution}x{args.resolution}, "
          f"batch {args.frames}, CPU {args.threads} thread(s), {machine()}; medians of {args.rounds * args.repeats} calls\n")
    print_table(
        ["model", "encode s/frame", "decode s/frame", "encode+decode frames/s", "peak RSS MiB"],
        [["lwm VQGAN", f"{ours[0]:.3f}", f"{ours[1]:.3f}", f"{ours[2]:.3f}", f"{ours[3]:.0f}"],
         ["diffusers VQModel", f"{theirs[0]:.3f}", f"{theirs[1]:.3f}", f"{theirs[2]:.3f}", f"{theirs[3]:.0f}"],
         ["ratio lwm / diffusers", f"{ours[0] / theirs[0]:.2f}", f"{ours[1] / theirs[1]:.2f}",
          f"{ours[2] / theirs[2]:.2f}", f"{ours[3] / theirs[3]:.2f}"]],
    )


if __name__ == "__main__":
    main()
