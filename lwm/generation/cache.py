"""A KV cache for decoding one token at a time without copying the cache at every step.

transformers' `DynamicCache` appends a token's keys and values with `torch.cat`, which copies the whole
cache per layer per step: for a small model drawing 257-token frames, that copy is a sizeable share of
a step. Here each layer keeps buffers with room to spare (doubled when full) and its keys and values
are views of their filled part, so a step writes one token and copies only when the buffer grows.
Everything else (the views' shapes, `get_seq_length`, selecting rows) is `DynamicCache`'s.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers that double when full."""

    def __init__(self):
        super().__init__()
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.keys.shape[-2] if self.keys.dim() == key_states.dim() else 0
        total = length + key_states.shape[-2]
        # A buffer that no longer backs the keys (the cache's rows were selected or reordered) is rebuilt.
        stale = self.key_buffer is None or self.keys.data_ptr() != self.key_buffer.data_ptr()
        if stale or total > self.key_buffer.shape[-2]:
            capacity = max(2 * total, 64)
            self.key_buffer = self._grown(self.keys, key_states, length, capacity)
            self.value_buffer = self._grown(self.values, value_states, length, capacity)
        self.key_buffer[..., length:total, :] = key_states
        self.value_buffer[..., length:total, :] = value_states
        self.keys, self.values = self.key_buffer[..., :total, :], self.value_buffer[..., :total, :]
        return self.keys, self.values

    @staticmethod
    def _grown(filled: torch.Tensor, new: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
        buffer = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
        if length:
            buffer[..., :length, :] = filled
        return buffer


class GrowingCache(DynamicCache):
    """`DynamicCache` made of `GrowingLayer`s, one per decoder layer."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.layers = [GrowingLayer() for _ in range(num_layers)]
