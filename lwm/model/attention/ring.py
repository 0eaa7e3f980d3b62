"""Ring attention: exact attention over a sequence sharded across the ranks of a process group.

Each rank holds its shard of queries, keys and values (see `lwm.parallel` for the layouts). In W
steps every rank's key/value shard visits every rank: a rank attends its queries to the visiting
block with the block primitive and merges the partial (output, LSE) results, while the next
exchange is already under way (`batch_isend_irecv` is posted before computing). The backward
pass walks the same ring, recomputing each block pair from the saved LSE; the key/value gradient
of a shard travels with it and arrives home after a full turn, so each rank ends with the exact
gradients of its own shard.

`sharded_decode_attention` is the decoding counterpart: a new token's query attends to each
rank's shard of the KV cache, and the partial results are merged by their log-sum-exp.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lwm.model.attention.primitive import (
    BlockMask,
    BlockSpan,
    attend_block,
    attend_block_backward,
    block_mask,
    check_qkv,
    kernel_tiles,
    merge_partials,
)
from lwm.parallel import check_layout, rank_and_world, rank_chunks

_KV_TAG, _GRAD_TAG = 0, 1  # keys/values and their gradients are in flight together in the backward


class _RingExchange:
    """Sends tensors to the next rank of the ring and receives the previous rank's, asynchronously."""

    def __init__(self, group, rank: int, world: int, tag: int):
        self.group, self.tag = group, tag
        self.next, self.previous = (rank + 1) % world, (rank - 1) % world
        self.requests, self.received = [], []

    def start(self, tensors: list[torch.Tensor]) -> None:
        self.received = [torch.empty_like(t) for t in tensors]
        operations = []
        for outgoing, incoming in zip(tensors, self.received):
            operations.append(dist.P2POp(dist.isend, outgoing, group=self.group, group_peer=self.next, tag=self.tag))
            operations.append(dist.P2POp(dist.irecv, incoming, group=self.group, group_peer=self.previous, tag=self.tag))
        self.requests = dist.batch_isend_irecv(operations)

    def wait(self) -> list[torch.Tensor]:
        for request in self.requests:
            request.wait()
        self.requests = []
        return self.received


class _Ring:
    """The sp group, where each rank's shard sits in the global sequence, and how it is cut into blocks."""

    def __init__(self, group, layout: str, causal: bool, q_chunk: int | None, kv_chunk: int | None):
        self.group, self.layout, self.causal = group, layout, causal
        self.q_chunk, self.kv_chunk = q_chunk, kv_chunk
        self.rank, self.world = rank_and_world(group)

    def blocks(self, rank: int, length: int, segment_ids, chunk: int | None) -> list[tuple[BlockSpan, slice]]:
        """Blocks of `rank`'s shard of `length` positions: (global span, rows of the local tensor)."""
        chunks = rank_chunks(self.layout, rank, self.world)
        piece = length // len(chunks)
        step = chunk or piece
        blocks = []
        for index, chunk_index in enumerate(chunks):
            for offset in range(0, piece, step):
                size = min(step, piece - offset)
                rows = slice(index * piece + offset, index * piece + offset + size)
                segments = None if segment_ids is None else segment_ids[:, rows]
                blocks.append((BlockSpan(chunk_index * piece + offset, size, segments), rows))
        return blocks

    def pairs(self, q: torch.Tensor, q_segment_ids, source: int, k_segment_ids):
        """(rows, cols, mask) of the block pairs of our queries and `source`'s keys with anything to attend."""
        length = q.shape[2]
        k_blocks = self.blocks(source, length, k_segment_ids, self.kv_chunk)
        for q_span, rows in self.blocks(self.rank, length, q_segment_ids, self.q_chunk):
            for k_span, cols in k_blocks:
                mask = block_mask(q_span, k_span, causal=self.causal, dtype=q.dtype, device=q.device)
                if mask.kind != "skip":
                    yield rows, cols, mask

    def exchange(self, tag: int) -> _RingExchange:
        return _RingExchange(self.group, self.rank, self.world, tag)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, segment_ids, ring: _Ring, scale):
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        kv, segments = torch.stack((k, v)), _contiguous(segment_ids)
        exchange = ring.exchange(_KV_TAG)
        for step in range(ring.world):
            if step + 1 < ring.world:
                exchange.start(_with_segments(kv, segments))
            source = (ring.rank - step) % ring.world
            for rows, cols, mask in ring.pairs(q, segment_ids, source, segments):
                block_out, block_lse = attend_block(q[:, :, rows], kv[0, :, :, cols], kv[1, :, :, cols], mask, scale)
                out[:, :, rows], lse[:, :, rows] = merge_partials(out[:, :, rows], lse[:, :, rows], block_out, block_lse)
            if step + 1 < ring.world:
                kv, segments = _unpack(exchange.wait())
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse, segment_ids)
        ctx.ring, ctx.scale = ring, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, segment_ids = ctx.saved_tensors
        ring, scale = ctx.ring, ctx.scale
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kv, segments = torch.stack((k, v)), _contiguous(segment_ids)
        kv_exchange, grad_exchange = ring.exchange(_KV_TAG), ring.exchange(_GRAD_TAG)
        for step in range(ring.world):
            if step + 1 < ring.world:
                kv_exchange.start(_with_segments(kv, segments))
            source = (ring.rank - step) % ring.world
            dkv = torch.zeros(kv.shape, dtype=torch.float32, device=kv.device)
            for rows, cols, mask in ring.pairs(q, segment_ids, source, segments):
                block_dq, block_dk, block_dv = attend_block_backward(
                    grad_out[:, :, rows], q[:, :, rows], kv[0, :, :, cols], kv[1, :, :, cols],
                    out[:, :, rows], lse[:, :, rows], mask, scale,
                )
                dq[:, :, rows] += block_dq
                dkv[0, :, :, cols] += block_dk
                dkv[1, :, :, cols] += block_dv
            if ring.world == 1:
                break
            if step > 0:
                # The gradient of this key/value shard gathered by the ranks it already visited.
                dkv += grad_exchange.wait()[0]
            grad_exchange.start([dkv])
            if step + 1 < ring.world:
                kv, segments = _unpack(kv_exchange.wait())
        if ring.world > 1:
            dkv = grad_exchange.wait()[0]  # back home after a full turn: the gradient of our own shard
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def _contiguous(segment_ids):
    return None if segment_ids is None else segment_ids.contiguous()  # sent as is by point-to-point ops


def _with_segments(kv, segments) -> list[torch.Tensor]:
    return [kv] if segments is None else [kv, segments]


def _unpack(received: list[torch.Tensor]):
    return received[0], (received[1] if len(received) == 2 else None)


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: dist.ProcessGroup | None = None,
    causal: bool = True,
    segment_ids: torch.Tensor | None = None,
    scale: float | None = None,
    layout: str = "zigzag",
    q_chunk: int | None = None,
    kv_chunk: int | None = None,
) -> torch.Tensor:
    """Exact attention of a sequence sharded over `group`, forward and backward.

    q: [batch, heads, n, head_dim], k, v: [batch, kv_heads, n, head_dim]: this rank's shard of the
    sequence in `layout` ("zigzag" or "contiguous", see `lwm.parallel.shard_sequence`); every rank
    holds the same n. segment_ids: [batch, n], this rank's shard of the document ids (packed
    sequences); a query sees only keys of its own document. q_chunk / kv_chunk split each shard
    piece into blocks of at most that many positions, which bounds the memory of segment masks and of
    the non-fused kernel; without segment ids a fused kernel (`kernel_tiles`) tiles by itself and
    takes whole pieces, as None asks. Every rank of the group must call it together.
    """
    check_layout(layout)
    _check_shapes(q, k, v, segment_ids)
    for name, chunk in (("q_chunk", q_chunk), ("kv_chunk", kv_chunk)):
        if chunk is not None and chunk < 1:
            raise ValueError(f"{name} must be positive, got {chunk}")
    if segment_ids is None and kernel_tiles(q):
        q_chunk = kv_chunk = None
    ring = _Ring(group, layout, causal, q_chunk, kv_chunk)
    pieces = len(rank_chunks(layout, ring.rank, ring.world))
    if q.shape[2] % pieces:
        raise ValueError(f"a {layout} shard holds {pieces} equal pieces; its length {q.shape[2]} is not a multiple")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _RingAttention.apply(q, k, v, segment_ids, ring, scale)


def sharded_decode_attention(q, k, v, *, group: dist.ProcessGroup | None = None, scale: float | None = None):
    """Attention of new tokens on a KV cache whose shards are spread over `group`.

    q: [batch, heads, 1, head_dim], the same on every rank; k, v: this rank's cache shard (possibly
    empty), all in the past of the queries. Each rank's partial (output, LSE) is gathered and
    merged in rank order, so every rank gets the same, exact result.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if k.shape[2]:
        out, lse = attend_block(q, k, v, BlockMask("full"), scale)
    else:
        out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    _, world = rank_and_world(group)
    if world > 1:
        partial = torch.cat([out, lse[..., None]], dim=-1)
        gathered = [torch.empty_like(partial) for _ in range(world)]
        dist.all_gather(gathered, partial, group=group)
        out, lse = gathered[0][..., :-1], gathered[0][..., -1]
        for other in gathered[1:]:
            out, lse = merge_partials(out, lse, other[..., :-1], other[..., -1])
    return out.to(q.dtype)


def _check_shapes(q, k, v, segment_ids):
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"ring attention takes this rank's shard of queries and of keys, of equal length; got {q.shape[2]} "
            f"and {k.shape[2]} (a KV cache must be empty when prefilling with ring attention)"
        )
    if segment_ids is not None and tuple(segment_ids.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(
            f"segment_ids must be this rank's shard [batch, n] = {(k.shape[0], k.shape[2])}, got {tuple(segment_ids.shape)}"
        )
