"""Training metrics to TensorBoard or to a JSONL file (one flag picks), written by rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    """`log(step, {"loss": ..., "lr": ...})`: one scalar per name per step.

    backend "jsonl" appends `{"step", "time", ...}` lines to `<directory>/metrics.jsonl`;
    "tensorboard" writes event files under `<directory>/tensorboard`. A run resumed from the checkpoint
    of `resumed_step` logs the steps after it again, so what an interrupted run logged after that step
    is dropped: each step appears once.
    """

    def __init__(self, backend: str, directory: str | Path, enabled: bool = True, resumed_step: int | None = None):
        self.backend, self.enabled = backend, enabled
        self._writer = self._sink = None
        if not enabled:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            purge_step = None if resumed_step is None else resumed_step + 1
            self._writer = SummaryWriter(str(directory / "tensorboard"), purge_step=purge_step)
        elif backend == "jsonl":
            path = directory / "metrics.jsonl"
            if resumed_step is not None and path.is_file():
                _drop_lines_after(path, resumed_step)
            self._sink = path.open("a")
        else:
            raise ValueError(f"unknown logging backend {backend!r}; use 'tensorboard' or 'jsonl'")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)
        else:
            self._sink.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
            self._sink.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._sink is not None:
            self._sink.close()


def _drop_lines_after(path: Path, step: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        staged = path.with_suffix(".jsonl.tmp")
        staged.write_text("".join(kept))
        staged.replace(path)  # atomic: a crash here leaves the old file, never half of it
