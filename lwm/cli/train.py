"""`lwm train CONFIG [key=value ...] [--resume auto]`: train or fine-tune from a YAML config.

One process runs as is; for several, launch the same command with torchrun or deepspeed:

    lwm train configs/train/tiny-world.yaml optimizer.lr=1e-3 --resume auto
    torchrun --nproc_per_node 4 -m lwm train configs/train/tiny-world.yaml parallel.sp_size=2
    deepspeed --hostfile hosts --module lwm train configs/train/tiny-world.yaml
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train LWM from a YAML config over a dp × sp world (DeepSpeed ZeRO, ring attention), stage by "
        "stage. One process here; launch `-m lwm train` with torchrun or deepspeed for several."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("config", help="training config (YAML), e.g. configs/train/tiny-world.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="dotted overrides of config settings, e.g. optimizer.lr=1e-4 stages.0.steps=100 parallel.zero_stage=2",
    )
    parser.add_argument(
        "--resume", choices=["auto"], default=None,
        help="'auto': continue from the last complete checkpoint in OUTPUT_DIR/checkpoints, if there is one",
    )
    parser.add_argument(
        "--export-only", action="store_true",
        help="write a save_pretrained export of the last complete checkpoint to OUTPUT_DIR/pretrained/TAG and exit",
    )
    parser.add_argument(
        "--export-dir", default=None, metavar="DIR",
        help="with --export-only: write the export to DIR (replacing it) instead of OUTPUT_DIR/pretrained/TAG",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lwm.training import ConfigError, Trainer, TrainingDiverged, load_config

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"lwm train: {error}", file=sys.stderr)
        return 2
    if args.export_dir and not args.export_only:
        print("lwm train: --export-dir goes with --export-only", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(config, resume=args.resume)
        exported = trainer.export_latest(args.export_dir) if args.export_only else trainer.run()
    except (ConfigError, FileNotFoundError) as error:
        print(f"lwm train: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"lwm train: {error}", file=sys.stderr)
        return 1
    import torch.distributed as dist

    if dist.get_rank() == 0:
        print(f"lwm train: done; weights exported to {exported}")
    return 0
