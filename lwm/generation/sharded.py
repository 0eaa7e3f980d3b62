"""Sequence parallelism: which part of a sequence each rank holds, and long-context decoding.

A sequence-parallel (sp) group splits every sequence into equal chunks. With `layout="zigzag"` a
sequence is cut into 2·W chunks and rank r holds chunks r and 2W−1−r, so under a causal mask every
rank has the same amount of attention work; with `layout="contiguous"` rank r holds chunk r.

    with sequence_parallel(group):              # attn_implementation="ring" reads the group here
        shard = lambda x: zigzag_shard(x, dim=1, group=group)
        out = model(input_ids=shard(ids), position_ids=shard(positions), shift_labels=shard(targets), ...)
        out.loss.backward()                      # inside the context if layers are checkpointed

`generate_sharded` answers a prompt too long for one rank: the prompt is prefilled with ring
attention, each rank keeps its shard of the KV cache (`ShardedCache`), and every decoding step
merges the ranks' partial attention by their log-sum-exp.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from transformers import LogitsProcessorList
from transformers.cache_utils import DynamicCache

LAYOUTS = ("zigzag", "contiguous")


@dataclass(frozen=True)
class SequenceParallel:
    """The sp group the "ring" attention backend runs over.

    decoding=False: queries and keys are this rank's shards of one sequence (training, prefill).
    decoding=True: queries are new tokens on every rank; keys are each rank's `ShardedCache` shard.
    """

    group: dist.ProcessGroup | None = None  # None: the default (world) group
    layout: str = "zigzag"
    decoding: bool = False


# Process-wide rather than a context variable: autograd may run a checkpointed layer's forward
# again on one of its own threads during the backward pass.
_active: list[SequenceParallel] = []


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the rendezvous of processes started on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def sequence_parallel(group: dist.ProcessGroup | None = None, *, layout: str = "zigzag", decoding: bool = False):
    """Runs the "ring" attention backend over `group` inside the block."""
    check_layout(layout)
    _active.append(SequenceParallel(group, layout, decoding))
    try:
        yield _active[-1]
    finally:
        _active.pop()


def active_sequence_parallel() -> SequenceParallel | None:
    return _active[-1] if _active else None


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sequence-parallel layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """This process's rank in `group` and the group's size; (0, 1) without torch.distributed."""
    if group is None and not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def chunks_per_sequence(layout: str, world: int) -> int:
    check_layout(layout)
    return 2 * world if layout == "zigzag" else world


def rank_chunks(layout: str, rank: int, world: int) -> tuple[int, ...]:
    """Which equal chunks of the sequence `rank` holds, in the order it stores them."""
    check_layout(layout)
    return (rank, 2 * world - 1 - rank) if layout == "zigzag" else (rank,)


def shard_sequence(x: torch.Tensor, dim: int, *, group=None, layout: str = "zigzag") -> torch.Tensor:
    """This rank's shard of a full sequence along `dim`."""
    rank, world = rank_and_world(group)
    chunks = _split(x, dim, chunks_per_sequence(layout, world))
    return torch.cat([chunks[i] for i in rank_chunks(layout, rank, world)], dim=dim)


def unshard_sequence(x: torch.Tensor, dim: int, *, group=None, layout: str = "zigzag") -> torch.Tensor:
    """The full sequence from every rank's shard (an all-gather; not differentiable)."""
    rank, world = rank_and_world(group)
    if world == 1:
        return x
    shards = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(shards, x.contiguous(), group=group)
    pieces = len(rank_chunks(layout, rank, world))
    ordered = [None] * chunks_per_sequence(layout, world)
    for holder, shard in enumerate(shards):
        for index, chunk in zip(rank_chunks(layout, holder, world), _split(shard, dim, pieces)):
            ordered[index] = chunk
    return torch.cat(ordered, dim=dim)


def shard_positions(seq_len: int, *, group=None, layout: str = "zigzag", device=None) -> torch.LongTensor:
    """Global positions [seq_len / W] of this rank's shard, for RoPE (one unpacked sequence)."""
    return shard_sequence(torch.arange(seq_len, device=device), 0, group=group, layout=layout)


def zigzag_shard(x: torch.Tensor, dim: int, group=None) -> torch.Tensor:
    return shard_sequence(x, dim, group=group, layout="zigzag")


def zigzag_unshard(x: torch.Tensor, dim: int, group=None) -> torch.Tensor:
    return unshard_sequence(x, dim, group=group, layout="zigzag")


def zigzag_position_ids(seq_len: int, group=None, device=None) -> torch.LongTensor:
    return shard_positions(seq_len, group=group, layout="zigzag", device=device)


def _split(x: torch.Tensor, dim: int, chunks: int) -> tuple[torch.Tensor, ...]:
    if x.shape[dim] % chunks:
        raise ValueError(
            f"a sequence of length {x.shape[dim]} cannot be cut into {chunks} equal chunks for sequence parallelism; "
            f"pad it to a multiple of {chunks}"
        )
    return x.chunk(chunks, dim=dim)


class ShardedCache(DynamicCache):
    """A KV cache split over an sp group: each rank keeps its own shard of every layer.

    A ring prefill (outside `decoding`) stores this rank's shard of the prompt; every decoded token
    is then kept by exactly one rank, round robin, so the shards stay balanced. `get_seq_length`
    is the length of the whole cached sequence, so positions continue from it.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, *, config=None):
        super().__init__(config=config)
        self.group = group
        self.rank, self.world = rank_and_world(group)
        self.total_lengths: dict[int, int] = {}
        self.decoded: dict[int, int] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        sp = active_sequence_parallel()
        total = self.total_lengths.get(layer_idx, 0)
        if sp is None or not sp.decoding:
            if total:
                raise ValueError("a ShardedCache takes one ring prefill, before any decoded token")
            self.total_lengths[layer_idx] = key_states.shape[-2] * self.world
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if key_states.shape[-2] != 1:
            raise ValueError(f"sharded decoding takes one token per step, got {key_states.shape[-2]}")
        step = self.decoded.get(layer_idx, 0)
        self.decoded[layer_idx] = step + 1
        self.total_lengths[layer_idx] = total + 1
        if step % self.world == self.rank:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx < len(self.layers) and self.layers[layer_idx].is_initialized:
            return self.layers[layer_idx].keys, self.layers[layer_idx].values
        return key_states[..., :0, :], value_states[..., :0, :]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.total_lengths.get(layer_idx, 0)


@torch.no_grad()
def generate_sharded(
    model,
    input_ids: torch.LongTensor,
    max_new_tokens: int,
    group: dist.ProcessGroup | None = None,
    *,
    layout: str = "zigzag",
    logits_processor: LogitsProcessorList | None = None,
    do_sample: bool = False,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> torch.LongTensor:
    """Greedy or sampled continuation of `input_ids` [batch, prompt] with the KV cache sharded over `group`.

    Every rank calls it with the same full prompt and gets the same result: the prompt plus up to
    `max_new_tokens` tokens (rows that emitted `eos_token_id` are filled with it). The longest
    prefix that splits evenly over the group is prefilled with ring attention; the remaining prompt
    tokens go through the decoding path, which is exact for any length. The answer equals what one
    device holding the whole cache would produce. Tokens are chosen on rank 0 of the group (its
    `generator`) and broadcast.
    """
    if model.config._attn_implementation != "ring":
        raise ValueError(
            f"generate_sharded needs a model with attn_implementation='ring', got {model.config._attn_implementation!r}"
        )
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, prompt] tensor, got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    rank, world = rank_and_world(group)
    processors = logits_processor or LogitsProcessorList()
    cache = ShardedCache(group, config=model.config)
    prompt_len = input_ids.shape[1]
    prefill_len = prompt_len - prompt_len % chunks_per_sequence(layout, world)

    places = model.grid_ids_of(input_ids)  # each prompt token's place in its frame, for a model with a grid
    logits = None
    if prefill_len:
        prefill = input_ids[:, :prefill_len]
        with sequence_parallel(group, layout=layout):
            out = model(
                input_ids=shard_sequence(prefill, 1, group=group, layout=layout),
                position_ids=shard_positions(prefill_len, group=group, layout=layout, device=input_ids.device)[None],
                vision_grid_ids=(
                    None if places is None else shard_sequence(places[:, :prefill_len], 1, group=group, layout=layout)
                ),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        # The last prompt position ends the shard of whichever rank holds the sequence's last chunk.
        holder = 0 if layout == "zigzag" else world - 1
        logits = out.logits[:, -1].float().contiguous()
        if world > 1:
            dist.broadcast(logits, group=group, group_src=holder)

    sequence = input_ids
    pending = input_ids[:, prefill_len:]  # prompt tokens not prefilled, then each chosen token
    pending_places = None if places is None else places[:, prefill_len:]  # and the places of those
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    while True:
        for position in range(pending.shape[1]):
            place = None if pending_places is None else pending_places[:, position : position + 1]
            logits = _decode_step(model, pending[:, position : position + 1], place, cache, group)
        next_tokens = _choose(processors(sequence, logits), do_sample, generator) if rank == 0 else None
        next_tokens = _broadcast_tokens(next_tokens, logits, group, world)
        if eos_token_id is not None:
            next_tokens = next_tokens.masked_fill(finished, eos_token_id)
            finished |= next_tokens == eos_token_id
        sequence = torch.cat([sequence, next_tokens[:, None]], dim=1)
        if sequence.shape[1] == prompt_len + max_new_tokens or bool(finished.all()):
            return sequence
        pending = next_tokens[:, None]
        places = pending_places = model.advance_grid_ids(places, pending)


def _decode_step(model, token: torch.LongTensor, grid_ids, cache: ShardedCache, group) -> torch.Tensor:
    position = torch.full_like(token, cache.get_seq_length())
    with sequence_parallel(group, decoding=True):
        out = model(input_ids=token, position_ids=position, cache=cache, use_cache=True, logits_to_keep=1,
                    vision_grid_ids=grid_ids)
    return out.logits[:, -1].float()


def _choose(scores: torch.Tensor, do_sample: bool, generator) -> torch.LongTensor:
    if not do_sample:
        return scores.argmax(dim=-1)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]


def _broadcast_tokens(tokens, logits, group, world) -> torch.LongTensor:
    if tokens is None:
        tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    if world > 1:
        dist.broadcast(tokens, group=group, group_src=0)
    return tokens
