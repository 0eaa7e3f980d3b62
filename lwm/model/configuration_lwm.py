"""LWMConfig: a LLaMA configuration plus the vision vocabulary of the Large World Model."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from lwm.presets import preset_names, read_preset


@strict  # as LlamaConfig: runs validate_architecture (and checks field types) when a config is made
class LWMConfig(LlamaConfig):
    """LLaMA fields (`vocab_size` is the text vocabulary) plus the vision token space.

    One id space: text ids are [0, vocab_size); vision code c is vocab_size + c; `<eof>` (end of
    frame) is vocab_size + K and `<eov>` (end of vision) vocab_size + K + 1, with K =
    `num_vision_codes`. `vision_vocab_size` >= K + 2 rows exist in the vision table and head
    (LWM: 8448). `vision_grid_size` G > 0 tells the model that frames are G × G codes (LWM: 0, it
    does not know), which gives each code a row and a column: `vision_grid_embedding` adds a learned
    vector for each to the code's embedding, and `vision_rope_3d` rotates queries and keys by them as
    well as by the position in the sequence (`lwm.model.modeling_lwm.rotary_axes`). The attention
    backend is `attn_implementation`: "sdpa", "blockwise", "ring" or "flash_attention_2";
    `attn_q_chunk`/`attn_kv_chunk` size the blocks of blockwise and ring that carry a mask tensor (a fused
    kernel takes a whole causal document in one call; the exact non-fused one is cut everywhere).
    """

    model_type = "lwm"

    vision_vocab_size: int = 8448
    num_vision_codes: int = 8192
    vision_grid_size: int = 0
    vision_grid_embedding: bool = True
    vision_rope_3d: bool = False
    attn_q_chunk: int = 512
    attn_kv_chunk: int = 512

    def validate_architecture(self):
        super().validate_architecture()
        if self.vision_vocab_size < self.num_vision_codes + 2:
            raise ValueError(
                f"vision_vocab_size ({self.vision_vocab_size}) must hold the {self.num_vision_codes} codes "
                "plus <eof> and <eov>"
            )
        if self.vision_grid_size < 0:
            raise ValueError(
                f"vision_grid_size must be 0 (none) or the side of a frame's code grid, got {self.vision_grid_size}"
            )
        if self.vision_rope_3d and not self.vision_grid_size:
            raise ValueError("vision_rope_3d needs vision_grid_size, the side of a frame's code grid")
        if self.attn_q_chunk < 1 or self.attn_kv_chunk < 1:
            raise ValueError("attn_q_chunk and attn_kv_chunk must be positive")

    @property
    def text_vocab_size(self) -> int:
        return self.vocab_size

    @property
    def eof_token_id(self) -> int:
        return self.vocab_size + self.num_vision_codes

    @property
    def eov_token_id(self) -> int:
        return self.vocab_size + self.num_vision_codes + 1

    @property
    def total_vocab_size(self) -> int:
        return self.vocab_size + self.vision_vocab_size

    @classmethod
    def preset_names(cls) -> list[str]:
        return preset_names("models")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LWMConfig":
        """A named configuration from lwm/presets/models/, e.g. "lwm-7b" or "tiny", or a path to such a JSON
        file; keywords override fields."""
        return cls(**{**read_preset("models", name), **overrides})


def yarn_rope(rope_theta: float, factor: float, original_length: int, beta_fast: float, beta_slow: float,
              attention_factor: float | None) -> dict:
    """transformers' "yarn" rope parameters: RoPE at `rope_theta` stretched `factor` times beyond
    `original_length` (docs/training.md, "Stages"); `attention_factor` None is YaRN's 0.1 ln(factor) + 1."""
    rope = {"rope_type": "yarn", "rope_theta": rope_theta, "factor": float(factor),
            "original_max_position_embeddings": original_length, "beta_fast": beta_fast, "beta_slow": beta_slow}
    return rope if attention_factor is None else {**rope, "attention_factor": attention_factor}
