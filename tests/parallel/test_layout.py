"""Sequence layouts and the mesh, without processes: which chunks a rank holds, the one divisibility
rule, batch sharding with an explicit rank and size. (Across processes: tests/model/attention/test_ring.py
unshards them, tests/training/test_parallel_exactness.py trains with them.)"""

import pytest
import torch

from lwm.parallel import Mesh, SequenceParallel, check_length, shard_batch, shard_positions, shard_sequence


@pytest.mark.parametrize("layout, expected", [
    ("zigzag", [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]),
    ("contiguous", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]),
])
def test_every_position_is_held_by_exactly_one_rank(layout, expected):
    shards = [shard_sequence(torch.arange(16), 0, rank, 4, layout).tolist() for rank in range(4)]
    assert shards == expected
    assert [shard_positions(16, rank, 4, layout).tolist() for rank in range(4)] == expected


def test_one_divisibility_rule_names_the_length_it_needs():
    check_length(24, "zigzag", 3)
    with pytest.raises(ValueError, match=r"length 20 cannot be cut into 6 equal chunks .*zigzag over 3 ranks.*of 6"):
        check_length(20, "zigzag", 3)
    with pytest.raises(ValueError, match="cannot be cut into 4 equal chunks"):
        shard_sequence(torch.arange(10), 0, 0, 4, "contiguous")
    with pytest.raises(ValueError, match="unknown sequence-parallel layout 'striped'"):
        SequenceParallel(layout="striped")


def test_a_batch_is_cut_along_the_sequence_of_every_tensor():
    batch = {"input_ids": torch.arange(16).view(2, 8), "loss_weights": torch.rand(2, 8)}
    assert shard_batch(batch, 0, 1) is batch
    shard = shard_batch(batch, 1, 2)
    assert shard["input_ids"].tolist() == [[2, 3, 4, 5], [10, 11, 12, 13]]
    assert torch.equal(shard["loss_weights"], batch["loss_weights"][:, 2:6])


def test_the_mesh_places_a_rank_in_its_data_and_sequence_parallel_groups():
    mesh = Mesh(rank=5, world=8, sp_size=2, sp_group=None)
    assert (mesh.dp_size, mesh.dp_rank, mesh.sp_rank) == (4, 2, 1)
    assert mesh.sequence_parallel == SequenceParallel(None)
    assert Mesh(rank=3, world=4, sp_size=1, sp_group=None).sequence_parallel is None
