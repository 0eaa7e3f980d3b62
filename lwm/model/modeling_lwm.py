"""LWMForCausalLM: a LLaMA decoder that reads and writes text and vision tokens.

The trunk is transformers' `LlamaModel` (its layers, norms and rotary embedding are used as they
are); around it sit two embedding tables and two heads, exactly as in LWM, so its weights map
one-to-one. Ids live in one space (text first, then vision), so `generate()` and logits
processors work unchanged and the vision mask is `input_ids >= vocab_size`. A model may add what
LWM lacks, each code's row and column in its frame (`vision_grid_size`): as learned vectors
(`VisionGridEmbedding`) and as rotary axes (`rotary_axes`); LWM's own checkpoints have neither.

Attention masks are described by `segment_ids` (packed documents, padding) and causality, never by
a dense seq × seq tensor, except for the "sdpa"/"eager" backends that need one.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import GenerationMixin, LlamaModel, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging as hf_logging

from lwm.model import attention  # noqa: F401  (registers the "blockwise" and "ring" backends)
from lwm.model.configuration_lwm import LWMConfig
from lwm.model.loss import lwm_loss
from lwm.model.targets import next_token_targets
from lwm.parallel import SequenceParallel

_SEGMENT_BACKENDS = ("blockwise", "ring")
# transformers 5.24 renamed the KV cache argument and output field `past_key_values` to `cache`;
# the layers and generate() use whichever name the installed version knows.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class LWMCausalLMOutput(CausalLMOutputWithPast):
    text_loss: torch.Tensor | None = None
    vision_loss: torch.Tensor | None = None


class LWMPreTrainedModel(PreTrainedModel):
    config: LWMConfig
    config_class = LWMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VisionGridEmbedding):
            module.reset_parameters()


class VisionGridEmbedding(nn.Module):
    """A code's row and column in its frame, as learned vectors added to its token embedding.

    LWM has no such thing: a code knows its place only through 1-D RoPE, from which the row (a
    multiple of the grid width) is easy to read but the column (the offset modulo the width) is not,
    and a small model then reads diagonal motion as vertical. Both tables start at zero, so adding
    them to a trained model changes nothing until they are trained.
    """

    def __init__(self, grid_size: int, hidden_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.rows = nn.Parameter(torch.zeros(grid_size, hidden_size))
        self.columns = nn.Parameter(torch.zeros(grid_size, hidden_size))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.rows)
        nn.init.zeros_(self.columns)

    def forward(self, grid_ids: torch.LongTensor) -> torch.Tensor:
        """grid_ids [batch, seq]: a code's index in its frame (row-major), -1 for every other token."""
        index = grid_ids.clamp(min=0) % self.grid_size**2
        vectors = self.rows[index // self.grid_size] + self.columns[index % self.grid_size]
        return vectors * (grid_ids >= 0)[..., None].to(vectors.dtype)


class LWMForCausalLM(LWMPreTrainedModel, GenerationMixin):
    def __init__(self, config: LWMConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.vision_embed_tokens = nn.Embedding(config.vision_vocab_size, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.vision_head = nn.Linear(config.hidden_size, config.vision_vocab_size, bias=False)
        if config.vision_grid_size and config.vision_grid_embedding:
            self.vision_grid = VisionGridEmbedding(config.vision_grid_size, config.hidden_size)
        self.post_init()

    @torch.no_grad()
    def init_codes_from(self, vectors: torch.Tensor, seed: int = 0) -> None:
        """Start the codes' rows of the vision table and head from the tokenizer's code vectors
        `[codebook_size, D]` (VQGAN.code_vectors): standardised, mapped into the hidden size by a
        fixed random orthogonal projection and scaled to the initial weights' spread, so that codes
        that draw alike start alike instead of as unrelated random rows. Vision ids after the codebook
        (motion tokens) keep their random rows."""
        codes, hidden = len(vectors), self.config.hidden_size
        if codes > self.config.num_vision_codes or vectors.shape[1] > hidden:
            raise ValueError(f"expected at most {self.config.num_vision_codes} code vectors of at most {hidden} dims, "
                             f"got {tuple(vectors.shape)}")
        standardised = (vectors - vectors.mean(0)) / vectors.std(0).clamp(min=1e-6)
        generator = torch.Generator().manual_seed(seed)
        projection, _ = torch.linalg.qr(torch.randn(hidden, vectors.shape[1], generator=generator))
        rows = standardised.float().cpu() @ projection.T
        rows *= self.config.initializer_range / rows.std()
        for table in (self.vision_embed_tokens.weight, self.vision_head.weight):
            table[:codes] = rows.to(table.dtype).to(table.device)

    def set_rope(self, rope_parameters: dict) -> None:
        """Run with these transformers rope parameters from now on: the rotary tables are rebuilt where they live."""
        self.config.rope_parameters = dict(rope_parameters)
        rotary = self.model.rotary_emb
        self.model.rotary_emb = type(rotary)(config=self.config).to(rotary.inv_freq.device)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def grid_ids_of(self, input_ids: torch.LongTensor) -> torch.LongTensor | None:
        """`vision_grid_ids_of` whole sequences in this model's vocabulary; None for a model without the grid."""
        if not self.config.vision_grid_size:
            return None
        return vision_grid_ids_of(input_ids, self.config.vocab_size, self.config.num_vision_codes)

    def advance_grid_ids(self, places: torch.LongTensor | None, tokens: torch.LongTensor) -> torch.LongTensor | None:
        """The places of `tokens` [batch, 1] that follow tokens whose places were `places` [batch, n] (a
        decoding step needs no look back): a code takes the place after the last one's (-1 + 1 = 0 after
        any other token). None for a model without the grid."""
        if places is None:
            return None
        return torch.where(self.grid_ids_of(tokens) >= 0, places[:, -1:] + 1, -1)

    def places_of(
        self, input_ids: torch.LongTensor, vision_grid_ids: torch.LongTensor | None, continues: bool
    ) -> torch.LongTensor | None:
        """The codes' places in their frames (`vision_grid_ids`), counted from input_ids when they start
        the sequence; None for a model without the grid.

        continues: input_ids may not start the sequence (a cache or a shard precedes), so codes'
        places cannot be counted from them and must be given.
        """
        if not self.config.vision_grid_size or vision_grid_ids is not None:
            return vision_grid_ids if self.config.vision_grid_size else None
        if continues:
            raise ValueError(
                "this model has vision_grid_size set: input_ids that continue a cache or are a shard "
                "need vision_grid_ids (lwm.model.modeling_lwm.vision_grid_ids_of the whole sequence)"
            )
        return self.grid_ids_of(input_ids)

    def embed(self, input_ids: torch.LongTensor, vision_grid_ids: torch.LongTensor | None = None) -> torch.Tensor:
        """Token embeddings, plus each code's row and column vectors when the model has them
        (`vision_grid_ids` from `places_of`)."""
        vocab = self.config.vocab_size
        # One device-to-host read per call: this runs at every decoding step.
        if ((input_ids < 0) | (input_ids >= self.config.total_vocab_size)).any():
            raise ValueError(
                f"token ids must lie in [0, {self.config.total_vocab_size}), got "
                f"[{input_ids.min().item()}, {input_ids.max().item()}]"
            )
        is_vision = input_ids >= vocab
        text = self.model.embed_tokens(input_ids.masked_fill(is_vision, 0))
        vision = self.vision_embed_tokens((input_ids - vocab).clamp(min=0))
        hidden = torch.where(is_vision[..., None], vision, text)
        if not (self.config.vision_grid_size and self.config.vision_grid_embedding):
            return hidden
        if vision_grid_ids is None:
            vision_grid_ids = self.grid_ids_of(input_ids)
        return hidden + self.vision_grid(vision_grid_ids)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        loss_weights: torch.Tensor | None = None,
        loss_denominators: tuple[torch.Tensor, torch.Tensor] | None = None,
        vision_grid_ids: torch.LongTensor | None = None,
        sequence_parallel: SequenceParallel | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        head: Literal["text", "vision"] | None = None,
        **kwargs,
    ) -> LWMCausalLMOutput:
        """Logits over [text | vision], or given labels LWM's loss and no logits.

        labels: the ids to predict, aligned with input_ids (shifted inside, transformers-style);
            -100 = no loss. Or shift_labels: already aligned with the predicting position (for
            sequence-parallel shards, where the next token may live on another rank). The loss runs
            each head on its own targets only (lwm.model.loss) and builds no logits: `logits` is None.
        loss_weights: per-target weights aligned with labels / shift_labels (packing uses them).
        loss_denominators: (text, vision) totals to divide by instead of this call's own weight
            sums, so shards of one batch add up to the loss of the whole batch.
        cache: the KV cache to read and extend (`past_key_values`, its name before transformers
            5.24, is accepted too).
        segment_ids: [batch, past + seq] document ids; positions attend only within their
            document. A 2-D attention_mask (padding) is treated as segments {0: pad, 1: tokens}.
        vision_grid_ids: [batch, seq] each code's index in its frame, -1 elsewhere (`vision_grid_ids_of`
            the whole sequence), for a model with `vision_grid_size`; read from input_ids when
            they start the sequence, required when they continue a cache or are a shard of it.
        sequence_parallel: the sp group that the "ring" backend runs over (`lwm.parallel`); input_ids
            are then this rank's shard, or with `decoding=True` new tokens on a sharded cache.
        head: only this head's logits, [..., vocab_size] for "text" or [..., vision_vocab_size] for
            "vision" (ids counted from the head's first id): decoding uses it where the next token's
            modality is known, and skips the other head's matmul.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        cache = past_key_values if cache is None else cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        if inputs_embeds is None:
            continues = past > 0 or sequence_parallel is not None
            vision_grid_ids = self.places_of(input_ids, vision_grid_ids, continues)
            hidden = self.embed(input_ids, vision_grid_ids)
        else:
            hidden = inputs_embeds
        batch, seq = hidden.shape[:2]
        segments = _segments(segment_ids, attention_mask, batch, past + seq)
        if position_ids is None:
            position_ids = _positions(segments, attention_mask, past, seq, hidden.device)
        attention_inputs = self._attention_inputs(segments, attention_mask, position_ids, past, seq, hidden.device)
        if sequence_parallel is not None:
            if self.config._attn_implementation != "ring":
                raise ValueError(
                    f"sequence_parallel runs on attn_implementation='ring', not {self.config._attn_implementation!r}"
                )
            attention_inputs["sequence_parallel"] = sequence_parallel

        position_embeddings = self.rotary_embeddings(hidden, position_ids, vision_grid_ids)
        for layer in self.model.layers:
            hidden = layer(
                hidden,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE_NAME: cache},
                **attention_inputs,
                **kwargs,
            )
        hidden = self.model.norm(hidden)

        if labels is not None or shift_labels is not None:
            if logits_to_keep or head is not None:
                raise ValueError("logits_to_keep and head cannot be combined with labels")
            targets, weights = _align_targets(labels, shift_labels, loss_weights, segments, seq)
            loss, text_loss, vision_loss = lwm_loss(
                hidden, self.lm_head.weight, self.vision_head.weight, targets, weights, loss_denominators
            )
            return LWMCausalLMOutput(loss=loss, text_loss=text_loss, vision_loss=vision_loss, **{CACHE_NAME: cache})
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return LWMCausalLMOutput(logits=self.head_logits(hidden, head), **{CACHE_NAME: cache})

    def head_logits(self, hidden: torch.Tensor, head: Literal["text", "vision"] | None = None) -> torch.Tensor:
        """The logits of `head` (None: both, text then vision) for final hidden states."""
        if head == "text":
            return self.lm_head(hidden)
        if head == "vision":
            return self.vision_head(hidden)
        if head is not None:
            raise ValueError(f"head must be 'text', 'vision' or None, got {head!r}")
        return torch.cat([self.lm_head(hidden), self.vision_head(hidden)], dim=-1)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        """transformers' inputs for one `generate()` step, plus the frame places of the ids it feeds."""
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        grid_ids = self.grid_ids_of(input_ids)
        if grid_ids is not None and inputs.get("input_ids") is not None:
            inputs["vision_grid_ids"] = grid_ids[:, -inputs["input_ids"].shape[1] :]
        return inputs

    def rotary_embeddings(self, hidden, position_ids, vision_grid_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for the layers: 1-D RoPE over `position_ids`, or with `vision_rope_3d` each
        frequency rotated by one of the axes of `rotary_axes`."""
        if not self.config.vision_rope_3d:
            return self.model.rotary_emb(hidden, position_ids=position_ids)
        if vision_grid_ids is None:
            raise ValueError("a model with vision_rope_3d needs vision_grid_ids when given inputs_embeds")
        axes = rotary_axes(position_ids.expand_as(vision_grid_ids), vision_grid_ids, self.config.vision_grid_size)
        cos, sin = zip(*(self.model.rotary_emb(hidden, position_ids=axis) for axis in axes))
        return _frequency_by_axis(cos), _frequency_by_axis(sin)

    def _attention_inputs(self, segments, attention_mask, position_ids, past, seq, device) -> dict:
        backend = self.config._attn_implementation
        if backend in _SEGMENT_BACKENDS:
            return {"segment_ids": segments, "attention_mask": None}
        if backend == "flash_attention_2":
            # transformers' flash path unpads with a 2-D mask and detects packing from position_ids.
            return {"attention_mask": attention_mask}
        if segments is None and (past == 0 or seq == 1) and backend == "sdpa":
            return {"attention_mask": None}  # plain causal: lets SDPA use its fused causal kernel
        allowed = dense_mask(segments, past, seq, device)
        if backend == "eager":  # eager adds the mask to the scores
            additive = torch.zeros(allowed.shape, dtype=self.dtype, device=device)
            return {"attention_mask": additive.masked_fill_(~allowed, torch.finfo(self.dtype).min)}
        return {"attention_mask": allowed}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Loads LWM checkpoints, and also plain text-only LLaMA ones (e.g. LWM-Text).

        A LLaMA checkpoint fills the trunk and the text head; the vision table and head are newly
        initialised, and a warning says so once.
        """
        config_path = Path(pretrained_model_name_or_path) / "config.json"
        if "config" in kwargs or not config_path.is_file():
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        fields = json.loads(config_path.read_text())
        if fields.get("model_type") == "lwm":
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if fields.get("model_type") != "llama":
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a {fields.get('model_type')!r} model; "
                "LWMForCausalLM loads 'lwm' and text-only 'llama' checkpoints"
            )
        return cls._from_llama(pretrained_model_name_or_path, fields, *args, **kwargs)

    @classmethod
    def _from_llama(cls, path, fields, *args, **kwargs):
        for key in ("model_type", "architectures", "transformers_version", "torch_dtype", "dtype"):
            fields.pop(key, None)
        vision_defaults = LWMConfig.from_preset("lwm-7b")
        fields.setdefault("vision_vocab_size", vision_defaults.vision_vocab_size)
        fields.setdefault("num_vision_codes", vision_defaults.num_vision_codes)
        for key in ("attn_implementation", "vision_vocab_size", "num_vision_codes"):
            if key in kwargs:
                fields[key] = kwargs.pop(key)
        config = LWMConfig(**fields)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # our own warning below replaces the generic missing-keys one
        try:
            model, info = super().from_pretrained(path, *args, config=config, output_loading_info=True, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        unexpected_missing = [k for k in info["missing_keys"] if not k.startswith(("vision_embed_tokens", "vision_head"))]
        if unexpected_missing:
            raise ValueError(f"{path} is missing LLaMA weights: {', '.join(sorted(unexpected_missing)[:8])}")
        warnings.warn(
            f"{path} is a text-only LLaMA checkpoint: the vision embedding and vision head "
            f"({config.vision_vocab_size} rows) are newly initialised. Train them before using vision tokens.",
            stacklevel=2,
        )
        return model


def vision_grid_ids_of(input_ids: torch.LongTensor, text_vocab_size: int, num_codes: int) -> torch.LongTensor:
    """Each vision code's index in its frame (the codes since the last other token), -1 elsewhere.

    Codes are the ids [text_vocab_size, text_vocab_size + num_codes). A frame is the run of codes
    after `<vision>` or `<eof>`, so this holds whatever text or padding comes before it.
    """
    is_code = (input_ids >= text_vocab_size) & (input_ids < text_vocab_size + num_codes)
    index = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    last_other = torch.where(is_code, -1, index).cummax(dim=-1).values
    return torch.where(is_code, index - last_other - 1, -1)


def rotary_axes(position_ids: torch.LongTensor, grid_ids: torch.LongTensor, grid_size: int):
    """The three rotary positions of each token for `vision_rope_3d`: (sequence, row, column).

    Text (grid id -1) has its sequence position on every axis, so text attends to text exactly as
    with 1-D RoPE. A code keeps its sequence position on the first axis and is at its frame's first
    position plus its row (column) on the second (third): two codes of one frame differ by their rows
    and columns alone on those axes, and the same place in consecutive frames by one frame's length
    on all three, so "the code above", "the code to the left" and "this code one frame ago" are each
    one fixed rotation. Frequency i of a head rotates by axis i mod 3, so every axis has fast and slow
    frequencies.
    """
    is_code = grid_ids >= 0
    place = grid_ids.clamp(min=0)
    frame_start = position_ids - place
    row = torch.where(is_code, frame_start + place // grid_size, position_ids)
    column = torch.where(is_code, frame_start + place % grid_size, position_ids)
    return position_ids, row, column


def _frequency_by_axis(per_axis: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Rotary cos (or sin) `[batch, seq, head_dim]` taking frequency i from axis i mod len(per_axis).

    A head's dims hold its frequencies twice (rotate_half pairs dim i with dim i + head_dim / 2).
    """
    head_dim = per_axis[0].shape[-1]
    dims = torch.arange(head_dim, device=per_axis[0].device)
    return torch.stack(per_axis, dim=-1)[..., dims, dims % (head_dim // 2) % len(per_axis)]


def _segments(segment_ids, attention_mask, batch: int, total: int) -> torch.Tensor | None:
    if segment_ids is not None:
        if tuple(segment_ids.shape) != (batch, total):
            raise ValueError(f"segment_ids must be [batch, past + seq] = {(batch, total)}, got {tuple(segment_ids.shape)}")
        return segment_ids
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, total):
        raise ValueError(f"attention_mask must be [batch, past + seq] = {(batch, total)}, got {tuple(attention_mask.shape)}")
    if bool(attention_mask.all()):
        return None
    return attention_mask.long()


def _positions(segments, attention_mask, past: int, seq: int, device) -> torch.LongTensor:
    """Positions restart at 0 in every document; padding does not advance them (LWM: cumsum - 1)."""
    if segments is None:
        return torch.arange(past, past + seq, device=device)[None]
    if attention_mask is not None and segments.max() <= 1:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
    index = torch.arange(segments.shape[1], device=device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return (index - last_start)[:, -seq:]


def dense_mask(segments, past: int, seq: int, device) -> torch.Tensor:
    """[batch | 1, 1, seq, past + seq] boolean mask: causal, and within one segment."""
    q_pos = torch.arange(past, past + seq, device=device)
    k_pos = torch.arange(past + seq, device=device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
    if segments is not None:
        allowed = allowed & (segments[:, None, -seq:, None] == segments[:, None, None, :])
    return allowed


def _align_targets(labels, shift_labels, loss_weights, segments, seq):
    given = labels if shift_labels is None else shift_labels
    if loss_weights is not None and loss_weights.shape != given.shape:
        raise ValueError(f"loss_weights {tuple(loss_weights.shape)} must match the labels {tuple(given.shape)}")
    if shift_labels is not None:
        return shift_labels, loss_weights
    return next_token_targets(labels, None if segments is None else segments[:, -seq:], loss_weights)
