"""`lwm data tokenize`: shards, bad records, resuming, workers."""

import json
import random

import numpy as np
import pytest
import torch

from lwm import media
from lwm.cli import main as lwm_main
from lwm.data import tokenize as tokenize_module
from lwm.data.loader import TokenizedDataset
from lwm.data.manifest import ManifestError, read_manifest
from lwm.data.tokenize import TokenizeConfig, tokenize_manifest
from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.modeling_vqgan import VQGAN
from lwm.tokenizers.processing_lwm import LWMProcessor
from lwm.tokenizers.text import load_text_tokenizer, train_text_tokenizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny tokenizer, a tiny random VQGAN, and a manifest with every record kind and one corrupt video."""
    root = tmp_path_factory.mktemp("tokenize")
    rng = random.Random(0)
    words = "a red blue ball square moves left right describe the image video generate of an what colour".split()
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(500)))
    train_text_tokenizer([str(root / "corpus.txt")], 350, str(root / "tokenizer"))
    torch.manual_seed(0)
    # kmeans_init off: an untrained "vq" codebook would be k-means-initialised by its first encode
    VQGAN(VQGANConfig.from_preset("tiny", kmeans_init=False)).eval().save_pretrained(root / "vqgan")

    pixels = np.random.default_rng(0)
    (root / "media").mkdir()
    media.save_video(pixels.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), root / "media/clip.mp4", fps=4)
    media.save_image(pixels.integers(0, 256, (40, 48, 3), dtype=np.uint8), root / "media/still.png")
    (root / "media/broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    records = [
        {"text": "a red ball moves left", "task": "text"},
        {"image": "media/still.png", "caption": "a blue square", "task": "image"},
        {"video": "media/broken.mp4", "caption": "never read", "task": "video"},
        {"video": "media/clip.mp4", "caption": "a red ball moves right", "task": "video"},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "what colour"}, {"type": "video", "path": "media/clip.mp4"}]},
            {"role": "assistant", "content": "red"},
        ], "task": "qa"},
        {"video": "media/clip.mp4", "caption": "a ball", "task": "video", "direction": "generation"},
        {"text": "the end", "task": "text"},
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root, manifest


@pytest.fixture(scope="module")
def single_run(assets, tmp_path_factory):
    """One uninterrupted in-process run, the reference for the others."""
    out = tmp_path_factory.mktemp("single") / "out"
    return out, tokenize_manifest(config_for(assets, out), progress=False)


def config_for(assets, out, **overrides):
    root, manifest = assets
    values = dict(manifest=str(manifest), out_dir=str(out), tokenizer_dir=str(root / "tokenizer"),
                  vqgan_dir=str(root / "vqgan"), shard_size=2)
    return TokenizeConfig(**{**values, **overrides})


def shard_contents(out):
    return {
        folder.name: {name: np.load(folder / name).tolist() for name in ("input_ids.npy", "loss_mask.npy", "offsets.npy")}
        for folder in sorted((out / "shards").iterdir())
    }


def test_corrupt_video_is_counted_and_examples_are_right(assets, single_run):
    root, _ = assets
    out, report = single_run
    assert [bad["line"] for bad in report.bad_records] == [3]
    assert "broken.mp4" in report.bad_records[0]["error"]
    assert "1 bad record" in report.summary()
    assert (out / "bad_records.jsonl").read_text().count("\n") == 1
    # text 1 + image pair 2 + video pair 2 + qa 1 + generation-only 1 + text 1
    dataset = TokenizedDataset(out)
    assert len(dataset) == report.examples == 8
    assert dataset.tasks.tolist() == ["text", "image", "image", "video", "video", "qa", "video", "text"]

    processor = LWMProcessor(load_text_tokenizer(root / "tokenizer"), VQGAN.from_pretrained(root / "vqgan"))
    clip = {"type": "video", "path": str(root / "media/clip.mp4")}
    expected = processor.pair_examples(clip, "a red ball moves right")
    for stored, reference in zip((dataset[3], dataset[4]), expected):
        np.testing.assert_array_equal(stored[0], reference["input_ids"].numpy())
        np.testing.assert_array_equal(stored[1], (reference["labels"] != -100).numpy())
    text_ids, text_mask = dataset[0]
    assert text_ids[0] == 1 and text_ids[-1] == 2 and text_mask[0] == 0 and text_mask[1:].all()
    assert json.loads((out / "index.json").read_text())["tasks"] == {"text": 2, "image": 2, "video": 3, "qa": 1}


def test_resumes_without_redoing_finished_shards(assets, single_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    written = []
    original = tokenize_module._write_shard

    def interrupted_after_two(shards_dir, index, examples, bad):
        if len(written) == 2:
            raise KeyboardInterrupt  # the run dies while shard 3 is being written
        written.append(index)
        original(shards_dir, index, examples, bad)

    monkeypatch.setattr(tokenize_module, "_write_shard", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        tokenize_manifest(config_for(assets, out), progress=False)
    monkeypatch.setattr(tokenize_module, "_write_shard", original)
    assert not (out / "index.json").exists()
    (out / "shards/.tmp-00002-999").mkdir()  # a half-written shard left behind
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir() if not p.name.startswith(".")}
    assert sorted(finished) == ["00000", "00001"]

    redone = []
    monkeypatch.setattr(tokenize_module, "_write_shard", lambda d, i, e, b: (redone.append(i), original(d, i, e, b)))
    report = tokenize_manifest(config_for(assets, out), progress=False)
    assert redone == [2, 3] and report.shards_skipped == 2 and report.shards_written == 2
    assert {name: (out / "shards" / name).stat().st_mtime_ns for name in finished} == finished
    assert not list((out / "shards").glob(".tmp-*"))
    assert shard_contents(out) == shard_contents(single_run[0])
    assert len(report.bad_records) == 1  # the bad record of an earlier run's shard is still reported

    with pytest.raises(ValueError, match="different \\['shard_size'\\]"):
        tokenize_manifest(config_for(assets, out, shard_size=3), progress=False)


def test_cli_with_worker_processes_matches_one_process(assets, single_run, tmp_path, capsys):
    root, manifest = assets
    code = lwm_main([
        "data", "tokenize", str(manifest), "--out", str(tmp_path / "multi"), "--tokenizer", str(root / "tokenizer"),
        "--vqgan", str(root / "vqgan"), "--workers", "2", "--shard-size", "2", "--no-progress",
    ])
    assert code == 0
    assert "1 bad record(s)" in capsys.readouterr().out
    assert shard_contents(tmp_path / "multi") == shard_contents(single_run[0])


def test_unconditional_record_needs_no_caption(assets, tmp_path):
    root, _ = assets
    manifest = root / "unconditional.jsonl"
    manifest.write_text('{"image": "media/still.png", "direction": "unconditional", "task": "uncond"}\n')
    report = tokenize_manifest(config_for(assets, tmp_path / "out", manifest=str(manifest)), progress=False)
    assert report.examples == 1
    processor = LWMProcessor(load_text_tokenizer(root / "tokenizer"), VQGAN.from_pretrained(root / "vqgan"))
    expected = processor.unconditional_example({"type": "image", "path": str(root / "media/still.png")})
    ids, mask = TokenizedDataset(tmp_path / "out")[0]
    np.testing.assert_array_equal(ids, expected["input_ids"].numpy())
    np.testing.assert_array_equal(mask, (expected["labels"] != -100).numpy())


def test_a_continuation_is_coded_from_its_context_with_motion_codes(assets, tmp_path):
    root, _ = assets
    torch.manual_seed(0)
    VQGAN(VQGANConfig.from_preset("tiny", kmeans_init=False, motion_max_shift=2)).eval().save_pretrained(tmp_path / "vq")
    frames = np.full((6, 32, 32, 3), 20, np.uint8)
    for t in range(6):  # a square moving one pixel a frame: every patch of the continuation is a motion
        frames[t, 8:14, 4 + t : 10 + t] = 230
    media.save_video(frames[:3], root / "media/context.mp4", fps=4, lossless=True)
    media.save_video(frames[3:], root / "media/future.mp4", fps=4, lossless=True)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "go on"}, {"type": "video", "path": "media/context.mp4"}]},
        {"role": "assistant", "content": [{"type": "video", "path": "media/future.mp4", "continues": True}]},
    ]
    manifest = root / "continuation.jsonl"
    manifest.write_text(json.dumps({"messages": messages, "task": "video_continuation"}) + "\n")
    tokenize_manifest(config_for(assets, tmp_path / "out", manifest=str(manifest), vqgan_dir=str(tmp_path / "vq")),
                      progress=False)
    ids, _ = TokenizedDataset(tmp_path / "out")[0]
    processor = LWMProcessor(load_text_tokenizer(root / "tokenizer"), VQGAN.from_pretrained(tmp_path / "vq"))
    resolved = [{**m, "content": [{**part, "path": str(root / part["path"])} if "path" in part else part
                                  for part in m["content"]]} for m in messages]
    np.testing.assert_array_equal(ids, processor.apply_chat_template(resolved)["input_ids"].numpy())
    future = processor.encode_media(resolved[1]["content"][0], resolved[0]["content"][1])
    assert (future >= processor.vqgan.codebook_size).all()
    alone = processor.encode_media({"type": "video", "path": resolved[1]["content"][0]["path"]})
    assert (alone[0] < processor.vqgan.codebook_size).all()
    with pytest.raises(ValueError, match="has no video part before it"):
        processor.apply_chat_template([{"role": "user", "content": [resolved[1]["content"][0]]}])


def test_manifest_errors_name_their_lines(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join([
        '{"text": "fine"}',
        "{not json",
        '{"image": "a.png"}',
        '{"text": "x", "video": "v.mp4"}',
        '{"text": "x", "colour": "red"}',
        '{"video": "v.mp4", "caption": "c", "direction": "sideways"}',
        "",
        '{"messages": [{"role": "robot", "content": "hi"}]}',
        '{"video": "v.mp4", "direction": "generation"}',
    ]))
    with pytest.raises(ManifestError) as raised:
        read_manifest(manifest)
    message = str(raised.value)
    assert "7 invalid line(s)" in message
    for expected in ["line 2: not valid JSON", "line 3: a image record lacks ['caption']", "line 4: a record has exactly one",
                     "line 5: a text record has unknown fields ['colour']", "line 6: direction must be", "line 8: message 0",
                     "line 9: a video record lacks ['caption']"]:
        assert expected in message
    good = tmp_path / "good.jsonl"
    good.write_text('{"video": "clips/v.mp4", "caption": "c"}\n')
    record = read_manifest(good)[0]
    assert record.task == "video" and record.data["video"] == str(tmp_path / "clips/v.mp4")
