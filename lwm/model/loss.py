"""LWM's loss from the final hidden states, without ever holding the `[tokens, text + vision]` logits.

LWM's loss is 0.5 · (text CE + vision CE), each a (weighted) mean over its own targets, with a softmax
over the text vocabulary for text targets and over the vision vocabulary for vision targets. So a text
target needs only the text head's logits and a vision target only the vision head's: each head runs on
the positions whose target it predicts, and nowhere else.

Within a head the cross-entropy runs over `CHUNK_POSITIONS` positions at a time (the fused linear +
cross-entropy idea of Liger-Kernel, in plain PyTorch): a chunk's logits give its share of the loss and,
right away, its share of the gradients of the hidden states and of the head, and are freed before the
next chunk. Backward then only scales those gradients, so no chunk's logits are kept or recomputed;
the cost is the gradient of the head, held from forward to backward.

The heads' weights are read directly, not through their modules: under ZeRO-3 the trainer registers
them as parameters of the whole model (lwm.training.trainer) so that they are gathered here.
"""

from __future__ import annotations

import torch

from lwm.model.targets import modality_weights

CHUNK_POSITIONS = 1024  # [1024, 32000] fp32 logits are 131 MB at LWM's text vocabulary


def lwm_loss(
    hidden: torch.Tensor,
    text_head: torch.Tensor,
    vision_head: torch.Tensor,
    targets: torch.LongTensor,
    weights: torch.Tensor | None,
    denominators: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(0.5 · (text CE + vision CE), text CE, vision CE) of `hidden` [..., D] predicting `targets` [...].

    text_head / vision_head: the heads' weights [text vocab, D] and [vision vocab, D]; a target at or
        above the text vocabulary size is a vision target (its id minus that size in the vision head).
    weights: per-target weights aligned with targets (None: each valid target weighs 1).
    denominators: (text, vision) totals that replace the local weight sums, so that per-shard losses of
        one batch add up exactly to the loss of the whole batch. A modality without targets contributes
        0, as in LWM, and its head still gets a (zero) gradient, so every rank reduces the same ones.
    """
    text_vocab = text_head.shape[0]
    per_modality = modality_weights(targets, weights, text_vocab)
    hidden, targets = hidden.flatten(0, -2), targets.flatten()
    losses = []
    for index, (head, selected_weights, first_id) in enumerate(zip((text_head, vision_head), per_modality, (0, text_vocab))):
        selected_weights = selected_weights.flatten()
        positions = selected_weights.nonzero().squeeze(1)
        numerator = head_cross_entropy(
            hidden[positions], head, targets[positions] - first_id, selected_weights[positions]
        )
        denominator = selected_weights.sum() if denominators is None else denominators[index]
        losses.append(numerator / denominator if float(denominator) > 0 else numerator * 0.0)
    text_loss, vision_loss = losses
    return 0.5 * (text_loss + vision_loss), text_loss, vision_loss


def head_cross_entropy(
    hidden: torch.Tensor, head: torch.Tensor, targets: torch.LongTensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ weights · CE(hidden @ headᵀ, targets) over positions [N, D] (a scalar, differentiable in both)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or head.requires_grad):
        return _FusedHeadCrossEntropy.apply(hidden, head, targets, weights)
    return _chunked_cross_entropy(hidden, head, targets, weights, False, False)[0]


class _FusedHeadCrossEntropy(torch.autograd.Function):
    """`head_cross_entropy` whose gradients are computed chunk by chunk in forward (the loss is a scalar,
    so backward only scales them)."""

    @staticmethod
    def forward(ctx, hidden, head, targets, weights):
        total, hidden_grad, head_grad = _chunked_cross_entropy(
            hidden, head, targets, weights, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        ctx.save_for_backward(hidden_grad, head_grad)
        return total

    @staticmethod
    def backward(ctx, total_grad):
        hidden_grad, head_grad = (None if grad is None else grad * total_grad.to(grad.dtype) for grad in ctx.saved_tensors)
        return hidden_grad, head_grad, None, None


def _chunked_cross_entropy(hidden, head, targets, weights, want_hidden_grad: bool, want_head_grad: bool):
    """(Σ weights · CE, its gradient in hidden or None, in head or None), `CHUNK_POSITIONS` rows at a time.

    The logits are taken in float32 (float64 for a float64 model), whatever the model's dtype, as the
    loss always was; the head's gradient is summed over chunks in that precision too.
    """
    loss_dtype = torch.promote_types(hidden.dtype, torch.float32)
    total = torch.zeros((), dtype=loss_dtype, device=hidden.device)
    hidden_grad = torch.empty_like(hidden) if want_hidden_grad else None
    head_grad = torch.zeros(head.shape, dtype=loss_dtype, device=head.device) if want_head_grad else None
    for start in range(0, hidden.shape[0], CHUNK_POSITIONS):
        rows = slice(start, start + CHUNK_POSITIONS)
        chunk, chunk_targets, chunk_weights = hidden[rows], targets[rows], weights[rows].to(loss_dtype)
        log_probs = (chunk @ head.T).to(loss_dtype).log_softmax(dim=-1)
        target_log_probs = log_probs.gather(1, chunk_targets[:, None]).squeeze(1)
        total -= (target_log_probs * chunk_weights).sum()
        if not (want_hidden_grad or want_head_grad):
            continue
        # d(w · CE)/d logits = w · (softmax - one_hot(target)), built in place of the log-probabilities.
        logits_grad = log_probs.exp_()
        logits_grad[torch.arange(len(chunk_targets), device=hidden.device), chunk_targets] -= 1
        logits_grad *= chunk_weights[:, None]
        logits_grad = logits_grad.to(hidden.dtype)
        if want_hidden_grad:
            hidden_grad[rows] = logits_grad @ head
        if want_head_grad:
            head_grad += (logits_grad.T @ chunk).to(loss_dtype)
    return total, hidden_grad, None if head_grad is None else head_grad.to(head.dtype)
