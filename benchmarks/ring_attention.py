"""Ring attention on CPU over gloo: efficiency against one device, and against ring-attention-pytorch.

    .venv/bin/pip install ring-attention-pytorch torch==2.13.0   # the peer, for this benchmark only
    .venv/bin/python benchmarks/ring_attention.py                # W=2, 2K ... 8K, causal, fwd+bwd
    .venv/bin/python benchmarks/ring_attention.py --lengths 4096 8192 --repeats 5

Every point runs in fresh processes (one per rank, one thread per rank), so peak memory is each
rank's own: the reported MB is the largest rank's peak resident memory minus its resident size just
before the timed loop (its inputs included). A time is the median over repeats of the slowest rank's
forward + backward, ranks started together by a barrier: "wall s" in seconds of wall clock, "CPU s"
in CPU seconds of that rank's process (all its threads, gloo's included).

- efficiency = (single-device blockwise time / W) / ring time, single-threaded everywhere. Without
  segment ids both give whole documents / shard pieces to the fused kernel, so neither takes a chunk.
  On a quiet machine with a free core per rank the two columns agree; on a loaded one the wall
  clock mostly measures how often the scheduler runs each rank (a ring step waits for its slowest
  rank), and the CPU column still measures the work each rank does, communication included.
- ring-attention-pytorch: its `ring_flash_attn(..., causal=True, ring_reduce_col=True)` on contiguous
  shards with bucket_size = PEER_BUCKET; it takes [batch, seq, heads, dim], so its inputs are made in
  that layout (no transpose is timed). Its causal ring computes masked blocks instead of skipping them.
  "/ ours" divides by ring-zigzag's time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_bytes, print_table, resident_bytes, run_worker  # noqa: E402

from lwm.model.attention import blockwise_attention, ring_attention  # noqa: E402
from lwm.parallel import shard_sequence  # noqa: E402

HEADS, HEAD_DIM, PEER_BUCKET = 4, 64, 1024
METHODS = ("blockwise", "ring-zigzag", "ring-contiguous", "ring-attention-pytorch")


def single_device(length: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    q, k, v = _inputs(length, "bhnd")

    def step():
        blockwise_attention(q, k, v, causal=True).sum().backward()

    before = resident_bytes()
    wall, cpu = _timed(step, repeats)
    return {"seconds": wall, "cpu_seconds": cpu, "peak_mb": (peak_bytes() - before) / 2**20}


def _timed(step, repeats: int, slowest_rank=lambda times: times) -> tuple[float, float]:
    """Medians of wall-clock and of this process's CPU seconds over `repeats` runs after one warm-up."""
    wall, cpu = [], []
    for index in range(repeats + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        elapsed = slowest_rank((time.perf_counter() - start, time.process_time() - start_cpu))
        if index:
            wall.append(elapsed[0])
            cpu.append(elapsed[1])
    return statistics.median(wall), statistics.median(cpu)


def rank_main(rank: int, method: str, length: int, repeats: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if method == "ring-attention-pytorch":
        from ring_attention_pytorch import ring_flash_attn

        q, k, v = (shard_sequence(x, 1, rank, world, "contiguous").detach().requires_grad_() for x in _inputs(length, "bnhd"))
        attend = lambda: ring_flash_attn(q, k, v, causal=True, bucket_size=PEER_BUCKET, ring_reduce_col=True)  # noqa: E731
    else:
        layout = method.removeprefix("ring-")
        q, k, v = (shard_sequence(x, 2, rank, world, layout).detach().requires_grad_() for x in _inputs(length, "bhnd"))
        attend = lambda: ring_attention(q, k, v, causal=True, layout=layout)  # noqa: E731

    def step():
        dist.barrier()  # all ranks start together
        attend().sum().backward()

    def slowest_rank(times):
        times = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        return times.tolist()

    before = resident_bytes()
    wall, cpu = _timed(step, repeats, slowest_rank)
    peak = torch.tensor([(peak_bytes() - before) / 2**20], dtype=torch.float64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "peak_mb": peak.item()}), flush=True)
    dist.destroy_process_group()


def _inputs(length: int, layout: str) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (1, HEADS, length, HEAD_DIM) if layout == "bhnd" else (1, length, HEADS, HEAD_DIM)
    return [torch.randn(shape, generator=generator, requires_grad=True) for _ in range(3)]


def worker(method: str, length: int, repeats: int, world: int) -> None:
    if method == "blockwise":
        print(json.dumps(single_device(length, repeats)))
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(rank_main, args=(method, length, repeats, world, port), nprocs=world, start_method="spawn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point, after one warm-up")
    parser.add_argument("--world", type=int, default=2, help="ranks in the ring (one thread each)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "LENGTH", "REPEATS", "WORLD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, length, repeats, world = args.worker
        worker(method, int(length), int(repeats), int(world))
        return

    print(f"# causal attention fwd+bwd, fp32, 1 x {HEADS} heads x head_dim {HEAD_DIM}, peer bucket {PEER_BUCKET}, "
          f"W={args.world}, 1 thread per rank; {machine()}, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    headers = ["seq", "method", "wall s", "CPU s", "efficiency (wall)", "efficiency (CPU)", "wall / ours", "CPU / ours",
               "peak MB"]
    rows = []
    for length in args.lengths:
        results = {m: run_worker(__file__, m, str(length), str(args.repeats), str(args.world)) for m in args.methods}
        single = results.get("blockwise", {})
        ours = results.get("ring-zigzag", {})
        for method, result in results.items():
            if "seconds" not in result:
                rows.append([length, method, result.get("error", "failed"), *["-"] * 6])
                continue
            ring = method != "blockwise"
            row = [length, method, f"{result['seconds']:.3f}", f"{result['cpu_seconds']:.3f}"]
            for key in ("seconds", "cpu_seconds"):
                row.append(f"{100 * single[key] / args.world / result[key]:.0f}%" if ring and key in single else "-")
            for key in ("seconds", "cpu_seconds"):
                row.append(f"{result[key] / ours[key]:.2f}x" if ring and key in ours else "-")
            rows.append([*row, f"{result['peak_mb']:.0f}"])
            print_table(headers, rows[-1:])
    print()
    print_table(headers, rows)


if __name__ == "__main__":
    main()
