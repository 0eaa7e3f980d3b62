"""`lwm data ...`: render the synthetic world as a manifest; build pre-tokenized datasets from manifests."""

from __future__ import annotations

import argparse
import logging
import sys

from lwm.cli.main import add_command


def configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    tokenize = add_command(commands, "tokenize", _run_tokenize, help="tokenize a JSONL manifest into sharded token files")
    tokenize.add_argument("manifest", help="the JSONL manifest")
    tokenize.add_argument("--out", required=True, help="output folder (created; reused to resume)")
    tokenize.add_argument("--tokenizer", required=True, help="text tokenizer: a folder or a tokenizer.model file")
    tokenize.add_argument("--vqgan", required=True, help="VQGAN folder (written by VQGAN.save_pretrained)")
    tokenize.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    tokenize.add_argument("--shard-size", type=int, default=1000, help="manifest records per shard (default: 1000)")
    tokenize.add_argument("--max-frames", type=int, default=None, help="frames kept per video, spread uniformly")
    tokenize.add_argument("--max-length", type=int, default=None, help="skip (and count) longer examples")
    tokenize.add_argument("--device", default="cpu", help="device for the VQGAN (default: cpu)")
    tokenize.add_argument("--no-progress", action="store_true", help="no progress bar")

    world = add_command(commands, "world", _run_world, help="render synthetic-world clips and a manifest of their tasks")
    world.add_argument("out", help="output folder")
    world.add_argument("--clips", type=int, default=100,
                       help="number of clips (default: 100; 0 with --needles writes needle records only)")
    world.add_argument("--split", choices=["train", "held_out"], default="train", help="seed range (default: train)")
    world.add_argument("--fps", type=float, default=8.0, help="frame rate of the written videos (default: 8)")
    world.add_argument("--workers", type=int, default=1, help="processes rendering clips (default: 1)")
    # No `choices`: they live in lwm.world, which imports torch; write_world_dataset names the valid ones.
    world.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                       help="what each clip's records train (default: the bundled model's video_caption video_qa "
                            "image_text text_to_video video_continuation text; also video_conversation, 2-4 "
                            "questions in one chat, and unconditional, the still alone for classifier-free "
                            "guidance; docs/data.md)")
    world.add_argument("--qa-types", nargs="+", default=None, metavar="TYPE",
                       help="the question types that video_qa asks (default: all of count colour shape size "
                            "direction bounce next_wall); conversations keep every type")
    world.add_argument("--needles", type=int, default=0,
                       help="also write this many needle-retrieval records (a number hidden in filler text, then "
                            "asked for; training seeds) (default: 0)")
    world.add_argument("--needle-chars", type=int, nargs=2, default=(200, 12000), metavar=("SHORTEST", "LONGEST"),
                       help="haystack lengths in characters, drawn as --needle-spread says (default: 200 12000; "
                            "the world's text tokenizer makes about 4.9 characters a token)")
    world.add_argument("--needle-spread", choices=["uniform", "log"], default="uniform",
                       help="how haystack lengths are drawn between SHORTEST and LONGEST: uniformly (default) or "
                            "log-uniformly, which gives short haystacks, where the copy is learnt first, a larger "
                            "share")
    world.add_argument("--needle-depths", type=float, nargs=2, default=(0.0, 1.0), metavar=("SHALLOWEST", "DEEPEST"),
                       help="where in its haystack a needle is hidden, drawn uniformly between these fractions "
                            "(0: the start; default: 0 1); shallow needles in long haystacks train the longest "
                            "distances")
    world.add_argument("--needle-keys", type=int, nargs=2, default=(1, 1), metavar=("FEWEST", "MOST"),
                       help="needles hidden in each haystack, each with its own key, drawn uniformly between these "
                            "(default: 1 1); with several, the question asks for one of them or for all, as the "
                            "needle eval's multi-needle variants do")
    world.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_tokenize(args: argparse.Namespace) -> int:
    """Run the VQGAN once per media file and the text tokenizer over a JSONL manifest (see docs/data.md),
    writing sharded token files and an index to --out. Interrupted runs resume: finished shards are kept.
    Records with missing or corrupt media are skipped, counted and listed in OUT/bad_records.jsonl."""
    from lwm.data import ManifestError, TokenizeConfig, tokenize_manifest

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = TokenizeConfig(
        manifest=args.manifest,
        out_dir=args.out,
        tokenizer_dir=args.tokenizer,
        vqgan_dir=args.vqgan,
        workers=args.workers,
        shard_size=args.shard_size,
        max_frames=args.max_frames,
        max_length=args.max_length,
        device=args.device,
    )
    try:
        report = tokenize_manifest(config, progress=not args.no_progress)
    except (ManifestError, FileNotFoundError, ValueError) as error:
        print(f"lwm data tokenize: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _run_world(args: argparse.Namespace) -> int:
    """Render clips of the synthetic world (moving coloured shapes) with captions, questions, stills,
    text-to-video prompts and continuation targets, and write OUT/manifest.jsonl. Training seeds start at
    0; held-out seeds start at 1,000,000 (--split held_out)."""
    from lwm.world import DEFAULT_TASKS, QUESTION_TYPES, split_seeds, write_world_dataset

    if args.clips < 0 or args.clips == 0 and args.needles < 1:
        print("lwm data world: --clips must be at least 1 (or 0 with --needles)", file=sys.stderr)
        return 2
    try:
        manifest = write_world_dataset(args.out, split_seeds(args.split, args.clips), fps=args.fps,
                                       tasks=tuple(args.tasks or DEFAULT_TASKS), progress=not args.no_progress,
                                       workers=args.workers, needles=args.needles,
                                       needle_chars=tuple(args.needle_chars), needle_spread=args.needle_spread,
                                       needle_depths=tuple(args.needle_depths),
                                       needle_keys=tuple(args.needle_keys), qa_types=tuple(args.qa_types or QUESTION_TYPES))
    except ValueError as error:
        print(f"lwm data world: {error}", file=sys.stderr)
        return 2
    needles = f", {args.needles} needle records" if args.needles else ""
    print(f"wrote {args.clips} clips{needles} and {manifest}")
    return 0
