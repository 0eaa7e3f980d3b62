"""Streaming a pre-tokenized dataset into packed batches: task mixture, data/sequence parallel shards,
and an exact, resumable position.

- `TokenizedDataset` memory-maps the shards written by `lwm data tokenize` (lwm/data/tokenize.py).
- `ExampleStream` yields example indices forever. Each task's examples form an endless stream of
  epochs, each a fresh permutation drawn from (seed, task, epoch); every draw first picks a task
  with probability proportional to its weight (default: its number of examples; tasks missing from
  `task_weights` are never drawn), from a generator
  seeded by (seed, draw number). All data-parallel ranks pick the same tasks in the same order, and
  rank r of W takes positions r, r + W, r + 2W, ... of the task's stream: the ranks' examples are
  disjoint and together cover every epoch.
- `PackedLoader` packs the stream into whole rows (lwm.data.packing) and batches them; the ranks of a
  sequence-parallel group get the same rows, which the trainer cuts into their shards (lwm.parallel).
- `state_dict()`/`load_state_dict()` hold a few counters, the packer's open rows (as example keys)
  and the rows not yet batched, so a restored loader continues with exactly the batches an
  uninterrupted one would have produced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from lwm.data.packing import Overlong, RowPlanner, VisionNoise, pack_row, stack_rows
from lwm.data.tokenize import FORMAT, INDEX_NAME, VERSION


class TokenizedDataset:
    """The examples of a tokenized dataset folder: `dataset[i] -> (input_ids, loss_mask)` numpy arrays."""

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        index_path = directory / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{directory}: no {INDEX_NAME}; not a tokenized dataset, or `lwm data tokenize` has not finished"
            )
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
            raise ValueError(f"{index_path}: not a {FORMAT} v{VERSION} index")
        self.text_vocab_size = int(self.index["text_vocab_size"])
        self.codebook_size = int(self.index["codebook_size"])
        self._ids, self._masks, self._offsets, tasks = [], [], [], []
        for shard in self.index["shards"]:
            folder = directory / shard["path"]
            self._ids.append(np.load(folder / "input_ids.npy", mmap_mode="r"))
            self._masks.append(np.load(folder / "loss_mask.npy", mmap_mode="r"))
            self._offsets.append(np.load(folder / "offsets.npy"))
            tasks += json.loads((folder / "meta.json").read_text())["tasks"]
        self._shard_starts = np.cumsum([0] + [len(offsets) - 1 for offsets in self._offsets])
        self.tasks = np.array(tasks)
        self.lengths = np.concatenate([np.diff(offsets) for offsets in self._offsets]) if self._offsets else np.zeros(0, int)

    def __len__(self) -> int:
        return int(self._shard_starts[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} is out of range for a dataset of {len(self)}")
        shard = int(np.searchsorted(self._shard_starts, index, side="right")) - 1
        local = index - self._shard_starts[shard]
        start, end = self._offsets[shard][local], self._offsets[shard][local + 1]
        return np.asarray(self._ids[shard][start:end]), np.asarray(self._masks[shard][start:end])


class ExampleStream:
    """An endless, seeded, dp-sharded stream of example indices drawn from a task mixture."""

    def __init__(
        self,
        tasks: np.ndarray,
        task_weights: dict[str, float] | None = None,
        seed: int = 0,
        dp_rank: int = 0,
        dp_size: int = 1,
    ):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must lie in [0, {dp_size}), got {dp_rank}")
        names = sorted(set(tasks.tolist()))
        if not names:
            raise ValueError("the dataset has no examples")
        weights = task_weights or {name: float((tasks == name).sum()) for name in names}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"task_weights name tasks the dataset does not have: {unknown} (it has {names})")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"task weights must be non-negative with a positive sum, got {weights}")
        self.task_names = [name for name in names if weights.get(name, 0) > 0]
        self.probabilities = np.array([weights[name] for name in self.task_names], dtype=np.float64)
        self.probabilities /= self.probabilities.sum()
        self.members = [np.flatnonzero(tasks == name) for name in self.task_names]
        self.seed, self.dp_rank, self.dp_size = seed, dp_rank, dp_size
        self.draws = 0
        self.cursors = [0] * len(self.task_names)  # this rank's draws per task
        self._orders: dict[int, tuple[int, np.ndarray]] = {}  # task -> (epoch, its permutation)

    def __iter__(self):
        return self

    def __next__(self) -> int:
        task = int(np.random.default_rng([self.seed, self.draws]).choice(len(self.task_names), p=self.probabilities))
        self.draws += 1
        position = self.cursors[task] * self.dp_size + self.dp_rank
        self.cursors[task] += 1
        members = self.members[task]
        epoch, offset = divmod(position, len(members))
        return int(members[self._permutation(task, epoch)[offset]])

    def _permutation(self, task: int, epoch: int) -> np.ndarray:
        if self._orders.get(task, (None,))[0] != epoch:
            order = np.random.default_rng([self.seed, task, epoch]).permutation(len(self.members[task]))
            self._orders[task] = (epoch, order)
        return self._orders[task][1]

    def state_dict(self) -> dict:
        return {"draws": self.draws, "cursors": list(self.cursors), "tasks": list(self.task_names)}

    def load_state_dict(self, state: dict) -> None:
        if state["tasks"] != self.task_names:
            raise ValueError(f"the saved stream mixed tasks {state['tasks']}, this one mixes {self.task_names}")
        self.draws, self.cursors = int(state["draws"]), [int(c) for c in state["cursors"]]


class PackedLoader:
    """Endless batches of packed rows `[batch_size, seq_len]` for one data-parallel rank.

    Each batch holds `input_ids`, `labels`, `loss_weights`, `segment_ids`, `position_ids` (see
    lwm.data.packing), whole rows.
    """

    def __init__(
        self,
        dataset: TokenizedDataset,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        task_weights: dict[str, float] | None = None,
        dp_rank: int = 0,
        dp_size: int = 1,
        overlong: Overlong = "truncate",
        open_rows: int = 4,
        train_prompt_vision: bool = False,
        vision_noise: float = 0.0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset, self.seq_len, self.batch_size = dataset, seq_len, batch_size
        self.train_prompt_vision = train_prompt_vision
        if not 0 <= vision_noise < 1:
            raise ValueError(f"vision_noise must lie in [0, 1), got {vision_noise}")
        self.vision_noise, self.seed = vision_noise, seed
        self.stream = ExampleStream(dataset.tasks, task_weights, seed, dp_rank, dp_size)
        self.planner = RowPlanner(seq_len, overlong, open_rows)
        self.ready: list[list[tuple[int, int]]] = []  # closed rows not yet batched
        self.batches = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while len(self.ready) < self.batch_size:
            key = next(self.stream)
            self.ready += self.planner.add(key, int(self.dataset.lengths[key]))
        rows, self.ready = self.ready[: self.batch_size], self.ready[self.batch_size :]
        self.batches += 1
        return stack_rows([self._materialize(row, index) for index, row in enumerate(rows)])

    def _materialize(self, row: list[tuple[int, int]], index: int) -> dict[str, torch.Tensor]:
        examples = []
        for key, length in row:
            ids, mask = self.dataset[key]
            examples.append((ids[:length], mask[:length]))
        noise = None
        if self.vision_noise:  # seeded by the row's place in the stream, so a resumed run draws the same noise
            rng = np.random.default_rng([self.seed, self.batches, index])
            noise = VisionNoise(self.vision_noise, self.dataset.codebook_size, rng)
        return pack_row(examples, self.seq_len, self.dataset.text_vocab_size, self.train_prompt_vision, noise)

    def state_dict(self) -> dict:
        return {
            "stream": self.stream.state_dict(),
            "planner": self.planner.state_dict(),
            "ready": [[list(item) for item in row] for row in self.ready],
            "batches": self.batches,
        }

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.planner.load_state_dict(state["planner"])
        self.ready = [[(int(key), int(length)) for key, length in row] for row in state["ready"]]
        self.batches = int(state["batches"])
