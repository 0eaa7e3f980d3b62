"""The memory calculator agrees with a real model: its parameter count and the KV cache it builds."""

import pytest
import torch
from transformers.cache_utils import DynamicCache

from lwm.model import LWMConfig, LWMForCausalLM
from lwm.model.memory import GIB, fit, memory_needs, memory_table


def test_counts_match_a_real_model_and_its_cache():
    config = LWMConfig.from_preset("tiny")  # GQA: 4 query heads, 2 key/value heads
    model = LWMForCausalLM(config)
    needs = memory_needs(config, "float32")
    assert needs.parameters == sum(p.numel() for p in model.parameters())
    assert needs.weight_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    tokens = 10
    cache = DynamicCache(config=config)
    with torch.no_grad():
        model(input_ids=torch.randint(0, config.vocab_size, (1, tokens)), cache=cache, use_cache=True)
    cached = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert needs.kv_bytes_per_token * tokens == cached


def test_lwm_7b_numbers():
    needs = memory_needs(LWMConfig.from_preset("lwm-7b"))
    assert needs.parameters == 6_807_621_632  # LLaMA-7B + 2 x 8448 x 4096 (docs/official-weights.md)
    assert needs.weight_bytes == 13_615_243_264
    assert needs.kv_bytes_per_1k_tokens() == 512 * 2**20 and needs.kv_bytes_per_1k_tokens(per_layer=True) == 16 * 2**20
    on_16 = fit(needs, 16 * GIB)
    assert on_16.weights_fit and on_16.max_tokens == (16 * GIB - GIB - needs.weight_bytes) // needs.kv_bytes_per_token
    on_8 = fit(needs, 8 * GIB)
    assert not on_8.weights_fit and 0 < on_8.layers_on_device < 32 and on_8.max_tokens == 0
    table = memory_table(LWMConfig.from_preset("lwm-7b"))
    assert "| 24 GiB | fit |" in table and "512 MiB" in table


def test_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        memory_needs(LWMConfig.from_preset("tiny"), "int3")
