"""What each position learns to predict, and how much its loss weighs in each half of LWM's loss.

Labels are aligned with the inputs, transformers-style: `labels[t]` is the token at t where it is trained
and `IGNORE_INDEX` elsewhere, and position t predicts `labels[t + 1]`. `next_token_targets` makes that
shift explicit, never across a document boundary of a packed row, so that a batch can then be cut into
sequence-parallel shards (the next token may live on another rank). `modality_weights` splits the
targets' weights into the text half and the vision half of the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def next_token_targets(
    labels: torch.LongTensor, segment_ids: torch.LongTensor | None = None, loss_weights: torch.Tensor | None = None
) -> tuple[torch.LongTensor, torch.Tensor | None]:
    """(targets, weights) [batch, seq]: position t's target is labels[t + 1] with its weight;
    `IGNORE_INDEX` and 0 at the last position of each document (`segment_ids`) and of the row."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    weights = None if loss_weights is None else F.pad(loss_weights[:, 1:], (0, 1), value=0.0)
    if segment_ids is not None:
        crosses = F.pad(segment_ids[:, 1:] != segment_ids[:, :-1], (0, 1), value=True)
        targets = targets.masked_fill(crosses, IGNORE_INDEX)
        weights = None if weights is None else weights.masked_fill(crosses, 0.0)
    return targets, weights


def modality_weights(
    targets: torch.LongTensor, weights: torch.Tensor | None, text_vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the valid text targets and of the valid vision targets (0 elsewhere); without
    `weights` each valid target weighs 1."""
    valid = targets != IGNORE_INDEX
    weights = valid.float() if weights is None else weights.float() * valid
    is_vision = targets >= text_vocab_size
    return weights * ~is_vision, weights * is_vision
