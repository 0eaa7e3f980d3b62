"""The growing KV cache holds exactly what transformers' DynamicCache holds, step by step."""

import torch
from transformers.cache_utils import DynamicCache

from lwm.generation.cache import GrowingCache


def test_growing_cache_equals_dynamic_cache_through_growth_and_row_selection():
    growing, dynamic, rows = GrowingCache(2), DynamicCache(), 2
    for step in range(100):
        if step == 50:  # guidance ends: the unconditional rows leave the cache
            for cache in (growing, dynamic):
                cache.batch_select_indices(torch.tensor([1]))
            rows = 1
        keys = torch.randn(rows, 3, 1 if step else 5, 4)
        values = torch.randn_like(keys)
        for layer in range(2):
            grown, expected = growing.update(keys, values, layer), dynamic.update(keys, values, layer)
            assert all(torch.equal(a, b) for a, b in zip(grown, expected))
    assert growing.get_seq_length() == dynamic.get_seq_length() == 104
    buffer = growing.layers[0].key_buffer
    assert buffer.shape[-2] < 2 * 104 + 1 and growing.layers[0].keys.data_ptr() == buffer.data_ptr()
