"""The shipped model still reaches its bars (lwm/bundled/eval_bars.json) on `lwm eval --quick`.

The bars are regression guards set below what the bundled model measures on the quick seeds (video QA
0.86, PSNR 35.2 dB, needles at 1x 6 of 6) and far above what a random model reaches (0.0, ~7 dB, no
7-digit number right: see test_eval.py); the PSNR bar is the issue's own target for the tokenizer.
"""

import json

import pytest

from lwm.api import BUNDLED_DIR
from lwm.cli import main
from tests.training.runs import REPO


def test_the_shipped_bars_are_the_recipes():
    """`make bundled` copies configs/eval/bundled-bars.json into the export; the shipped file must not drift."""
    recipe = json.loads((REPO / "configs" / "eval" / "bundled-bars.json").read_text())
    assert json.loads((BUNDLED_DIR / "eval_bars.json").read_text()) == recipe


@pytest.mark.skipif(not (BUNDLED_DIR / "config.json").is_file(), reason="no bundled model in this checkout")
def test_bundled_model_passes_its_quick_eval_bars(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # without --out the report goes to runs/eval/<model>-<time> under the current folder
    assert main(["eval", "--model", "bundled", "--quick"]) == 0
    (written,) = (tmp_path / "runs" / "eval").glob("bundled-*")
    report = json.loads((written / "report.json").read_text())
    assert report["metrics"]["video_qa.accuracy"] >= 0.65
    assert report["metrics"]["tokenizer.psnr"] >= 30
    assert report["metrics"]["needle.accuracy@1x"] >= 0.5
