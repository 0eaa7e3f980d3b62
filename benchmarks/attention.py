"""Blockwise attention vs PyTorch SDPA: time and peak memory of forward + backward.

    .venv/bin/python benchmarks/attention.py                 # CPU, 4K ... 64K, causal and packed
    .venv/bin/python benchmarks/attention.py --lengths 4096 8192 --repeats 3
    python benchmarks/attention.py --device cuda             # one CUDA GPU, bf16

Every (method, mask, length) runs in a fresh process, with one thread, so its peak resident memory
is its own; the reported memory is that peak minus the resident size just before the call (inputs
included). Times are medians of wall-clock and of the process's CPU time: on a quiet machine they
agree; on a shared one the CPU time still measures the work done.
"Packed" splits the sequence into 4 documents: SDPA then needs a dense seq x seq mask, blockwise
does not. Blockwise gives each document to the fused kernel in one call (its chunks only cut what
needs a mask tensor), so it takes no chunk size here.

On CUDA (bf16, 16 heads x head_dim 128) all cases run in this process: times are medians of CUDA
event timings after a warm-up, memory is torch.cuda.max_memory_allocated during one step minus what
was allocated before it (the inputs). SDPA is pinned to the kernels blockwise runs on: its flash
backend for causal (is_causal=True), its memory-efficient one for packed (a dense boolean mask).
Left to choose, torch may pick another (cuDNN on an H100 with torch 2.11); the header names it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, peak_bytes, print_table, resident_bytes, run_worker  # noqa: E402

from lwm.model.attention import blockwise_attention  # noqa: E402

HEADS, HEAD_DIM = 4, 64
HEADERS = ["mask", "seq", "blockwise s", "sdpa s", "sdpa/blockwise", "blockwise CPU s", "sdpa CPU s",
           "sdpa/blockwise (CPU)", "blockwise MB", "sdpa MB"]
CUDA_HEADS, CUDA_HEAD_DIM = 16, 128
CUDA_SDPA_BACKEND = {"causal": SDPBackend.FLASH_ATTENTION, "packed": SDPBackend.EFFICIENT_ATTENTION}
CUDA_HEADERS = ["mask", "seq", "blockwise ms", "sdpa ms", "sdpa/blockwise", "blockwise MB", "sdpa MB",
                "sdpa/blockwise (MB)"]


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        line = next(line for line in meminfo if line.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024


def make_step(method: str, mask: str, length: int, heads: int, head_dim: int, dtype, device):
    """The inputs and a closure running one forward + backward of `method` on them."""
    q, k, v = (torch.randn(1, heads, length, head_dim, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
    segments = None
    if mask == "packed":
        segments = torch.arange(length, device=device).div(length // 4, rounding_mode="floor")[None] + 1

    def step():
        if method == "blockwise":
            out = blockwise_attention(q, k, v, causal=True, segment_ids=segments)
        elif segments is None:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            same_doc = segments[0, :, None] == segments[0, None, :]
            allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril() & same_doc
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out.sum().backward()

    return (q, k, v), step


def worker(method: str, mask: str, length: int, repeats: int) -> dict:
    # SDPA with a document mask materialises seq x seq masks (about 6 bytes per pair, measured up to
    # 16K); refuse sizes that would push the machine into swapping or the OOM killer.
    if method == "sdpa" and mask == "packed" and 6 * length**2 > 0.5 * available_bytes():
        return {"error": f"skipped: needs ~{6 * length**2 / 2**30:.0f} GB"}
    torch.set_num_threads(1)
    torch.manual_seed(0)
    _, step = make_step(method, mask, length, HEADS, HEAD_DIM, torch.float32, "cpu")
    before = resident_bytes()
    seconds = median_seconds(step, repeats, warmup=0 if length >= 32768 else 1)
    cpu_seconds = median_seconds(step, repeats, warmup=0, clock=time.process_time) if length < 32768 else None
    return {"seconds": seconds, "cpu_seconds": cpu_seconds or seconds, "peak_mb": (peak_bytes() - before) / 2**20}


def cuda_case(method: str, mask: str, length: int, repeats: int) -> dict:
    """Median milliseconds (CUDA events, after a warm-up) and peak MB of one fwd+bwd, bf16, on the GPU."""
    # SDPA's packed case peaks at about 4.5 bytes per pair (measured at 64K on an H100): mask, bias, temporaries.
    if method == "sdpa" and mask == "packed" and 8 * length**2 > 0.5 * torch.cuda.mem_get_info()[1]:
        return {"error": f"skipped: needs ~{8 * length**2 / 2**30:.0f} GB"}
    torch.manual_seed(0)
    try:
        inputs, step = make_step(method, mask, length, CUDA_HEADS, CUDA_HEAD_DIM, torch.bfloat16, "cuda")

        def timed_step() -> float:
            for tensor in inputs:
                tensor.grad = None
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            with sdpa_kernel(CUDA_SDPA_BACKEND[mask]):
                step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)

        timed_step()  # warm-up: kernel selection, allocator
        for tensor in inputs:
            tensor.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        times = [timed_step() for _ in range(repeats)]
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
        return {"ms": statistics.median(times), "peak_mb": peak_mb}
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        inputs = step = None
        torch.cuda.empty_cache()


def main_cuda(args) -> None:
    if not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU, and torch.cuda.is_available() is False on this machine")
    probe = torch.zeros(1, CUDA_HEADS, 64, CUDA_HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    tril = torch.ones(64, 64, dtype=torch.bool, device="cuda").tril()
    unpinned_causal = SDPBackend(torch._fused_sdp_choice(probe, probe, probe, is_causal=True)).name
    unpinned_packed = SDPBackend(torch._fused_sdp_choice(probe, probe, probe, attn_mask=tril)).name
    print(f"# attention fwd+bwd, bf16, 1 x {CUDA_HEADS} heads x head_dim {CUDA_HEAD_DIM}; "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, median of {args.repeats} after a warm-up; "
          f"sdpa pinned to FLASH_ATTENTION (causal) / EFFICIENT_ATTENTION (packed), "
          f"unpinned it picks {unpinned_causal} / {unpinned_packed}")
    rows = []
    for mask in args.masks:
        for length in args.lengths:
            ours = cuda_case("blockwise", mask, length, args.repeats)
            peer = cuda_case("sdpa", mask, length, args.repeats)
            ratio = lambda key: f"{peer[key] / ours[key]:.2f}x" if key in ours and key in peer else "-"  # noqa: E731
            fmt = lambda r, key, spec: format(r[key], spec) if key in r else r.get("error", "-")  # noqa: E731
            rows.append([mask, length, fmt(ours, "ms", ".1f"), fmt(peer, "ms", ".1f"), ratio("ms"),
                         fmt(ours, "peak_mb", ".0f"), fmt(peer, "peak_mb", ".0f"), ratio("peak_mb")])
            print_table(CUDA_HEADERS, rows[-1:], flush=True)
    print()
    print_table(CUDA_HEADERS, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--repeats", type=int, help="timed runs per point (default: 3 on CPU, 1 above 16K; 5 on CUDA)")
    parser.add_argument("--masks", nargs="+", default=["causal", "packed"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "MASK", "LENGTH", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, mask, length, repeats = args.worker
        print(json.dumps(worker(method, mask, int(length), int(repeats))))
        return
    if args.device == "cuda":
        args.repeats = args.repeats or 5
        main_cuda(args)
        return
    args.repeats = args.repeats or 3

    print(f"# attention fwd+bwd, fp32, 1 x {HEADS} heads x head_dim {HEAD_DIM}; {machine()}, "
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
