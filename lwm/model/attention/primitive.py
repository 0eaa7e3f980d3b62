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

Each block runs on a fused PyTorch kernel that also returns the LSE: the flash kernel on CPU; on
CUDA, FlashAttention-2 for fp16/bf16 blocks without a mask tensor and the memory-efficient kernel
otherwise (fp32, or a mask). An exact fp32 einsum kernel covers what they cannot (float64, odd head
dims, other devices).

Tensors are [batch, heads, seq, head_dim]; grouped-query attention (fewer key/value heads) is
allowed. LSE and merges are float32 whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_aten = torch.ops.aten
_EFFICIENT_LSE_ALIGN = 32  # the memory-efficient kernel pads its LSE along the query dim to this
_BIAS_ALIGN = 16  # ... and wants its bias rows to start at aligned addresses


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


def _pick_kernel(q, k, mask: BlockMask) -> str:
    """The kernel for one block pair: "cpu", "flash", "efficient" or "reference"."""
    if q.device.type == "cpu":
        return "cpu"
    # ROCm builds lay the efficient kernel's LSE out differently; only CUDA builds are wired here.
    if q.device.type != "cuda" or torch.version.hip:
        return "reference"
    head_dim, half = q.shape[-1], q.dtype in (torch.float16, torch.bfloat16)
    # FlashAttention-2 aligns a causal mask bottom-right and ours is top-left: they agree on squares only.
    square = mask.kind == "full" or q.shape[2] == k.shape[2]
    if (
        half and mask.kind != "masked" and square and head_dim % 8 == 0 and head_dim <= 256
        and torch.cuda.get_device_capability(q.device)[0] >= 8
    ):
        return "flash"
    if (half or q.dtype == torch.float32) and head_dim % (8 if half else 4) == 0:
        return "efficient"
    return "reference"


def kernel_tiles(q: torch.Tensor) -> bool:
    """Whether `attend_block` runs these queries on a fused kernel, which tiles a block pair by itself in
    memory linear in its length: then a pair without a mask tensor needs no cutting into chunks, and one
    kernel call on a whole causal document saves the launches and merges of many."""
    return _pick_kernel(q, q, BlockMask("causal")) != "reference"


def _cpu_mask(mask: BlockMask, batch: int, heads: int) -> torch.Tensor | None:
    if mask.additive is None:
        return None
    # The CPU kernel wants the mask broadcast to the full [batch, heads, q, k] shape.
    return mask.additive.expand(batch, heads, *mask.additive.shape[-2:])


def _efficient_bias(mask: BlockMask, q: torch.Tensor) -> torch.Tensor | None:
    if mask.additive is None:
        return None
    # Like torch's own SDPA: rows padded to an aligned length then sliced, broadcast to [b, h, q, k].
    *lead, k_len = mask.additive.shape
    padded = torch.empty(*lead, -(-k_len // _BIAS_ALIGN) * _BIAS_ALIGN, dtype=q.dtype, device=q.device)
    bias = padded[..., :k_len].copy_(mask.additive)
    return bias.expand(q.shape[0], q.shape[1], *bias.shape[-2:])


def _no_rng(q: torch.Tensor) -> torch.Tensor:
    # The kernels read the dropout RNG state only when dropout_p > 0; ours is always 0.
    return torch.empty((), dtype=torch.int64, device=q.device)


def attend_block(q, k, v, mask: BlockMask, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of `q` on one key/value block: (out [b,h,q,d] float32, lse [b,h,q] float32)."""
    heads = q.shape[1]
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    kernel, causal = _pick_kernel(q, k, mask), mask.kind == "causal"
    if kernel == "cpu":
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=_cpu_mask(mask, q.shape[0], heads), scale=scale
        )
    elif kernel == "flash":
        out, lse = _aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    elif kernel == "efficient":
        out, lse = _aten._scaled_dot_product_efficient_attention(
            q, k, v, _efficient_bias(mask, q), True, 0.0, causal, scale=scale
        )[:2]
        lse = lse[..., : q.shape[2]]
    else:
        out, lse = _reference_forward(q, k, v, mask, scale)
    out, lse = out.float(), lse.float()
    if mask.query_rows_seen is not None:
        # Rows that see no key in this block must not count in a merge: give them an LSE of -inf.
        lse = lse.masked_fill(~mask.query_rows_seen, float("-inf"))
        out = out.masked_fill(~mask.query_rows_seen[..., None], 0.0)
    return out, lse


def attend_block_backward(grad_out, q, k, v, out, lse, mask: BlockMask, scale: float):
    """Gradients (dq, dk, dv) of one block pair, given the final `out` and `lse` of the query rows.

    The fused backward kernels recompute the block's probabilities as exp(scores - lse); with the
    final LSE those are the block's share of the full softmax, so each returns the block's share of
    the gradient.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    k_full, v_full = _expand_kv(k, heads), _expand_kv(v, heads)
    # Rows that saw nothing anywhere have lse = -inf and no gradient; any finite value keeps the
    # kernel's exp(s - lse) at zero for them because their scores are all masked.
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    kernel, causal = _pick_kernel(q, k_full, mask), mask.kind == "causal"
    if kernel == "cpu":
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out.to(q.dtype), q, k_full, v_full, out.to(q.dtype), lse, 0.0, causal,
            attn_mask=_cpu_mask(mask, q.shape[0], heads), scale=scale,
        )
    elif kernel == "flash":
        # No cumulative sequence lengths (None): the dense, not the variable-length, kernel.
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_backward(
            grad_out.to(q.dtype), q, k_full, v_full, out.to(q.dtype), lse.contiguous(), None, None,
            q.shape[2], k_full.shape[2], 0.0, causal, _no_rng(q), _no_rng(q), scale=scale,
        )
    elif kernel == "efficient":
        # This kernel reads `out` in the [batch, seq, heads, dim] memory layout its forward produces,
        # and the LSE padded as its forward returns it.
        out = out.to(q.dtype).transpose(1, 2).contiguous().transpose(1, 2)
        lse = torch.nn.functional.pad(lse, (0, -lse.shape[-1] % _EFFICIENT_LSE_ALIGN))
        dq, dk, dv, _ = _aten._scaled_dot_product_efficient_attention_backward(
            grad_out.to(q.dtype), q, k_full, v_full, _efficient_bias(mask, q), out, lse,
            _no_rng(q), _no_rng(q), 0.0, [True, True, True, False], causal, scale=scale,
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
    # Only the fallback for what the fused kernels cannot do (float64 on CUDA, head dims they do
    # not support, devices other than CPU and CUDA): exact and fp32, memory bounded by the block size.
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
