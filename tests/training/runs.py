"""Helpers for the trainer tests: configs, runs in spawned gloo processes or under torchrun, results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lwm.training.config import TrainConfig, build, validate
from tests.helpers.distributed import run_distributed

REPO = Path(__file__).resolve().parents[2]


def tiny_config(output_dir, data_dir, **sections) -> dict:
    """A raw (YAML-like) config of the tiny model: 5 fp32 steps of 32-token rows, no progress bar."""
    raw = {
        "output_dir": str(output_dir),
        "data": {"path": str(data_dir)},
        "stages": [{"seq_len": 32, "rope_theta": 10000.0, "steps": 5}],
        "batch": {"micro_batch_size": 1},
        "optimizer": {"lr": 3e-3, "grad_clip": 1.0, "eps": 1e-6},
        "schedule": {"warmup_steps": 1, "decay": "cosine"},
        "logging": {"progress_bar": False},
    }
    for name, value in sections.items():
        raw[name] = {**raw[name], **value} if isinstance(raw.get(name), dict) else value
    return raw


def to_config(raw: dict) -> TrainConfig:
    config = build(TrainConfig, raw, "")
    validate(config)
    return config


def train_in_processes(raw: dict, world_size: int, concatenate_dp_ranks: int = 0) -> None:
    """Trains with `world_size` spawned gloo processes (the test process stays free of process groups)."""
    run_distributed(_train_worker, world_size, raw, concatenate_dp_ranks, timeout_s=300)


def export_in_process(raw: dict) -> None:
    run_distributed(_export_worker, 1, raw, timeout_s=300)


def _export_worker(rank, world_size, raw):
    from lwm.training.trainer import Trainer

    Trainer(to_config(raw)).export_latest()


def _train_worker(rank, world_size, raw, concatenate_dp_ranks):
    from lwm.training.trainer import Trainer, packed_batches

    factory = packed_batches
    if concatenate_dp_ranks:
        factory = lambda data, stage, micro, mesh: ConcatenatedRanks(data, stage, micro, concatenate_dp_ranks)  # noqa: E731
    Trainer(to_config(raw), batches=factory).run()


class ConcatenatedRanks:
    """One process's batches holding the rows that `ranks` data-parallel ranks would each get."""

    def __init__(self, data, stage, micro_batch_size, ranks):
        from lwm.parallel import Mesh
        from lwm.training import packed_batches

        self.loaders = [packed_batches(data, stage, micro_batch_size, Mesh(r, ranks, 1, None)) for r in range(ranks)]

    def __next__(self):
        batches = [next(loader) for loader in self.loaders]
        return {name: torch.cat([batch[name] for batch in batches]) for name in batches[0]}

    def state_dict(self):
        return {"loaders": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state):
        for loader, saved in zip(self.loaders, state["loaders"]):
            loader.load_state_dict(saved)


def write_config(raw: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def torchrun_command(config_path: Path, nproc: int, *extra: str, nnodes: int = 1, node_rank: int = 0, port: int = 0) -> list[str]:
    rendezvous = ["--nnodes", str(nnodes), "--node_rank", str(node_rank), "--master_addr", "127.0.0.1",
                  "--master_port", str(port)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *rendezvous,
        "-m", "lwm", "train", str(config_path), *extra,
    ]


def launch(command: list[str], log_path: Path) -> subprocess.Popen:
    """Starts a launcher (torchrun) with one thread per rank, its output going to `log_path`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    log = log_path.open("w")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait(process: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        raise AssertionError(f"run timed out; log:\n{log_path.read_text()[-4000:]}") from None
    if code != 0:
        raise AssertionError(f"run failed with exit code {code}; log:\n{log_path.read_text()[-4000:]}")


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILLs every process of the launch as soon as `ready()` is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError("the run ended before it could be killed")
        if time.monotonic() > deadline:
            kill_tree(process)
            raise AssertionError("the run never reached the point where it should be killed")
        time.sleep(0.05)
    kill_tree(process)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank it started (torchrun puts its workers in their own sessions)."""
    import psutil

    launcher = psutil.Process(process.pid)
    for member in [launcher, *launcher.children(recursive=True)]:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait()


def losses(output_dir) -> list[float]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def final_weights(output_dir, stage: int = 0) -> dict[str, torch.Tensor]:
    return load_file(Path(output_dir) / "pretrained" / f"stage{stage}" / "model.safetensors")


def assert_same_weights(a: dict, b: dict, rtol=1e-4, atol=1e-5) -> None:
    # atol: for elements near 0. Adam moves a parameter by about lr · g / (|g| + eps), so an element
    # whose gradient is ~0 moves by a step set by float rounding of that gradient; sums in another
    # order (ring, all-reduce) then differ by up to lr · rounding / eps (the runs use eps = 1e-6).
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
