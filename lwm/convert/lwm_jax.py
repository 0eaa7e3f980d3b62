"""LWM's official JAX checkpoints -> a folder `LWMForCausalLM.from_pretrained` loads (`lwm convert lwm-jax`).

The `params` file of an LWM release is a tux streaming checkpoint (read by `msgpack_reader`) of
`FlaxVideoLLaMAForCausalLMModule` (or, for LWM-Text, `FlaxLLaMAForCausalLMModule`). Its layout is
detected from the keys (docs/official-weights.md#the-params-file): a bare parameter tree or a whole train state, and decoder
layers either one subtree per layer (`transformer/h/<i>`) or stacked along axis 0 or 1 under
`transformer/h/scan_decoder`. Each leaf maps to our names (docs/official-weights.md#the-parameter-tree): Flax Dense kernels are
(in, out) and become `kernel.T`; embeddings and norms are copied; the output columns of `wq`/`wk` are
reordered per head from LWM's interleaved RoPE pairs to the half-split pairs of transformers'
`rotate_half` (docs/official-weights.md#rope), so the model runs LWM's weights with the standard LLaMA rotary embedding.

Memory stays at about one record: records are read one at a time, sliced into layers, and each
converted tensor is written straight into its place in the sharded safetensors output.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from einops import rearrange
from tqdm import tqdm

from lwm.convert.msgpack_reader import ArrayLeaf, StreamingCheckpoint
from lwm.convert.sharded_writer import ShardedSafetensorsWriter, TensorSpec

LLAMA_HEAD_DIM = 128  # every LLaMA-2/LWM size; the head count is not recorded in the checkpoint
DEFAULT_THETA = 5e7  # LWM's vision-language scripts (docs/official-weights.md#rope)
DEFAULT_MAX_LENGTH = 1_048_576
DEFAULT_SHARD_GB = 4.0
SCAN_PREFIX = "transformer/h/scan_decoder/"

# leaf under transformer/h/<i>/ -> (our name under model.layers.<i>., how the weight is transformed)
LAYER_LEAVES: dict[str, tuple[str, str]] = {
    "attention/wq/kernel": ("self_attn.q_proj.weight", "rotary"),
    "attention/wk/kernel": ("self_attn.k_proj.weight", "rotary"),
    "attention/wv/kernel": ("self_attn.v_proj.weight", "transpose"),
    "attention/wo/kernel": ("self_attn.o_proj.weight", "transpose"),
    "feed_forward/w1/kernel": ("mlp.gate_proj.weight", "transpose"),
    "feed_forward/w3/kernel": ("mlp.up_proj.weight", "transpose"),
    "feed_forward/w2/kernel": ("mlp.down_proj.weight", "transpose"),
    "attention_norm/kernel": ("input_layernorm.weight", "copy"),
    "ffn_norm/kernel": ("post_attention_layernorm.weight", "copy"),
}
# leaves outside the layers, in model order: the embeddings first, the final norm and heads last
EMBEDDING_LEAVES: dict[str, tuple[str, str]] = {
    "transformer/wte/embedding": ("model.embed_tokens.weight", "copy"),
    "transformer/vte/embedding": ("vision_embed_tokens.weight", "copy"),
}
OUTPUT_LEAVES: dict[str, tuple[str, str]] = {
    "transformer/ln_f/kernel": ("model.norm.weight", "copy"),
    "lm_head/kernel": ("lm_head.weight", "transpose"),
    "vision_head/kernel": ("vision_head.weight", "transpose"),
}


class ConversionError(ValueError):
    """The checkpoint is readable but is not an LWM/LLaMA parameter tree this converter understands."""


@dataclass(frozen=True)
class SourceLayout:
    """What the keys and shapes of a `params` file say about it."""

    train_state: bool
    scan_axis: int | None  # None: unscanned layers
    num_layers: int
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    vision_vocab_size: int  # 0 for a text-only LLaMA (LWM-Text)
    dtype: str

    def describe(self) -> str:
        kind = "LWM vision-language (VideoLLaMA)" if self.vision_vocab_size else "text-only LLaMA (LWM-Text)"
        tree = "train state" if self.train_state else "params"
        layers = "unscanned layers" if self.scan_axis is None else f"layers scanned along axis {self.scan_axis}"
        return f"{kind} {tree}, {layers}, {self.num_layers} layers, {self.dtype}"


@dataclass(frozen=True)
class Target:
    """One output tensor: which leaf it comes from, which layer of a stack, and the transform."""

    spec: TensorSpec
    source: str
    layer: int | None
    transform: str


# ----------------------------------------------------------------------------- layout detection


def parameter_leaves(checkpoint: StreamingCheckpoint) -> tuple[dict[str, ArrayLeaf], bool]:
    """The parameter leaves by "a/b/c" path, and whether the file is a train state."""
    keys = checkpoint.leaves
    train_state = any(key[0] in ("step", "opt_state") or key[:2] == ("params", "params") for key in keys)
    if train_state:
        selected = {"/".join(key[2:]): value for key, value in keys.items() if key[:2] == ("params", "params")}
        if not selected:
            raise ConversionError(f"{checkpoint.path}: a train state without ('params', 'params', ...) records")
    else:
        selected = {"/".join(key): value for key, value in keys.items()}
    scalars = sorted(path for path, value in selected.items() if not isinstance(value, ArrayLeaf))
    if scalars:
        raise ConversionError(f"{checkpoint.path}: parameters must be arrays; {', '.join(scalars[:5])} are plain values")
    return selected, train_state


def detect_layout(params: dict[str, ArrayLeaf], train_state: bool, source: Path) -> SourceLayout:
    if "transformer/wte/embedding" not in params:
        raise ConversionError(
            f"{source}: no transformer/wte/embedding; not an LWM/LLaMA checkpoint "
            f"(found {', '.join(sorted(params)[:5])}{' ...' if len(params) > 5 else ''})"
        )
    vocab_size, hidden_size = _shape(params, "transformer/wte/embedding", 2, source)
    scanned = any(path.startswith(SCAN_PREFIX) for path in params)
    numbered = sorted({int(p.split("/")[2]) for p in params if p.startswith("transformer/h/") and p.split("/")[2].isdigit()})
    if scanned and numbered:
        raise ConversionError(f"{source}: holds both scanned (h/scan_decoder) and unscanned (h/<i>) layers")
    if scanned:
        norm = _shape(params, SCAN_PREFIX + "attention_norm/kernel", 2, source)
        if norm[1] == hidden_size and norm[0] != hidden_size:
            scan_axis, num_layers = 0, norm[0]
        elif norm[0] == hidden_size and norm[1] != hidden_size:
            scan_axis, num_layers = 1, norm[1]
        else:
            raise ConversionError(
                f"{source}: cannot tell the layer axis of the scanned norm of shape {norm} (hidden size {hidden_size})"
            )
        gate = _shape(params, SCAN_PREFIX + "feed_forward/w1/kernel", 3, source)
        intermediate_size = gate[2]
    elif numbered:
        if numbered != list(range(len(numbered))):
            raise ConversionError(f"{source}: layer numbers {numbered} are not 0..{len(numbered) - 1}")
        scan_axis, num_layers = None, len(numbered)
        intermediate_size = _shape(params, "transformer/h/0/feed_forward/w1/kernel", 2, source)[1]
    else:
        raise ConversionError(f"{source}: no decoder layers (neither transformer/h/scan_decoder nor transformer/h/0)")
    vision_vocab_size = _shape(params, "transformer/vte/embedding", 2, source)[0] if "transformer/vte/embedding" in params else 0
    return SourceLayout(
        train_state, scan_axis, num_layers, vocab_size, hidden_size, intermediate_size, vision_vocab_size,
        params["transformer/wte/embedding"].dtype,
    )


def _shape(params: dict[str, ArrayLeaf], path: str, rank: int, source: Path) -> tuple[int, ...]:
    if path not in params:
        raise ConversionError(f"{source}: missing parameter {path}")
    shape = params[path].shape
    if len(shape) != rank:
        raise ConversionError(f"{source}: {path} has shape {shape}, expected {rank} dimensions")
    return shape


# ----------------------------------------------------------------------------- the mapping


def layer_flax_shapes(layout: SourceLayout) -> dict[str, tuple[int, ...]]:
    """One layer's leaves and their Flax shapes; no GQA in LWM, so q, k, v are all D x D."""
    d, f = layout.hidden_size, layout.intermediate_size
    return {
        "attention/wq/kernel": (d, d), "attention/wk/kernel": (d, d), "attention/wv/kernel": (d, d),
        "attention/wo/kernel": (d, d), "feed_forward/w1/kernel": (d, f), "feed_forward/w3/kernel": (d, f),
        "feed_forward/w2/kernel": (f, d), "attention_norm/kernel": (d,), "ffn_norm/kernel": (d,),
    }


def outer_flax_shapes(layout: SourceLayout) -> dict[str, tuple[int, ...]]:
    """The leaves outside the layers and their Flax shapes (vision ones only in VideoLLaMA)."""
    d, vocab, vision = layout.hidden_size, layout.vocab_size, layout.vision_vocab_size
    shapes = {"transformer/wte/embedding": (vocab, d), "transformer/ln_f/kernel": (d,), "lm_head/kernel": (d, vocab)}
    if vision:
        shapes |= {"transformer/vte/embedding": (vision, d), "vision_head/kernel": (d, vision)}
    return shapes


def plan_targets(params: dict[str, ArrayLeaf], layout: SourceLayout, source: Path) -> list[Target]:
    """Every output tensor in model order, after checking the tree holds exactly the expected leaves."""
    outer, per_layer = outer_flax_shapes(layout), layer_flax_shapes(layout)
    expected = dict(outer)
    for leaf, shape in per_layer.items():
        if layout.scan_axis is None:
            expected |= {f"transformer/h/{i}/{leaf}": shape for i in range(layout.num_layers)}
        else:
            stacked = list(shape)
            stacked.insert(layout.scan_axis, layout.num_layers)
            expected[SCAN_PREFIX + leaf] = tuple(stacked)
    _check_tree(params, expected, source)

    def target(name: str, transform: str, path: str, layer: int | None, flax_shape: tuple[int, ...]) -> Target:
        shape = flax_shape[::-1] if transform in ("transpose", "rotary") else flax_shape
        return Target(TensorSpec(name, shape, params[path].dtype), path, layer, transform)

    targets = [target(name, transform, path, None, outer[path])
               for path, (name, transform) in EMBEDDING_LEAVES.items() if path in outer]
    for i in range(layout.num_layers):
        for leaf, (name, transform) in LAYER_LEAVES.items():
            if layout.scan_axis is None:
                targets.append(target(f"model.layers.{i}.{name}", transform, f"transformer/h/{i}/{leaf}", None, per_layer[leaf]))
            else:
                targets.append(target(f"model.layers.{i}.{name}", transform, SCAN_PREFIX + leaf, i, per_layer[leaf]))
    targets += [target(name, transform, path, None, outer[path])
                for path, (name, transform) in OUTPUT_LEAVES.items() if path in outer]
    return targets


def _check_tree(params: dict[str, ArrayLeaf], expected: dict[str, tuple[int, ...]], source: Path) -> None:
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    wrong = [f"{p} {params[p].shape} (expected {expected[p]})"
             for p in sorted(expected) if p in params and params[p].shape != expected[p]]
    floats = ("bfloat16", "float16", "float32")
    bad_dtypes = [f"{p} ({params[p].dtype})" for p in sorted(expected) if p in params and params[p].dtype not in floats]
    problems = [
        f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
        for label, items in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong), ("not bf16/f16/f32", bad_dtypes)
        )
        if items
    ]
    if problems:
        raise ConversionError(f"{source}: the parameter tree is not the expected LWM/LLaMA tree; " + "; ".join(problems))


def interleaved_to_half_split(kernel: np.ndarray, num_heads: int) -> np.ndarray:
    """Reorders a q/k kernel's output columns per head from LWM's RoPE pairs (2j, 2j+1) to
    transformers' rotate_half pairs (j, j + d/2): column h·d + r·d/2 + j <- h·d + 2j + r."""
    return rearrange(kernel, "i (h j r) -> i (h r j)", h=num_heads, r=2)


def to_torch_layout(array: np.ndarray, transform: str, num_heads: int) -> np.ndarray:
    if transform == "rotary":
        array = interleaved_to_half_split(array, num_heads)
    if transform in ("rotary", "transpose"):
        return array.T  # Flax Dense (in, out) -> torch Linear (out, in)
    return array


# ----------------------------------------------------------------------------- conversion


def model_config(
    layout: SourceLayout,
    num_heads: int | None = None,
    theta: float = DEFAULT_THETA,
    max_length: int = DEFAULT_MAX_LENGTH,
    rms_norm_eps: float = 1e-6,
    num_vision_codes: int = 8192,
):
    """An `LWMConfig` for a vision-language checkpoint, a `LlamaConfig` for a text-only one."""
    from transformers import LlamaConfig

    from lwm.model import LWMConfig

    num_heads = num_heads or layout.hidden_size // LLAMA_HEAD_DIM
    if num_heads < 1 or layout.hidden_size % num_heads or (layout.hidden_size // num_heads) % 2:
        raise ConversionError(
            f"hidden size {layout.hidden_size} does not split into {num_heads} heads of an even size (set --num-heads)"
        )
    fields = dict(
        vocab_size=layout.vocab_size, hidden_size=layout.hidden_size, intermediate_size=layout.intermediate_size,
        num_hidden_layers=layout.num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        head_dim=layout.hidden_size // num_heads, rms_norm_eps=rms_norm_eps, rope_theta=theta,
        max_position_embeddings=max_length, dtype=layout.dtype,
    )
    if not layout.vision_vocab_size:
        return LlamaConfig(**fields, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if layout.vision_vocab_size < num_vision_codes + 2:
        raise ConversionError(
            f"the vision table has {layout.vision_vocab_size} rows, too few for {num_vision_codes} codes + <eof> + <eov> "
            "(the codebook size comes from --vqgan, else --num-vision-codes)"
        )
    return LWMConfig.from_preset(
        "lwm-7b", **fields, vision_vocab_size=layout.vision_vocab_size, num_vision_codes=num_vision_codes
    )


def convert_params(
    params_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_heads: int | None = None,
    theta: float = DEFAULT_THETA,
    max_length: int = DEFAULT_MAX_LENGTH,
    rms_norm_eps: float = 1e-6,
    num_vision_codes: int = 8192,
    max_shard_bytes: int = int(DEFAULT_SHARD_GB * 1e9),
    progress: bool = True,
):
    """Converts the LLM of a `params` file into `out_dir` (sharded safetensors + config.json).

    Returns (config, layout). Records are read one at a time in file order; every layer of a stacked
    record is transformed and written before the next record is read.
    """
    out_dir = Path(out_dir)
    with StreamingCheckpoint(params_path) as checkpoint:
        params, train_state = parameter_leaves(checkpoint)
        layout = detect_layout(params, train_state, checkpoint.path)
        targets = plan_targets(params, layout, checkpoint.path)
        config = model_config(layout, num_heads, theta, max_length, rms_norm_eps, num_vision_codes)
        by_source: dict[str, list[Target]] = defaultdict(list)
        for target in targets:
            by_source[target.source].append(target)

        writer = ShardedSafetensorsWriter(out_dir, [t.spec for t in targets], max_shard_bytes)
        try:
            total = sum(params[path].nbytes for path in by_source)
            with tqdm(total=total, unit="B", unit_scale=True, desc="converting", disable=not progress) as bar:
                for path in sorted(by_source, key=lambda p: params[p].record):
                    _convert_record(checkpoint, params[path], by_source[path], layout, config.num_attention_heads, writer)
                    bar.update(params[path].nbytes)
            writer.finish()
        finally:
            writer.close()
    config.save_pretrained(out_dir)
    return config, layout


def _convert_record(checkpoint, leaf: ArrayLeaf, targets: list[Target], layout: SourceLayout, num_heads: int, writer) -> None:
    """Reads one record and writes every tensor made from it; the record is freed on return."""
    array = checkpoint.read(leaf)
    if layout.scan_axis is not None and targets[0].layer is not None:
        array = np.moveaxis(array, layout.scan_axis, 0)  # a view: layer i is array[i]
    for target in targets:
        part = array if target.layer is None else array[target.layer]
        writer.write(target.spec.name, to_torch_layout(part, target.transform, num_heads))


def write_tokenizer_and_processor(
    out_dir: Path, tokenizer_path: str, config, with_vqgan: bool, eov_after_every_frame: bool
) -> None:
    """`tokenizer.model` + transformers tokenizer files, and with a VQGAN `processor_config.json`."""
    from lwm.tokenizers import VQGAN, VQGAN_FOLDER, LWMProcessor, load_text_tokenizer

    tokenizer = load_text_tokenizer(tokenizer_path)
    if len(tokenizer) != config.vocab_size:
        raise ConversionError(
            f"{tokenizer_path} has {len(tokenizer)} pieces but the checkpoint's text table has {config.vocab_size} rows"
        )
    source = Path(tokenizer_path)
    model_file = source if source.is_file() else source / "tokenizer.model"
    if model_file.is_file():
        shutil.copyfile(model_file, out_dir / "tokenizer.model")
    if with_vqgan:
        vqgan = VQGAN.from_pretrained(out_dir / VQGAN_FOLDER)
        LWMProcessor(tokenizer, vqgan, eov_after_every_frame=eov_after_every_frame).save_pretrained(out_dir)
    else:
        tokenizer.save_pretrained(out_dir)


# ----------------------------------------------------------------------------- a whole release


@dataclass
class ConvertedRelease:
    """What `convert_release` wrote: the decoder's config, what the file was, and the other parts."""

    config: object
    layout: SourceLayout
    params_path: str
    vqgan_path: str | None
    parts: list[str] = field(default_factory=list)  # e.g. "VQGAN with 8192 codes", "tokenizer and processor"


def convert_release(
    params: str,
    out_dir: str | os.PathLike,
    *,
    vqgan: str | None = None,
    tokenizer: str | None = None,
    num_heads: int | None = None,
    theta: float = DEFAULT_THETA,
    max_length: int = DEFAULT_MAX_LENGTH,
    rms_norm_eps: float = 1e-6,
    num_vision_codes: int = 8192,
    eov_after_every_frame: bool = False,
    shard_gb: float = DEFAULT_SHARD_GB,
    progress: bool = True,
) -> ConvertedRelease:
    """A downloaded release (`params`, optional `vqgan` pickle, LLaMA-2 `tokenizer`) -> `out_dir`.

    `params` and `vqgan` may also name the release folder that holds those files. The VQGAN goes first
    (its codebook sizes the vision vocabulary), then the decoder, then the tokenizer and processor files.
    """
    from lwm.convert.vqgan_pickle import convert_vqgan_pickle
    from lwm.tokenizers import VQGAN_FOLDER

    out_dir = Path(out_dir)
    params_path = _release_file(params, "params")
    vqgan_path = _release_file(vqgan, "vqgan") if vqgan else None
    for name, path in (("params", params_path), ("vqgan", vqgan_path), ("tokenizer", tokenizer)):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{name}: {path} not found")
    parts = []
    if vqgan_path:
        num_vision_codes = int(convert_vqgan_pickle(vqgan_path, out_dir / VQGAN_FOLDER).codebook_size)
        parts.append(f"VQGAN with {num_vision_codes} codes")
    config, layout = convert_params(
        params_path, out_dir, num_heads=num_heads, theta=theta, max_length=max_length, rms_norm_eps=rms_norm_eps,
        num_vision_codes=num_vision_codes, max_shard_bytes=int(shard_gb * 1e9), progress=progress,
    )
    if vqgan_path and not layout.vision_vocab_size:
        raise ConversionError(f"{params_path} is a text-only checkpoint; a VQGAN does not apply")
    if tokenizer:
        write_tokenizer_and_processor(out_dir, tokenizer, config, bool(vqgan_path), eov_after_every_frame)
        parts.append("tokenizer" + (" and processor" if vqgan_path else ""))
    return ConvertedRelease(config, layout, params_path, vqgan_path, parts)


def _release_file(path: str, name: str) -> str:
    """`path`, or `path/name` when `path` is a downloaded release folder holding that file."""
    folder = Path(path)
    return str(folder / name) if folder.is_dir() and (folder / name).is_file() else path
