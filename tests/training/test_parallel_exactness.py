"""dp and sp runs give the single-process losses and weights (fp32, 5 steps), on CPU with gloo."""

import pytest

from tests.training.random_tokens import write_random_tokens
from tests.training.runs import assert_same_weights, final_weights, metrics, tiny_config, train_in_processes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_random_tokens(tmp_path_factory.mktemp("tokens"))


def test_sequence_parallel_matches_one_process(data_dir, tmp_path):
    # Same rows: sp ranks hold zigzag shards of the rows one process sees whole. The ring run also
    # checkpoints its layers, so its backward recomputes the ring attention. Both models have a code
    # grid, whose places the sp loader counts on the whole rows before cutting them.
    single = tiny_config(tmp_path / "single", data_dir, batch={"micro_batch_size": 2}, model={"vision_grid_size": 4})
    ring = tiny_config(tmp_path / "sp2", data_dir, batch={"micro_batch_size": 2}, parallel={"sp_size": 2},
                       model={"gradient_checkpointing": True, "vision_grid_size": 4})
    train_in_processes(single, 1)
    train_in_processes(ring, 2)
    assert_same_curves(tmp_path / "sp2", tmp_path / "single")
    weights = final_weights(tmp_path / "sp2")
    assert weights["vision_grid.columns"].abs().max() > 0  # the grid trained from zero
    assert_same_weights(weights, final_weights(tmp_path / "single"))


def test_data_parallel_matches_one_process_with_the_same_global_batch(data_dir, tmp_path):
    # The reference process gets, in one batch, the rows each of the two dp ranks gets; both
    # accumulate the gradients of two micro-batches per step.
    single = tiny_config(tmp_path / "single", data_dir, batch={"grad_accum_steps": 2})
    two_ranks = tiny_config(tmp_path / "dp2", data_dir, batch={"grad_accum_steps": 2})
    train_in_processes(single, 1, concatenate_dp_ranks=2)
    train_in_processes(two_ranks, 2)
    assert_same_curves(tmp_path / "dp2", tmp_path / "single")
    assert_same_weights(final_weights(tmp_path / "dp2"), final_weights(tmp_path / "single"))


def assert_same_curves(run, reference):
    # Adam is nearly blind to a constant gradient scale, so the gradient norm checks the loss scaling.
    for name in ("loss", "text_loss", "vision_loss", "grad_norm"):
        got, want = [m[name] for m in metrics(run)], [m[name] for m in metrics(reference)]
        assert len(got) == 5
        assert got == pytest.approx(want, rel=1e-4), name
