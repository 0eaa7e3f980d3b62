"""Writes synthetic checkpoints exactly the way LWM's JAX code does (docs/official-weights.md#the-formats), without JAX.

tux's `StreamingCheckpointer` flattens the tree, casts float leaves to `float_dtype` (bf16 by default)
and writes each leaf as one msgpack record `[key, flax.serialization.to_bytes(leaf)]` with a default
`msgpack.Packer()`. `to_bytes` packs an ndarray as ext type 1 (`[shape, dtype name, raw bytes]`), a
numpy scalar as ext type 3 and splits a leaf of more than `MAX_CHUNK_SIZE` bytes into a chunked map.
Everything below re-creates that from the spec's description; tests lower `max_chunk_bytes` to get
chunked leaves at tiny sizes.

The parameter trees are LWM's `FlaxVideoLLaMAForCausalLMModule`: unscanned
`transformer/h/<i>/...`, scanned `transformer/h/scan_decoder/...` with the layer axis at 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgpack
import numpy as np

MAX_CHUNK_SIZE = 2**30  # flax.serialization: leaves strictly larger than this are chunked
EXT_NDARRAY, EXT_NPSCALAR = 1, 3


@dataclass(frozen=True)
class Dims:
    """The sizes of an LWM (VideoLLaMA) model; `vision_vocab_size=0` makes a text-only LLaMA."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    vision_vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


# ----------------------------------------------------------------------------- bfloat16 without ml_dtypes


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even as ml_dtypes' astype does."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))
    return ((bits + rounding) >> 16).astype(np.uint16)


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values that bfloat16 represents exactly (so a bf16 file holds them losslessly)."""
    return (bfloat16_bits(values).astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------- flax to_bytes / tux records


def _ndarray_ext(array: np.ndarray, dtype_name: str, code: int = EXT_NDARRAY) -> msgpack.ExtType:
    payload = msgpack.packb((array.shape, dtype_name, array.tobytes("C")), use_bin_type=True)
    return msgpack.ExtType(code, payload)


def to_bytes(leaf, dtype_name: str | None = None, max_chunk_bytes: int = MAX_CHUNK_SIZE) -> bytes:
    """flax.serialization.to_bytes of one leaf. `dtype_name` overrides the array's dtype name (bfloat16
    leaves are passed as their uint16 bits with dtype_name="bfloat16")."""
    if isinstance(leaf, np.generic):
        return msgpack.packb(_ndarray_ext(np.asarray(leaf), leaf.dtype.name, EXT_NPSCALAR), use_bin_type=True)
    if not isinstance(leaf, np.ndarray):
        return msgpack.packb(leaf, use_bin_type=True)
    name = dtype_name or leaf.dtype.name
    if leaf.nbytes <= max_chunk_bytes:
        return msgpack.packb(_ndarray_ext(leaf, name), use_bin_type=True)
    chunk = max(1, int(max_chunk_bytes / leaf.dtype.itemsize))
    flat = leaf.reshape(-1)
    document = {
        "__msgpack_chunked_array__": True,
        "shape": {str(i): n for i, n in enumerate(leaf.shape)},
        "chunks": {str(i): _ndarray_ext(flat[start : start + chunk], name) for i, start in enumerate(range(0, flat.size, chunk))},
    }
    return msgpack.packb(document, use_bin_type=True)


def cast_float_leaf(leaf, float_dtype: str) -> tuple[object, str | None]:
    """tux's `float_tensor_to_dtype`: float arrays go to `float_dtype`, everything else is left alone."""
    if not isinstance(leaf, np.ndarray) or leaf.dtype.kind != "f":
        return leaf, None
    if float_dtype == "bf16":
        return bfloat16_bits(leaf), "bfloat16"
    if float_dtype == "fp32":
        return leaf.astype(np.float32), None
    raise ValueError(f"float_dtype must be 'bf16' or 'fp32', got {float_dtype!r}")


def write_streaming_checkpoint(
    path, records: Iterable[tuple[tuple[str, ...], object]], float_dtype: str = "bf16", max_chunk_bytes: int = MAX_CHUNK_SIZE
) -> None:
    """tux's `save_train_state_to_file`: one `[key, to_bytes(leaf)]` msgpack record per flattened leaf."""
    packer = msgpack.Packer()
    with open(path, "wb") as file:
        for key, leaf in records:
            leaf, dtype_name = cast_float_leaf(leaf, float_dtype)
            file.write(packer.pack((key, to_bytes(leaf, dtype_name, max_chunk_bytes))))


def flatten(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    """flax.traverse_util.flatten_dict (empty sub-dicts dropped)."""
    for name, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, (*prefix, name))
        else:
            yield (*prefix, name), value


# ----------------------------------------------------------------------------- LWM parameter trees


def layer_shapes(dims: Dims) -> dict[str, tuple[int, ...]]:
    """One decoder layer's leaves (relative to `transformer/h/<i>/`) and their Flax shapes."""
    d, f = dims.hidden_size, dims.intermediate_size
    return {
        "attention/wq/kernel": (d, d),
        "attention/wk/kernel": (d, d),
        "attention/wv/kernel": (d, d),
        "attention/wo/kernel": (d, d),
        "feed_forward/w1/kernel": (d, f),
        "feed_forward/w2/kernel": (f, d),
        "feed_forward/w3/kernel": (d, f),
        "attention_norm/kernel": (d,),
        "ffn_norm/kernel": (d,),
    }


def random_params(dims: Dims, seed: int = 0) -> dict:
    """An unscanned LWM parameter tree with random bfloat16-exact float32 values.

    Kernels are scaled by 1/sqrt(fan-in) and norms are 1 ± 0.1, so activations stay O(1) and logits
    are sensitive to every weight.
    """
    rng = np.random.default_rng(seed)

    def leaf(shape):
        if len(shape) == 1:
            values = 1 + 0.1 * rng.standard_normal(shape)
        else:
            values = rng.standard_normal(shape) / math.sqrt(shape[0])
        return round_to_bfloat16(values.astype(np.float32))

    d = dims.hidden_size
    transformer = {
        "wte": {"embedding": round_to_bfloat16(rng.standard_normal((dims.vocab_size, d)).astype(np.float32))},
        "h": {str(i): _nest({name: leaf(shape) for name, shape in layer_shapes(dims).items()}) for i in range(dims.num_layers)},
        "ln_f": {"kernel": leaf((d,))},
    }
    params = {"transformer": transformer, "lm_head": {"kernel": leaf((d, dims.vocab_size))}}
    if dims.vision_vocab_size:
        transformer["vte"] = {"embedding": round_to_bfloat16(rng.standard_normal((dims.vision_vocab_size, d)).astype(np.float32))}
        params["vision_head"] = {"kernel": leaf((d, dims.vision_vocab_size))}
    return params


def scan_layers(params: dict, axis: int = 0) -> dict:
    """The same tree as written with `scan_layers=True`: layers stacked under `h/scan_decoder` along `axis`."""
    layers = params["transformer"]["h"]
    paths = ["/".join(key) for key, _ in flatten(layers["0"])]
    stacked = {path: np.stack([_get(layers[str(i)], path) for i in range(len(layers))], axis=axis) for path in paths}
    transformer = {**params["transformer"], "h": {"scan_decoder": _nest(stacked)}}
    return {**params, "transformer": transformer}


def train_state(params: dict, step: int = 1000, seed: int = 1) -> Iterator[tuple[tuple[str, ...], object]]:
    """The flattened records of a flax TrainState with tux's optimizer: step, params, Adam state."""
    rng = np.random.default_rng(seed)
    yield ("step",), step
    for key, value in flatten(params):
        yield ("params", "params", *key), value
    yield ("opt_state", "1", "0", "count"), np.array(step, dtype=np.int32)
    for moment in ("mu", "nu"):
        for key, value in flatten(params):
            yield ("opt_state", "1", "0", moment, "params", *key), (0.01 * rng.standard_normal(value.shape)).astype(np.float32)
    yield ("opt_state", "2", "count"), np.int32(step)


def _nest(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, name = path.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return tree


def _get(tree: dict, path: str):
    for name in path.split("/"):
        tree = tree[name]
    return tree
