"""How much memory a model needs, computed from its config: weights, KV cache, and what fits where.

    lwm memory lwm-7b                # a preset name, or a folder / config.json path
    lwm memory DIR --budgets 12 16 24 48 80

Sizes count every parameter (text and vision tables and heads included) at the given dtype. The KV
cache holds a key and a value of `num_key_value_heads × head_dim` per layer per token. A prefill run
in one pass over T tokens also holds about T × (6·hidden + 3·intermediate) activations of the widest
layer at once (residual, norm, q, k, v, attention output; gate, up, product), with SDPA's fused
kernels (no T × T scores). A fixed reserve covers the CUDA context and kernels' workspaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
DEFAULT_RESERVE_GIB = 1.0  # CUDA context + library workspaces
TOKENS_PER_FRAME = 257  # LWM: 256 codes + a delimiter


@dataclass(frozen=True)
class MemoryNeeds:
    parameters: int
    weight_bytes: int
    layer_bytes: int  # one decoder layer's weights
    kv_bytes_per_token: int  # all layers
    prefill_bytes_per_token: int  # transient, one-pass prefill
    num_layers: int

    def kv_bytes_per_1k_tokens(self, per_layer: bool = False) -> int:
        return 1024 * self.kv_bytes_per_token // (self.num_layers if per_layer else 1)


@dataclass(frozen=True)
class Fit:
    """What a device of `budget_bytes` holds: all weights and how many tokens of context, or how many layers."""

    budget_bytes: int
    weights_fit: bool
    layers_on_device: int  # all of them when the weights fit
    max_tokens: int  # KV cache only (prefill in chunks)
    max_tokens_one_pass_prefill: int


def memory_needs(config, dtype: str = "bfloat16") -> MemoryNeeds:
    """The sizes of a LLaMA / LWM config (`LWMConfig` or transformers' `LlamaConfig`) at `dtype`."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    size = DTYPE_BYTES[dtype]
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = hidden * q_width * 2 + hidden * kv_width * 2 + 3 * hidden * inter + 2 * hidden
    vision_rows = getattr(config, "vision_vocab_size", 0)
    heads = 1 if getattr(config, "tie_word_embeddings", False) else 2
    tables = heads * (config.vocab_size + vision_rows) * hidden
    parameters = layers * per_layer + tables + hidden
    return MemoryNeeds(
        parameters=parameters,
        weight_bytes=parameters * size,
        layer_bytes=per_layer * size,
        kv_bytes_per_token=2 * layers * kv_width * size,
        prefill_bytes_per_token=(6 * hidden + 3 * inter) * size,
        num_layers=layers,
    )


def fit(needs: MemoryNeeds, budget_bytes: int, reserve_bytes: int = int(DEFAULT_RESERVE_GIB * GIB)) -> Fit:
    free = budget_bytes - reserve_bytes - needs.weight_bytes
    if free < 0:
        non_layer = needs.weight_bytes - needs.num_layers * needs.layer_bytes
        layers = max(0, min(needs.num_layers, (budget_bytes - reserve_bytes - non_layer) // needs.layer_bytes))
        return Fit(budget_bytes, False, int(layers), 0, 0)
    return Fit(
        budget_bytes, True, needs.num_layers,
        free // needs.kv_bytes_per_token,
        free // (needs.kv_bytes_per_token + needs.prefill_bytes_per_token),
    )


def memory_table(config, budgets_gib=(16, 24, 80), dtype: str = "bfloat16", reserve_gib: float = DEFAULT_RESERVE_GIB) -> str:
    """A Markdown summary of `memory_needs` and a row per device size."""
    needs = memory_needs(config, dtype)
    lines = [
        f"| {dtype} | |",
        "|---|---|",
        f"| parameters | {needs.parameters:,} |",
        f"| weights | {needs.weight_bytes / GIB:.2f} GiB ({needs.weight_bytes / 1e9:.2f} GB) |",
        f"| one decoder layer | {needs.layer_bytes / 2**20:.0f} MiB |",
        f"| KV cache per 1K tokens, all {needs.num_layers} layers | {needs.kv_bytes_per_1k_tokens() / 2**20:.0f} MiB |",
        f"| KV cache per 1K tokens, one layer | {needs.kv_bytes_per_1k_tokens(per_layer=True) / 2**20:.0f} MiB |",
        f"| one-pass prefill activations per 1K tokens | {1024 * needs.prefill_bytes_per_token / 2**20:.0f} MiB |",
        "",
        f"| device memory | weights | context that fits (KV cache; {reserve_gib:g} GiB reserved) | with a one-pass prefill "
        "| frames of video (257 tokens) |",
        "|---|---|---|---|---|",
    ]
    for budget in budgets_gib:
        result = fit(needs, int(budget * GIB), int(reserve_gib * GIB))
        if result.weights_fit:
            lines.append(
                f"| {budget:g} GiB | fit | {result.max_tokens:,} tokens | {result.max_tokens_one_pass_prefill:,} tokens "
                f"| {result.max_tokens // TOKENS_PER_FRAME:,} |"
            )
        else:
            lines.append(
                f"| {budget:g} GiB | {result.layers_on_device} of {needs.num_layers} layers; the rest offloaded "
                "(`device_map=\"auto\"`) | – | – | – |"
            )
    return "\n".join(lines)


def load_model_config(name_or_path: str):
    """The config of a preset name, a model folder or a config.json (a text-only LLaMA's too)."""
    from lwm.model import LWMConfig

    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        fields = json.loads(path.read_text())
        if fields.get("model_type") == "llama":
            from transformers import LlamaConfig

            return LlamaConfig.from_dict(fields)
        return LWMConfig.from_dict(fields)
    return LWMConfig.from_preset(name_or_path)
