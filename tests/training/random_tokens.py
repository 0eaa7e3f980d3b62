"""A small dataset of random token examples in the format of `lwm data tokenize` (lwm/data/tokenize.py).

Examples mix text and vision ids of the tiny model and carry a loss mask that trains most of their
tokens, so the packing loader, the loss weights and both halves of LWM's loss are all exercised
without a tokenizer or a VQGAN.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lwm.data.tokenize import FORMAT, INDEX_NAME, VERSION
from lwm.model import LWMConfig


def write_random_tokens(
    directory: str | Path, examples: int = 64, seed: int = 0, min_length: int = 8, max_length: int = 48
) -> Path:
    config = LWMConfig.from_preset("tiny")
    text, codes = config.vocab_size, config.num_vision_codes
    rng = np.random.default_rng(seed)
    # A learnable pattern so that the loss can fall fast: text walks a fixed cycle of 32 text ids,
    # then vision walks a fixed cycle of 32 codes, from random starting points.
    text_cycle, vision_cycle = rng.permutation(np.arange(3, text))[:32], text + rng.permutation(codes)[:32]
    ids, masks, tasks = [], [], []
    for index in range(examples):
        length = int(rng.integers(min_length, max_length + 1))
        split = int(rng.integers(2, length - 1))
        walk = lambda cycle, n: cycle[(int(rng.integers(len(cycle))) + np.arange(n)) % len(cycle)]  # noqa: E731
        tokens = np.concatenate([walk(text_cycle, split), walk(vision_cycle, length - split)]).astype(np.int32)
        mask = np.ones(length, dtype=np.uint8)
        mask[: int(rng.integers(0, 4))] = 0  # a short untrained prompt
        ids.append(tokens)
        masks.append(mask)
        tasks.append("random-a" if index % 3 else "random-b")
    directory = Path(directory)
    shard = directory / "shards" / "00000"
    shard.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in ids])]).astype(np.int64)
    np.save(shard / "input_ids.npy", np.concatenate(ids))
    np.save(shard / "loss_mask.npy", np.concatenate(masks))
    np.save(shard / "offsets.npy", offsets)
    (shard / "meta.json").write_text(json.dumps({"tasks": tasks, "lines": list(range(examples)), "bad_records": []}))
    index = {
        "format": FORMAT, "version": VERSION, "text_vocab_size": text, "codebook_size": codes,
        "codes_per_frame": 4, "eof_token_id": config.eof_token_id, "eov_token_id": config.eov_token_id,
        "examples": examples, "tokens": int(offsets[-1]), "tasks": {t: tasks.count(t) for t in set(tasks)},
        "bad_records": 0, "shards": [{"path": "shards/00000", "examples": examples, "tokens": int(offsets[-1])}],
    }
    (directory / INDEX_NAME).write_text(json.dumps(index))
    return directory
