"""Blockwise attention: exact attention over query/key chunks on one device.

The forward pass keeps only each query chunk's running (output, LSE); the backward pass recomputes
every block pair from the saved LSE. Nothing of size seq × seq is ever stored, so forward and
backward memory grow linearly with sequence length. Where the block kernel is a fused one that tiles
by itself (`kernel_tiles`), a causal document is a single block pair, so one causal sequence costs one
kernel call, as plain SDPA does; chunks then only bound the mask tensors of segment ids that recur and
of queries after a KV cache.
"""

from __future__ import annotations

import torch

from lwm.model.attention.primitive import (
    BlockSpan,
    attend_block,
    attend_block_backward,
    block_mask,
    check_qkv,
    kernel_tiles,
    merge_partials,
)


def _spans(start: int, length: int, chunk: int, segment_ids: torch.Tensor | None) -> list[BlockSpan]:
    spans = []
    for offset in range(0, length, chunk):
        size = min(chunk, length - offset)
        segments = None if segment_ids is None else segment_ids[:, offset : offset + size]
        spans.append(BlockSpan(start + offset, size, segments))
    return spans


def _documents(segment_ids: torch.Tensor) -> list[list[tuple[int, int]]] | None:
    """Each row's documents as (start, end) runs of one segment id; None when an id comes back after
    another one (then a document is not one run, and the chunk grid's masks describe it)."""
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    documents = []
    for ids, row_starts in zip(segment_ids, starts):
        first = row_starts.nonzero().flatten()
        if ids[first].unique().numel() < first.numel():
            return None
        bounds = first.tolist() + [ids.numel()]
        documents.append(list(zip(bounds[:-1], bounds[1:])))
    return documents


def _work(q_len: int, k_len: int, segment_ids, q_chunk: int, kv_chunk: int, whole: bool
          ) -> list[tuple[slice, list, list]]:
    """What to attend, as (batch rows, query spans, key spans).

    Packed documents never see each other, so when each is one run of its segment id it is attended
    alone: no kernel call is spent on keys a query cannot see, and a document within one chunk is a
    single unmasked call. With `whole` (a kernel that tiles by itself) every such document, or every
    row without segment ids, is one block pair however long. Otherwise (segment ids that recur, or
    queries after a KV cache) the whole batch goes over the chunk grid, with masks where segments meet.
    """
    documents = _documents(segment_ids) if segment_ids is not None and q_len == k_len else None
    if whole and q_len == k_len and (segment_ids is None or documents is not None):
        q_chunk = kv_chunk = max(q_len, 1)  # range() needs a positive step even for an empty row
    if documents is None:
        q_segments = None if segment_ids is None else segment_ids[:, -q_len:]
        return [(slice(None), _spans(k_len - q_len, q_len, q_chunk, q_segments), _spans(0, k_len, kv_chunk, segment_ids))]
    return [
        (slice(row, row + 1), _spans(start, end - start, q_chunk, None), _spans(start, end - start, kv_chunk, None))
        for row, runs in enumerate(documents)
        for start, end in runs
    ]


def _blocks(work, offset: int, causal: bool, q: torch.Tensor):
    """The block pairs the forward and the backward pass visit, as (batch rows, query rows, key columns,
    mask); pairs that the mask skips entirely are left out."""
    for batch, q_spans, k_spans in work:
        for q_span in q_spans:
            rows = slice(q_span.start - offset, q_span.end - offset)
            for k_span in k_spans:
                mask = block_mask(q_span, k_span, causal=causal, dtype=q.dtype, device=q.device)
                if mask.kind != "skip":
                    yield batch, rows, slice(k_span.start, k_span.end), mask


def _one_pair(blocks: list, q_len: int, k_len: int):
    """The mask of the only block pair when it covers every query and key (one causal sequence on a fused
    kernel), else None: then there is nothing to merge or accumulate."""
    if len(blocks) == 1:
        batch, rows, cols, mask = blocks[0]
        if batch == slice(None) and (rows.start, rows.stop, cols.start, cols.stop) == (0, q_len, 0, k_len):
            return mask
    return None


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, segment_ids, causal, scale, q_chunk, kv_chunk):
        q_len, k_len = q.shape[2], k.shape[2]
        offset = k_len - q_len  # queries are the last q_len positions of the keys (a KV cache puts the past first)
        work = _work(q_len, k_len, segment_ids, q_chunk, kv_chunk, kernel_tiles(q))
        blocks = list(_blocks(work, offset, causal, q))
        whole = _one_pair(blocks, q_len, k_len)
        if whole is not None:
            out, lse = attend_block(q, k, v, whole, scale)
        else:
            out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
            lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
            for batch, rows, cols, mask in blocks:
                block_out, block_lse = attend_block(q[batch, :, rows], k[batch, :, cols], v[batch, :, cols], mask, scale)
                out[batch, :, rows], lse[batch, :, rows] = merge_partials(
                    out[batch, :, rows], lse[batch, :, rows], block_out, block_lse
                )
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (causal, scale, work)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, work = ctx.settings
        offset = k.shape[2] - q.shape[2]
        blocks = list(_blocks(work, offset, causal, q))
        whole = _one_pair(blocks, q.shape[2], k.shape[2])
        if whole is not None:
            return (*attend_block_backward(grad_out, q, k, v, out, lse, whole, scale), None, None, None, None, None)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for batch, rows, cols, mask in blocks:
            block_dq, block_dk, block_dv = attend_block_backward(
                grad_out[batch, :, rows], q[batch, :, rows], k[batch, :, cols], v[batch, :, cols],
                out[batch, :, rows], lse[batch, :, rows], mask, scale,
            )
            dq[batch, :, rows] += block_dq
            dk[batch, :, cols] += block_dk
            dv[batch, :, cols] += block_dv
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
    q_chunk / kv_chunk cut what needs a mask tensor, or everything when the kernel is the exact
    non-fused one (see the module docstring).
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
