"""`lwm eval`: measure a model on the synthetic world and on needle retrieval.

    lwm eval --model bundled                               # the full eval, into runs/eval/bundled-<time>
    lwm eval --quick --out /tmp/eval                       # CI: a small subset, fails under the bars
    lwm eval --model DIR --out eval/ --tasks video_qa needle --seeds 50 --trained-length 4096
    lwm eval --model DIR --tasks needle --needle-base 2560 --needle-multiples 1 2 4 8 16   # a grown context

Prints a table, writes OUT/report.json and PNGs (sample grids of generated videos, the needle
accuracy heat-map), and exits 1 when a score misses its bar (bars from --bar, --bars FILE, or by
default the model folder's eval_bars.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lwm.cli.model_loading import add_model_arguments, load_model
from lwm.eval.bars import BARS_FILE
from lwm.eval.suite import FULL, QUICK, TASKS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a model on held-out seeds of the synthetic world (video QA by question type, questions in one "
        "multi-turn chat, captions, text->image, text->video, continuation, tokenizer PSNR) and on needle "
        "retrieval at 1x, 2x, 4x the trained length (with RoPE scaling, with 2 and 4 needles, and across 2 ring "
        "ranks). Prints a table and the needle heat-map, writes OUT/report.json and PNGs. Exits 1 if a score "
        "misses its bar."
    )
    add_model_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where report.json and the PNGs go (default: runs/eval/<model>-<date>-<time>)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small subset for CI ({QUICK.seeds} clips, {QUICK.video_frames}-frame videos, "
                        "needles at 1x only, no ring)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASK",
                        help=f"what to measure (default: all): {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"held-out clips per world task (default {FULL.seeds}; --quick {QUICK.seeds})")
    parser.add_argument("--first-seed", type=int, default=0, metavar="N",
                        help="start the world tasks' clips at the N-th held-out seed (default 0; e.g. tune drawing "
                        "settings on clips the full eval does not use)")
    parser.add_argument("--video-frames", type=int, default=None,
                        help=f"frames per text->video sample (default {FULL.video_frames}; --quick {QUICK.video_frames})")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature of the drawing tasks (0: greedy; default: the model's drawing "
                        "settings, its drawing_config.json; text is always greedy)")
    parser.add_argument("--log-samples", action="store_true",
                        help="keep every clip's outputs and scores in report.json (default: the first 4 of each "
                        "world task), to compare two models clip by clip on the same seeds")
    parser.add_argument("--trained-length", type=int, default=None, metavar="N",
                        help="the context the model was trained at, in tokens (default: its max_position_embeddings)")
    parser.add_argument("--needle-base", type=int, default=None, metavar="N",
                        help="needle lengths are multiples of N tokens (default: the trained length); for a model "
                        "whose context was grown in stages, its first length, e.g. 2560")
    parser.add_argument("--needle-multiples", type=int, nargs="+", default=None, metavar="M",
                        help="needle lengths as multiples of the base length (default 1 2 4; --quick 1)")
    parser.add_argument("--needle-multi", type=int, nargs="*", default=None, metavar="N",
                        help="also haystacks of N needles, asked for one and for all, at the lengths within the "
                        "trained length (default 2 4; --quick none; give no N for none)")
    parser.add_argument("--needle-seeds", type=int, default=None,
                        help=f"needle examples per length and depth (default {FULL.needle_seeds}; --quick {QUICK.needle_seeds})")
    parser.add_argument("--rope-scaling", nargs="+", default=["none", "ntk"], choices=["none", "ntk", "linear", "yarn"],
                        help="how RoPE is stretched beyond the trained length: as trained, NTK-aware θ, position "
                        "interpolation, or YaRN keeping the frequencies read within the trained length "
                        "(default: none ntk)")
    parser.add_argument("--ring", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the needles at 1x across 2 ring ranks on gloo (default: on; --quick off)")
    parser.add_argument("--bars", default=None, metavar="FILE.json",
                        help=f"bars to meet (default: the model folder's {BARS_FILE}, if any)")
    parser.add_argument("--bar", action="append", default=[], metavar="METRIC>=X",
                        help="a bar to meet, e.g. video_qa.accuracy>=0.9 or continuation.trajectory_error<=6; repeatable")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lwm.api import model_folder
    from lwm.eval.bars import check_bars, load_bars, parse_bar
    from lwm.eval.suite import EvalOptions, default_out_dir, evaluate, write_outputs

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
    options = EvalOptions(
        model=str(args.model), quick=args.quick, tasks=tuple(args.tasks), seeds=args.seeds, first_seed=args.first_seed,
        video_frames=args.video_frames, temperature=args.temperature, log_samples=args.log_samples,
        trained_length=args.trained_length, needle_base=args.needle_base,
        needle_multiples=None if args.needle_multiples is None else tuple(args.needle_multiples),
        needle_multi=None if args.needle_multi is None else tuple(args.needle_multi),
        needle_seeds=args.needle_seeds, rope_scalings=tuple(args.rope_scaling), ring=args.ring,
    )
    out = Path(args.out) if args.out else default_out_dir(args.model)
    try:
        report = evaluate(lwm, folder, options)
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
