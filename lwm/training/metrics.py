"""Training metrics to TensorBoard or to a JSONL file (one flag picks), written by rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    """`log(step, {"loss": ..., "lr": ...})`: one scalar per name per step.

    backend "jsonl" appends `{"step", "time", ...}` lines to `<directory>/metrics.jsonl`;
    "tensorboard" writes event files under `<directory>/tensorboard`.
    """

    def __init__(self, backend: str, directory: str | Path, enabled: bool = True):
        self.backend, self.enabled = backend, enabled
        self._writer = self._sink = None
        if not enabled:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(directory / "tensorboard"))
        elif backend == "jsonl":
            self._sink = (directory / "metrics.jsonl").open("a")
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
