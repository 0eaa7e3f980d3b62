"""The whole evaluation `lwm eval` runs: the world tasks and the needles, sized by a preset.

    report = evaluate(lwm, folder, EvalOptions(quick=True))
    write_outputs(report, default_out_dir("bundled"))     # report.json, PNG grids, the needle heat-map
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from lwm.eval.needle import NeedleEvalConfig, evaluate_needle
from lwm.eval.report import flat_metrics, format_heatmap, format_table, heatmap, video_grid, write_json
from lwm.eval.world import WORLD_TASKS, LWMSubject, WorldEvalConfig, evaluate_world

TASKS = WORLD_TASKS + ("needle",)
DEFAULT_OUT_ROOT = Path("runs") / "eval"


@dataclass(frozen=True)
class Preset:
    """What the quick and the full evaluation measure unless the options say otherwise."""

    seeds: int
    video_frames: int
    context_frames: int
    continuation_frames: int
    needle_multiples: tuple[int, ...]
    needle_depths: tuple[float, ...]
    needle_seeds: int
    needle_multi: tuple[int, ...]  # multi-needle variants: needles per haystack
    ring: bool


# 4 generated frames and 4 + 4 for continuation: the video lengths the bundled model is trained on.
FULL = Preset(seeds=50, video_frames=4, context_frames=4, continuation_frames=4, needle_multiples=(1, 2, 4),
              needle_depths=(0.0, 0.25, 0.5, 0.75, 1.0), needle_seeds=4, needle_multi=(2, 4), ring=True)
# Small enough for 2 CPU cores in under 2 minutes with a small model; still real outputs, fewer of them.
QUICK = Preset(seeds=4, video_frames=4, context_frames=4, continuation_frames=2, needle_multiples=(1,),
               needle_depths=(0.0, 0.5, 1.0), needle_seeds=2, needle_multi=(), ring=False)


@dataclass(frozen=True)
class EvalOptions:
    """What to measure; None takes the preset's value (`QUICK` with `quick`, else `FULL`)."""

    model: str = "bundled"  # how the report names the model
    quick: bool = False
    tasks: tuple[str, ...] = TASKS
    seeds: int | None = None
    first_seed: int = 0  # the world tasks' clips start at this held-out seed (e.g. to tune on other clips)
    video_frames: int | None = None
    temperature: float | None = None  # of the drawing tasks (0: greedy; None: the model's); text is always greedy
    log_samples: bool = False  # keep every clip's outputs and scores in the report, not a few per task
    trained_length: int | None = None  # None: the model's max_position_embeddings
    needle_base: int | None = None  # the needle lengths are its multiples; None: the trained length
    needle_multiples: tuple[int, ...] | None = None
    needle_multi: tuple[int, ...] | None = None
    needle_seeds: int | None = None
    rope_scalings: tuple[str, ...] = ("none", "ntk")
    ring: bool | None = None

    def __post_init__(self):
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown eval tasks {unknown}; choose from {', '.join(TASKS)}")

    @property
    def preset(self) -> Preset:
        return QUICK if self.quick else FULL


def default_out_dir(model: str, now: datetime | None = None) -> Path:
    """runs/eval/<model folder name>-<date>-<time>, under the current folder."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return DEFAULT_OUT_ROOT / f"{Path(model).name or 'model'}-{stamp}"


def evaluate(lwm, folder: Path, options: EvalOptions) -> dict:
    """The report (without bars) of the tasks `options` asks for; PNG rows ride along under "grids"."""
    preset = options.preset
    world_config = WorldEvalConfig(
        seeds=preset.seeds if options.seeds is None else options.seeds,
        first_seed=options.first_seed,
        video_frames=preset.video_frames if options.video_frames is None else options.video_frames,
        context_frames=preset.context_frames,
        continuation_frames=preset.continuation_frames,
        temperature=options.temperature,
        samples_kept=None if options.log_samples else WorldEvalConfig.samples_kept,
    )
    world_tasks = [task for task in WORLD_TASKS if task in options.tasks]
    results = evaluate_world(LWMSubject(lwm, temperature=options.temperature), world_tasks, world_config,
                             vqgan=lwm.processor.vqgan, progress=True)
    tasks = {task: result.summary for task, result in results.items()}
    grids = {task: result.grid for task, result in results.items()}
    timings = {task: result.seconds for task, result in results.items()}
    needle_config = None
    if "needle" in options.tasks:
        multiples = tuple(options.needle_multiples or preset.needle_multiples)
        ring = preset.ring if options.ring is None else options.ring
        needle_config = NeedleEvalConfig(
            trained_length=lwm.context_length if options.trained_length is None else options.trained_length,
            base_length=options.needle_base,
            multiples=multiples,
            depths=preset.needle_depths,
            seeds=preset.needle_seeds if options.needle_seeds is None else options.needle_seeds,
            rope_scalings=tuple(options.rope_scalings),
            ring_multiples=(1,) if ring and 1 in multiples else (),
            multi_needles=preset.needle_multi if options.needle_multi is None else options.needle_multi,
        )
        start = time.perf_counter()
        tasks["needle"] = evaluate_needle(lwm.model, lwm.processor, needle_config, model_dir=folder, progress=True)
        timings["needle"] = time.perf_counter() - start
    return {
        "model": options.model,
        "quick": options.quick,
        "tasks_run": list(tasks),
        "config": {"world": asdict(world_config), "needle": asdict(needle_config) if needle_config else None},
        "seconds": timings,
        "metrics": flat_metrics(tasks),
        "tasks": tasks,
        "grids": grids,
    }


def write_outputs(report: dict, out: Path) -> None:
    """Prints the table; writes report.json, one PNG grid per drawing task and the needle heat-map."""
    out.mkdir(parents=True, exist_ok=True)
    grids = report.pop("grids")
    pictures = []
    for task, rows in grids.items():
        if rows:
            video_grid(rows, out / f"{task}.png")
            pictures.append(f"{task}.png")
    needle = report["tasks"].get("needle")
    if needle:
        heatmap(needle["panels"], needle["cells"], out / "needle_heatmap.png")
        pictures.append("needle_heatmap.png")
    report["pictures"] = pictures
    write_json(report, out / "report.json")
    print(format_table(report["metrics"], report["bars"]))
    if needle:
        print("\nneedles found (%), depth by context length\n" + format_heatmap(needle["panels"], needle["cells"]))
    print(f"\nwrote {out / 'report.json'}" + (f" and {', '.join(pictures)}" if pictures else ""))
