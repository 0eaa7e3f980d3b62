"""Needle retrieval against context length: multiples of a base length (1x, 2x, 4x, ... by default the
trained length), with RoPE θ scaling beyond the trained length, on one process and across 2 ring ranks.

Each example is `lwm.world.needles.make_example` at a held-out seed: a haystack with one needle at a
depth, asked as one user message (the layout `NeedleExample.to_record` trains). The model answers
greedily, text only; an answer is right when its first number is the needle's (`is_correct`).
Lengths count the whole prompt in tokens plus the answer's budget, so an example of length L fits
exactly in a context of L. A model whose context was grown in stages (docs/bundled-model.md) is
measured at multiples of its first length (`base_length`), its trained length being the last.

Beyond the trained length RoPE meets positions it never saw. `ROPE_SCALINGS` are the ways to stretch
it, by the factor s = length / trained length:

- "none": the trained θ;
- "ntk": NTK-aware θ scaling, θ' = θ · s^(d / (d - 2)) (d the head size): low frequencies stretch by
  about s, the highest stay as they are;
- "linear": position interpolation, positions divided by s (transformers' "linear" rope type);
- "yarn": YaRN (transformers' "yarn" rope type) as the long-context recipe trains it
  (docs/bundled-model.md, "Long context"): the frequencies that turn fewer than once over the trained
  length slowed by s, those that turn at least twice kept, the attention temperature kept; a model
  already grown with YaRN is stretched s times further from its first length.

Within the trained length every scaling is the trained RoPE, so it is measured once. The multi-needle
variants (as RULER's) hide 2-4 needles in one haystack and ask for the one at each depth, or for all of
them (right when every number is in the reply). Across ranks, the model runs with
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
from lwm.model import yarn_rope
from lwm.parallel import SequenceParallel, free_local_port
from lwm.world import needles, split_seeds

ROPE_SCALINGS: tuple[str, ...] = ("none", "ntk", "linear", "yarn")
# YaRN that keeps what a model reads within its trained length (configs/train/bundled-long.yaml):
# beta_fast, beta_slow, attention_factor
YARN_KEEPING_TRAINED = (2.0, 1.0, 1.0)
RING_RANKS = 2


@dataclass(frozen=True)
class NeedleEvalConfig:
    trained_length: int  # tokens; RoPE is stretched only beyond it
    base_length: int | None = None  # tokens; the lengths are its multiples (None: the trained length)
    multiples: tuple[int, ...] = (1, 2, 4)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seeds: int = 4  # examples per (length, depth), the first held-out seeds
    rope_scalings: tuple[str, ...] = ("none", "ntk")
    ring_multiples: tuple[int, ...] = (1,)  # lengths also run across 2 ring ranks; () for none
    # Haystacks with this many needles (RULER's multi-key and multi-value variants), the question about
    # the one at each depth or about all of them, at every length within the trained length; () for none.
    multi_needles: tuple[int, ...] = ()
    max_new_tokens: int = 12  # per asked needle
    digits: int = 7

    def __post_init__(self):
        if self.trained_length < 1 or (self.base_length is not None and self.base_length < 1):
            raise ValueError(f"trained_length and base_length must be positive, got {self.trained_length}, "
                             f"{self.base_length}")
        if not self.multiples or min(self.multiples) < 1:
            raise ValueError(f"multiples must be positive integers, got {self.multiples}")
        if not self.depths or any(not 0 <= depth <= 1 for depth in self.depths):
            raise ValueError(f"depths must lie in [0, 1], got {self.depths}")
        unknown = set(self.rope_scalings) - set(ROPE_SCALINGS)
        if unknown or not self.rope_scalings:
            raise ValueError(f"rope_scalings must be some of {', '.join(ROPE_SCALINGS)}, got {self.rope_scalings}")
        if not set(self.ring_multiples) <= set(self.multiples):
            raise ValueError(f"ring_multiples {self.ring_multiples} must be among the multiples {self.multiples}")
        if any(not 2 <= n <= len(needles.KEYS) for n in self.multi_needles):
            raise ValueError(f"multi_needles must be needle counts from 2 to {len(needles.KEYS)}, got {self.multi_needles}")
        if self.seeds < 1 or self.max_new_tokens < 1:
            raise ValueError("seeds and max_new_tokens must be at least 1")

    def length(self, multiple: int) -> int:
        """The tokens of a prompt and its answer at this multiple of the base length."""
        return multiple * (self.base_length or self.trained_length)

    def stretch(self, multiple: int) -> float:
        """How far this multiple lies beyond the trained length (1 within it)."""
        return max(1.0, self.length(multiple) / self.trained_length)

    def reply_budget(self, n_needles: int = 1, asks_all: bool = False) -> int:
        """The tokens a reply may take: `max_new_tokens` per asked needle."""
        return self.max_new_tokens * (n_needles if asks_all else 1)


@dataclass(frozen=True)
class Setting:
    """One row of the report: a length multiple, a RoPE scaling, ranks, and the needles asked."""

    multiple: int
    scaling: str | None  # None within the trained length, where every scaling is the trained RoPE
    ranks: int = 1
    needles: int = 1
    asks_all: bool = False

    @property
    def name(self) -> str:
        """The metric suffix and heat-map label: 1x, 2x.ntk, 4x.3needles.all, ring2.1x."""
        name = f"{self.multiple}x" + ("" if self.scaling is None else f".{self.scaling}")
        if self.needles > 1:
            name += f".{self.needles}needles" + (".all" if self.asks_all else "")
        return name if self.ranks == 1 else f"ring{self.ranks}.{name}"

    @property
    def variant(self) -> tuple:
        """What one heat-map panel holds: every length of one kind of question on one kind of run."""
        return (self.ranks, self.needles, self.asks_all)


def scaled_rope(rope: dict, scaling: str, factor: float, head_dim: int, trained_length: int) -> dict:
    """transformers rope parameters stretched by `factor` beyond `trained_length` (see the module docstring)."""
    if factor == 1 or scaling == "none":
        return dict(rope)
    if scaling == "ntk":
        return {**rope, "rope_theta": rope["rope_theta"] * factor ** (head_dim / (head_dim - 2))}
    if scaling == "linear":
        return {**rope, "rope_type": "linear", "factor": float(factor)}
    if scaling == "yarn":
        if rope.get("rope_type") == "yarn":
            return {**rope, "factor": rope["factor"] * factor}
        return yarn_rope(rope["rope_theta"], factor, trained_length, *YARN_KEEPING_TRAINED)
    raise ValueError(f"unknown RoPE scaling {scaling!r}; expected one of {', '.join(ROPE_SCALINGS)}")


@contextlib.contextmanager
def rope_parameters(model, rope: dict):
    """Runs the model with these rope parameters, then restores its own."""
    saved = dict(model.config.rope_parameters)
    model.set_rope(rope)
    try:
        yield
    finally:
        model.set_rope(saved)


def prompt_ids(processor, example: needles.NeedleExample) -> list[int]:
    """The example as a one-message chat ending with the assistant prompt."""
    message = {"role": "user", "content": [{"type": "text", "text": example.prompt}]}
    return processor.apply_chat_template([message], add_generation_prompt=True)["input_ids"].tolist()


def token_counter(processor, max_new_tokens: int, n_needles: int = 1, asks_all: bool = False):
    """Counts a haystack (needles included) as the tokens of its whole prompt plus the answer budget.

    The question is the longest one these needles can be asked, so any example counted this way fits.
    """
    def tokens(text: str) -> int:
        return len(processor.encode_text(text))

    if asks_all:
        longest = needles.question_all(sorted(needles.KEYS, key=tokens)[-n_needles:])
    else:
        longest = max((needles.QUESTION.format(key=key) for key in needles.KEYS), key=tokens)

    def count(context: str) -> int:
        example = needles.NeedleExample(context, longest, "", ())
        return len(prompt_ids(processor, example)) + max_new_tokens

    return count


def examples(processor, config: NeedleEvalConfig, multiples: tuple[int, ...] | None = None, n_needles: int = 1,
             asks_all: bool = False) -> list[tuple[int, float, needles.NeedleExample]]:
    """(multiple, depth, example) for every multiple (default: the config's) x depth x held-out seed."""
    count = token_counter(processor, config.reply_budget(n_needles, asks_all), n_needles, asks_all)
    seeds = split_seeds("held_out", config.seeds)
    found = []
    for multiple in config.multiples if multiples is None else multiples:
        length = config.length(multiple)
        try:
            swept = needles.sweep([length], config.depths, seeds, count, n_needles=n_needles, digits=config.digits,
                                  ask_all=asks_all)
        except ValueError as error:
            raise ValueError(f"needle examples of {length} tokens: {error}") from None
        found += [(multiple, depth, example) for _, depth, example in swept]
    return found


def settings(config: NeedleEvalConfig) -> list[Setting]:
    """Single needles at every multiple (each scaling beyond the trained length), then the multi-needle
    variants within it, then the ring runs."""
    def scalings(multiple: int) -> tuple[str | None, ...]:
        return config.rope_scalings if config.stretch(multiple) > 1 else (None,)

    one = [Setting(m, scaling) for m in config.multiples for scaling in scalings(m)]
    within = [m for m in config.multiples if config.stretch(m) == 1]
    multi = [Setting(m, None, needles=n, asks_all=asks_all)
             for n in config.multi_needles for asks_all in (False, True) for m in within]
    ring = [Setting(s.multiple, s.scaling, RING_RANKS) for s in one if s.multiple in config.ring_multiples]
    return one + multi + ring


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
    rows = settings(config)
    if any(row.ranks > 1 for row in rows) and model_dir is None:
        raise ValueError("the needle eval across ring ranks needs the model folder (model_dir)")
    cases: dict[tuple, list[tuple[float, needles.NeedleExample]]] = {}
    for n_needles, asks_all in dict.fromkeys((row.needles, row.asks_all) for row in rows):
        multiples = tuple(dict.fromkeys(r.multiple for r in rows if (r.needles, r.asks_all) == (n_needles, asks_all)))
        for multiple, depth, example in examples(processor, config, multiples, n_needles, asks_all):
            cases.setdefault((multiple, n_needles, asks_all), []).append((depth, example))

    def row_cases(row: Setting) -> list[tuple[float, needles.NeedleExample]]:
        return cases[(row.multiple, row.needles, row.asks_all)]

    head_dim = model.config.head_dim
    base_rope = dict(model.config.rope_parameters)

    def rope_of(row: Setting) -> dict:
        return scaled_rope(base_rope, row.scaling or "none", config.stretch(row.multiple), head_dim, config.trained_length)

    replies: dict[Setting, list[str]] = {}
    for row in tqdm([row for row in rows if row.ranks == 1], desc="needles", disable=not progress):
        with rope_parameters(model, rope_of(row)):
            replies[row] = [answer(model, processor, prompt_ids(processor, example),
                                   config.reply_budget(row.needles, row.asks_all))
                            for _, example in row_cases(row)]
    ring_rows = [row for row in rows if row.ranks > 1]
    if ring_rows:
        jobs = [{"rope": rope_of(row), "prompts": [prompt_ids(processor, example) for _, example in row_cases(row)]}
                for row in ring_rows]
        for row, ring_replies in zip(ring_rows, run_ring(model_dir, jobs, config.max_new_tokens)):
            replies[row] = ring_replies

    cells, metrics = [], {}
    for row in rows:
        right = [example.is_correct(reply) for (_, example), reply in zip(row_cases(row), replies[row])]
        for depth in config.depths:
            hits = [ok for (d, _), ok in zip(row_cases(row), right) if d == depth]
            cells.append({"setting": row.name, "multiple": row.multiple, "length": config.length(row.multiple),
                          "scaling": row.scaling, "ranks": row.ranks, "needles": row.needles,
                          "asks_all": row.asks_all, "depth": depth, "correct": sum(hits), "total": len(hits),
                          "accuracy": sum(hits) / len(hits)})
        metrics[f"accuracy@{row.name}"] = sum(right) / len(right)
        if row.ranks > 1:
            alone = replies[Setting(row.multiple, row.scaling)]
            same = [a == b for a, b in zip(replies[row], alone)]
            metrics[f"agreement@{row.name}"] = sum(same) / len(same)
    samples = [{"setting": row.name, "question": example.question, "answer": example.answer, "reply": reply}
               for row in dict.fromkeys([rows[0], *(r for r in rows if r.needles > 1)])
               for (_, example), reply in list(zip(row_cases(row), replies[row]))[:2]]
    return {
        "metrics": metrics,
        "trained_length": config.trained_length,
        "base_length": config.length(1),
        "lengths": [config.length(m) for m in config.multiples],
        "depths": list(config.depths),
        "seeds": list(split_seeds("held_out", config.seeds)),
        "rope": {row.name: rope_of(row) for row in rows if row.ranks == 1 and row.needles == 1},
        "cells": cells,
        "panels": panels(rows, config),
        "samples": samples,
    }


def panels(rows: list[Setting], config: NeedleEvalConfig) -> list[dict]:
    """The heat-map's panels, as LWM draws its figure: one per RoPE scaling and variant, its columns the
    lengths in order (within the trained length shared by every scaling), its rows the depths."""
    found = []
    for variant in dict.fromkeys(row.variant for row in rows):
        members = [row for row in rows if row.variant == variant]
        beyond = list(dict.fromkeys(row.scaling for row in members if row.scaling is not None)) or [None]
        ranks, n_needles, asks_all = variant
        for scaling in beyond:
            columns = [row.name for row in members if row.scaling in (None, scaling)]
            title = "one needle" if n_needles == 1 else f"{n_needles} needles, asked for " + ("all" if asks_all else "one")
            title += "" if scaling is None else f", RoPE {scaling} beyond {config.trained_length}"
            title += "" if ranks == 1 else f", {ranks} ring ranks"
            found.append({"title": title, "settings": columns})
    return found


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

