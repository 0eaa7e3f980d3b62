import json

from lwm.training.metrics import MetricsLogger


def logged_steps(directory) -> list[int]:
    return [json.loads(line)["step"] for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    interrupted = MetricsLogger("jsonl", tmp_path)
    for step in range(1, 7):
        interrupted.log(step, {"loss": 1.0 / step})
    interrupted.close()

    resumed = MetricsLogger("jsonl", tmp_path, resumed_step=4)  # the last checkpoint was at step 4
    assert logged_steps(tmp_path) == [1, 2, 3, 4]
    for step in range(5, 9):
        resumed.log(step, {"loss": 0.5})
    resumed.close()
    assert logged_steps(tmp_path) == list(range(1, 9))


def test_a_fresh_logger_appends(tmp_path):
    for steps in ([1, 2], [3]):
        logger = MetricsLogger("jsonl", tmp_path)
        for step in steps:
            logger.log(step, {"loss": 1.0})
        logger.close()
    assert logged_steps(tmp_path) == [1, 2, 3]
