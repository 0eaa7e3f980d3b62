"""Bars: the scores a model must reach, so that CI fails when a model regresses.

A bar names a flat metric of the report (`task.metric`), a direction and a value:
"video_qa.accuracy>=0.9", "continuation.trajectory_error<=6". A bars file is JSON mapping metric
names to ">= value" / "<= value" strings or to plain numbers (meaning ">="):

    {"video_qa.accuracy": 0.9, "continuation.trajectory_error": "<= 6"}

A bar on a task that was not run is skipped; a bar on a task that ran fails when its metric is
missing or NaN (nothing measured is not a pass).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

BARS_FILE = "eval_bars.json"  # the default bars, next to a model's config.json
_BAR = re.compile(r"^\s*([\w.@-]+)?\s*(>=|<=)\s*([-+0-9.eE]+|nan|inf)\s*$")


@dataclass(frozen=True)
class Bar:
    metric: str
    op: str  # ">=" or "<="
    value: float

    @property
    def task(self) -> str:
        return self.metric.split(".", 1)[0]

    def met_by(self, measured: float) -> bool:
        if measured is None or math.isnan(measured):
            return False
        return measured >= self.value if self.op == ">=" else measured <= self.value


def parse_bar(text: str) -> Bar:
    """A bar written METRIC>=VALUE or METRIC<=VALUE."""
    match = _BAR.match(text)
    if not match or not match.group(1):
        raise ValueError(f"bad bar {text!r}: expected METRIC>=VALUE or METRIC<=VALUE, e.g. video_qa.accuracy>=0.9")
    return Bar(match.group(1), match.group(2), float(match.group(3)))


def load_bars(path: str | os.PathLike) -> list[Bar]:
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the bars file ({error})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: a bars file is a JSON object of metric -> bar, e.g. {{\"video_qa.accuracy\": 0.9}}")
    bars = []
    for metric, bar in entries.items():
        if isinstance(bar, (int, float)) and not isinstance(bar, bool):
            bars.append(Bar(metric, ">=", float(bar)))
        elif isinstance(bar, str):
            try:
                bars.append(parse_bar(metric + bar))
            except ValueError:
                raise ValueError(f"{path}: bad bar {bar!r} for {metric}; expected a number, '>= X' or '<= X'") from None
        else:
            raise ValueError(f"{path}: bad bar {bar!r} for {metric}; expected a number, '>= X' or '<= X'")
    return bars


def check_bars(bars: list[Bar], metrics: dict[str, float], tasks_run: list[str]) -> list[dict]:
    """Each bar's verdict: {"metric", "op", "value", "measured", "passed", "status"}; passed is None if skipped."""
    verdicts = []
    for bar in bars:
        measured = metrics.get(bar.metric)
        if bar.task not in tasks_run:
            passed, status = None, "skipped (task not run)"
        elif bar.metric not in metrics:
            passed, status = False, "FAIL (not measured)"
        else:
            passed = bar.met_by(measured)
            status = "ok" if passed else "FAIL"
        verdicts.append({"metric": bar.metric, "op": bar.op, "value": bar.value, "measured": measured,
                         "passed": passed, "status": status})
    return verdicts
