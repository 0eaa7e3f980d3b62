"""Blockwise attention: exact attention over query/key chunks on one device.

The forward pass keeps only each query chunk's running (output, LSE); the backward pass recomputes
every block pair from the saved LSE. Nothing of size seq × seq is ever stored, so forward and
backward memory grow linearly with sequence length.
"""

from __future__ import annotations

import torch

from lwm.model.attention.primitive import (
    BlockSpan,
    attend_block,
    attend_block_backward,
    block_mask,
    check_qkv,
    merge_partials,
)


def _spans(start: int, length: int, chunk: int, segment_ids: torch.Tensor | None) -> list[BlockSpan]:
    spans = []
    for offset in range(0, length, chunk):
        size = min(chunk, length - offset)
        segments = None if segment_ids is None else segment_ids[:, offset : offset + size]
        spans.append(BlockSpan(start + offset, size, segments))
    return spans


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, segment_ids, causal, scale, q_chunk, kv_chunk):
        q_len, k_len = q.shape[2], k.shape[2]
        # Queries are the last q_len positions of the key sequence (a KV cache puts the past first).
        q_spans = _spans(k_len - q_len, q_len, q_chunk, None if segment_ids is None else segment_ids[:, -q_len:])
        k_spans = _spans(0, k_len, kv_chunk, segment_ids)
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        for q_span in q_spans:
            rows = slice(q_span.start - (k_len - q_len), q_span.end - (k_len - q_len))
            q_block = q[:, :, rows]
            for k_span in k_spans:
                mask = block_mask(q_span, k_span, causal=causal, dtype=q.dtype, device=q.device)
                if mask.kind == "skip":
                    continue
                cols = slice(k_span.start, k_span.end)
                block_out, block_lse = attend_block(q_block, k[:, :, cols], v[:, :, cols], mask, scale)
                out[:, :, rows], lse[:, :, rows] = merge_partials(
                    out[:, :, rows], lse[:, :, rows], block_out, block_lse
                )
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, segment_ids)
        ctx.settings = (causal, scale, q_chunk, kv_chunk)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, segment_ids = ctx.saved_tensors
        causal, scale, q_chunk, kv_chunk = ctx.settings
        q_len, k_len = q.shape[2], k.shape[2]
        offset = k_len - q_len
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        q_spans = _spans(offset, q_len, q_chunk, None if segment_ids is None else segment_ids[:, -q_len:])
        k_spans = _spans(0, k_len, kv_chunk, segment_ids)
        for q_span in q_spans:
            rows = slice(q_span.start - offset, q_span.end - offset)
            for k_span in k_spans:
                mask = block_mask(q_span, k_span, causal=causal, dtype=q.dtype, device=q.device)
                if mask.kind == "skip":
                    continue
                cols = slice(k_span.start, k_span.end)
                block_dq, block_dk, block_dv = attend_block_backward(
                    grad_out[:, :, rows], q[:, :, rows], k[:, :, cols], v[:, :, cols],
                    out[:, :, rows], lse[:, :, rows], mask, scale,
                )
                dq[:, :, rows] += block_dq
                dk[:, :, cols] += block_dk
                dv[:, :, cols] += block_dv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    segment_ids: torch.Tensor | None = None,
    scale: float | None = None,
    q_chunk: int = 512,
    kv_chunk: int = 512,
) -> torch.Tensor:
    """Exact attention in O(seq) memory, forward and backward.

    q: [batch, heads, q_len, head_dim]; k, v: [batch, kv_heads, k_len, head_dim] with heads a multiple
    of kv_heads. When q_len < k_len the queries are the last q_len positions (decoding with a cache).
    segment_ids: [batch, k_len]; a query sees only keys of its own segment (packed documents).
    """
    _check_shapes(q, k, v, segment_ids)
    if q_chunk < 1 or kv_chunk < 1:
        raise ValueError(f"chunk sizes must be positive, got q_chunk={q_chunk}, kv_chunk={kv_chunk}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _BlockwiseAttention.apply(q, k, v, segment_ids, causal, scale, q_chunk, kv_chunk)


def _check_shapes(q, k, v, segment_ids):
    check_qkv(q, k, v)
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"more queries ({q.shape[2]}) than keys ({k.shape[2]})")
    if segment_ids is not None and tuple(segment_ids.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(
            f"segment_ids must be [batch, k_len] = {(k.shape[0], k.shape[2])}, got {tuple(segment_ids.shape)}"
        )
