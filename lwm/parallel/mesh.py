"""Process groups: where a rank stands in a dp × sp world, and the sp group handed to the model.

World = dp × sp. Ranks [g·sp, (g+1)·sp) form sequence-parallel group g (contiguous, so on GPUs a ring
stays inside a node): they hold shards of the same rows and run ring attention over them. The model
reads its group from the `sequence_parallel` argument of its forward (a `SequenceParallel`), never
from a process global, so a checkpointed layer recomputed during the backward pass gets it again.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import torch.distributed as dist

from lwm.parallel.layout import check_layout


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the rendezvous of processes started on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class SequenceParallel:
    """The sp group the "ring" attention backend runs over, passed to the model's forward.

    decoding=False: queries and keys are this rank's shards of one sequence in `layout` (training,
    prefill). decoding=True: queries are new tokens, the same on every rank; keys are each rank's
    shard of a `lwm.generation.sharded.ShardedCache`.
    """

    group: dist.ProcessGroup | None = None  # None: the default (world) group
    layout: str = "zigzag"
    decoding: bool = False

    def __post_init__(self):
        check_layout(self.layout)


@dataclass(frozen=True)
class Mesh:
    """This rank's place in the dp × sp world."""

    rank: int
    world: int
    sp_size: int
    sp_group: dist.ProcessGroup | None  # None when sp_size == 1

    @property
    def dp_size(self) -> int:
        return self.world // self.sp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def sequence_parallel(self) -> SequenceParallel | None:
        """What the model's forward takes: the sp group, or None when every rank holds whole rows."""
        return SequenceParallel(self.sp_group) if self.sp_size > 1 else None


def build_mesh(sp_size: int) -> Mesh:
    """The mesh of the initialised default process group, creating its sp groups (every rank must call it)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if sp_size < 1 or world % sp_size:
        raise ValueError(f"sp_size={sp_size} does not divide the world of {world} processes")
    sp_group = None
    if sp_size > 1:
        for first in range(0, world, sp_size):  # every rank must create every group
            group = dist.new_group(list(range(first, first + sp_size)))
            if first <= rank < first + sp_size:
                sp_group = group
    return Mesh(rank, world, sp_size, sp_group)
