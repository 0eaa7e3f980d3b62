"""Convert LWM's released `vqgan` pickle (a Flax parameter tree) into a `VQGAN` folder.

The pickle is read by a restricted unpickler that resolves only the handful of globals needed to
rebuild dicts of numpy arrays (as written by numpy 1.x or 2.x, plain or cloudpickle, with a flax
FrozenDict container or jax Array leaves) and refuses every other global before anything runs.
The tree is then checked leaf by leaf against the shapes its config implies, mapped to our names
and layouts (HWIO kernels -> OIHW; decoder `UpsamplingBlock_k` is level L-1-k), and saved.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.modeling_vqgan import VQGAN


class VQGANPickleError(ValueError):
    """The pickle is hostile, malformed, or not a VQGAN parameter tree of the expected shapes."""


def _numpy_global(module: str, name: str):
    return getattr(__import__(module, fromlist=[name]), name)


_reconstruct = _numpy_global("numpy._core.multiarray", "_reconstruct")
_frombuffer = _numpy_global("numpy._core.numeric", "_frombuffer")


def _reconstruct_jax_array(fun, args, arr_state, aval_state):
    """Stand-in for `jax._src.array._reconstruct_array`: the numpy array a jax Array pickles as."""
    if fun is not _reconstruct:
        raise VQGANPickleError("jax array record does not rebuild through numpy's _reconstruct")
    array = fun(*args)
    array.__setstate__(arr_state)
    return array


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("_codecs").encode,
    ("flax.core.frozen_dict", "FrozenDict"): dict,
    ("jax._src.array", "_reconstruct_array"): _reconstruct_jax_array,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`; any other global (os.system, builtins.eval, ...) is refused."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise VQGANPickleError(
                f"refusing to load global {module}.{name}: a VQGAN parameter pickle only needs numpy arrays"
            ) from None


def load_flax_tree(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Safely unpickle a nested dict of arrays and flatten it to {"encoder/Conv_0/kernel": array}."""
    path = Path(path)
    if not path.is_file():
        raise VQGANPickleError(f"{path}: file not found")
    with open(path, "rb") as file:
        try:
            # no `buffers`: a stream asking for out-of-band buffers fails instead of reading them
            tree = RestrictedUnpickler(file).load()
        except VQGANPickleError as error:
            raise VQGANPickleError(f"{path}: {error}") from None
        except Exception as error:  # any malformed stream: EOF, bad opcode, bad reduce arguments
            raise VQGANPickleError(f"{path}: not a readable parameter pickle ({type(error).__name__}: {error})") from None
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    return _flatten(tree, path)


def _flatten(tree, source: Path, prefix: str = "") -> dict[str, np.ndarray]:
    if not isinstance(tree, dict):
        raise VQGANPickleError(f"{source}: expected a nested dict of arrays, found {type(tree).__name__} at {prefix or '/'}")
    flat = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise VQGANPickleError(f"{source}: non-string key {key!r} under {prefix or '/'}")
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, source, name))
        elif isinstance(value, np.ndarray):
            if not np.issubdtype(value.dtype, np.floating):
                raise VQGANPickleError(f"{source}: leaf {name} has dtype {value.dtype}; expected floating point")
            flat[name] = value
        else:
            raise VQGANPickleError(f"{source}: leaf {name} is a {type(value).__name__}, not an array")
    return flat


# ----------------------------------------------------------------------------- shapes and config


def infer_config(tree: dict[str, np.ndarray], norm_groups: int = 32) -> VQGANConfig:
    """Read the architecture off the tree's shapes (Flax's GroupNorm default is 32 groups)."""
    try:
        hidden = tree["encoder/Conv_0/kernel"].shape[3]
        levels = len({k.split("/")[1] for k in tree if k.startswith("encoder/DownsamplingBlock_")})
        widths = [tree[f"encoder/DownsamplingBlock_{i}/ResnetBlock_0/Conv_0/kernel"].shape[3] for i in range(levels)]
        num_res_blocks = len({k.split("/")[2] for k in tree if k.startswith("encoder/DownsamplingBlock_0/ResnetBlock_")})
        num_mid_blocks = len({k.split("/")[2] for k in tree if k.startswith("encoder/MidBlock_0/ResnetBlock_")})
        codebook_size, embed_dim = tree["quantize/embeddings"].shape
        config = VQGANConfig(
            resolution=2 ** (levels - 1) * 16,
            in_channels=tree["encoder/Conv_0/kernel"].shape[2],
            hidden_channels=hidden,
            channel_mult=tuple(width // hidden for width in widths),
            num_res_blocks=num_res_blocks,
            num_mid_blocks=num_mid_blocks,
            z_channels=tree["encoder/Conv_1/kernel"].shape[3],
            embed_dim=embed_dim,
            codebook_size=codebook_size,
            quantizer="vq",
            norm_groups=norm_groups,
        )
    except (KeyError, ValueError, IndexError) as error:
        raise VQGANPickleError(f"cannot read a VQGAN architecture from the tree ({type(error).__name__}: {error})") from None
    if any(width % hidden for width in widths):
        raise VQGANPickleError(f"level widths {widths} are not multiples of the base width {hidden}")
    return config


def expected_flax_shapes(config: VQGANConfig) -> dict[str, tuple[int, ...]]:
    """Every leaf of the Flax tree of a VQGAN with this config, with its shape (kernels HWIO)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, k, c_in, c_out):
        shapes[f"{name}/kernel"], shapes[f"{name}/bias"] = (k, k, c_in, c_out), (c_out,)

    def norm(name, channels):
        shapes[f"{name}/scale"], shapes[f"{name}/bias"] = (channels,), (channels,)

    def resnet(name, c_in, c_out):
        norm(f"{name}/GroupNorm_0", c_in)
        conv(f"{name}/Conv_0", 3, c_in, c_out)
        norm(f"{name}/GroupNorm_1", c_out)
        conv(f"{name}/Conv_1", 3, c_out, c_out)
        if c_in != c_out:
            conv(f"{name}/Conv_2", 1, c_in, c_out)

    widths, last = config.level_channels, len(config.level_channels) - 1
    conv("encoder/Conv_0", 3, config.in_channels, config.hidden_channels)
    for i, width in enumerate(widths):
        c_in = config.hidden_channels if i == 0 else widths[i - 1]
        for j in range(config.num_res_blocks):
            resnet(f"encoder/DownsamplingBlock_{i}/ResnetBlock_{j}", c_in if j == 0 else width, width)
        if i < last:
            conv(f"encoder/DownsamplingBlock_{i}/Downsample_0/Conv_0", 3, width, width)
    for j in range(config.num_mid_blocks):
        resnet(f"encoder/MidBlock_0/ResnetBlock_{j}", widths[-1], widths[-1])
    norm("encoder/GroupNorm_0", widths[-1])
    conv("encoder/Conv_1", 3, widths[-1], config.z_channels)

    conv("quant_conv", 1, config.z_channels, config.embed_dim)
    shapes["quantize/embeddings"] = (config.codebook_size, config.embed_dim)
    conv("post_quant_conv", 1, config.embed_dim, config.z_channels)

    conv("decoder/Conv_0", 3, config.z_channels, widths[-1])
    for j in range(config.num_mid_blocks):
        resnet(f"decoder/MidBlock_0/ResnetBlock_{j}", widths[-1], widths[-1])
    for k, level in enumerate(reversed(range(len(widths)))):
        c_in = widths[min(level + 1, last)]
        for j in range(config.num_res_blocks + 1):
            resnet(f"decoder/UpsamplingBlock_{k}/ResnetBlock_{j}", c_in if j == 0 else widths[level], widths[level])
        if level > 0:
            conv(f"decoder/UpsamplingBlock_{k}/Upsample_0/Conv_0", 3, widths[level], widths[level])
    norm("decoder/GroupNorm_0", widths[0])
    conv("decoder/Conv_1", 3, widths[0], config.in_channels)
    return shapes


def validate_tree(tree: dict[str, np.ndarray], config: VQGANConfig) -> None:
    expected = expected_flax_shapes(config)
    missing = sorted(set(expected) - set(tree))
    unexpected = sorted(set(tree) - set(expected))
    wrong = [f"{k}: {tree[k].shape} != {expected[k]}" for k in sorted(expected) if k in tree and tree[k].shape != expected[k]]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label} {items[:5]}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong))
            if items
        )
        raise VQGANPickleError(f"the tree does not match a VQGAN of this config ({len(expected)} leaves expected): {details}")


# ----------------------------------------------------------------------------- name mapping

_RESNET_PARTS = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "GroupNorm_1": "norm2", "Conv_1": "conv2", "Conv_2": "nin_shortcut"}
_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def torch_name(flax_name: str, num_levels: int) -> str:
    """Our parameter name for a Flax leaf path (everything but the codebook)."""
    *module, leaf = flax_name.split("/")
    path = "/".join(module)

    def resnet(block_name):  # a ResnetBlock leaf: the block's name + its part (norm1, conv1, ...)
        return lambda m: f"{block_name(m)}.{_RESNET_PARTS[m[m.lastindex]]}"

    def up_level(m) -> int:  # Flax numbers decoder levels in execution order: UpsamplingBlock_0 is the last
        return num_levels - 1 - int(m[1])

    rules = [
        (r"^(encoder|decoder)/Conv_0$", r"\1.conv_in"),
        (r"^(encoder|decoder)/Conv_1$", r"\1.conv_out"),
        (r"^(encoder|decoder)/GroupNorm_0$", r"\1.norm_out"),
        (r"^(encoder|decoder)/MidBlock_0/ResnetBlock_(\d+)/(\w+)$", resnet(lambda m: f"{m[1]}.mid.{m[2]}")),
        (r"^encoder/DownsamplingBlock_(\d+)/ResnetBlock_(\d+)/(\w+)$", resnet(lambda m: f"encoder.down.{m[1]}.block.{m[2]}")),
        (r"^encoder/DownsamplingBlock_(\d+)/Downsample_0/Conv_0$", r"encoder.down.\1.resample.conv"),
        (r"^decoder/UpsamplingBlock_(\d+)/ResnetBlock_(\d+)/(\w+)$", resnet(lambda m: f"decoder.up.{up_level(m)}.block.{m[2]}")),
        (r"^decoder/UpsamplingBlock_(\d+)/Upsample_0/Conv_0$", lambda m: f"decoder.up.{up_level(m)}.resample.conv"),
        (r"^(quant_conv|post_quant_conv)$", r"\1"),
    ]
    for pattern, replacement in rules:
        name, count = re.subn(pattern, replacement, path)
        if count:
            return f"{name}.{_PARAM_NAMES[leaf]}"
    raise VQGANPickleError(f"no mapping for Flax leaf {flax_name}")


def to_state_dict(tree: dict[str, np.ndarray], config: VQGANConfig) -> dict[str, torch.Tensor]:
    num_levels = len(config.channel_mult)
    state = {}
    for flax_name, array in tree.items():
        if flax_name == "quantize/embeddings":
            continue
        tensor = torch.from_numpy(np.array(array, dtype=np.float32))
        if flax_name.endswith("/kernel"):
            tensor = tensor.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        state[torch_name(flax_name, num_levels)] = tensor
    # the codebook, with EMA statistics consistent with it (each code counted once) for fine-tuning
    codebook = torch.from_numpy(np.array(tree["quantize/embeddings"], dtype=np.float32))[None]
    prefix = "quantize.vq._codebook."
    state[prefix + "embed"] = codebook
    state[prefix + "embed_avg"] = codebook.clone()
    state[prefix + "cluster_size"] = torch.ones(codebook.shape[:2])
    state[prefix + "initted"] = torch.tensor(True)
    return state


def convert_vqgan_pickle(
    pickle_path: str | os.PathLike, out_dir: str | os.PathLike, config: VQGANConfig | None = None
) -> VQGAN:
    """Read, validate and convert LWM's `vqgan` pickle; write `config.json` + `model.safetensors`."""
    tree = load_flax_tree(pickle_path)
    config = config or infer_config(tree)
    if config.quantizer != "vq":
        raise VQGANPickleError(f"LWM's VQGAN uses a plain codebook; config asks for quantizer={config.quantizer!r}")
    validate_tree(tree, config)
    model = VQGAN(config)
    missing, unexpected = model.load_state_dict(to_state_dict(tree, config), strict=False)
    if missing or unexpected:  # a mapping bug, not a user error: the tree was validated above
        raise RuntimeError(f"internal mapping error: missing {missing}, unexpected {unexpected}")
    model.eval().save_pretrained(out_dir)
    return model

