"""Training throughput and memory of the DeepSpeed trainer on CPU (gloo), sp = 1, 2, 4.

    .venv/bin/python benchmarks/train.py
    .venv/bin/python benchmarks/train.py --hidden 256 --layers 4 --seq 1024 --steps 6 --memory-seqs 1024 2048 4096

Every measurement is a real `python -m torch.distributed.run` run of the trainer (`lwm.training.Trainer`)
(ring attention for sp > 1, ZeRO-0, fp32) on rows of one long random document each, so attention is
fully causal. Every rank runs one thread (several OpenMP threads per rank on busy, shared cores spin
at their barriers and measure the machine's load rather than the trainer), so sp = W uses W cores.

1. Throughput: median tokens/s over the steps after the first (the trainer's own per-step timing),
   and MFU = tokens/s · FLOPs per token / (ranks · peak), with FLOPs per token = 6 · (matmul
   parameters) + 6 · layers · seq · hidden (causal attention, forward and backward) and peak = this
   machine's one-thread fp32 GEMM rate (median of square matmuls), measured before and after the
   throughput runs; the higher one is used, since other load on the machine only lowers it.
2. Memory: peak resident memory per rank (rank 0, `ru_maxrss`) and its growth during the training
   steps (peak − resident memory when the first step starts) against sequence length. With ring
   attention each rank holds seq / sp positions, so the growth should shrink about as 1 / sp.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from common import machine, median_seconds, print_table  # noqa: E402

from lwm.model import LWMConfig, LWMForCausalLM  # noqa: E402
from tests.training.random_tokens import write_random_tokens  # noqa: E402


def gemm_peak_flops(threads: int, size: int = 1024, repeats: int = 7) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats)


def flops_per_token(config: LWMConfig, model: LWMForCausalLM, seq: int) -> float:
    matmul_params = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name)
    return 6 * matmul_params + 6 * config.num_hidden_layers * seq * config.hidden_size


def write_model(directory: Path, hidden: int, layers: int, max_positions: int) -> LWMConfig:
    config = LWMConfig.from_preset(
        "tiny", hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64), num_key_value_heads=max(2, hidden // 64),
        max_position_embeddings=max_positions, attn_q_chunk=256, attn_kv_chunk=256,
    )
    torch.manual_seed(0)
    LWMForCausalLM(config).save_pretrained(directory)
    return config


def train(work: Path, name: str, model_dir: Path, data_dir: Path, seq: int, sp: int, steps: int) -> dict:
    """One torchrun launch of the trainer; returns rank 0's throughput and memory."""
    raw = {
        "output_dir": str(work / name),
        "model": {"name_or_path": str(model_dir)},
        "data": {"path": str(data_dir)},
        "stages": [{"seq_len": seq, "rope_theta": 10000.0, "steps": steps}],
        "parallel": {"sp_size": sp},
        "schedule": {"warmup_steps": 0, "decay": "constant"},
        "logging": {"progress_bar": False},
        "checkpoint": {"keep_last": 1},
    }
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(sp), "--master_addr", "127.0.0.1",
        "--master_port", str(port), str(Path(__file__).resolve()), "--worker", str(config_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    logged = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    memory = json.loads((work / name / "memory_rank0.json").read_text())
    return {"tokens_per_s": statistics.median(m["tokens_per_s"] for m in logged[1:]), **memory}


def worker(config_path: str) -> None:
    """Runs inside each rank: the trainer, plus a record of this rank's memory around the training steps."""
    from lwm.training import trainer as trainer_module
    from lwm.training.config import load_config

    config = load_config(config_path)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    run_steps = trainer_module.StageRun.run
    record = {}

    def measured(self):  # the resident memory when the first step starts, then the process's peak
        record["rss_at_start_mb"] = _resident_mb()
        run_steps(self)
        record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    trainer_module.StageRun.run = measured
    trainer_module.Trainer(config).run()
    rank = int(os.environ["RANK"])
    Path(config.output_dir, f"memory_rank{rank}.json").write_text(json.dumps(record))


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512, help="sequence length of the throughput runs")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per setting (median reported)")
    parser.add_argument("--memory-seqs", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--memory-sp", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    work = Path(tempfile.mkdtemp(prefix="lwm-train-bench-"))
    longest = max([args.seq, *args.memory_seqs])
    config = write_model(work / "model", args.hidden, args.layers, longest)
    model = LWMForCausalLM(config)
    data = write_random_tokens(work / "tokens", examples=64, min_length=longest, max_length=longest)
    print(f"machine: {machine()}")
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: hidden {args.hidden}, {args.layers} layers, {parameters / 1e6:.2f}M parameters\n")

    peak_before, speeds = gemm_peak_flops(threads=1), {}
    for sp in (1, 2):
        speeds[sp] = [train(work, f"speed-sp{sp}-{i}", work / "model", data, args.seq, sp, args.steps)
                      for i in range(args.repeats)]
    peak = max(peak_before, gemm_peak_flops(threads=1))
    rows = []
    for sp, runs in speeds.items():
        good = [run["tokens_per_s"] for run in runs if "error" not in run]
        if not good:
            rows.append([sp, args.seq, "failed: " + runs[0]["error"], "", "", ""])
            continue
        speed = statistics.median(good)
        mfu = speed * flops_per_token(config, model, args.seq) / (sp * peak)
        rows.append([sp, args.seq, f"{speed:,.0f}", f"{speed / sp:,.0f}", f"{100 * mfu:.1f}%", len(good)])
    print(f"fp32 GEMM peak of one thread: {peak / 1e9:.1f} GFLOP/s")
    print(f"Throughput ({args.steps} steps, median over the steps after the first, then over runs)")
    print_table(["sp", "seq", "tokens/s", "tokens/s per rank", "MFU", "runs"], rows)

    rows = []
    for seq in args.memory_seqs:
        row = [seq]
        for sp in args.memory_sp:
            run = train(work, f"memory-sp{sp}-seq{seq}", work / "model", data, seq, sp, 2)
            growth = None if "error" in run else run["peak_rss_mb"] - run["rss_at_start_mb"]
            row.append("failed" if growth is None else f"{run['peak_rss_mb']:,.0f} (+{growth:,.0f})")
        rows.append(row)
    print("\nPeak resident memory of rank 0, MB (growth during the 2 training steps in brackets)")
    print_table(["seq", *[f"sp={sp}" for sp in args.memory_sp]], rows)
    print(f"\nruns kept in {work}")


if __name__ == "__main__":
    main()
