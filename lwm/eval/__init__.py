"""Evaluation: what a model understands and draws of the synthetic world, needle retrieval against
context length, the VQGAN's reconstructions, and bars a model must meet (`lwm eval`).

    suite.py           the whole evaluation `lwm eval` runs, sized by a quick or a full preset
    world.py           world tasks scored by the world's judge, through a `Subject`
    needle.py          needles at 1x, 2x, 4x the trained length, with RoPE scaling and across ring ranks
    reconstruction.py  PSNR, SSIM, codebook usage, code stability
    bars.py, report.py bars to meet; tables, JSON and pictures
"""

from lwm.eval.bars import BARS_FILE, Bar, check_bars, load_bars, parse_bar
from lwm.eval.needle import NeedleEvalConfig, evaluate_needle
from lwm.eval.reconstruction import code_stability, codebook_usage, evaluate_reconstruction, psnr, ssim
from lwm.eval.suite import FULL, QUICK, TASKS, EvalOptions, Preset, default_out_dir, evaluate, write_outputs
from lwm.eval.world import WORLD_TASKS, LWMSubject, Subject, WorldEvalConfig, evaluate_world

__all__ = [
    "BARS_FILE",
    "FULL",
    "QUICK",
    "TASKS",
    "WORLD_TASKS",
    "Bar",
    "EvalOptions",
    "LWMSubject",
    "NeedleEvalConfig",
    "Preset",
    "Subject",
    "WorldEvalConfig",
    "check_bars",
    "code_stability",
    "codebook_usage",
    "default_out_dir",
    "evaluate",
    "evaluate_needle",
    "evaluate_reconstruction",
    "evaluate_world",
    "load_bars",
    "parse_bar",
    "psnr",
    "ssim",
    "write_outputs",
]
