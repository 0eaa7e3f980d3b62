"""Blockwise attention vs PyTorch SDPA on CPU: time and peak memory of forward + backward.

    .venv/bin/python benchmarks/attention.py                 # 4K ... 64K, causal and packed
    .venv/bin/python benchmarks/attention.py --lengths 4096 8192 --repeats 3

Every (method, mask, length) runs in a fresh process, with one thread, so its peak resident memory
is its own; the reported memory is that peak minus the resident size just before the call (inputs
included). Times are medians of wall-clock and of the process's CPU time: on a quiet machine they
agree; on a shared one the CPU time still measures the work done.
"Packed" splits the sequence into 4 documents: SDPA then needs a dense seq x seq mask, blockwise
does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, peak_bytes, print_table, resident_bytes, run_worker  # noqa: E402

from lwm.model.attention import blockwise_attention  # noqa: E402

HEADS, HEAD_DIM, CHUNK = 4, 64, 1024
HEADERS = ["mask", "seq", "blockwise s", "sdpa s", "sdpa/blockwise", "blockwise CPU s", "sdpa CPU s",
           "sdpa/blockwise (CPU)", "blockwise MB", "sdpa MB"]


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        line = next(line for line in meminfo if line.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024


def worker(method: str, mask: str, length: int, repeats: int) -> dict:
    # SDPA with a document mask materialises seq x seq masks (about 6 bytes per pair, measured up to
    # 16K); refuse sizes that would push the machine into swapping or the OOM killer.
    if method == "sdpa" and mask == "packed" and 6 * length**2 > 0.5 * available_bytes():
        return {"error": f"skipped: needs ~{6 * length**2 / 2**30:.0f} GB"}
    torch.set_num_threads(1)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, requires_grad=True) for _ in range(3))
    segments = None
    if mask == "packed":
        segments = torch.arange(length).div(length // 4, rounding_mode="floor")[None] + 1

    def step():
        if method == "blockwise":
            out = blockwise_attention(q, k, v, causal=True, segment_ids=segments, q_chunk=CHUNK, kv_chunk=CHUNK)
        elif segments is None:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            allowed = torch.ones(length, length, dtype=torch.bool).tril() & (segments[0, :, None] == segments[0, None, :])
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out.sum().backward()

    before = resident_bytes()
    seconds = median_seconds(step, repeats, warmup=0 if length >= 32768 else 1)
    cpu_seconds = median_seconds(step, repeats, warmup=0, clock=time.process_time) if length < 32768 else None
    return {"seconds": seconds, "cpu_seconds": cpu_seconds or seconds, "peak_mb": (peak_bytes() - before) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (1 above 16K)")
    parser.add_argument("--masks", nargs="+", default=["causal", "packed"])
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "MASK", "LENGTH", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, mask, length, repeats = args.worker
        print(json.dumps(worker(method, mask, int(length), int(repeats))))
        return

    print(f"# attention fwd+bwd, fp32, 1 x {HEADS} heads x head_dim {HEAD_DIM}, chunk {CHUNK}; {machine()}, "
          f"torch {torch.__version__}, 1 thread per run")
    rows = []
    for mask in args.masks:
        for length in args.lengths:
            repeats = str(args.repeats if length <= 16384 else 1)
            ours = run_worker(__file__, "blockwise", mask, str(length), repeats)
            peer = run_worker(__file__, "sdpa", mask, str(length), repeats)
            both = "seconds" in ours and "seconds" in peer
            ratio = lambda key: f"{peer[key] / ours[key]:.2f}x" if both else "-"  # noqa: E731
            fmt = lambda r, key, spec: format(r[key], spec) if key in r else r.get("error", "-")  # noqa: E731
            rows.append([mask, length, fmt(ours, "seconds", ".2f"), fmt(peer, "seconds", ".2f"), ratio("seconds"),
                         fmt(ours, "cpu_seconds", ".2f"), fmt(peer, "cpu_seconds", ".2f"), ratio("cpu_seconds"),
                         fmt(ours, "peak_mb", ".0f"), fmt(peer, "peak_mb", ".0f")])
            print_table(HEADERS, rows[-1:], flush=True)
    print()
    print_table(HEADERS, rows)


if __name__ == "__main__":
    main()
