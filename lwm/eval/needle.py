"""Needle retrieval against context length: 1x, 2x, 4x the trained length, with RoPE θ scaling, on one
process and across 2 ring ranks.

Each example is `lwm.world.needles.make_example` at a held-out seed: a haystack with one needle at a
depth, asked as one user message (the layout `NeedleExample.to_record` trains). The model answers
greedily, text only; an answer is right when its first number is the needle's (`is_correct`).
Lengths count the whole prompt in tokens plus the answer's budget, so an example of length L fits
exactly in a context of L.

Beyond the trained length RoPE meets positions it never saw. `ROPE_SCALINGS` are the ways to stretch
it, by the factor s = length / trained length:

- "none": the trained θ;
- "ntk": NTK-aware θ scaling, θ' = θ · s^(d / (d - 2)) (d the head size): low frequencies stretch by
  about s, the highest stay as they are;
- "linear": position interpolation, positions divided by s (transformers' "linear" rope type).

At 1x every scaling is the trained RoPE, so it is measured once. Across ranks, the model runs with
`attn_implementation="ring"` in 2 gloo processes: the prompt is prefilled with ring attention and
decoded with the KV cache sharded (`answer` with a `SequenceParallel`); the report gives its accuracy
and how often its answer equals the one-process answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from tqdm import tqdm

from lwm.generation import GREEDY, TextOnlyLogitsProcessor, iter_tokens
from lwm.parallel import SequenceParallel, free_local_port
from lwm.world import needles, split_seeds

ROPE_SCALINGS: tuple[str, ...] = ("none", "ntk", "linear")
RING_RANKS = 2


@dataclass(frozen=True)
class NeedleEvalConfig:
    trained_length: int  # tokens
    multiples: tuple[int, ...] = (1, 2, 4)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seeds: int = 4  # examples per (length, depth), the first held-out seeds
    rope_scalings: tuple[str, ...] = ("none", "ntk")
    ring_multiples: tuple[int, ...] = (1,)  # lengths also run across 2 ring ranks; () for none
    max_new_tokens: int = 12
    digits: int = 7

    def __post_init__(self):
        if self.trained_length < 1:
            raise ValueError(f"trained_length must be positive, got {self.trained_length}")
        if not self.multiples or min(self.multiples) < 1:
            raise ValueError(f"multiples must be positive integers, got {self.multiples}")
        if not self.depths or any(not 0 <= depth <= 1 for depth in self.depths):
            raise ValueError(f"depths must lie in [0, 1], got {self.depths}")
        unknown = set(self.rope_scalings) - set(ROPE_SCALINGS)
        if unknown or not self.rope_scalings:
            raise ValueError(f"rope_scalings must be some of {', '.join(ROPE_SCALINGS)}, got {self.rope_scalings}")
        if not set(self.ring_multiples) <= set(self.multiples):
            raise ValueError(f"ring_multiples {self.ring_multiples} must be among the multiples {self.multiples}")
        if self.seeds < 1 or self.max_new_tokens < 1:
            raise ValueError("seeds and max_new_tokens must be at least 1")


@dataclass(frozen=True)
class Setting:
    """One row of the heat-map: a length multiple, a RoPE scaling and a number of ranks."""

    multiple: int
    scaling: str
    ranks: int = 1

    @property
    def name(self) -> str:
        """The metric suffix and heat-map label: 1x, 2x.ntk, ring2.1x."""
        name = f"{self.multiple}x" if self.multiple == 1 else f"{self.multiple}x.{self.scaling}"
        return name if self.ranks == 1 else f"ring{self.ranks}.{name}"


def scaled_rope(rope: dict, scaling: str, factor: float, head_dim: int) -> dict:
    """transformers rope parameters stretched by `factor` (see the module docstring)."""
    if factor == 1 or scaling == "none":
        return dict(rope)
    if scaling == "ntk":
        return {**rope, "rope_theta": rope["rope_theta"] * factor ** (head_dim / (head_dim - 2))}
    if scaling == "linear":
        return {**rope, "rope_type": "linear", "factor": float(factor)}
    raise ValueError(f"unknown RoPE scaling {scaling!r}; expected one of {', '.join(ROPE_SCALINGS)}")


@contextlib.contextmanager
def rope_parameters(model, rope: dict):
    """Runs the model with these rope parameters, then restores its own."""
    saved = dict(model.config.rope_parameters)
    _set_rope(model, rope)
    try:
        yield
    finally:
        _set_rope(model, saved)


def _set_rope(model, rope: dict) -> None:
    model.config.rope_parameters = dict(rope)
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config).to(rotary.inv_freq.device)


def prompt_ids(processor, example: needles.NeedleExample) -> list[int]:
    """The example as a one-message chat ending with the assistant prompt."""
    message = {"role": "user", "content": [{"type": "text", "text": example.prompt}]}
    return processor.apply_chat_template([message], add_generation_prompt=True)["input_ids"].tolist()


def token_counter(processor, max_new_tokens: int):
    """Counts a haystack (needles included) as the tokens of its whole prompt plus the answer budget.

    The question is the one with the longest key, so any example counted this way fits.
    """
    questions = [needles.QUESTION.format(key=key) for key in needles.KEYS]
    longest = max(questions, key=lambda question: len(processor.encode_text(question)))

    def count(context: str) -> int:
        example = needles.NeedleExample(context, longest, "", ())
        return len(prompt_ids(processor, example)) + max_new_tokens

    return count


def examples(processor, config: NeedleEvalConfig) -> list[tuple[int, float, needles.NeedleExample]]:
    """(multiple, depth, example) for every multiple x depth x held-out seed."""
    count = token_counter(processor, config.max_new_tokens)
    seeds = split_seeds("held_out", config.seeds)
    found = []
    for multiple in config.multiples:
        length = multiple * config.trained_length
        try:
            swept = needles.sweep([length], config.depths, seeds, count, digits=config.digits)
        except ValueError as error:
            raise ValueError(f"needle examples of {length} tokens: {error}") from None
        found += [(multiple, depth, example) for _, depth, example in swept]
    return found


def settings(config: NeedleEvalConfig) -> list[Setting]:
    one = [Setting(m, scaling) for m in config.multiples for scaling in (config.rope_scalings if m > 1 else ["none"])]
    ring = [Setting(s.multiple, s.scaling, RING_RANKS) for s in one if s.multiple in config.ring_multiples]
    return one + ring


@torch.no_grad()
def answer(model, processor, ids: list[int], max_new_tokens: int,
           sequence_parallel: SequenceParallel | None = None) -> str:
    """The greedy text reply to a prompt, up to the end of the turn (with `sequence_parallel`, decoded
    with the KV cache sharded over its group; every rank gets the same reply)."""
    tokens = iter_tokens(model, torch.tensor(ids, device=model.device), schedule=[(max_new_tokens, GREEDY)],
                         processors=[TextOnlyLogitsProcessor(processor.text_vocab_size)],
                         sequence_parallel=sequence_parallel)
    reply = []
    for token in tokens:
        if int(token[0]) == processor.eos_token_id:
            break
        reply.append(int(token[0]))
    tokens.close()
    return processor.tokenizer.decode(reply, skip_special_tokens=True)


def evaluate_needle(model, processor, config: NeedleEvalConfig, model_dir: str | os.PathLike | None = None,
                    progress: bool = False) -> dict:
    """Accuracy per (setting, depth); ring settings need the model's folder (each rank loads it)."""
    cases = examples(processor, config)
    head_dim = model.config.head_dim
    base_rope = dict(model.config.rope_parameters)
    rows = settings(config)
    if any(row.ranks > 1 for row in rows) and model_dir is None:
        raise ValueError("the needle eval across ring ranks needs the model folder (model_dir)")

    replies: dict[Setting, list[str]] = {}
    for row in tqdm([row for row in rows if row.ranks == 1], desc="needles", disable=not progress):
        rope = scaled_rope(base_rope, row.scaling, row.multiple, head_dim)
        with rope_parameters(model, rope):
            replies[row] = [answer(model, processor, prompt_ids(processor, example), config.max_new_tokens)
                            for multiple, _, example in cases if multiple == row.multiple]
    ring_rows = [row for row in rows if row.ranks > 1]
    if ring_rows:
        jobs = [{"rope": scaled_rope(base_rope, row.scaling, row.multiple, head_dim),
                 "prompts": [prompt_ids(processor, example) for m, _, example in cases if m == row.multiple]}
                for row in ring_rows]
        for row, ring_replies in zip(ring_rows, run_ring(model_dir, jobs, config.max_new_tokens)):
            replies[row] = ring_replies

    cells, metrics = [], {}
    for row in rows:
        row_cases = [(depth, example) for multiple, depth, example in cases if multiple == row.multiple]
        right = [example.is_correct(reply) for (_, example), reply in zip(row_cases, replies[row])]
        for depth in config.depths:
            hits = [ok for (d, _), ok in zip(row_cases, right) if d == depth]
            cells.append({"setting": row.name, "multiple": row.multiple, "length": row.multiple * config.trained_length,
                          "scaling": row.scaling, "ranks": row.ranks, "depth": depth, "correct": sum(hits),
                          "total": len(hits), "accuracy": sum(hits) / len(hits)})
        metrics[f"accuracy@{row.name}"] = sum(right) / len(right)
        if row.ranks > 1:
            alone = replies[Setting(row.multiple, row.scaling)]
            same = [a == b for a, b in zip(replies[row], alone)]
            metrics[f"agreement@{row.name}"] = sum(same) / len(same)
    first = [example for multiple, _, example in cases if multiple == rows[0].multiple]
    samples = [{"setting": rows[0].name, "question": example.question, "answer": example.answer, "reply": reply}
               for example, reply in zip(first[:4], replies[rows[0]])]
    return {
        "metrics": metrics,
        "trained_length": config.trained_length,
        "lengths": [m * config.trained_length for m in config.multiples],
        "depths": list(config.depths),
        "seeds": list(split_seeds("held_out", config.seeds)),
        "rope": {row.name: scaled_rope(base_rope, row.scaling, row.multiple, head_dim) for row in rows if row.ranks == 1},
        "cells": cells,
        "samples": samples,
    }


# ---------------------------------------------------------------------------------------------------
# Across ring ranks
# ---------------------------------------------------------------------------------------------------


def run_ring(model_dir: str | os.PathLike, jobs: list[dict], max_new_tokens: int,
             timeout_s: float = 600) -> list[list[str]]:
    """Replies to each job's prompts under its rope parameters, decoded across `RING_RANKS` gloo processes."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "replies.json"
        mp.start_processes(
            _ring_rank,
            args=(RING_RANKS, free_local_port(), str(model_dir), jobs, max_new_tokens, str(result), timeout_s),
            nprocs=RING_RANKS,
            start_method="spawn",  # fork is unsafe with threads on macOS; spawn works everywhere
        )
        return json.loads(result.read_text())


def _ring_rank(rank, world_size, port, model_dir, jobs, max_new_tokens, result_path, timeout_s):
    import torch.distributed as dist

    from lwm.model import LWMForCausalLM
    from lwm.tokenizers import LWMProcessor

    torch.set_num_threads(1)  # the ranks share the machine's cores
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # all ranks are local; the hostname may not resolve
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    try:
        model = LWMForCausalLM.from_pretrained(model_dir, attn_implementation="ring").eval()
        processor = LWMProcessor.from_pretrained(model_dir)
        replies = []
        for job in jobs:
            with rope_parameters(model, job["rope"]):
                replies.append([answer(model, processor, ids, max_new_tokens, SequenceParallel())
                                for ids in job["prompts"]])
        if rank == 0:
            Path(result_path).write_text(json.dumps(replies))
    finally:
        dist.destroy_process_group()

