"""Two "nodes" of two processes on loopback (torchrun --nnodes 2 --node_rank i) train with dp = 2 × sp = 2."""


import pytest

from lwm.parallel import free_local_port
from tests.training.random_tokens import write_random_tokens
from tests.training.runs import (
    assert_same_weights,
    final_weights,
    launch,
    metrics,
    tiny_config,
    torchrun_command,
    train_in_processes,
    wait,
    write_config,
)


def test_two_nodes_of_two_processes_match_one_process(tmp_path):
    data = write_random_tokens(tmp_path / "tokens")
    raw = tiny_config(tmp_path / "mesh", data, parallel={"sp_size": 2, "zero_stage": 2})
    config = write_config(raw, tmp_path / "mesh.yaml")
    port = free_local_port()
    nodes = [
        launch(torchrun_command(config, 2, nnodes=2, node_rank=rank, port=port), tmp_path / f"node{rank}.log")
        for rank in (0, 1)
    ]
    for rank, node in enumerate(nodes):
        wait(node, tmp_path / f"node{rank}.log")
    assert "lwm train: done" in (tmp_path / "node0.log").read_text()

    # The same global batch in one process: the rows of both dp ranks (each sp group's full rows).
    train_in_processes(tiny_config(tmp_path / "single", data), 1, concatenate_dp_ranks=2)
    got, want = metrics(tmp_path / "mesh"), metrics(tmp_path / "single")
    for name in ("loss", "grad_norm"):
        assert [m[name] for m in got] == pytest.approx([m[name] for m in want], rel=1e-4), name
    assert_same_weights(final_weights(tmp_path / "mesh"), final_weights(tmp_path / "single"))
