"""`lwm tokenizer ...`: a short training run (a YAML config, as `lwm train`'s) on synthetic-world clips
beats an untrained tokenizer; encode / decode / eval round trips; resume; errors are reported, not raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lwm import media
from lwm.cli import main as lwm_main
from lwm.eval import evaluate_reconstruction, psnr
from lwm.tokenizers import VQGAN, VQGANConfig, load_text_tokenizer
from lwm.training import find_media, load_eval_frames, load_vqgan_config
from lwm.world import split_seeds, write_world_dataset
from tests.training.runs import REPO, write_config

STEPS = 150


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    train = write_world_dataset(root / "train", split_seeds("train", 24), tasks=("video_caption",), progress=False)
    held_out = write_world_dataset(root / "held_out", split_seeds("held_out", 6), tasks=("video_caption",), progress=False)
    return train, held_out


def train_config(world, out, **settings) -> str:
    """A `lwm tokenizer train` config of the tiny VQGAN on the world's training clips, beside `out`."""
    train, held_out = world
    raw = {"data": [str(train)], "eval_data": [str(held_out)], "output_dir": str(out), "model": "tiny", **settings}
    return str(write_config(raw, out.parent / f"{out.name}.yaml"))


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("vqgan") / "model"
    config = train_config(world, out, max_steps=STEPS, batch_size=8, frames_per_clip=2, learning_rate=2e-3,
                          warmup_steps=10, l2_weight=1.0, log_every=20, eval_every=1000, save_every=1000, eval_frames=48)
    assert lwm_main(["tokenizer", "train", config]) == 0
    return out


def test_the_recipes_are_valid_configs():
    bundled = load_vqgan_config(REPO / "configs" / "train" / "bundled-vqgan.yaml")
    assert (bundled.model, bundled.max_steps, bundled.batch_size) == ("world", 3000, 64)
    config = load_vqgan_config(REPO / "configs" / "train" / "world-dynamics-vqgan.yaml")
    assert (config.model, config.max_steps, config.batch_size, config.learning_rate) == ("world-local", 2500, 32, 1e-3)
    assert VQGANConfig.from_preset(config.model).local_encoder


def test_a_decoder_only_fine_tune_keeps_every_code(world, trained, tmp_path):
    out = tmp_path / "decoder"
    config = train_config(world, out, init_from=str(trained), decoder_only=True, max_steps=4, batch_size=8,
                          learning_rate=1e-2, warmup_steps=1, log_every=2, eval_frames=8)
    assert lwm_main(["tokenizer", "train", config]) == 0
    before, after = VQGAN.from_pretrained(trained), VQGAN.from_pretrained(out)
    frames = held_out_frames(world[1], 32)
    assert torch.equal(before.encode(frames), after.encode(frames))
    changed = {name for name, weight in after.state_dict().items() if not torch.equal(weight, before.state_dict()[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed), changed
    assert lwm_main(["tokenizer", "train", train_config(world, tmp_path / "x", decoder_only=True)]) == 1


def held_out_frames(held_out, resolution):
    return load_eval_frames(find_media([str(held_out)]), resolution, 48)


def test_short_training_beats_an_untrained_tokenizer(world, trained):
    _, held_out = world
    frames = held_out_frames(held_out, 32)
    torch.manual_seed(0)
    untrained = evaluate_reconstruction(VQGAN(VQGANConfig.from_preset("tiny")), frames)
    metrics = evaluate_reconstruction(VQGAN.from_pretrained(trained), frames)
    # the world is mostly dark background: the best constant image already scores about 16 dB
    constant = psnr(frames, frames.mean(dim=(0, 2, 3), keepdim=True).expand_as(frames))
    assert untrained["psnr"] < constant
    assert metrics["psnr"] >= constant + 4, (metrics, constant)  # measured: about 24 dB
    assert metrics["ssim"] >= 0.6 and metrics["codebook_usage"] >= 0.5, metrics
    assert json.loads((trained / "eval.json").read_text())["psnr"] == pytest.approx(metrics["psnr"], abs=1e-3)
    logged = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert {"psnr", "codebook_usage", "perplexity"} <= set(logged[0]) and logged[-1]["step"] == STEPS


def test_encode_decode_eval_commands(world, trained, tmp_path, capsys):
    _, held_out = world
    clip = next(p for p in (held_out.parent / "clips").iterdir())
    assert lwm_main(["tokenizer", "encode", str(clip), "-o", str(tmp_path / "codes.npy"), "--model", str(trained),
                     "--max-frames", "5"]) == 0
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (5, 16, 16) and codes.min() >= 0 and codes.max() < 64
    model = VQGAN.from_pretrained(trained)
    expected = model.encode_video(media.preprocess(media.load_video(clip, max_frames=5), 32))
    np.testing.assert_array_equal(codes, expected.numpy())

    assert lwm_main(["tokenizer", "decode", str(tmp_path / "codes.npy"), "-o", str(tmp_path / "out.mp4"),
                     "--model", str(trained)]) == 0
    assert media.load_video(tmp_path / "out.mp4").shape == (5, 32, 32, 3)
    np.save(tmp_path / "one.npy", codes[0])
    assert lwm_main(["tokenizer", "decode", str(tmp_path / "one.npy"), "-o", str(tmp_path / "one.png"),
                     "--model", str(trained)]) == 0
    assert media.load_image(tmp_path / "one.png").shape == (32, 32, 3)

    capsys.readouterr()
    assert lwm_main(["tokenizer", "eval", str(held_out), "--model", str(trained), "--frames", "16",
                     "--json", str(tmp_path / "m.json")]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["frames"] == 16


def test_bad_inputs_are_reported(trained, tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.full((2, 16, 16), 64, np.int32))
    assert lwm_main(["tokenizer", "decode", str(tmp_path / "big.npy"), "-o", str(tmp_path / "o.mp4"),
                     "--model", str(trained)]) == 1
    assert "codes must lie in [0, 64)" in capsys.readouterr().err
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    assert lwm_main(["tokenizer", "encode", str(tmp_path / "broken.mp4"), "-o", str(tmp_path / "c.npy"),
                     "--model", str(trained)]) == 1
    assert "broken.mp4" in capsys.readouterr().err
    assert lwm_main(["tokenizer", "eval", str(tmp_path), "--model", str(tmp_path / "nothing")]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_resume_continues_from_the_last_checkpoint(world, tmp_path, capsys):
    out = tmp_path / "model"
    config = train_config(world, out, batch_size=4, log_every=1, save_every=2, eval_frames=8)
    assert lwm_main(["tokenizer", "train", config, "max_steps=3"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-2", "step-3"]
    assert lwm_main(["tokenizer", "train", config, "max_steps=5", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == [1, 2, 3, 4, 5]
    assert lwm_main(["tokenizer", "train", config, "max_step=5"]) == 1  # a setting that does not exist
    assert "unknown setting max_step" in capsys.readouterr().err


def test_train_text_delegates_to_the_text_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"a {c} shape moves {d} across the frame" for c in ("red", "green", "blue", "white")
                                for d in ("up", "down", "left", "right")) * 20)
    assert lwm_main(["tokenizer", "train-text", str(corpus), "--vocab-size", "300", "-o", str(tmp_path / "tok")]) == 0
    assert (tmp_path / "tok" / "tokenizer.model").is_file()


def test_gan_loss_trains_after_its_warm_up(world, tmp_path):
    out = tmp_path / "model"
    config = train_config(world, out, max_steps=3, batch_size=4, gan_weight=0.1, gan_start_step=1, log_every=1,
                          eval_frames=8)
    assert lwm_main(["tokenizer", "train", config]) == 0
    checkpoint = out / "checkpoints" / "step-3"
    assert (checkpoint / "model_1.safetensors").is_file()  # the discriminator is checkpointed with the VQGAN
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_two_processes_train_as_one_group(world, tmp_path):
    out = tmp_path / "model"
    config = train_config(world, out, max_steps=2, batch_size=4, log_every=1, eval_frames=8)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lwm",
               "tokenizer", "train", config]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("held-out: frames 8") == 1  # one group, one report
    assert (out / "checkpoints" / "step-2" / "random_states_1.pkl").is_file()
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == [1, 2]


def test_train_text_reads_the_texts_of_a_manifest(world, tmp_path):
    manifest = world[0]
    assert lwm_main(["tokenizer", "train-text", str(manifest), "--vocab-size", "340", "-o", str(tmp_path / "tok")]) == 0
    vocabulary = load_text_tokenizer(tmp_path / "tok").get_vocab()
    assert "▁wall" in vocabulary  # the captions say which wall each object bounces off
    assert not any(mark in piece for piece in vocabulary for mark in '{}"'), "manifest JSON leaked into the vocabulary"


@pytest.mark.timeout(60)
def test_loader_workers_decode_videos_after_the_held_out_clips_were_decoded(world, tmp_path):
    # The held-out frames are decoded (FFmpeg's threads) before the workers start; workers forked from
    # that process hung in their first decode (the Makefile's VQGAN steps pass num_workers=2).
    config = train_config(world, tmp_path / "model", max_steps=2, batch_size=4, num_workers=2, eval_frames=8)
    assert lwm_main(["tokenizer", "train", config]) == 0
