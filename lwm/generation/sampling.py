"""The one decode loop: batched classifier-free guidance over the model and its KV cache.

Guidance needs the conditional and the unconditional row of a prompt to receive the *same*
sampled token, which `generate()` cannot do (it samples every row on its own). So this loop runs
both in one forward, batch = [conditional rows; unconditional rows], left-padded to one length
with an attention mask, and at each step:

    head   = the one head the processors allow     text or vision when known (`next_head`), else both
    guided = uncond + s · (cond - uncond)          on that head's raw logits (LWM's; docs/architecture.md)
    scores = processors(guided)                    over the whole vocabulary, -inf outside the head
    span   = first to last id with a finite score  (the constraints allow one interval per row)
    token  = span start + argmax or a draw with the caller's torch.Generator, of warpers(scores[span])
                                                   (temperature, top-k, top-p)
    append token to the conditional row and to its unconditional row

Computing one head where the frame structure already rules out the other gives exactly the tokens of
computing both: the other head's ids would be masked to -inf anyway. Inside a frame this skips the
text head, LWM's widest matmul (32000 rows against the vision head's 8448). For the same reason the
warpers and the draw see only the span of allowed ids (8194 codes and delimiters inside a frame, not
40448 ids): the same distribution, drawn with the generator's numbers for the span only, so a seeded
draw differs from the whole-vocabulary draw of versions before (greedy decoding is unchanged).

A generation may change settings part-way (LWM's video: the first frame with image settings, the
rest with video settings) through a `schedule` of (number of tokens, `SamplingConfig`) phases on one
cache. Once no remaining phase is guided, the unconditional rows leave the batch and the cache.

The model runs one step at a time through `CachedSteps` (one process, its own cache) or, for a prompt
too long for one rank, `ShardedSteps` (the cache spread over a sequence-parallel group, see
lwm.generation.sharded); `generate_sharded` runs the latter to a whole answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from lwm.generation.cache import GrowingCache
from lwm.generation.sharded import ShardedSteps
from lwm.parallel import SequenceParallel


@dataclass(frozen=True)
class SamplingConfig:
    """How one token is chosen. `do_sample=False` is greedy (argmax of the guided, constrained logits).

    `guidance_scale` s: 1 means no guidance (the unconditional branch is not computed).
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0

    def __post_init__(self):
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {self.guidance_scale}")

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def warpers(self) -> LogitsProcessorList:
        """The warpers in LWM's order: temperature, top-k, top-p (none when greedy).

        A top-k above the number of allowed ids keeps them all, so LWM's top-k 8192 needs no clipping
        to a smaller codebook once the constraints have masked the rest.
        """
        if not self.do_sample:
            return LogitsProcessorList()
        warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k is not None:
            warpers.append(TopKWarper(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.top_p))
        return warpers


GREEDY = SamplingConfig(do_sample=False)


class TopKWarper(LogitsProcessor):
    """transformers' `TopKLogitsWarper` (every score below the k-th largest set to -inf, ties kept), with
    the k-th largest found by selection instead of a top-k sort: half the time for LWM's k = 1000 of 8194
    codes, at every drawn code."""

    def __init__(self, top_k: int):
        self.top_k = top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        width = scores.shape[-1]
        if self.top_k >= width:
            return scores
        kth_largest = scores.kthvalue(width - self.top_k + 1, dim=-1, keepdim=True).values
        return scores.masked_fill(scores < kth_largest, float("-inf"))


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on raw logits: uncond + s · (cond - uncond)."""
    return unconditional + scale * (conditional - unconditional)


def left_pad(sequences: Sequence[torch.Tensor], pad_token_id: int = 0) -> tuple[torch.LongTensor, torch.LongTensor]:
    """1-D id tensors -> (`input_ids` [batch, longest], `attention_mask`), padded on the left."""
    if not sequences:
        raise ValueError("left_pad needs at least one sequence")
    longest = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long, device=sequences[0].device)
    mask = torch.zeros_like(ids)
    for row, sequence in enumerate(sequences):
        if sequence.dim() != 1:
            raise ValueError(f"left_pad takes 1-D id tensors, got shape {tuple(sequence.shape)}")
        if len(sequence):
            ids[row, -len(sequence) :] = sequence
            mask[row, -len(sequence) :] = 1
    return ids, mask


def as_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, batch_size: int | None = None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """A prompt as `[batch, length]` ids and mask: a 1-D prompt becomes one row (or `batch_size` copies)."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"prompt ids must be [length] or [batch, length] with length > 0, got {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match the ids {tuple(input_ids.shape)}")
    if batch_size is not None and input_ids.shape[0] != batch_size:
        if input_ids.shape[0] != 1:
            raise ValueError(f"expected 1 or {batch_size} prompt rows, got {input_ids.shape[0]}")
        input_ids, attention_mask = input_ids.expand(batch_size, -1), attention_mask.expand(batch_size, -1)
    return input_ids.long(), attention_mask.long()


def _stack_left_padded(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor], pad_token_id: int
) -> tuple[torch.LongTensor, torch.LongTensor]:
    width = max(first[0].shape[1], second[0].shape[1])

    def widen(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (width - tensor.shape[1], 0), value=value)

    ids = torch.cat([widen(first[0], pad_token_id), widen(second[0], pad_token_id)])
    mask = torch.cat([widen(first[1], 0), widen(second[1], 0)])
    return ids, mask


def next_head(processors: Sequence[LogitsProcessor], history: torch.LongTensor) -> Literal["text", "vision"] | None:
    """The one head that can hold every row's next id, as said by the processors that know (`next_head`);
    None (both heads) when none of them knows or they disagree."""
    heads = {processor.next_head(history) for processor in processors if hasattr(processor, "next_head")} - {None}
    return heads.pop() if len(heads) == 1 else None


def over_whole_vocabulary(logits: torch.Tensor, head: Literal["text", "vision"] | None, config) -> torch.Tensor:
    """One head's logits [rows, head vocabulary] at their ids in [rows, text + vision], -inf elsewhere."""
    if head is None:
        return logits
    whole = logits.new_full((logits.shape[0], config.total_vocab_size), float("-inf"))
    first_id = 0 if head == "text" else config.vocab_size
    whole[:, first_id : first_id + logits.shape[1]] = logits
    return whole


def allowed_span(scores: torch.Tensor) -> slice:
    """The ids from the first to the last that some row may take (a score above -inf); all of them if none."""
    allowed = (scores > float("-inf")).any(dim=0).nonzero().squeeze(1)
    if not len(allowed):
        return slice(0, scores.shape[-1])
    return slice(int(allowed[0]), int(allowed[-1]) + 1)


def choose(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.LongTensor:
    """One id per row: argmax, or a draw from softmax(scores) using `generator`.

    The draw inverts the cumulative distribution at one uniform number per row: the distribution of
    `torch.multinomial`, which on a CPU spends some 40 times longer on a row of 8194 codes.
    """
    if not do_sample:
        return scores.argmax(dim=-1)
    cumulative = scores.softmax(dim=-1).cumsum(dim=-1)
    cumulative = cumulative / cumulative[:, -1:]  # ends at exactly 1, above any uniform number in [0, 1)
    uniform = torch.rand(scores.shape[0], 1, generator=generator, device=scores.device)
    # The first id whose cumulative probability exceeds the number: ids of probability 0 are never drawn.
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1)


class CachedSteps:
    """The model's next-token logits on this process, its KV cache growing by the chosen token each step.

    With `unconditional` rows (guidance), the batch is [conditional rows; unconditional rows], left-padded
    to one length, and every chosen token is fed to both branches of its row. The decode loop drives it
    through `next_logits`, `agree` and `feed`, as it drives `ShardedSteps`.
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, unconditional=None):
        self.model, self.batch = model, input_ids.shape[0]
        rows, mask = input_ids, attention_mask
        if unconditional is not None:
            rows, mask = _stack_left_padded((input_ids, attention_mask), unconditional, model.config.pad_token_id or 0)
        self.branches = rows.shape[0] // self.batch  # 2 with guidance
        self.cache = GrowingCache(model.config.num_hidden_layers)
        self.pending, self.mask = rows, mask
        self.places = model.grid_ids_of(input_ids)  # each token's place in its frame, for a model with a grid

    @property
    def guided(self) -> bool:
        return self.branches == 2

    def next_logits(self, head: Literal["text", "vision"] | None = None) -> torch.Tensor:
        """[rows, head vocabulary] logits of `head` (None: both) after what was fed last (the whole prompt at first)."""
        places = self.places.repeat(self.branches, 1) if self.places is not None and self.cache.get_seq_length() else None
        output = self.model(self.pending, attention_mask=self.mask, cache=self.cache, use_cache=True, logits_to_keep=1,
                            vision_grid_ids=places, head=head)
        return output.logits[:, -1].float()

    def agree(self, tokens: torch.LongTensor) -> torch.LongTensor:
        """The tokens every row continues with: on one process, the ones chosen here."""
        return tokens

    def feed(self, tokens: torch.LongTensor) -> None:
        self.places = self.model.advance_grid_ids(self.places, tokens[:, None])
        self.pending = tokens.repeat(self.branches)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)

    def drop_unconditional(self) -> None:
        """Once no phase is guided any more, the unconditional rows leave the batch and the cache."""
        self.cache.batch_select_indices(torch.arange(self.batch, device=self.mask.device))
        self.branches, self.mask, self.pending = 1, self.mask[: self.batch], self.pending[: self.batch]


@torch.no_grad()
def iter_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    schedule: Sequence[tuple[int, SamplingConfig]],
    processors: Sequence[LogitsProcessor] = (),
    unconditional_ids: torch.Tensor | None = None,
    unconditional_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sequence_parallel: SequenceParallel | None = None,
) -> Iterator[torch.LongTensor]:
    """Yields the next id of every row ([batch]), step by step (stop early by closing the iterator).

    input_ids / attention_mask: the conditional prompts, [length] or [batch, length], left-padded.
    schedule: (number of tokens, settings) phases, run one after the other on the same cache.
    processors: applied to the guided logits, seeing the conditional rows' ids (prompt + generated).
    unconditional_ids / unconditional_mask: the unconditional prompt ([length], shared by all rows,
        or [batch, length]); required when a phase is guided.
    sequence_parallel: the KV cache is sharded over this group (`ShardedSteps`, a model with
        attn_implementation="ring"); every rank passes the same unpadded prompt and gets the same ids.
    """
    input_ids, attention_mask = as_batch(input_ids, attention_mask)
    batch = input_ids.shape[0]
    for num_tokens, _ in schedule:
        if num_tokens < 0:
            raise ValueError(f"a schedule phase cannot have {num_tokens} tokens")
    guided_phases = [index for index, (count, sampling) in enumerate(schedule) if count and sampling.guided]
    if guided_phases and unconditional_ids is None:
        raise ValueError("a guided phase (guidance_scale != 1) needs unconditional_ids")
    if sequence_parallel is not None:
        if guided_phases or not bool(attention_mask.all()):
            raise ValueError("sharded decoding takes unpadded prompts and no guidance")
        steps = ShardedSteps(model, input_ids, sequence_parallel)
    else:
        unconditional = None
        if guided_phases:
            unconditional_mask = None if unconditional_mask is None else unconditional_mask.to(input_ids.device)
            unconditional = as_batch(unconditional_ids.to(input_ids.device), unconditional_mask, batch)
        steps = CachedSteps(model, input_ids, attention_mask, unconditional)
    processors = LogitsProcessorList(processors)
    history = input_ids
    for phase, (num_tokens, sampling) in enumerate(schedule):
        if steps.guided and phase > guided_phases[-1]:
            steps.drop_unconditional()
        warpers = sampling.warpers()
        for _ in range(num_tokens):
            head = next_head(processors, history)
            logits = steps.next_logits(head)
            if steps.guided:
                logits = guide(logits[:batch], logits[batch:], sampling.guidance_scale)
            scores = processors(history, over_whole_vocabulary(logits, head, model.config))
            span = allowed_span(scores)
            token = steps.agree(choose(warpers(history, scores[:, span]), sampling.do_sample, generator) + span.start)
            yield token
            history = torch.cat([history, token[:, None]], dim=1)
            steps.feed(token)


def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.LongTensor:
    """The generated ids `[batch, new]` of `iter_tokens` (same arguments), prompt excluded."""
    tokens = list(iter_tokens(model, input_ids, attention_mask, **kwargs))
    if not tokens:
        return torch.empty(as_batch(input_ids, attention_mask)[0].shape[0], 0, dtype=torch.long)
    return torch.stack(tokens, dim=1)


def generate_sharded(
    model,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    sequence_parallel: SequenceParallel = SequenceParallel(),
    *,
    processors: Sequence[LogitsProcessor] = (),
    sampling: SamplingConfig = GREEDY,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> torch.LongTensor:
    """The prompt [batch, prompt] and up to `max_new_tokens` new ids, the KV cache sharded over the group.

    Every rank calls it with the same prompt and gets the same result, which equals what one device
    holding the whole cache would produce; rows that emitted `eos_token_id` are filled with it, and it
    stops when every row has. The ids are chosen on the group's rank 0 (with its `generator`).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    tokens = iter_tokens(model, input_ids, schedule=[(max_new_tokens, sampling)], processors=processors,
                         generator=generator, sequence_parallel=sequence_parallel)
    sequence = as_batch(input_ids)[0]
    finished = torch.zeros(sequence.shape[0], dtype=torch.bool, device=sequence.device)
    for token in tokens:
        if eos_token_id is not None:
            token = token.masked_fill(finished, eos_token_id)
            finished |= token == eos_token_id
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        if bool(finished.all()):
            tokens.close()
            break
    return sequence
