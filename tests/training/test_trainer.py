"""The trainer end to end on the tiny model: ZeRO stages, bf16, stages of growing context, config errors."""

import pytest
import torch

from lwm.data.loader import PackedLoader, TokenizedDataset
from lwm.generation.sampling import GREEDY
from lwm.generation.vision import DRAWING_CONFIG_NAME, DrawingConfig
from lwm.model import LWMConfig, LWMForCausalLM
from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.modeling_vqgan import VQGAN
from lwm.tokenizers.processing_lwm import LWMProcessor
from lwm.tokenizers.text import train_text_tokenizer
from lwm.training.checkpoint import latest_tag
from tests.helpers.distributed import run_distributed
from tests.training.random_tokens import write_random_tokens
from tests.training.runs import (
    export_in_process,
    final_weights,
    losses,
    metrics,
    tiny_config,
    to_config,
    train_in_processes,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_random_tokens(tmp_path_factory.mktemp("tokens"))


def _falls(curve):
    return sum(curve[-3:]) / 3 < 0.9 * sum(curve[:3]) / 3


@pytest.mark.parametrize(
    "zero_stage, sp_size, precision", [(2, 1, "fp32"), (3, 2, "fp32"), (2, 1, "bf16")], ids=["zero2", "zero3-sp2", "zero2-bf16"]
)
def test_zero_stages_train_the_tiny_model(data_dir, tmp_path, zero_stage, sp_size, precision):
    raw = tiny_config(
        tmp_path, data_dir, stages=[{"seq_len": 32, "rope_theta": 10000.0, "steps": 12}],
        parallel={"zero_stage": zero_stage, "sp_size": sp_size}, precision=precision, optimizer={"lr": 1e-2},
    )
    train_in_processes(raw, 2)
    curve = losses(tmp_path)
    assert len(curve) == 12 and _falls(curve), curve
    assert all(m["grad_norm"] > 0 for m in metrics(tmp_path))


def test_two_stages_change_length_and_theta_and_stage_two_starts_from_stage_one(data_dir, tmp_path):
    stages = [
        {"seq_len": 32, "rope_theta": 10000.0, "steps": 3, "name": "short"},
        {"seq_len": 64, "rope_theta": 1.0e6, "steps": 2, "name": "long"},
    ]
    train_in_processes(tiny_config(tmp_path, data_dir, stages=stages), 1)
    first, second = (LWMConfig.from_pretrained(tmp_path / "pretrained" / f"stage{i}") for i in (0, 1))
    assert (first.rope_parameters["rope_theta"], second.rope_parameters["rope_theta"]) == (10000.0, 1.0e6)
    logged = metrics(tmp_path)
    assert [m["stage"] for m in logged] == [0, 0, 0, 1, 1]

    # Stage 2's first loss is that of stage 1's final weights, with θ = 1e6, on stage 2's first 64-token rows.
    batch = next(PackedLoader(TokenizedDataset(data_dir), 64, 1, seed=0))
    with torch.no_grad():
        stage0 = LWMForCausalLM.from_pretrained(tmp_path / "pretrained" / "stage0", dtype=torch.float32)
        loss_old_theta = stage0(**batch).loss.item()
        first.rope_parameters["rope_theta"] = 1.0e6
        model = LWMForCausalLM.from_pretrained(tmp_path / "pretrained" / "stage0", config=first, dtype=torch.float32)
        loss_new_theta = model(**batch).loss.item()
    assert logged[3]["loss"] == pytest.approx(loss_new_theta, rel=1e-5)
    assert loss_new_theta != pytest.approx(loss_old_theta, rel=1e-5)  # θ really changed the model


def test_a_stage_longer_than_the_model_raises_its_context_to_the_stage_length(tmp_path):
    from types import SimpleNamespace

    from lwm.training.config import StageConfig
    from lwm.training.trainer import build_model

    LWMForCausalLM(LWMConfig.from_preset("tiny", max_position_embeddings=32)).save_pretrained(tmp_path / "short")
    config = to_config(tiny_config(tmp_path, tmp_path, model={"name_or_path": str(tmp_path / "short")}))
    single_process = SimpleNamespace(sp_size=1)
    longer = build_model(config, StageConfig(seq_len=64, rope_theta=1e6, steps=1), single_process, None)
    shorter = build_model(config, StageConfig(seq_len=16, rope_theta=1e4, steps=1), single_process, None)
    assert (longer.config.max_position_embeddings, shorter.config.max_position_embeddings) == (64, 32)
    assert longer.config.rope_parameters["rope_theta"] == 1e6


def test_freezing_trains_only_the_vision_table_and_head_and_tensorboard_logs(data_dir, tmp_path):
    raw = tiny_config(tmp_path / "run", data_dir, model={"trainable": ["vision_embed_tokens.*", "vision_head.*"]},
                      stages=[{"seq_len": 32, "rope_theta": 10000.0, "steps": 2}], logging={"backend": "tensorboard"})
    train_in_processes(raw, 1)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    torch.manual_seed(0)  # the trainer's seed: the weights it starts from
    start = LWMForCausalLM(LWMConfig.from_preset("tiny")).state_dict()
    trained = final_weights(tmp_path / "run")
    for name in trained:
        moved = not torch.equal(trained[name], start[name])
        assert moved == name.startswith(("vision_embed_tokens", "vision_head")), name


def test_lr_scale_gives_matching_parameters_their_own_learning_rate(data_dir, tmp_path):
    # Adam moves every weight by about lr a step, so after 3 steps a grid trained at lr / 1000 has
    # moved at most ~3 lr / 1000, while the rest moves by ~lr.
    lr = 1e-2
    raw = tiny_config(tmp_path / "run", data_dir, model={"vision_grid_size": 4}, schedule={"warmup_steps": 0},
                      optimizer={"lr": lr, "lr_scale": {"vision_grid.*": 1e-3}},
                      stages=[{"seq_len": 32, "rope_theta": 10000.0, "steps": 3}])
    train_in_processes(raw, 1)
    trained = final_weights(tmp_path / "run")
    torch.manual_seed(0)
    start = LWMForCausalLM(LWMConfig.from_preset("tiny", vision_grid_size=4)).state_dict()
    moved = {name: (trained[name].float() - start[name]).abs().max().item() for name in trained}
    assert 0 < moved["vision_grid.columns"] < 4 * lr * 1e-3
    assert moved["vision_embed_tokens.weight"] > lr / 2
    with pytest.raises(Exception, match=r"optimizer.lr_scale: \['nothing\.\*'\] match no trainable parameter"):
        train_in_processes(tiny_config(tmp_path / "bad", data_dir, optimizer={"lr_scale": {"nothing.*": 2.0}}), 1)


def test_a_diverging_loss_stops_and_the_last_good_checkpoint_can_be_exported(data_dir, tmp_path):
    # An absurd learning rate blows the weights up after the first step; step 1 is checkpointed.
    raw = tiny_config(tmp_path, data_dir, optimizer={"lr": 1e30, "grad_clip": 0.0}, schedule={"warmup_steps": 0},
                      checkpoint={"every_steps": 1})
    with pytest.raises(Exception, match=r"stopping: the (loss|gradient norm) is (nan|inf)") as raised:
        train_in_processes(raw, 1)
    assert "stage0-step000001" in str(raised.value)
    assert latest_tag(tmp_path / "checkpoints") == "stage0-step000001"
    assert not (tmp_path / "pretrained").exists()
    export_in_process(raw)  # on demand: the last good weights, for inference
    model = LWMForCausalLM.from_pretrained(tmp_path / "pretrained" / "stage0-step000001")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _export_to(rank, world_size, raw, directory):
    from lwm.training.trainer import Trainer

    Trainer(to_config(raw)).export_latest(directory)


def test_exports_hold_the_configured_processor_and_export_dir_places_them(data_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red circle moves left and bounces off the wall\n" * 50)
    train_text_tokenizer([str(corpus)], vocab_size=300, out_dir=str(tmp_path / "tokenizer"))
    VQGAN(VQGANConfig.from_preset("tiny")).save_pretrained(tmp_path / "vqgan")
    drawing = DrawingConfig(video_procedure="single_pass", video=GREEDY, video_frames=4)
    drawing.save(tmp_path)
    processor = {"tokenizer": str(tmp_path / "tokenizer"), "vqgan": str(tmp_path / "vqgan"), "max_frames": 4,
                 "drawing": str(tmp_path / DRAWING_CONFIG_NAME)}
    raw = tiny_config(tmp_path / "run", data_dir, stages=[{"seq_len": 32, "rope_theta": 10000.0, "steps": 2}],
                      processor=processor)
    train_in_processes(raw, 1)
    run_distributed(_export_to, 1, raw, str(tmp_path / "exported"), timeout_s=300)
    for folder in (tmp_path / "run" / "pretrained" / "stage0", tmp_path / "exported"):
        loaded = LWMProcessor.from_pretrained(folder)
        assert (loaded.text_vocab_size, loaded.codebook_size, loaded.config.max_frames) == (300, 64, 4)
        assert LWMForCausalLM.from_pretrained(folder).config.vocab_size == LWMConfig.from_preset("tiny").vocab_size
        assert DrawingConfig.load(folder) == drawing
    with pytest.raises(Exception, match="processor.tokenizer and processor.vqgan go together"):
        to_config(tiny_config(tmp_path, data_dir, processor={"tokenizer": str(tmp_path / "tokenizer")}))


def test_a_yarn_stage_slows_only_the_rope_frequencies_too_slow_for_the_trained_length(tmp_path):
    from types import SimpleNamespace

    from lwm.training.config import StageConfig, YarnConfig
    from lwm.training.trainer import build_model

    LWMForCausalLM(LWMConfig.from_preset("tiny", max_position_embeddings=64)).save_pretrained(tmp_path / "short")
    config = to_config(tiny_config(tmp_path, tmp_path, model={"name_or_path": str(tmp_path / "short")}))
    stage = StageConfig(seq_len=256, rope_theta=1e4, steps=1,
                        yarn=YarnConfig(original_length=64, beta_fast=2.0, beta_slow=1.0, attention_factor=1.0))
    plain = build_model(config, StageConfig(seq_len=64, rope_theta=1e4, steps=1), SimpleNamespace(sp_size=1), None)
    grown = build_model(config, stage, SimpleNamespace(sp_size=1), None)
    assert grown.config.rope_parameters["rope_type"] == "yarn" and grown.config.rope_parameters["factor"] == 4.0
    before, after = plain.model.rotary_emb.inv_freq, grown.model.rotary_emb.inv_freq
    turns = 64 * before / (2 * torch.pi)  # turns of each frequency over the trained length
    assert torch.equal(after[turns >= 2], before[turns >= 2])  # what the model reads within 64 tokens is kept
    assert torch.allclose(after[turns <= 1], before[turns <= 1] / 4)  # the slowest stretch over the 4x length
    assert grown.model.rotary_emb.attention_scaling == 1.0

    grown.save_pretrained(tmp_path / "grown")  # an export reloads with the stage's RoPE and length
    reloaded = LWMForCausalLM.from_pretrained(tmp_path / "grown")
    assert reloaded.config.max_position_embeddings == 256
    assert torch.equal(reloaded.model.rotary_emb.inv_freq, after)
