"""Masked sequence packing: whole examples share fixed-length rows without seeing each other.

A row of length L holds documents 1..D back to back, then padding. For every position the packer
emits

    input_ids      the tokens (pad: 0)
    labels         the token where it is trained, else -100 (pad, prompts, and each document's first
                   position, which nothing in the same document predicts)
    segment_ids    d for document d, 0 for padding: attention stays inside a document
    position_ids   0, 1, ... restarting at every document (RoPE sees each document as if alone)
    loss_weights   the re-weighting below (0 where labels is -100)

Loss re-weighting. The model's loss (lwm.model) is, for each modality m in {text, vision},

    L_m = sum_t w_t * CE_t / sum_t w_t        over the row's trained targets t of modality m,

and LWM's loss is 0.5 * (L_text + L_vision) (a modality without targets contributes 0). Run alone,
example i has L_m(i) = mean of CE over its own n_m(i) targets of modality m. The packer gives every
target of modality m in example i the weight

    w = 1 / n_m(i),

so sum_t w_t = N_m, the number of the row's examples with targets of modality m, and

    L_m(row) = (1 / N_m) * sum_i L_m(i):

each modality's loss is the mean, over the row's examples, of each example's own loss — a short QA
answer counts as much as a long caption, instead of being drowned by the long example's tokens as in
naive packing. When every example has targets in both modalities (or the whole row in only one),
the packed loss is exactly the mean of the examples' own losses. In general, passing the model
`loss_denominators = (D, D)` (D = number of examples) makes it `(1 / D) * sum_i 0.5 * (L_text(i) +
L_vision(i))` for any mix. Labels are unshifted (the model predicts labels[t+1] at position t), so
the weights are counted over each document's positions 1..n-1 — exactly the targets it has alone.

Examples longer than L are truncated to L (`overlong="truncate"`) or dropped (`"drop"`); the planner
counts both.

With `noise` (`VisionNoise`), some of the codes a row holds as inputs are replaced by other codes of
their document; its labels keep the true ones.

With `train_prompt_vision`, the vision tokens of prompts (a video asked about, a continuation's given
frames) are trained too: every video in the data becomes next-frame prediction, which a world model
learns its dynamics from, while an answer's loss stays what it was (text and vision are averaged apart).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from lwm.model.targets import IGNORE_INDEX

PAD_ID = 0
Overlong = Literal["truncate", "drop"]


@dataclass(frozen=True)
class VisionNoise:
    """Codes the model reads replaced, each with probability `rate`, by a code drawn from the same
    document (mostly background, sometimes another object's fragment: the errors of a sampled frame),
    while the targets stay the true codes, so it learns to continue from frames like its own samples."""

    rate: float
    codebook_size: int
    rng: np.random.Generator


def pack_row(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, text_vocab_size: int,
    train_prompt_vision: bool = False, noise: VisionNoise | None = None,
) -> dict[str, torch.Tensor]:
    """Pack `(input_ids, loss_mask)` examples (total length <= seq_len) into one row of `seq_len`."""
    total = sum(len(ids) for ids, _ in examples)
    if total > seq_len:
        raise ValueError(f"examples hold {total} tokens, more than the row length {seq_len}")
    input_ids = np.full(seq_len, PAD_ID, dtype=np.int64)
    labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    weights = np.zeros(seq_len, dtype=np.float32)
    segment_ids = np.zeros(seq_len, dtype=np.int64)
    position_ids = np.zeros(seq_len, dtype=np.int64)
    start = 0
    for document, (ids, mask) in enumerate(examples, start=1):
        if len(ids) != len(mask):
            raise ValueError(f"example {document - 1}: {len(ids)} ids but {len(mask)} loss-mask entries")
        end = start + len(ids)
        is_vision = np.asarray(ids) >= text_vocab_size
        trained = np.asarray(mask, dtype=bool) | (is_vision & train_prompt_vision)
        trained[0] = False  # a document's first token is predicted by nothing in it
        input_ids[start:end] = ids
        labels[start:end] = np.where(trained, ids, IGNORE_INDEX)
        for in_modality in (trained & ~is_vision, trained & is_vision):
            count = int(in_modality.sum())
            if count:
                weights[start:end][in_modality] = 1.0 / count
        segment_ids[start:end] = document
        position_ids[start:end] = np.arange(len(ids))
        if noise is not None:
            _add_vision_noise(input_ids[start:end], text_vocab_size, noise)
        start = end
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "loss_weights": torch.from_numpy(weights),
        "segment_ids": torch.from_numpy(segment_ids),
        "position_ids": torch.from_numpy(position_ids),
    }


def _add_vision_noise(ids: np.ndarray, text_vocab_size: int, noise: VisionNoise) -> None:
    """Replaces, in place, `noise.rate` of the codes of one document's ids by codes of the same document."""
    codes = np.flatnonzero((ids >= text_vocab_size) & (ids < text_vocab_size + noise.codebook_size))
    if len(codes) == 0:
        return
    replaced = codes[noise.rng.random(len(codes)) < noise.rate]
    ids[replaced] = ids[noise.rng.choice(codes, size=len(replaced))]


def stack_rows(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


@dataclass
class RowPlanner:
    """Decides which examples share a row (first fit over a few open rows), from lengths alone.

    Rows are lists of `(key, length)`; `length` is below the example's own when it was truncated.
    When an example fits no open row and `open_rows` rows are open, the oldest row is closed. The
    plan depends only on the order of `add` calls, so it is reproducible and its state is small.
    """

    seq_len: int
    overlong: Overlong = "truncate"
    open_rows: int = 4
    rows: list[list[tuple[int, int]]] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0

    def __post_init__(self):
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {self.overlong!r}")
        if self.open_rows < 1:
            raise ValueError(f"open_rows must be at least 1, got {self.open_rows}")

    def add(self, key: int, length: int) -> list[list[tuple[int, int]]]:
        """Place one example; returns the rows this closed (usually none)."""
        if length > self.seq_len:
            if self.overlong == "drop":
                self.dropped += 1
                return []
            self.truncated += 1
            length = self.seq_len
        for row in self.rows:
            if sum(n for _, n in row) + length <= self.seq_len:
                row.append((key, length))
                return []
        closed = [self.rows.pop(0)] if len(self.rows) == self.open_rows else []
        self.rows.append([(key, length)])
        return closed

    def flush(self) -> list[list[tuple[int, int]]]:
        """Close every open row (end of a finite stream)."""
        closed, self.rows = self.rows, []
        return closed

    def state_dict(self) -> dict:
        return {"rows": [[list(item) for item in row] for row in self.rows], "truncated": self.truncated, "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [[(int(key), int(length)) for key, length in row] for row in state["rows"]]
        self.truncated, self.dropped = int(state["truncated"]), int(state["dropped"])
