"""Peak memory of `lwm convert lwm-jax` on a ~1B-parameter checkpoint in LWM's official format.

    .venv/bin/python benchmarks/convert_memory.py                 # ~1B params, bf16 (~2 GB on disk)
    .venv/bin/python benchmarks/convert_memory.py --chunk-mb 1024 # flax's real threshold: no leaf chunked

A synthetic VideoLLaMA checkpoint (hidden 2048, FFN 5504, 16 scanned layers, LLaMA-2 and LWM
vocabularies: 975M parameters) is written the way tux writes it (tests/convert/official_format.py)
into a temporary folder, then converted in a fresh process whose peak resident memory (VmHWM) is
its own. Reported: that process's resident size after its imports (torch, transformers: the cost of
any Python process of this project), its peak, and the growth from one to the other, compared with the
largest single record of the file. By default leaves over 128 MB are written in flax's chunked form
(flax does this only above 1 GiB, which no leaf of a 1B model reaches), so the chunked read path is
the one measured. Everything written is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import machine, peak_bytes, print_table, resident_bytes, run_worker  # noqa: E402

from tests.convert.official_format import Dims, layer_shapes, write_streaming_checkpoint  # noqa: E402

DIMS = Dims(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_layers=16, num_heads=16, vision_vocab_size=8448)
MB = 10**6


def synthetic_records(dims: Dims, seed: int = 0):
    """Scanned (axis 0) LWM records, generated one leaf at a time so the writer never holds the model."""
    rng = np.random.default_rng(seed)

    def leaf(shape):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    d = dims.hidden_size
    yield ("transformer", "wte", "embedding"), leaf((dims.vocab_size, d))
    yield ("transformer", "vte", "embedding"), leaf((dims.vision_vocab_size, d))
    for path, shape in layer_shapes(dims).items():
        yield ("transformer", "h", "scan_decoder", *path.split("/")), leaf((dims.num_layers, *shape))
    yield ("transformer", "ln_f", "kernel"), leaf((d,))
    yield ("lm_head", "kernel"), leaf((d, dims.vocab_size))
    yield ("vision_head", "kernel"), leaf((d, dims.vision_vocab_size))


def worker(params_path: str, out_dir: str) -> dict:
    import lwm.model  # noqa: F401  (torch + transformers: part of the baseline, not of the conversion)
    from lwm.convert.lwm_jax import convert_params

    baseline = resident_bytes()
    start = time.perf_counter()
    convert_params(params_path, out_dir, num_heads=DIMS.num_heads, num_vision_codes=8192, progress=False)
    return {"baseline": baseline, "peak": peak_bytes(), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-mb", type=float, default=128.0,
                        help="leaves above this many MB (2**20 B) are chunked (flax: 1024)")
    parser.add_argument("--tmp", default="/tmp", help="where the temporary checkpoint and output go")
    parser.add_argument("--worker", nargs=2, metavar=("PARAMS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return

    from lwm.convert.msgpack_reader import StreamingCheckpoint

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="lwm_convert_memory_") as work:
        params_path, out_dir = Path(work) / "params", Path(work) / "converted"
        start = time.perf_counter()
        write_streaming_checkpoint(params_path, synthetic_records(DIMS), max_chunk_bytes=int(args.chunk_mb * 2**20))
        write_seconds = time.perf_counter() - start
        with StreamingCheckpoint(params_path) as checkpoint:
            leaves = list(checkpoint.leaves.values())
        largest = max(leaves, key=lambda leaf: leaf.nbytes)
        parameters = sum(int(np.prod(leaf.shape)) for leaf in leaves)
        result = run_worker(__file__, str(params_path), str(out_dir))
        if "error" in result:
            raise SystemExit(f"conversion failed: {result['error']}")
        index = json.loads((out_dir / "model.safetensors.index.json").read_text())
        written = sum((out_dir / name).stat().st_size for name in set(index["weight_map"].values()))
        file_size = params_path.stat().st_size

    growth = result["peak"] - result["baseline"]
    print(f"machine: {machine()}; wrote the synthetic file in {write_seconds:.0f} s (deleted afterwards)")
    print_table(
        ["", "value"],
        [
            ["parameters", f"{parameters:,}"],
            ["params file (bf16)", f"{file_size / MB:,.0f} MB, {len(leaves)} records"],
            ["largest record", f"{'/'.join(largest.key)}: {largest.nbytes / MB:,.0f} MB in {len(largest.segments)} chunk(s)"],
            ["safetensors written", f"{written / MB:,.0f} MB in {len(set(index['weight_map'].values()))} shard(s), "
                                    f"{len(index['weight_map'])} tensors"],
            ["converter RSS after imports", f"{result['baseline'] / MB:,.0f} MB"],
            ["converter peak RSS", f"{result['peak'] / MB:,.0f} MB"],
            ["growth during conversion", f"{growth / MB:,.0f} MB = {growth / largest.nbytes:.2f} x largest record (limit 1.5)"],
            ["conversion time", f"{result['seconds']:.1f} s"],
        ],
    )


if __name__ == "__main__":
    main()
