"""Converting LWM's JAX checkpoints: synthetic files in the official format (tests/convert/official_format.py)
convert, and the converted model's logits on a multimodal sequence equal an independent NumPy forward of
the original Flax-named tree with LWM's interleaved RoPE (docs/official-weights.md#the-formats). That checks every transpose
and the q/k permutation. Also: processor prompt ids against plain SentencePiece, offloaded loading
through accelerate, and clear errors for wrong files."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from sentencepiece import SentencePieceProcessor

from lwm.cli import main
from lwm.convert import lwm_jax
from lwm.convert.msgpack_reader import StreamingCheckpoint
from lwm.convert.vqgan_pickle import expected_flax_shapes
from lwm.model import LWMForCausalLM
from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.processing_lwm import LWMProcessor
from lwm.tokenizers.text import train_text_tokenizer
from tests.convert.official_format import (
    Dims,
    flatten,
    random_params,
    scan_layers,
    train_state,
    write_streaming_checkpoint,
)

# distinct sizes so a wrong transpose cannot go unnoticed; 4 heads of 16 (8 RoPE pairs each)
DIMS = Dims(vocab_size=400, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4, vision_vocab_size=40)
CODES = 32  # the tiny VQGAN's codebook: vision ids 0..31 are codes, 32 = <eof>, 33 = <eov>
THETA = 1000.0  # a small base so that every RoPE frequency turns noticeably over the sequence
CHUNK_BYTES = 30_000  # forces flax's chunked form on the embedding and the w1/w2/w3 stacks


# ----------------------------------------------------------------------------- independent NumPy reference


def reference_logits(
    params: dict, ids: np.ndarray, vision_mask: np.ndarray, num_heads: int, theta: float, eps: float = 1e-6
) -> np.ndarray:
    """LWM's forward on the unscanned Flax tree in float64: LWM ids (vision ids count from 0,
    picked out by `vision_mask`) -> [text | vision] logits."""
    t = params["transformer"]
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    x = f64(t["wte"]["embedding"])[np.where(vision_mask, 0, ids)]
    if "vte" in t:
        x = np.where(vision_mask[:, None], f64(t["vte"]["embedding"])[np.where(vision_mask, ids, 0)], x)
    length, hidden = x.shape
    head_dim = hidden // num_heads
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2)[: head_dim // 2] / head_dim)
    rotation = np.exp(1j * np.outer(np.arange(length), freqs))[:, None, :]  # [T, 1, d/2]

    def rope(v):  # LWM: adjacent pairs (2j, 2j+1) are one complex number
        pairs = v.reshape(length, num_heads, head_dim // 2, 2)
        turned = (pairs[..., 0] + 1j * pairs[..., 1]) * rotation
        return np.stack([turned.real, turned.imag], axis=-1).reshape(length, num_heads, head_dim)

    def rms_norm(v, weight):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * f64(weight)

    causal = np.tril(np.ones((length, length), dtype=bool))
    for i in range(len(t["h"])):
        layer = t["h"][str(i)]
        attention, ffn = layer["attention"], layer["feed_forward"]
        h = rms_norm(x, layer["attention_norm"]["kernel"])
        q = rope((h @ f64(attention["wq"]["kernel"])).reshape(length, num_heads, head_dim))
        k = rope((h @ f64(attention["wk"]["kernel"])).reshape(length, num_heads, head_dim))
        v = (h @ f64(attention["wv"]["kernel"])).reshape(length, num_heads, head_dim)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim)
        scores = np.where(causal, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", weights, v).reshape(length, hidden) @ f64(attention["wo"]["kernel"])
        h = rms_norm(x, layer["ffn_norm"]["kernel"])
        gate = h @ f64(ffn["w1"]["kernel"])
        x = x + (gate / (1 + np.exp(-gate)) * (h @ f64(ffn["w3"]["kernel"]))) @ f64(ffn["w2"]["kernel"])
    x = rms_norm(x, t["ln_f"]["kernel"])
    heads = [x @ f64(params["lm_head"]["kernel"])]
    if "vision_head" in params:
        heads.append(x @ f64(params["vision_head"]["kernel"]))
    return np.concatenate(heads, axis=-1)


def multimodal_sequence(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """LWM's QA layout in LWM's own ids: BOS, text, 2 frames of 256 codes (+ <eof>, <eov>), text."""
    rng = np.random.default_rng(seed)
    text_a, text_b = rng.integers(3, DIMS.vocab_size, 12), rng.integers(3, DIMS.vocab_size, 6)
    frames = [np.append(rng.integers(0, CODES, 256), delimiter) for delimiter in (CODES, CODES + 1)]
    pieces = [([1], False), (text_a, False), (frames[0], True), (frames[1], True), (text_b, False)]
    ids = np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in pieces])
    mask = np.concatenate([np.full(len(p), m) for p, m in pieces])
    return ids, mask


def our_ids(ids: np.ndarray, vision_mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(vision_mask, DIMS.vocab_size + ids, ids))[None]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def params():
    return random_params(DIMS, seed=0)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama_tokenizer")
    rng = random.Random(0)
    words = "you are a helpful assistant user what is the video about generate an image of red cat ball moves".split()
    lines = (" ".join(rng.choice(words) for _ in range(10)) + ". USER: ASSISTANT: <vision> </vision>" for _ in range(1500))
    (root / "corpus.txt").write_text("\n".join(lines))
    train_text_tokenizer([str(root / "corpus.txt")], vocab_size=DIMS.vocab_size, out_dir=str(root / "out"))
    return root / "out"


@pytest.fixture(scope="module")
def vqgan_pickle(tmp_path_factory):
    """A tiny VQGAN tree in LWM's Flax layout (1 level, 16x16 codes from a codebook of 32)."""
    config = VQGANConfig(resolution=16, hidden_channels=32, channel_mult=(1,), num_res_blocks=1, z_channels=8, embed_dim=8,
                         codebook_size=CODES)
    rng = np.random.default_rng(0)
    tree: dict = {}
    for path, shape in expected_flax_shapes(config).items():
        *parents, name = path.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    path = tmp_path_factory.mktemp("vqgan") / "vqgan"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    return path


def convert(*argv: str) -> int:
    """Runs `lwm convert lwm-jax ARGV` through the real command line."""
    return main(["convert", "lwm-jax", *argv, "--quiet"])


def tiny_args(params_path, out, *extra) -> list[str]:
    return ["--params", str(params_path), "--out", str(out), "--num-heads", str(DIMS.num_heads), "--theta", str(THETA), *extra]


LAYOUTS = {
    "scanned-axis0-bf16-chunked": lambda p: (flatten(scan_layers(p, 0)), "bf16", CHUNK_BYTES),
    "scanned-axis1-bf16": lambda p: (flatten(scan_layers(p, 1)), "bf16", 2**30),
    "unscanned-fp32": lambda p: (flatten(p), "fp32", 2**30),
    "train-state-scanned-bf16-chunked": lambda p: (train_state(scan_layers(p, 0)), "bf16", CHUNK_BYTES),
}


def write_layout(params, layout: str, path) -> None:
    records, float_dtype, chunk = LAYOUTS[layout](params)
    write_streaming_checkpoint(path, records, float_dtype=float_dtype, max_chunk_bytes=chunk)


@pytest.fixture(scope="module")
def converted(params, tmp_path_factory, vqgan_pickle, tokenizer_dir):
    """The official layout LWM ships (scanned axis 0, bf16, chunked) converted with VQGAN and tokenizer."""
    root = tmp_path_factory.mktemp("converted")
    write_layout(params, "scanned-axis0-bf16-chunked", root / "params")
    out = root / "model"
    args = tiny_args(root / "params", out, "--vqgan", str(vqgan_pickle), "--tokenizer", str(tokenizer_dir / "tokenizer.model"),
                     "--shard-size", "0.0001")
    assert convert(*args) == 0
    return out


# ----------------------------------------------------------------------------- logits equal the reference


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_converted_logits_equal_numpy_reference(params, layout, tmp_path):
    write_layout(params, layout, tmp_path / "params")
    with StreamingCheckpoint(tmp_path / "params") as checkpoint:
        chunked = [leaf.key for leaf in checkpoint.leaves.values() if getattr(leaf, "segments", ()) and len(leaf.segments) > 1]
    assert bool(chunked) == ("chunked" in layout)
    assert convert(*tiny_args(tmp_path / "params", tmp_path / "out", "--num-vision-codes", str(CODES))) == 0

    model = LWMForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids, mask = multimodal_sequence()
    with torch.no_grad():
        logits = model(input_ids=our_ids(ids, mask)).logits[0].numpy()
    expected = reference_logits(params, ids, mask, DIMS.num_heads, THETA)
    assert logits.shape == expected.shape == (len(ids), DIMS.vocab_size + DIMS.vision_vocab_size)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_reference_catches_a_missing_qk_permutation(params, tmp_path, monkeypatch):
    """The comparison above is sensitive: converting without the q/k reordering breaks it."""
    monkeypatch.setattr(lwm_jax, "interleaved_to_half_split", lambda kernel, num_heads: kernel)
    write_layout(params, "scanned-axis0-bf16-chunked", tmp_path / "params")
    assert convert(*tiny_args(tmp_path / "params", tmp_path / "out", "--num-vision-codes", str(CODES))) == 0
    model = LWMForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids, mask = multimodal_sequence()
    with torch.no_grad():
        logits = model(input_ids=our_ids(ids, mask)).logits[0].numpy()
    assert np.abs(logits - reference_logits(params, ids, mask, DIMS.num_heads, THETA)).max() > 0.1


def test_text_only_llama_checkpoint_loads_in_plain_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    dims = Dims(300, 64, 96, 2, 4, vision_vocab_size=0)
    params = random_params(dims, seed=3)
    write_streaming_checkpoint(tmp_path / "params", flatten(scan_layers(params, 0)))
    assert convert(*tiny_args(tmp_path / "params", tmp_path / "out")) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama"
    model = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = np.random.default_rng(1).integers(0, 300, 40)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    expected = reference_logits(params, ids, np.zeros(len(ids), bool), dims.num_heads, THETA)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_qk_permutation_is_the_spec_index_map():
    """docs/official-weights.md#rope: new column h·d + k takes old column h·d + (2k if k < d/2 else 2(k - d/2) + 1)."""
    heads, head_dim = 3, 8
    kernel = np.arange(5 * heads * head_dim).reshape(5, heads * head_dim)
    order = [h * head_dim + (2 * k if k < head_dim // 2 else 2 * (k - head_dim // 2) + 1)
             for h in range(heads) for k in range(head_dim)]
    np.testing.assert_array_equal(lwm_jax.interleaved_to_half_split(kernel, heads), kernel[:, order])


# ----------------------------------------------------------------------------- the whole folder


def test_folder_holds_shards_config_tokenizer_and_processor(converted, params):
    index = json.loads((converted / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((converted / name).is_file() for name in shards)
    assert len(index["weight_map"]) == 5 + 9 * DIMS.num_layers
    config = json.loads((converted / "config.json").read_text())
    assert (config["vocab_size"], config["vision_vocab_size"], config["num_vision_codes"]) == (400, 40, CODES)
    assert config["rope_parameters"]["rope_theta"] == THETA and config["dtype"] == "bfloat16"
    assert (converted / "tokenizer.model").is_file() and (converted / "vqgan" / "model.safetensors").is_file()

    model = LWMForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    ids, mask = multimodal_sequence(seed=5)
    with torch.no_grad():
        logits = model(input_ids=our_ids(ids, mask)).logits[0].numpy()
    np.testing.assert_allclose(logits, reference_logits(params, ids, mask, DIMS.num_heads, THETA), atol=1e-4, rtol=0)


@pytest.mark.parametrize("eov_after_every_frame", [False, True])
def test_processor_builds_lwm_prompt_ids(params, tmp_path, vqgan_pickle, tokenizer_dir, eov_after_every_frame):
    """LWM's prompts (docs/architecture.md#the-token-layout) with a single BOS, each segment encoded by plain SentencePiece."""
    write_streaming_checkpoint(tmp_path / "params", flatten(scan_layers(params, 0)))
    # release folders (files named `params`, `vqgan`, `tokenizer.model`) are accepted as they are
    extra = ["--vqgan", str(vqgan_pickle.parent), "--tokenizer", str(tokenizer_dir)]
    if eov_after_every_frame:
        extra.append("--eov-after-every-frame")
    assert convert(*tiny_args(tmp_path, tmp_path / "out", *extra)) == 0
    processor = LWMProcessor.from_pretrained(tmp_path / "out")
    sp = SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    text, eof, eov = DIMS.vocab_size, DIMS.vocab_size + CODES, DIMS.vocab_size + CODES + 1

    codes = np.random.default_rng(0).integers(0, CODES, (3, 16, 16))
    question = "what is the video about?"
    messages = [{"role": "user", "content": [{"type": "text", "text": question}, {"type": "video", "codes": codes}]}]
    ids = processor.apply_chat_template(messages, add_generation_prompt=True)["input_ids"].tolist()
    delimiters = [eov] * 3 if eov_after_every_frame else [eof, eof, eov]
    vision = [i for frame, end in zip(codes.reshape(3, -1), delimiters) for i in [*(text + frame).tolist(), end]]
    expected = [1] + sp.encode(f"You are a helpful assistant. USER: {question}\n") + sp.encode("<vision>") + vision
    expected += sp.encode("</vision>") + sp.encode(" ASSISTANT:")
    assert ids == expected

    ids = processor.generation_prompt("a red cat", "image")["input_ids"].tolist()
    assert ids == [1] + sp.encode("You are a helpful assistant. USER: Generate an image of a red cat ASSISTANT: <vision>")
    assert processor.unconditional_prompt()["input_ids"].tolist() == [1] + sp.encode("<vision>")


# ----------------------------------------------------------------------------- big models on small machines


def test_device_map_auto_offloads_to_disk(converted, tmp_path):
    reference = LWMForCausalLM.from_pretrained(converted, dtype=torch.bfloat16).eval()
    offloaded = LWMForCausalLM.from_pretrained(
        converted, device_map="auto", dtype=torch.bfloat16, max_memory={"cpu": 200_000}, offload_folder=str(tmp_path / "offload")
    ).eval()
    placements = set(offloaded.hf_device_map.values())
    assert "disk" in placements and "cpu" in placements  # layers split between memory and disk
    ids, mask = multimodal_sequence(seed=2)
    with torch.no_grad():
        expected = reference(input_ids=our_ids(ids, mask)).logits
        logits = offloaded(input_ids=our_ids(ids, mask)).logits
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


# ----------------------------------------------------------------------------- wrong files


def test_wrong_files_fail_with_clear_messages(params, tmp_path, tokenizer_dir, capsys):
    records = list(flatten(scan_layers(params, 0)))
    write_streaming_checkpoint(tmp_path / "params", records)
    data = (tmp_path / "params").read_bytes()
    (tmp_path / "truncated").write_bytes(data[: len(data) - 100])
    assert convert(*tiny_args(tmp_path / "truncated", tmp_path / "o1")) == 1
    message = capsys.readouterr().err
    assert str(tmp_path / "truncated") in message and f"record {len(records) - 1}" in message and "truncated" in message

    write_streaming_checkpoint(tmp_path / "missing", [r for r in records if r[0][-2:] != ("wk", "kernel")])
    assert convert(*tiny_args(tmp_path / "missing", tmp_path / "o2", "--num-vision-codes", str(CODES))) == 1
    assert "missing: transformer/h/scan_decoder/attention/wk/kernel" in capsys.readouterr().err

    small = random_params(Dims(300, 64, 96, 1, 4, 40), seed=1)
    write_streaming_checkpoint(tmp_path / "small", flatten(small))
    arguments = tiny_args(tmp_path / "small", tmp_path / "o3", "--num-vision-codes", str(CODES),
                          "--tokenizer", str(tokenizer_dir))
    assert convert(*arguments) == 1
    assert "400 pieces but the checkpoint's text table has 300 rows" in capsys.readouterr().err

    (tmp_path / "pickle").write_bytes(pickle.dumps({"params": 1}))
    assert convert(*tiny_args(tmp_path / "pickle", tmp_path / "o4")) == 1
    assert "record 0" in capsys.readouterr().err
