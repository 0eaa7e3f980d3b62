"""SIGKILL a 2-process run mid-training, resume with `--resume auto`: it ends where an uninterrupted run does."""


import json

import pytest

from lwm.parallel import free_local_port
from lwm.training.checkpoint import latest_tag
from tests.training.random_tokens import write_random_tokens
from tests.training.runs import (
    assert_same_weights,
    final_weights,
    kill_when,
    launch,
    metrics,
    tiny_config,
    torchrun_command,
    wait,
    write_config,
)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    data = write_random_tokens(tmp_path / "tokens")
    common = dict(
        stages=[{"seq_len": 32, "rope_theta": 10000.0, "steps": 8}],
        checkpoint={"every_steps": 2, "keep_last": 2},
        parallel={"zero_stage": 1},
    )
    whole = write_config(tiny_config(tmp_path / "whole", data, **common), tmp_path / "whole.yaml")
    broken = write_config(tiny_config(tmp_path / "broken", data, **common), tmp_path / "broken.yaml")

    run = launch(torchrun_command(whole, 2, port=free_local_port()), tmp_path / "whole.log")
    wait(run, tmp_path / "whole.log")

    checkpoints = tmp_path / "broken" / "checkpoints"
    run = launch(torchrun_command(broken, 2, port=free_local_port()), tmp_path / "broken.log")
    kill_when(run, lambda: (checkpoints / "latest").is_file() and latest_tag(checkpoints) >= "stage0-step000004")
    killed_at = latest_tag(checkpoints)
    assert killed_at < "stage0-step000008", "the run finished before it was killed"

    # A step the killed run logged after its last checkpoint (the kill is often too quick for one).
    with (tmp_path / "broken" / "metrics.jsonl").open("a") as log:
        log.write(json.dumps({"step": int(killed_at[-6:]) + 1, "loss": -1.0}) + "\n")

    run = launch(torchrun_command(broken, 2, "--resume", "auto", port=free_local_port()), tmp_path / "resumed.log")
    wait(run, tmp_path / "resumed.log")
    assert f"resumed stage 0 at step {int(killed_at[-6:])}" in (tmp_path / "resumed.log").read_text()

    # Bit for bit: same data position, RNG, optimiser and scheduler state, same reduction order.
    assert_same_weights(final_weights(tmp_path / "broken"), final_weights(tmp_path / "whole"), rtol=0, atol=0)
    # Logged steps after the resume repeat the uninterrupted run's losses exactly (same data, same state).
    uninterrupted = {m["step"]: m["loss"] for m in metrics(tmp_path / "whole")}
    resumed = [m for m in metrics(tmp_path / "broken") if m["step"] > int(killed_at[-6:])]
    assert [m["step"] for m in metrics(tmp_path / "broken")] == list(uninterrupted), "a step logged twice or lost"
    for m in resumed:
        assert m["loss"] == pytest.approx(uninterrupted[m["step"]], rel=1e-5)
