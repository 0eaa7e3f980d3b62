"""Converting LWM's `vqgan` pickle: a synthetic Flax tree laid out exactly like LWM's (small widths)
converts, and our VQGAN matches an independent NumPy forward that reads the Flax tree directly.
Hostile or malformed pickles are refused without running anything."""

from __future__ import annotations

import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from lwm.cli import main as lwm_main
from lwm.convert.vqgan_pickle import (
    VQGANPickleError,
    convert_vqgan_pickle,
    expected_flax_shapes,
    load_flax_tree,
)
from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.modeling_vqgan import VQGAN

# A small VQGAN with LWM's structure: 3 levels of widths 32, 64, 96 (distinct, so the decoder's
# reversed level naming is visible), 2 res blocks per level, 32 GroupNorm groups as Flax's default.
# LWM's MidBlock always holds 2 res blocks, whatever num_res_blocks says.
HIDDEN, MULT, BLOCKS, Z, CODES, EMBED = 32, (1, 2, 3), 2, 8, 32, 8
MID_BLOCKS = 2


# ----------------------------------------------------------------------------- a Flax-named tree


def flax_tree(seed: int = 0, blocks: int = BLOCKS) -> dict:
    """Random parameters under the Flax names and HWIO layouts of LWM's VQGAN (docs/official-weights.md#the-vqgan),
    `blocks` res blocks a level."""
    rng = np.random.default_rng(seed)

    def conv(k, c_in, c_out, gain=1.0):
        kernel = rng.standard_normal((k, k, c_in, c_out)) * gain / math.sqrt(k * k * c_in)
        return {"kernel": kernel.astype(np.float32), "bias": (0.05 * rng.standard_normal(c_out)).astype(np.float32)}

    def norm(c):
        return {"scale": (1 + 0.1 * rng.standard_normal(c)).astype(np.float32),
                "bias": (0.1 * rng.standard_normal(c)).astype(np.float32)}

    def resnet(c_in, c_out):
        block = {"GroupNorm_0": norm(c_in), "Conv_0": conv(3, c_in, c_out), "GroupNorm_1": norm(c_out),
                 "Conv_1": conv(3, c_out, c_out)}
        if c_in != c_out:
            block["Conv_2"] = conv(1, c_in, c_out)
        return block

    widths = [HIDDEN * m for m in MULT]
    encoder = {"Conv_0": conv(3, 3, HIDDEN)}
    c_in = HIDDEN
    for i, width in enumerate(widths):
        level = {f"ResnetBlock_{j}": resnet(c_in if j == 0 else width, width) for j in range(blocks)}
        if i < len(widths) - 1:
            level["Downsample_0"] = {"Conv_0": conv(3, width, width)}
        encoder[f"DownsamplingBlock_{i}"] = level
        c_in = width
    encoder["MidBlock_0"] = {f"ResnetBlock_{j}": resnet(widths[-1], widths[-1]) for j in range(MID_BLOCKS)}
    encoder["GroupNorm_0"] = norm(widths[-1])
    encoder["Conv_1"] = conv(3, widths[-1], Z)

    decoder = {"Conv_0": conv(3, Z, widths[-1])}
    decoder["MidBlock_0"] = {f"ResnetBlock_{j}": resnet(widths[-1], widths[-1]) for j in range(MID_BLOCKS)}
    c_in = widths[-1]
    for k, level_index in enumerate(reversed(range(len(widths)))):  # UpsamplingBlock_0 is the last level
        width = widths[level_index]
        level = {f"ResnetBlock_{j}": resnet(c_in if j == 0 else width, width) for j in range(blocks + 1)}
        if level_index > 0:
            level["Upsample_0"] = {"Conv_0": conv(3, width, width)}
        decoder[f"UpsamplingBlock_{k}"] = level
        c_in = width
    decoder["GroupNorm_0"] = norm(widths[0])
    decoder["Conv_1"] = conv(3, widths[0], 3, gain=0.3)  # keeps most outputs inside [-1, 1]

    return {
        "encoder": encoder,
        "quant_conv": conv(1, Z, EMBED),
        "quantize": {"embeddings": rng.standard_normal((CODES, EMBED)).astype(np.float32)},
        "post_quant_conv": conv(1, EMBED, Z),
        "decoder": decoder,
    }


# ----------------------------------------------------------------------------- NumPy reference (NHWC)


def np_conv(x, p, stride=1, pad="SAME"):
    kernel = p["kernel"].astype(np.float64)
    k = kernel.shape[0]
    if pad == "SAME":
        x = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("bhwcij,ijco->bhwo", windows, kernel) + p["bias"]


def np_group_norm(x, p, groups=32, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = np.maximum((g * g).mean(axis=(1, 2, 4), keepdims=True) - mean**2, 0)  # Flax's fast variance
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * p["scale"] + p["bias"]


def swish(x):
    return x / (1 + np.exp(-x))


def np_resnet(x, p):
    h = np_conv(swish(np_group_norm(x, p["GroupNorm_0"])), p["Conv_0"])
    h = np_conv(swish(np_group_norm(h, p["GroupNorm_1"])), p["Conv_1"])
    return (np_conv(x, p["Conv_2"]) if "Conv_2" in p else x) + h


def numbered(tree, prefix):
    return [tree[k] for k in sorted((k for k in tree if k.startswith(prefix)), key=lambda k: int(k.rsplit("_", 1)[1]))]


def np_encode(tree, pixels_nhwc):
    enc = tree["encoder"]
    x = np_conv(pixels_nhwc, enc["Conv_0"])
    for level in numbered(enc, "DownsamplingBlock_"):
        for block in numbered(level, "ResnetBlock_"):
            x = np_resnet(x, block)
        if "Downsample_0" in level:
            x = np_conv(np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))), level["Downsample_0"]["Conv_0"], 2, "VALID")
    for block in numbered(enc["MidBlock_0"], "ResnetBlock_"):
        x = np_resnet(x, block)
    z = np_conv(np_conv(swish(np_group_norm(x, enc["GroupNorm_0"])), enc["Conv_1"]), tree["quant_conv"])
    codebook = tree["quantize"]["embeddings"].astype(np.float64)
    distances = (z**2).sum(-1, keepdims=True) + (codebook**2).sum(-1) - 2 * z @ codebook.T
    return distances.argmin(-1), distances


def np_decode(tree, codes):
    dec = tree["decoder"]
    x = np_conv(tree["quantize"]["embeddings"].astype(np.float64)[codes], tree["post_quant_conv"])
    x = np_conv(x, dec["Conv_0"])
    for block in numbered(dec["MidBlock_0"], "ResnetBlock_"):
        x = np_resnet(x, block)
    for level in numbered(dec, "UpsamplingBlock_"):
        for block in numbered(level, "ResnetBlock_"):
            x = np_resnet(x, block)
        if "Upsample_0" in level:
            x = np_conv(x.repeat(2, axis=1).repeat(2, axis=2), level["Upsample_0"]["Conv_0"])
    x = np_conv(swish(np_group_norm(x, dec["GroupNorm_0"])), dec["Conv_1"])
    return np.clip(x, -1, 1)


# ----------------------------------------------------------------------------- pickles as LWM might ship them


def write_pickle(tree, path, protocol=4):
    with open(path, "wb") as file:
        pickle.dump(tree, file, protocol=protocol)
    return path


@pytest.fixture
def fake_flax_and_jax(monkeypatch):
    """Importable stand-ins for flax's FrozenDict and jax's array reducer, so pickles name them."""

    class FrozenDict(dict):
        def __reduce__(self):
            return FrozenDict, (dict(self),)

    def _reconstruct_array(fun, args, arr_state, aval_state):
        raise AssertionError("the converter must use its own shim, never the pickled jax function")

    class JaxArray:
        def __init__(self, array):
            self.array = array

        def __reduce__(self):
            fun, args, arr_state = self.array.__reduce__()
            return _reconstruct_array, (fun, args, arr_state, {"weak_type": False})

    modules = {}
    for name in ("flax", "flax.core", "flax.core.frozen_dict", "jax", "jax._src", "jax._src.array"):
        modules[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, modules[name])
    FrozenDict.__module__, FrozenDict.__qualname__ = "flax.core.frozen_dict", "FrozenDict"
    _reconstruct_array.__module__, _reconstruct_array.__qualname__ = "jax._src.array", "_reconstruct_array"
    modules["flax.core.frozen_dict"].FrozenDict = FrozenDict
    modules["jax._src.array"]._reconstruct_array = _reconstruct_array
    return FrozenDict, JaxArray


def map_tree(tree, leaf_fn, container=dict):
    return container({k: map_tree(v, leaf_fn, container) if isinstance(v, dict) else leaf_fn(v) for k, v in tree.items()})


def small_config():
    return VQGANConfig(resolution=32, hidden_channels=HIDDEN, channel_mult=MULT, num_res_blocks=BLOCKS,
                       z_channels=Z, embed_dim=EMBED, codebook_size=CODES, norm_groups=32)


# ----------------------------------------------------------------------------- tests


def test_lwm_preset_has_the_277_leaves_of_the_release():
    shapes = expected_flax_shapes(VQGANConfig.from_preset("lwm"))
    sizes = {part: sum(math.prod(s) for k, s in shapes.items() if k.startswith(part + "/")) for part in ("encoder", "decoder")}
    assert len(shapes) == 277
    assert sum(math.prod(s) for s in shapes.values()) == 146_244_675
    assert sizes == {"encoder": 58_693_568, "decoder": 87_018_499}
    assert shapes["decoder/UpsamplingBlock_1/ResnetBlock_0/Conv_2/kernel"] == (1, 1, 768, 512)
    assert shapes["encoder/DownsamplingBlock_3/Downsample_0/Conv_0/kernel"] == (3, 3, 512, 512)
    assert shapes["quantize/embeddings"] == (8192, 64)
    assert "decoder/UpsamplingBlock_4/Upsample_0/Conv_0/kernel" not in shapes
    # and our module holds exactly as many parameters (the codebook is a buffer of the quantizer)
    model = VQGAN(VQGANConfig.from_preset("lwm"))
    assert sum(p.numel() for p in model.parameters()) + model.quantize.codebook.numel() == 146_244_675


@pytest.mark.parametrize("blocks, seed", [(BLOCKS, 0), (1, 1)])  # seeds whose codes have no near-ties
def test_converted_vqgan_matches_numpy_reference(tmp_path, blocks, seed):
    tree = flax_tree(seed, blocks)
    write_pickle(tree, tmp_path / "vqgan")
    model = convert_vqgan_pickle(tmp_path / "vqgan", tmp_path / "out")
    assert model.config.channel_mult == MULT and model.config.codebook_size == CODES
    assert model.config.num_res_blocks == blocks and model.config.num_mid_blocks == MID_BLOCKS
    loaded = VQGAN.from_pretrained(tmp_path / "out")

    pixels = np.random.default_rng(1).uniform(-1, 1, size=(2, 32, 32, 3))
    ref_codes, distances = np_encode(tree, pixels)
    best_two = np.sort(distances, axis=-1)[..., :2]
    assert (best_two[..., 1] - best_two[..., 0]).min() > 1e-3, "test data has near-ties; pick another seed"
    assert len(np.unique(ref_codes)) > 4

    codes = loaded.encode(torch.from_numpy(pixels).permute(0, 3, 1, 2).float())
    assert codes.dtype == torch.long and codes.shape == (2, 8, 8)
    np.testing.assert_array_equal(codes.numpy(), ref_codes)

    ref_pixels = np_decode(tree, ref_codes)
    assert np.mean(np.abs(ref_pixels) < 1) > 0.5, "reference output is saturated; the check would be vacuous"
    ours = loaded.decode(codes).permute(0, 2, 3, 1).double().numpy()
    np.testing.assert_allclose(ours, ref_pixels, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["protocol2", "protocol5", "frozendict", "jax_arrays", "params_wrapper"])
def test_pickle_variants_load_identically(tmp_path, fake_flax_and_jax, variant):
    FrozenDict, JaxArray = fake_flax_and_jax
    tree = flax_tree()
    stored = {
        "protocol2": tree,
        "protocol5": tree,
        "frozendict": map_tree(tree, lambda a: a, FrozenDict),
        "jax_arrays": map_tree(tree, JaxArray),
        "params_wrapper": {"params": tree},
    }[variant]
    write_pickle(stored, tmp_path / "vqgan", protocol={"protocol2": 2, "protocol5": 5}.get(variant, 4))
    flat = load_flax_tree(tmp_path / "vqgan")
    assert len(flat) == len(expected_flax_shapes(small_config()))
    np.testing.assert_array_equal(flat["decoder/UpsamplingBlock_2/ResnetBlock_0/Conv_2/kernel"],
                                  tree["decoder"]["UpsamplingBlock_2"]["ResnetBlock_0"]["Conv_2"]["kernel"])


class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w')",)


@pytest.mark.parametrize("payload", [SystemCall, Eval])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    tree = flax_tree()
    tree["encoder"]["Conv_0"]["kernel"] = payload(marker)
    write_pickle(tree, tmp_path / "vqgan")
    with pytest.raises(VQGANPickleError, match="refusing to load global"):
        convert_vqgan_pickle(tmp_path / "vqgan", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_out_of_band_buffers_are_refused(tmp_path):
    buffers = []
    data = pickle.dumps({"x": pickle.PickleBuffer(np.ones(4, np.float32))}, protocol=5, buffer_callback=buffers.append)
    (tmp_path / "vqgan").write_bytes(data)
    with pytest.raises(VQGANPickleError, match="not a readable parameter pickle"):
        load_flax_tree(tmp_path / "vqgan")


def test_malformed_trees_are_refused_with_the_leaf_named(tmp_path):
    tree = flax_tree()
    del tree["decoder"]["UpsamplingBlock_1"]["Upsample_0"]
    write_pickle(tree, tmp_path / "missing")
    with pytest.raises(VQGANPickleError, match="missing.*UpsamplingBlock_1/Upsample_0"):
        convert_vqgan_pickle(tmp_path / "missing", tmp_path / "out", small_config())

    tree = flax_tree()
    tree["quant_conv"]["bias"] = np.zeros(5, np.float32)
    write_pickle(tree, tmp_path / "shape")
    with pytest.raises(VQGANPickleError, match=r"wrong shapes.*quant_conv/bias"):
        convert_vqgan_pickle(tmp_path / "shape", tmp_path / "out", small_config())

    tree = flax_tree()
    tree["quant_conv"]["bias"] = [0.0] * EMBED
    write_pickle(tree, tmp_path / "leaf")
    with pytest.raises(VQGANPickleError, match="quant_conv/bias is a list"):
        load_flax_tree(tmp_path / "leaf")

    (tmp_path / "truncated").write_bytes((tmp_path / "shape").read_bytes()[:1000])
    with pytest.raises(VQGANPickleError, match="not a readable parameter pickle"):
        load_flax_tree(tmp_path / "truncated")
    with pytest.raises(VQGANPickleError, match="file not found"):
        load_flax_tree(tmp_path / "nothing-here")


def test_cli_converts_and_refuses(tmp_path, capsys):
    write_pickle(flax_tree(), tmp_path / "vqgan")
    assert lwm_main(["convert", "vqgan", str(tmp_path / "vqgan"), str(tmp_path / "out")]) == 0
    assert "converted" in capsys.readouterr().out
    assert VQGAN.from_pretrained(tmp_path / "out").config.grid_size == 16  # inferred: 16 codes per side, as LWM

    tree = flax_tree()
    tree["quantize"]["embeddings"] = SystemCall(tmp_path / "pwned")
    write_pickle(tree, tmp_path / "evil")
    assert lwm_main(["convert", "vqgan", str(tmp_path / "evil"), str(tmp_path / "out2")]) == 1
    assert "refusing to load global posix.system" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
