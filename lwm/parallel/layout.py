"""Sequence layouts: which part of a sequence each rank of a sequence-parallel (sp) group holds.

A sp group of W ranks splits every sequence into equal chunks. With `layout="zigzag"` a sequence is cut
into 2·W chunks and rank r holds chunks r and 2W−1−r, so under a causal mask every rank has the same
amount of attention work; with `layout="contiguous"` rank r holds chunk r.

A sequence's length must be a multiple of its number of chunks (`check_length`): the one divisibility
rule of sequence parallelism, which the training config checks before a run and `shard_sequence` on
every tensor it cuts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

LAYOUTS = ("zigzag", "contiguous")


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """This process's rank in `group` and the group's size; (0, 1) without torch.distributed."""
    if group is None and not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sequence-parallel layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def chunks_per_sequence(layout: str, world: int) -> int:
    check_layout(layout)
    return 2 * world if layout == "zigzag" else world


def check_length(length: int, layout: str, world: int) -> None:
    """Refuses a sequence length that the layout cannot cut into equal chunks over `world` ranks."""
    chunks = chunks_per_sequence(layout, world)
    if length % chunks:
        raise ValueError(
            f"a sequence of length {length} cannot be cut into {chunks} equal chunks for sequence parallelism "
            f"({layout} over {world} ranks); use a multiple of {chunks}"
        )


def rank_chunks(layout: str, rank: int, world: int) -> tuple[int, ...]:
    """Which equal chunks of the sequence `rank` holds, in the order it stores them."""
    check_layout(layout)
    return (rank, 2 * world - 1 - rank) if layout == "zigzag" else (rank,)


def shard_sequence(x: torch.Tensor, dim: int, rank: int, world: int, layout: str = "zigzag") -> torch.Tensor:
    """Rank `rank`'s shard (of `world`) of a full sequence along `dim`."""
    check_length(x.shape[dim], layout, world)
    chunks = x.chunk(chunks_per_sequence(layout, world), dim=dim)
    return torch.cat([chunks[i] for i in rank_chunks(layout, rank, world)], dim=dim)


def unshard_sequence(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None = None, layout: str = "zigzag"):
    """The full sequence from every rank's shard in `group` (an all-gather; not differentiable)."""
    rank, world = rank_and_world(group)
    if world == 1:
        return x
    shards = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(shards, x.contiguous(), group=group)
    pieces = len(rank_chunks(layout, rank, world))
    ordered = [None] * chunks_per_sequence(layout, world)
    for holder, shard in enumerate(shards):
        for index, chunk in zip(rank_chunks(layout, holder, world), shard.chunk(pieces, dim=dim)):
            ordered[index] = chunk
    return torch.cat(ordered, dim=dim)


def shard_positions(seq_len: int, rank: int, world: int, layout: str = "zigzag", device=None) -> torch.LongTensor:
    """Global positions [seq_len / world] of a rank's shard, for RoPE (one unpacked sequence)."""
    return shard_sequence(torch.arange(seq_len, device=device), 0, rank, world, layout)


def shard_batch(batch: dict[str, torch.Tensor], rank: int, world: int, layout: str = "zigzag") -> dict[str, torch.Tensor]:
    """Rank `rank`'s shard of every `[batch, seq]` tensor of a batch (the batch itself when `world` is 1).

    Whatever needs the whole row (the next-token targets, the places of codes in their frames) must be
    computed before: a shard cannot see across its ends.
    """
    if world == 1:
        return batch
    return {name: shard_sequence(tensor, 1, rank, world, layout) for name, tensor in batch.items()}
