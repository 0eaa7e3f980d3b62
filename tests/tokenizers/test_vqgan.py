"""VQGAN: shapes and token order, decode checks, video chunking, persistence, quantizer variants, configs."""

from __future__ import annotations

import json

import pytest
import torch

from lwm.api import BUNDLED_DIR
from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.modeling_vqgan import VQGAN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", kmeans_init=False)).eval()
    return model


def pixels(batch=3, size=32, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_presets():
    assert {"lwm", "tiny", "world"} <= set(VQGANConfig.preset_names())
    lwm = VQGANConfig.from_preset("lwm")
    assert (lwm.resolution, lwm.grid_size, lwm.codes_per_frame, lwm.codebook_size) == (256, 16, 256, 8192)
    assert lwm.level_channels == (128, 256, 256, 512, 768)
    assert VQGANConfig.from_preset("tiny", codebook_size=32).codebook_size == 32


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"norm_groups": 7}, "not divisible by norm_groups"),
        ({"quantizer": "rvq"}, "quantizer must be one of"),
        ({"quantizer": "fsq", "fsq_levels": (8, 5)}, "product of fsq_levels"),
        ({"quantizer": "lfq", "codebook_size": 100}, "power of two"),
        ({"resolution": 33}, "not divisible by the downsample factor"),
        ({"channel_mult": ()}, "channel_mult"),
    ],
)
def test_bad_configs_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        VQGANConfig.from_preset("tiny", **overrides)


def test_unknown_presets_and_fields(tmp_path):
    with pytest.raises(ValueError, match="unknown VQGAN preset 'nope'.*tiny"):
        VQGANConfig.from_preset("nope")
    (tmp_path / "c.json").write_text(json.dumps({"resolution": 32, "colour": 1}))
    with pytest.raises(ValueError, match=r"unknown VQGANConfig fields: \['colour'\]"):
        VQGANConfig.from_preset(str(tmp_path / "c.json"))


def test_encode_is_row_major_nearest_neighbour(model):
    x = pixels()
    codes = model.encode(x)
    assert codes.shape == (3, 16, 16) and codes.dtype == torch.long
    with torch.no_grad():
        z = model.quant_conv(model.encoder(x))  # [B, D, h, w]
    codebook = model.quantize.codebook
    # position (row i, column j) of the grid takes the code nearest to z[:, :, i, j]
    nearest = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), codebook).argmin(-1)
    assert torch.equal(codes.flatten(), nearest)
    assert torch.equal(codes.reshape(3, -1), nearest.reshape(3, 16, 16).reshape(3, 256))


def test_decode_output_and_index_checks(model):
    codes = model.encode(pixels())
    frames = model.decode(codes)
    assert frames.shape == (3, 3, 32, 32) and frames.min() >= -1 and frames.max() <= 1
    size = model.codebook_size
    for bad, message in [
        (torch.full((1, 16, 16), size), rf"codes must lie in \[0, {size}\), got values in \[{size}, {size}\]"),
        (torch.full((1, 16, 16), -1), "codes must lie in"),
        (torch.zeros(1, 16, 16), "expected integer codes"),
        (torch.zeros(16, 16, dtype=torch.long), r"expected codes shaped \[B, h, w\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.decode(bad)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        model.encode(torch.zeros(1, 3, 31, 32))
    with pytest.raises(ValueError, match=r"expected pixels shaped \[B, 3, H, W\]"):
        model.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="expected float pixels"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_video_helpers_fold_frames_in_chunks(model):
    frames = pixels(batch=7).reshape(7, 3, 32, 32)
    codes = model.encode_video(frames, chunk_size=3)
    assert torch.equal(codes, model.encode(frames))
    batched = model.encode_video(frames[:6].reshape(2, 3, 3, 32, 32), chunk_size=4)
    assert batched.shape == (2, 3, 16, 16) and torch.equal(batched.reshape(6, 16, 16), codes[:6])
    decoded = model.decode_video(codes, chunk_size=2)
    assert torch.allclose(decoded, model.decode(codes), atol=1e-5)
    assert model.decode_video(batched).shape == (2, 3, 3, 32, 32)


def test_the_mid_block_count_is_its_own_field(tmp_path):
    """LWM's mid block always has 2 res blocks; the world and tiny VQGANs were trained with 1."""
    assert VQGANConfig().num_mid_blocks == 2 and len(VQGAN(VQGANConfig.from_preset("lwm")).decoder.mid) == 2
    one_per_level = VQGAN(VQGANConfig.from_preset("tiny", num_res_blocks=1, num_mid_blocks=2, kmeans_init=False))
    assert len(one_per_level.encoder.mid) == len(one_per_level.decoder.mid) == 2
    assert len(one_per_level.encoder.down[0].block) == 1
    assert VQGANConfig.from_preset("world").num_mid_blocks == VQGANConfig.from_preset("tiny").num_mid_blocks == 1
    assert len(VQGAN.from_pretrained(BUNDLED_DIR / "vqgan").decoder.mid) == 1
    # a folder saved before the field existed had num_res_blocks mid blocks, and loads as it was saved
    model = VQGAN(VQGANConfig.from_preset("tiny", num_res_blocks=3, num_mid_blocks=3, kmeans_init=False))
    model.save_pretrained(tmp_path / "old")
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    del saved["num_mid_blocks"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    assert len(VQGAN.from_pretrained(tmp_path / "old").decoder.mid) == 3
    with pytest.raises(ValueError, match="num_mid_blocks must be at least 1"):
        VQGANConfig(num_mid_blocks=0)


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "vq")
    loaded = VQGAN.from_pretrained(tmp_path / "vq")
    x = pixels(seed=3)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.allclose(loaded.decode(model.encode(x)), model.decode(model.encode(x)))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        (tmp_path / "vq" / "model.safetensors").unlink()
        VQGAN.from_pretrained(tmp_path / "vq")


def test_training_mode_learns_the_codebook():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny")).train()  # k-means init + EMA
    quantize = model.quantize.vq._codebook
    assert not quantize.initted
    before = model.quantize.codebook.clone()
    output = model(pixels(batch=8))
    assert quantize.initted and not torch.equal(model.quantize.codebook, before)
    assert output.reconstruction.shape == (8, 3, 32, 32) and output.quantizer_loss.requires_grad
    output.quantizer_loss.backward()  # the commitment loss reaches the encoder
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides", [{"quantizer": "fsq", "fsq_levels": (4, 4, 4), "codebook_size": 64},
                  {"quantizer": "lfq", "codebook_size": 64}], ids=["fsq", "lfq"]
)
def test_alternative_quantizers(overrides, tmp_path):
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", **overrides)).eval()
    x = pixels(batch=2)
    codes = model.encode(x)
    assert codes.shape == (2, 16, 16) and 0 <= codes.min() and codes.max() < 64
    with torch.no_grad():
        expected = model(x).reconstruction.clamp(-1, 1)
    assert torch.allclose(model.decode(codes), expected, atol=1e-5)  # decode(encode(x)) == forward
    model.save_pretrained(tmp_path / "vq")
    assert torch.equal(VQGAN.from_pretrained(tmp_path / "vq").encode(x), codes)


def _squares_at(*places: tuple[int, int, int], size: int = 32, patch: int = 2) -> torch.Tensor:
    """A dark frame with bright squares of (row, column, side) in patches."""
    frame = torch.full((1, 3, size, size), -1.0)
    for row, column, side in places:
        frame[..., row * patch:(row + side) * patch, column * patch:(column + side) * patch] = 1.0
    return frame


@pytest.mark.parametrize("local", [True, False])
def test_a_local_encoder_keeps_the_latents_of_patches_that_did_not_change(local):
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", local_encoder=local, kmeans_init=False)).eval()
    with torch.no_grad():  # a square moves, a bigger one appears: the frame's statistics change too
        before, after = model.encoder(_squares_at((3, 3, 1))), model.encoder(_squares_at((10, 12, 1), (6, 6, 3)))
    background_in_both = torch.ones(16, 16, dtype=torch.bool)
    background_in_both[3, 3] = background_in_both[10, 12] = False
    background_in_both[6:9, 6:9] = False
    unchanged = torch.isclose(before, after, atol=1e-6).all(1)[0]
    # LWM's encoder sees the squares from patches around them and through GroupNorm; the local one does not
    assert unchanged[background_in_both].all() == local
    assert not unchanged[3, 3] and not unchanged[10, 12]


def test_temporal_compression_codes_the_first_frame_alone_then_k_frames_per_grid():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", temporal_compression=2, kmeans_init=False)).eval()
    clips = torch.rand(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    codes = model.encode(clips)
    assert codes.shape == (2, 3, 16, 16)  # 1 + 2·2 frames -> 1 + 2 grids
    assert model.decode(codes).shape == clips.shape
    torch.testing.assert_close(model(clips).reconstruction.clamp(-1, 1), model.decode(codes))
    # the first grid sees the first frame alone: an image is coded as a still clip, and the same with any future
    assert torch.equal(model.encode(clips[:, 0]), codes[:, 0])
    changed_future = clips.clone()
    changed_future[:, 1:] = -changed_future[:, 1:]
    assert torch.equal(model.encode(changed_future)[:, 0], codes[:, 0])
    # the frames of a group are coded together: changing the second one changes that grid only
    changed = clips.clone()
    changed[:, 2] = -changed[:, 2]
    recoded = model.encode(changed)
    assert torch.equal(recoded[:, [0, 2]], codes[:, [0, 2]]) and not torch.equal(recoded[:, 1], codes[:, 1])
    # one clip through the video helpers, the processor's path
    assert torch.equal(model.encode_video(clips[0]), codes[0])
    assert model.decode_video(codes[0]).shape == clips[0].shape
    with pytest.raises(ValueError, match="clips of 4 frames: temporal compression 2 codes 1 \\+ 2·n frames"):
        model.encode(clips[:, :4])
    with pytest.raises(ValueError, match="temporal_compression must be at least 1"):
        VQGANConfig.from_preset("tiny", temporal_compression=0)


def test_a_local_temporal_vqgan_keeps_the_codes_of_patches_still_over_a_group():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", temporal_compression=2, local_encoder=True, kmeans_init=False)).eval()
    frames = torch.cat([_squares_at((3, 3, 1)), _squares_at((3, 3, 1)), _squares_at((3, 4, 1)),
                        _squares_at((3, 3, 1)), _squares_at((3, 3, 1))])
    with torch.no_grad():
        z = model._latents(frames[None])  # grids: frame 0 alone, frames 1-2, frames 3-4
    moved = torch.zeros(16, 16, dtype=torch.bool)
    moved[3, 3:5] = True
    assert torch.allclose(z[0][:, ~moved], z[2][:, ~moved], atol=1e-6)
    assert not torch.allclose(z[1][:, 3, 4], z[2][:, 3, 4], atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, {"quantizer": "fsq", "fsq_levels": (8, 8), "codebook_size": 64, "embed_dim": 2}])
def test_code_vectors_are_what_each_code_decodes_from(overrides):
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", kmeans_init=False, **overrides)).eval()
    vectors = model.code_vectors()
    assert vectors.shape == (model.codebook_size, model.config.embed_dim)
    codes = torch.randint(0, model.codebook_size, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.quantize.lookup(codes), vectors[codes].permute(0, 3, 1, 2))
