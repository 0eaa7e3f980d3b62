"""Decoding with the KV cache sharded over a sequence-parallel group, for prompts too long for one rank.

The prompt is prefilled with ring attention, each rank keeps its shard of the KV cache (`ShardedCache`),
and every decoding step merges the ranks' partial attention by their log-sum-exp
(`lwm.model.attention.ring.sharded_decode_attention`). `ShardedSteps` runs the model this way for the
decode loop of `lwm.generation.sampling`, which chooses the tokens as it does on one process.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
import torch.distributed as dist
from transformers.cache_utils import DynamicCache

from lwm.parallel import SequenceParallel, chunks_per_sequence, rank_and_world, shard_positions, shard_sequence


class ShardedCache(DynamicCache):
    """A KV cache split over an sp group: each rank keeps its own shard of every layer.

    A ring prefill (before `decoding` is set) stores this rank's shard of the prompt; every decoded token
    is then kept by exactly one rank, round robin, so the shards stay balanced. `get_seq_length`
    is the length of the whole cached sequence, so positions continue from it.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, *, config=None):
        super().__init__(config=config)
        self.group = group
        self.rank, self.world = rank_and_world(group)
        self.decoding = False  # set by the decoding loop once the prompt's ring prefill is stored
        self.total_lengths: dict[int, int] = {}
        self.decoded: dict[int, int] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        total = self.total_lengths.get(layer_idx, 0)
        if not self.decoding:
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


class ShardedSteps:
    """The model's next-token logits with its KV cache sharded over `sequence_parallel.group`.

    Every rank holds the same full prompt. The longest prefix that splits evenly over the group is
    prefilled with ring attention; the rest of the prompt goes through the decoding path one token at
    a time, which is exact for any length. The logits are the same on every rank, and every rank
    continues with rank 0's choice of token.
    """

    guided = False  # guidance runs on one process (CachedSteps)

    def __init__(self, model, input_ids: torch.LongTensor, sequence_parallel: SequenceParallel):
        backend = model.config._attn_implementation
        if backend != "ring":
            raise ValueError(f"sharded decoding needs a model with attn_implementation='ring', got {backend!r}")
        self.model, self.sp = model, replace(sequence_parallel, decoding=False)
        self.rank, self.world = rank_and_world(sequence_parallel.group)
        self.cache = ShardedCache(sequence_parallel.group, config=model.config)
        prefill_len = input_ids.shape[1] - input_ids.shape[1] % chunks_per_sequence(self.sp.layout, self.world)
        self.places = model.grid_ids_of(input_ids)  # each prompt token's place in its frame, for a model with a grid
        self.prefill = input_ids[:, :prefill_len]
        self.pending = input_ids[:, prefill_len:]  # prompt tokens not prefilled, then each chosen token
        self.pending_places = None if self.places is None else self.places[:, prefill_len:]

    def next_logits(self, head: Literal["text", "vision"] | None = None) -> torch.Tensor:
        """[batch, head vocabulary] logits of `head` (None: both) after what was fed last."""
        logits = self._prefill(head) if self.prefill.shape[1] else None
        self.cache.decoding = True
        for position in range(self.pending.shape[1]):
            places = None if self.pending_places is None else self.pending_places[:, position : position + 1]
            logits = self._decode(self.pending[:, position : position + 1], places, head)
        return logits

    def agree(self, tokens: torch.LongTensor) -> torch.LongTensor:
        if self.world > 1:
            dist.broadcast(tokens, group=self.sp.group, group_src=0)
        return tokens

    def feed(self, tokens: torch.LongTensor) -> None:
        self.pending = tokens[:, None]
        self.places = self.pending_places = self.model.advance_grid_ids(self.places, self.pending)

    def _prefill(self, head) -> torch.Tensor:
        prefill, self.prefill = self.prefill, self.prefill[:, :0]
        rank, world, layout = self.rank, self.world, self.sp.layout
        out = self.model(
            input_ids=shard_sequence(prefill, 1, rank, world, layout),
            position_ids=shard_positions(prefill.shape[1], rank, world, layout, device=prefill.device)[None],
            vision_grid_ids=(
                None if self.places is None
                else shard_sequence(self.places[:, : prefill.shape[1]], 1, rank, world, layout)
            ),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            head=head,
            sequence_parallel=self.sp,
        )
        # The last prompt position ends the shard of whichever rank holds the sequence's last chunk.
        holder = 0 if layout == "zigzag" else world - 1
        logits = out.logits[:, -1].float().contiguous()
        if world > 1:
            dist.broadcast(logits, group=self.sp.group, group_src=holder)
        return logits

    def _decode(self, token: torch.LongTensor, places: torch.LongTensor | None, head) -> torch.Tensor:
        position = torch.full_like(token, self.cache.get_seq_length())
        out = self.model(input_ids=token, position_ids=position, cache=self.cache, use_cache=True, logits_to_keep=1,
                         vision_grid_ids=places, head=head, sequence_parallel=replace(self.sp, decoding=True))
        return out.logits[:, -1].float()
