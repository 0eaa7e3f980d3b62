"""Sequence parallelism outside the attention kernel: layouts, the dp × sp mesh, batch sharding, and
the group handed to the model (the ring kernel itself is `lwm.model.attention.ring`).

    mesh = build_mesh(sp_size=2)                                     # after torch.distributed is up
    shard = shard_batch(whole_rows, mesh.sp_rank, mesh.sp_size)      # targets aligned on the whole rows first
    out = model(**shard, sequence_parallel=mesh.sequence_parallel)   # attn_implementation="ring"
"""

from lwm.parallel.layout import (
    LAYOUTS,
    check_layout,
    check_length,
    chunks_per_sequence,
    rank_and_world,
    rank_chunks,
    shard_batch,
    shard_positions,
    shard_sequence,
    unshard_sequence,
)
from lwm.parallel.mesh import Mesh, SequenceParallel, build_mesh, free_local_port

__all__ = [
    "LAYOUTS",
    "Mesh",
    "SequenceParallel",
    "build_mesh",
    "check_layout",
    "check_length",
    "chunks_per_sequence",
    "free_local_port",
    "rank_and_world",
    "rank_chunks",
    "shard_batch",
    "shard_positions",
    "shard_sequence",
    "unshard_sequence",
]
