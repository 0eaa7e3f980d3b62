"""Pre-tokenization: a JSONL manifest -> a sharded dataset of token ids (`lwm data tokenize`).

Every media file goes through the VQGAN once (its codes are reused by all the examples of a shard
that mention it); the text tokenizer and `LWMProcessor` lay the examples out. Output folder:

    plan.json                 what this run tokenizes (manifest hash, shard size, ...), for resuming
    shards/00000/             one shard per `shard_size` manifest records, written atomically:
        input_ids.npy         int32, all the shard's examples back to back
        loss_mask.npy         uint8, 1 where the token is trained (labels = ids there, else -100)
        offsets.npy           int64 [examples + 1], example i is [offsets[i], offsets[i+1])
        meta.json             per example: task and manifest line; the shard's bad records
    index.json                written last: vocab layout, shards, counts (a dataset is complete with it)
    bad_records.jsonl         one line per record that could not be tokenized, with the reason

A shard is built in a temporary folder and renamed into place, so an interrupted run leaves only
whole shards; running the same command again skips them. A record whose media is missing or
corrupt, or that is too long, is logged and counted, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lwm.data.manifest import Record, read_manifest
from lwm.tokenizers.modeling_vqgan import VQGAN
from lwm.tokenizers.processing_lwm import LWMProcessor, map_media_parts
from lwm.tokenizers.text import load_text_tokenizer

logger = logging.getLogger(__name__)

FORMAT = "lwm-tokens"
VERSION = 1
INDEX_NAME, PLAN_NAME, BAD_RECORDS_NAME, SHARDS_DIR = "index.json", "plan.json", "bad_records.jsonl", "shards"


@dataclass
class TokenizeConfig:
    manifest: str
    out_dir: str
    tokenizer_dir: str
    vqgan_dir: str
    workers: int = 1
    shard_size: int = 1000  # manifest records per shard
    max_frames: int | None = None
    max_length: int | None = None
    device: str = "cpu"


@dataclass
class TokenizeReport:
    examples: int = 0
    tokens: int = 0
    shards_written: int = 0
    shards_skipped: int = 0  # already present from an earlier, interrupted run
    bad_records: list[dict] = field(default_factory=list)  # {"line", "error"}

    def summary(self) -> str:
        lines = [
            f"{self.examples} examples, {self.tokens} tokens; {self.shards_written} shards written, "
            f"{self.shards_skipped} already done"
        ]
        if self.bad_records:
            lines.append(f"{len(self.bad_records)} bad record(s) skipped:")
            lines += [f"  line {bad['line']}: {bad['error']}" for bad in self.bad_records[:20]]
            if len(self.bad_records) > 20:
                lines.append(f"  ... see {BAD_RECORDS_NAME} for all {len(self.bad_records)}")
        return "\n".join(lines)


def tokenize_manifest(config: TokenizeConfig, progress: bool = True) -> TokenizeReport:
    """Tokenize `config.manifest` into `config.out_dir`, resuming from the shards already there."""
    if config.workers < 1 or config.shard_size < 1:
        raise ValueError(f"workers and shard_size must be at least 1, got {config.workers} and {config.shard_size}")
    records = read_manifest(config.manifest)
    out = Path(config.out_dir)
    shards_dir = out / SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_plan(out, config, len(records))
    for stale in shards_dir.glob(".tmp-*"):  # partial shards of an interrupted run
        shutil.rmtree(stale)

    chunks = [records[start : start + config.shard_size] for start in range(0, len(records), config.shard_size)]
    todo = [index for index in range(len(chunks)) if not (shards_dir / _shard_name(index)).is_dir()]
    report = TokenizeReport(shards_skipped=len(chunks) - len(todo))
    bar = tqdm(total=len(records), unit="record", desc="tokenize", disable=not progress)
    bar.update(sum(len(chunks[index]) for index in set(range(len(chunks))) - set(todo)))
    settings = (config.tokenizer_dir, config.vqgan_dir, config.max_frames, config.max_length, config.device)
    processor = _build_processor(*settings)
    if config.workers == 1:
        for index in todo:
            tokenize_shard(processor, index, chunks[index], shards_dir)
            bar.update(len(chunks[index]))
    else:
        context = get_context("spawn")  # forking a process that holds torch threads can deadlock
        with ProcessPoolExecutor(config.workers, mp_context=context, initializer=_init_worker, initargs=settings) as pool:
            futures = {pool.submit(_tokenize_shard_in_worker, i, chunks[i], shards_dir): len(chunks[i]) for i in todo}
            for future in as_completed(futures):
                future.result()
                bar.update(futures[future])
    bar.close()
    report.shards_written = len(todo)
    _write_index(out, len(chunks), report, processor)
    return report


# ----------------------------------------------------------------------------- one shard (in a worker)

_processor: LWMProcessor | None = None


def _build_processor(tokenizer_dir, vqgan_dir, max_frames, max_length, device) -> LWMProcessor:
    vqgan = VQGAN.from_pretrained(vqgan_dir, device=device)
    return LWMProcessor(load_text_tokenizer(tokenizer_dir), vqgan, max_frames=max_frames, max_length=max_length)


def _init_worker(*settings) -> None:
    global _processor
    torch.set_num_threads(1)  # the worker processes are the parallelism
    _processor = _build_processor(*settings)


def _tokenize_shard_in_worker(index: int, records: list[Record], shards_dir: Path) -> None:
    tokenize_shard(_processor, index, records, shards_dir)


def tokenize_shard(processor: LWMProcessor, index: int, records: list[Record], shards_dir: Path) -> None:
    """Tokenize one shard's records and write the shard; bad records are logged and kept in its meta."""
    examples, bad, codes_cache = [], [], {}
    for record in records:
        try:
            for encoded in examples_of(record, processor, codes_cache):
                examples.append((encoded, record))
        except (ValueError, OSError) as error:  # corrupt/missing media, too long, bad messages
            logger.warning("manifest line %d skipped: %s", record.line, error)
            bad.append({"line": record.line, "error": str(error)})
    _write_shard(shards_dir, index, examples, bad)


def examples_of(record: Record, processor: LWMProcessor, codes_cache: dict) -> list[dict]:
    """The training examples of one manifest record (two for a captioned image or video)."""
    if record.kind == "text":
        return [processor.text_example(record.data["text"])]
    if record.kind == "messages":
        messages = map_media_parts(record.data["messages"],
                                   lambda _, part, context: _with_codes(part, processor, codes_cache, context))
        return [processor.apply_chat_template(messages)]
    part = _with_codes({"type": record.kind, "path": record.data[record.kind]}, processor, codes_cache)
    direction = record.data.get("direction", "both")
    if direction == "unconditional":
        return [processor.unconditional_example(part)]
    understanding, generation = processor.pair_examples(part, record.data["caption"])
    return {"both": [understanding, generation], "understanding": [understanding], "generation": [generation]}[direction]


def _with_codes(part: dict, processor: LWMProcessor, codes_cache: dict, context: dict | None = None) -> dict:
    """A media part as its codes (`context`: the video part it continues, as in `LWMProcessor.encode_media`)."""
    key = (part["type"], part["path"], None if context is None else context["path"])
    if key not in codes_cache:
        codes_cache[key] = processor.encode_media(part, context)
    return {"type": part["type"], "codes": codes_cache[key]}


def _write_shard(shards_dir: Path, index: int, examples: list[tuple[dict, Record]], bad: list[dict]) -> None:
    temporary = shards_dir / f".tmp-{_shard_name(index)}-{os.getpid()}"
    temporary.mkdir()
    lengths = [len(encoded["input_ids"]) for encoded, _ in examples]
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    ids = [encoded["input_ids"].numpy().astype(np.int32) for encoded, _ in examples]
    masks = [(encoded["labels"] != -100).numpy().astype(np.uint8) for encoded, _ in examples]
    np.save(temporary / "input_ids.npy", np.concatenate(ids) if ids else np.zeros(0, np.int32))
    np.save(temporary / "loss_mask.npy", np.concatenate(masks) if masks else np.zeros(0, np.uint8))
    np.save(temporary / "offsets.npy", offsets)
    meta = {
        "tasks": [record.task for _, record in examples],
        "lines": [record.line for _, record in examples],
        "bad_records": bad,
    }
    (temporary / "meta.json").write_text(json.dumps(meta))
    os.replace(temporary, shards_dir / _shard_name(index))


def _shard_name(index: int) -> str:
    return f"{index:05d}"


# ----------------------------------------------------------------------------- plan and index


def _check_or_write_plan(out: Path, config: TokenizeConfig, num_records: int) -> None:
    """Resuming is only safe for the same manifest and sharding; refuse to mix runs."""
    plan = {
        "manifest_sha256": hashlib.sha256(Path(config.manifest).read_bytes()).hexdigest(),
        "records": num_records,
        "shard_size": config.shard_size,
        "max_frames": config.max_frames,
        "max_length": config.max_length,
    }
    path = out / PLAN_NAME
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(key for key in plan if previous.get(key) != plan[key])
        if changed:
            raise ValueError(
                f"{out} holds a run with different {changed}; use a new --out folder or delete this one"
            )
    else:
        path.write_text(json.dumps(plan, indent=2) + "\n")


def _write_index(out: Path, num_shards: int, report: TokenizeReport, processor: LWMProcessor) -> None:
    shards, tasks = [], {}
    for index in range(num_shards):
        folder = out / SHARDS_DIR / _shard_name(index)
        meta = json.loads((folder / "meta.json").read_text())
        offsets = np.load(folder / "offsets.npy")
        shards.append({"path": f"{SHARDS_DIR}/{_shard_name(index)}", "examples": len(offsets) - 1, "tokens": int(offsets[-1])})
        report.bad_records += meta["bad_records"]
        for task in meta["tasks"]:
            tasks[task] = tasks.get(task, 0) + 1
    report.examples = sum(shard["examples"] for shard in shards)
    report.tokens = sum(shard["tokens"] for shard in shards)
    index = {
        "format": FORMAT,
        "version": VERSION,
        "text_vocab_size": processor.text_vocab_size,
        "codebook_size": processor.codebook_size,
        "codes_per_frame": processor.codes_per_frame,
        "eof_token_id": processor.eof_token_id,
        "eov_token_id": processor.eov_token_id,
        "examples": report.examples,
        "tokens": report.tokens,
        "tasks": tasks,
        "bad_records": len(report.bad_records),
        "shards": shards,
    }
    with (out / BAD_RECORDS_NAME).open("w") as sink:
        for bad in report.bad_records:
            sink.write(json.dumps(bad) + "\n")
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
