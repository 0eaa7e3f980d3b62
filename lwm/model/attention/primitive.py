"""The one attention primitive every schedule is built on.

`attend_block` computes exact softmax attention of a block of queries on a block of keys/values and
returns the output together with the log-sum-exp (LSE) of each query row. `merge_partials` combines
two such partial results over disjoint key sets into the result over their union, exactly:

    lse = log(exp(lse_a) + exp(lse_b))
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

`attend_block_backward` is the matching gradient of one block pair given the *final* output and
LSE of the query rows (the flash-attention backward recomputes probabilities from them), so a
schedule can recompute block by block instead of storing attention matrices.

Blockwise attention iterates these over chunks on one device; ring attention iterates them over the
ranks of a process group. Which key positions a query may see is described by a `BlockSpan`:
global start offsets (for causality) and optional segment ids (for packed documents).

Tensors are [batch, heads, seq, head_dim]; grouped-query attention (fewer key/value heads) is
allowed. LSE and merges are float32 whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_cpu_flash_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_cpu_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@dataclass(frozen=True)
class BlockSpan:
    """Where a block sits in its sequence: `start` is the global position of its first token."""

    start: int
    length: int
    segment_ids: torch.Tensor | None = None  # [batch, length]; equal ids may attend each other

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class BlockMask:
    """How a query block may see a key block: not at all, fully, causally aligned, or by a mask."""

    kind: str  # "skip" | "full" | "causal" | "masked"
    additive: torch.Tensor | None = None  # [batch, 1, q, k] float, 0 or -inf, only when "masked"
    query_rows_seen: torch.Tensor | None = None  # [batch, 1, q] bool, rows with any visible key


def block_mask(q: BlockSpan, k: BlockSpan, *, causal: bool, dtype: torch.dtype, device) -> BlockMask:
    if causal and k.start > q.end - 1:
        return BlockMask("skip")
    fully_past = not causal or k.end - 1 <= q.start
    if q.segment_ids is None and k.segment_ids is None:
        if fully_past:
            return BlockMask("full")
        if q.start == k.start:
            # The fused kernels align causal masks top-left, which is right when both blocks start together.
            return BlockMask("causal")
    allowed = torch.ones(1, 1, q.length, k.length, dtype=torch.bool, device=device)
    if not fully_past:
        q_pos = torch.arange(q.start, q.end, device=device)
        k_pos = torch.arange(k.start, k.end, device=device)
        allowed = allowed & (k_pos[None, :] <= q_pos[:, None])
    if q.segment_ids is not None and k.segment_ids is not None:
        same_doc = q.segment_ids[:, None, :, None] == k.segment_ids[:, None, None, :]
        allowed = allowed & same_doc
    if not allowed.any():
        return BlockMask("skip")
    if allowed.all():
        return BlockMask("full")
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    return BlockMask("masked", additive, allowed.any(dim=-1))


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """The shape rules every schedule shares: [batch, heads, seq, head_dim], GQA allowed."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k and v must be [batch, heads, seq, head_dim]")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")


def _expand_kv(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    groups = num_q_heads // x.shape[1]
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def _reduce_kv_grad(grad: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    b, h, n, d = grad.shape
    if h == num_kv_heads:
        return grad
    return grad.view(b, num_kv_heads, h // num_kv_heads, n, d).sum(dim=2)


def _kernel_mask(mask: BlockMask, batch: int, heads: int) -> torch.Tensor | None:
    if mask.additive is None:
        return None
    # The CPU kernel wants the mask broadcast to the full [batch, heads, q, k] shape.
    return mask.additive.expand(batch, heads, *mask.additive.shape[-2:])


def attend_block(q, k, v, mask: BlockMask, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of `q` on one key/value block: (out [b,h,q,d] float32, lse [b,h,q] float32)."""
    heads = q.shape[1]
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    if q.device.type == "cpu":
        out, lse = _cpu_flash_forward(
            q, k, v, 0.0, mask.kind == "causal", attn_mask=_kernel_mask(mask, q.shape[0], heads), scale=scale
        )
        out, lse = out.float(), lse.float()
    else:
        out, lse = _reference_forward(q, k, v, mask, scale)
    if mask.query_rows_seen is not None:
        # Rows that see no key in this block must not count in a merge: give them an LSE of -inf.
        lse = lse.masked_fill(~mask.query_rows_seen, float("-inf"))
        out = out.masked_fill(~mask.query_rows_seen[..., None], 0.0)
    return out, lse


def attend_block_backward(grad_out, q, k, v, out, lse, mask: BlockMask, scale: float):
    """Gradients (dq, dk, dv) of one block pair, given the final `out` and `lse` of the query rows."""
    heads, kv_heads = q.shape[1], k.shape[1]
    k_full, v_full = _expand_kv(k, heads), _expand_kv(v, heads)
    # Rows that saw nothing anywhere have lse = -inf and no gradient; any finite value keeps the
    # kernel's exp(s - lse) at zero for them because their scores are all masked.
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    if q.device.type == "cpu":
        dq, dk, dv = _cpu_flash_backward(
            grad_out.to(q.dtype), q, k_full, v_full, out.to(q.dtype), lse, 0.0, mask.kind == "causal",
            attn_mask=_kernel_mask(mask, q.shape[0], heads), scale=scale,
        )
    else:
        dq, dk, dv = _reference_backward(grad_out, q, k_full, v_full, out, lse, mask, scale)
    return dq, _reduce_kv_grad(dk, kv_heads), _reduce_kv_grad(dv, kv_heads)


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Exact combination of two partial attention results over disjoint key sets (float32)."""
    lse = torch.logaddexp(lse_a, lse_b)
    # Where both are -inf the row has seen nothing yet; keep zeros instead of NaN.
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    weight_a = torch.exp(lse_a - safe)[..., None]
    weight_b = torch.exp(lse_b - safe)[..., None]
    return weight_a * out_a + weight_b * out_b, lse


def _scores(q, k, mask: BlockMask, scale: float) -> torch.Tensor:
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if mask.kind == "causal":
        n_q, n_k = scores.shape[-2:]
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    elif mask.additive is not None:
        scores = scores + mask.additive.float()
    return scores


def _reference_forward(q, k, v, mask: BlockMask, scale: float):
    # Used off-CPU: exact and fp32, with memory bounded by the block size the schedule chose.
    scores = _scores(q, k, mask, scale)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.float()), lse


def _reference_backward(grad_out, q, k, v, out, lse, mask: BlockMask, scale: float):
    scores = _scores(q, k, mask, scale)
    probs = torch.exp(scores - lse[..., None])
    grad_out = grad_out.float()
    dv = torch.einsum("bhqk,bhqd->bhkd", probs, grad_out)
    dprobs = torch.einsum("bhqd,bhkd->bhqk", grad_out, v.float())
    delta = (grad_out * out.float()).sum(dim=-1, keepdim=True)
    dscores = probs * (dprobs - delta) * scale
    dq = torch.einsum("bhqk,bhkd->bhqd", dscores, k.float())
    dk = torch.einsum("bhqk,bhqd->bhkd", dscores, q.float())
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
