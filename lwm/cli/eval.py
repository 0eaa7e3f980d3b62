"""`lwm eval`: measure a model on the synthetic world and on needle retrieval.

    lwm eval --model bundled --out eval/                  # the full eval
    lwm eval --quick --out /tmp/eval                       # CI: a small subset, fails under the bars
    lwm eval --model DIR --out eval/ --tasks video_qa needle --seeds 50 --trained-length 4096

Prints a table, writes OUT/report.json and PNGs (sample grids of generated videos, the needle
accuracy heat-map), and exits 1 when a score misses its bar (bars from --bar, --bars FILE, or by
default the model folder's eval_bars.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lwm.eval.bars import BARS_FILE
from lwm.eval.world import WORLD_TASKS

TASKS = WORLD_TASKS + ("needle",)


@dataclass(frozen=True)
class Preset:
    """What --quick and the full eval measure unless flags say otherwise."""

    seeds: int
    video_frames: int
    context_frames: int
    continuation_frames: int
    needle_multiples: tuple[int, ...]
    needle_depths: tuple[float, ...]
    needle_seeds: int
    ring: bool


# 4 generated frames and 4 + 4 for continuation: the video lengths the bundled model is trained on.
FULL = Preset(seeds=50, video_frames=4, context_frames=4, continuation_frames=4, needle_multiples=(1, 2, 4),
              needle_depths=(0.0, 0.25, 0.5, 0.75, 1.0), needle_seeds=4, ring=True)
# Small enough for 2 CPU cores in under 2 minutes with a small model; still real outputs, fewer of them.
QUICK = Preset(seeds=4, video_frames=4, context_frames=4, continuation_frames=2, needle_multiples=(1,),
               needle_depths=(0.0, 0.5, 1.0), needle_seeds=2, ring=False)


def configure(parser: argparse.ArgumentParser) -> None:
    from lwm.serve.chat_cli import add_model_arguments

    parser.description = (
        "Evaluate a model on held-out seeds of the synthetic world (video QA by question type, questions in one "
        "multi-turn chat, captions, text->image, text->video, continuation, tokenizer PSNR) and on needle "
        "retrieval at 1x, 2x, 4x the trained length (with RoPE scaling, and across 2 ring ranks). Prints a table "
        "and writes OUT/report.json and PNGs. Exits 1 if a score misses its bar."
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="where report.json and the PNGs go")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small subset for CI ({QUICK.seeds} clips, {QUICK.video_frames}-frame videos, "
                        "needles at 1x only, no ring)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASK",
                        help=f"what to measure (default: all): {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"held-out clips per world task (default {FULL.seeds}; --quick {QUICK.seeds})")
    parser.add_argument("--video-frames", type=int, default=None,
                        help=f"frames per text->video sample (default {FULL.video_frames}; --quick {QUICK.video_frames})")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of the drawing tasks (0: greedy; text is always greedy)")
    parser.add_argument("--trained-length", type=int, default=None, metavar="N",
                        help="the context the model was trained at, in tokens (default: its max_position_embeddings)")
    parser.add_argument("--needle-multiples", type=int, nargs="+", default=None, metavar="M",
                        help="needle lengths as multiples of the trained length (default 1 2 4; --quick 1)")
    parser.add_argument("--needle-seeds", type=int, default=None,
                        help=f"needle examples per length and depth (default {FULL.needle_seeds}; --quick {QUICK.needle_seeds})")
    parser.add_argument("--rope-scaling", nargs="+", default=["none", "ntk"], choices=["none", "ntk", "linear"],
                        help="how RoPE is stretched beyond the trained length (default: none ntk)")
    parser.add_argument("--ring", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the needles at 1x across 2 ring ranks on gloo (default: on; --quick off)")
    parser.add_argument("--bars", default=None, metavar="FILE.json",
                        help=f"bars to meet (default: the model folder's {BARS_FILE}, if any)")
    parser.add_argument("--bar", action="append", default=[], metavar="METRIC>=X",
                        help="a bar to meet, e.g. video_qa.accuracy>=0.9 or continuation.trajectory_error<=6; repeatable")


def run(args: argparse.Namespace) -> int:
    from lwm.api import model_folder
    from lwm.eval.bars import check_bars, load_bars, parse_bar
    from lwm.serve.chat_cli import load_model

    try:
        folder = model_folder(args.model)
        bars = [parse_bar(text) for text in args.bar]
        bars_file = Path(args.bars) if args.bars else folder / BARS_FILE
        if not args.bars and not bars_file.is_file():
            bars_file = None
        if bars_file is not None:
            bars += load_bars(bars_file)
    except (FileNotFoundError, ValueError) as error:
        print(f"lwm eval: {error}", file=sys.stderr)
        return 1
    lwm = load_model(args)
    if lwm is None:
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = evaluate(lwm, folder, args)
    except ValueError as error:
        print(f"lwm eval: {error}", file=sys.stderr)
        return 1
    report["bars"] = check_bars(bars, report["metrics"], report["tasks_run"])
    report["bars_file"] = None if bars_file is None else str(bars_file)
    write_outputs(report, out)
    failed = [bar for bar in report["bars"] if bar["passed"] is False]
    if failed:
        print(f"lwm eval: {len(failed)} of {len(bars)} bars not met: "
              + ", ".join(f"{bar['metric']} {bar['op']} {bar['value']:g}" for bar in failed), file=sys.stderr)
        return 1
    return 0


def evaluate(lwm, folder: Path, args: argparse.Namespace) -> dict:
    """The report (without bars) of the tasks `args` asks for; PNG rows ride along under "grids"."""
    from lwm.eval.needle import NeedleEvalConfig, evaluate_needle
    from lwm.eval.report import flat_metrics
    from lwm.eval.world import LWMSubject, WorldEvalConfig, evaluate_world

    preset = QUICK if args.quick else FULL
    world_config = WorldEvalConfig(
        seeds=preset.seeds if args.seeds is None else args.seeds,
        video_frames=preset.video_frames if args.video_frames is None else args.video_frames,
        context_frames=preset.context_frames,
        continuation_frames=preset.continuation_frames,
        temperature=args.temperature,
    )
    world_tasks = [task for task in WORLD_TASKS if task in args.tasks]
    results = evaluate_world(LWMSubject(lwm, temperature=args.temperature), world_tasks, world_config,
                             vqgan=lwm.processor.vqgan, progress=True)
    tasks = {task: result.summary for task, result in results.items()}
    grids = {task: result.grid for task, result in results.items()}
    timings = {task: result.seconds for task, result in results.items()}
    needle_config = None
    if "needle" in args.tasks:
        multiples = tuple(args.needle_multiples or preset.needle_multiples)
        ring = preset.ring if args.ring is None else args.ring
        needle_config = NeedleEvalConfig(
            trained_length=lwm.context_length if args.trained_length is None else args.trained_length,
            multiples=multiples,
            depths=preset.needle_depths,
            seeds=preset.needle_seeds if args.needle_seeds is None else args.needle_seeds,
            rope_scalings=tuple(args.rope_scaling),
            ring_multiples=(1,) if ring and 1 in multiples else (),
        )
        start = time.perf_counter()
        tasks["needle"] = evaluate_needle(lwm.model, lwm.processor, needle_config, model_dir=folder, progress=True)
        timings["needle"] = time.perf_counter() - start
    return {
        "model": str(args.model),
        "quick": bool(args.quick),
        "tasks_run": list(tasks),
        "config": {"world": asdict(world_config), "needle": asdict(needle_config) if needle_config else None},
        "seconds": timings,
        "metrics": flat_metrics(tasks),
        "tasks": tasks,
        "grids": grids,
    }


def write_outputs(report: dict, out: Path) -> None:
    """Prints the table; writes report.json, one PNG grid per drawing task and the needle heat-map."""
    from lwm.eval.report import format_table, heatmap, video_grid, write_json

    grids = report.pop("grids")
    pictures = []
    for task, rows in grids.items():
        if rows:
            video_grid(rows, out / f"{task}.png")
            pictures.append(f"{task}.png")
    if "needle" in report["tasks"]:
        heatmap(report["tasks"]["needle"]["cells"], out / "needle_heatmap.png")
        pictures.append("needle_heatmap.png")
    report["pictures"] = pictures
    write_json(report, out / "report.json")
    print(format_table(report["metrics"], report["bars"]))
    print(f"\nwrote {out / 'report.json'}" + (f" and {', '.join(pictures)}" if pictures else ""))
