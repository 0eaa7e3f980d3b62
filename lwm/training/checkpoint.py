"""Checkpoints that an interrupted save can never break, and `save_pretrained` exports.

    checkpoints/
        latest                      the tag of the last complete checkpoint (DeepSpeed's own format)
        stage0-step000010/          DeepSpeed's files (model, optimiser, scheduler; ZeRO shards per rank)
            trainer_state_rank00000.pt   per rank: stage and step, data-loader position, RNG states
        tmp-stage0-step000020/      a save in progress (or one that was interrupted): never read

Every rank writes into `tmp-<tag>`; only when all ranks have finished does rank 0 rename it to
`<tag>` and then replace `latest` atomically (write a temporary file, `os.replace`). A crash at any
moment leaves `latest` pointing at a complete checkpoint. All ranks must see one shared filesystem
(true on one node; on several nodes use a shared mount for `output_dir`).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
TEMPORARY_PREFIX = "tmp-"


def checkpoint_tag(stage: int, step: int) -> str:
    return f"stage{stage}-step{step:06d}"


def latest_tag(directory: str | Path) -> str | None:
    """The tag of the last complete checkpoint in `directory`, or None when there is none."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not (Path(directory) / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint {tag!r}, which is not in {directory}")
    return tag


def rng_state() -> dict:
    # Only tensors and plain Python values, so the file loads with torch.load(weights_only=True).
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine, directory: str | Path, tag: str, trainer_state: dict, keep_last: int) -> None:
    """Saves on every rank (collective); `latest` moves to `tag` only once every rank is done."""
    directory = Path(directory)
    temporary = TEMPORARY_PREFIX + tag
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(directory / temporary, ignore_errors=True)  # left over from an interrupted save
    dist.barrier()
    engine.save_checkpoint(str(directory), tag=temporary, save_latest=False)
    torch.save({**trainer_state, "rng": rng_state()}, directory / temporary / _state_name(rank))
    dist.barrier()
    if rank == 0:
        shutil.rmtree(directory / tag, ignore_errors=True)
        os.replace(directory / temporary, directory / tag)
        _write_atomically(directory / LATEST, tag)
        _prune(directory, keep_last)
    dist.barrier()


def load_checkpoint(engine, directory: str | Path, tag: str) -> dict:
    """Restores the engine (model, optimiser, scheduler) and this rank's RNG; returns its trainer state."""
    directory = Path(directory)
    state_path = directory / tag / _state_name(dist.get_rank())
    if not state_path.is_file():
        raise FileNotFoundError(
            f"{state_path} is missing: checkpoint {tag} was written by a run with a different number of ranks"
        )
    load_path, _ = engine.load_checkpoint(str(directory), tag=tag)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {directory / tag}")
    state = torch.load(state_path, weights_only=True)
    set_rng_state(state.pop("rng"))
    return state


def export_pretrained(engine, directory: str | Path, processor=None, drawing=None) -> None:
    """`save_pretrained` (safetensors) of the engine's model, gathering ZeRO-3 partitions (collective).

    With an `LWMProcessor`, its files go into the same folder, which then loads with `LWM.from_pretrained`;
    with a `DrawingConfig`, its drawing_config.json too.
    """
    model, is_main = engine.module, dist.get_rank() == 0
    state = None
    if engine.zero_optimization_partition_weights():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if is_main:
                state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    elif is_main:
        state = model.state_dict()
    if is_main:
        directory = Path(directory)
        temporary = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        model.save_pretrained(temporary, state_dict=state, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(temporary)
        if drawing is not None:
            drawing.save(temporary)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(temporary, directory)
    dist.barrier()


def _state_name(rank: int) -> str:
    return f"trainer_state_rank{rank:05d}.pt"


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _prune(directory: Path, keep_last: int) -> None:
    tags = sorted(
        (entry for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith(TEMPORARY_PREFIX)),
        key=lambda entry: entry.stat().st_mtime,
    )
    for old in tags[:-keep_last]:
        shutil.rmtree(old)
