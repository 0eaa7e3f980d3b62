"""Motion codes: a video's later frames as patches moved from the frame before (lwm.tokenizers.motion)."""

from __future__ import annotations

import pytest
import torch

from lwm.tokenizers.configuration_vqgan import VQGANConfig
from lwm.tokenizers.modeling_vqgan import VQGAN
from lwm.tokenizers.motion import motion_shifts

PATCH = 2  # the tiny preset: 32-pixel frames, 16 x 16 codes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VQGAN(VQGANConfig.from_preset("tiny", local_encoder=True, kmeans_init=False, motion_max_shift=2)).eval()


def square_video(start: tuple[int, int], step: tuple[int, int], frames: int, side: int = 3) -> torch.Tensor:
    """A bright square of `side` pixels (too small to cover a patch in two frames running) on a dark
    frame, moving `step` (dy, dx) pixels a frame: [T, 3, 32, 32]."""
    video = torch.full((frames, 3, 32, 32), -1.0)
    for t in range(frames):
        y, x = start[0] + t * step[0], start[1] + t * step[1]
        video[t, 0, y : y + side, x : x + side] = 0.8
        video[t, 1:, y : y + side, x : x + side] = -0.2
    return video


def motion_token(model, shift: tuple[int, int]) -> int:
    return model.codebook_size + motion_shifts(model.config.motion_max_shift).index(shift)


def test_motion_tokens_follow_the_codebook_still_first():
    assert motion_shifts(1) == [(0, 0), (-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)]
    config = VQGANConfig.from_preset("tiny", motion_max_shift=2)
    assert config.num_motions == 25 and VQGAN(config).num_tokens == config.codebook_size + 25
    assert VQGANConfig.from_preset("tiny").num_motions == 0
    with pytest.raises(ValueError, match="motion codes and temporal_compression"):
        VQGANConfig.from_preset("tiny", motion_max_shift=2, temporal_compression=2)
    with pytest.raises(ValueError, match="must be non-negative"):
        VQGANConfig.from_preset("tiny", motion_max_shift=-1)
    with pytest.raises(ValueError, match="motion_key_interval needs motion codes"):
        VQGANConfig.from_preset("tiny", motion_key_interval=4)


def test_a_moving_object_is_one_motion_token_and_keeps_its_first_look(model):
    video = square_video(start=(6, 4), step=(1, 2), frames=5)
    tokens = model.encode_video(video)
    # the first frame is the VQGAN's codes, as an image's; every later patch is a motion
    assert torch.equal(tokens[0], model.encode(video[:1])[0])
    assert (tokens[1:] >= model.codebook_size).all()
    moving, still = motion_token(model, (1, 2)), motion_token(model, (0, 0))
    assert set(tokens[1:].unique().tolist()) == {moving, still}
    # the square's patches (where it is and where it was) carry its motion; plain background stays still
    for t in range(1, 5):
        covered = torch.zeros(16, 16, dtype=torch.bool)
        for frame in (video[t - 1], video[t]):
            covered |= torch.nn.functional.max_pool2d((frame[:1] > -1).float(), PATCH)[0].bool()
        assert (tokens[t][covered] == moving).all() and (tokens[t][~covered] == still).all()
    # decoded, each frame is the decoded first frame moved: the object keeps its look
    frames = model.decode_video(tokens)
    first = model.decode(tokens[:1])[0]
    torch.testing.assert_close(frames[0], first)
    for t in range(1, 5):
        dy, dx = t * 1, t * 2
        torch.testing.assert_close(frames[t][:, 6 + dy : 9 + dy, 4 + dx : 7 + dx], first[:, 6:9, 4:7])


def test_what_no_shift_reproduces_is_coded(model):
    video = square_video(start=(6, 4), step=(0, 1), frames=3)
    video[2, :, 20:24, 20:24] = 1.0  # a new white square appears: no shift of the frame before shows it
    tokens = model.encode_video(video)
    appeared = tokens[2, 10:12, 10:12]
    assert (appeared < model.codebook_size).all()
    assert torch.equal(appeared, model.encode(video[2:3])[0, 10:12, 10:12])
    assert (tokens[2] >= model.codebook_size).sum() == 16 * 16 - 4
    assert model.decode_video(tokens).shape == video.shape


def test_a_continuation_is_coded_and_drawn_from_the_video_it_continues(model):
    video = square_video(start=(4, 20), step=(2, -2), frames=6)
    tokens = model.encode_video(video)
    continued = model.encode_video(video[3:], context=video[:3])
    assert (continued >= model.codebook_size).all()  # its first frame moves the context's last one
    assert not (model.encode_video(video[3:])[0] >= model.codebook_size).any()  # alone, it is coded
    assert torch.equal(continued, tokens[3:])
    torch.testing.assert_close(model.decode_video(continued, context=tokens[:3]), model.decode_video(tokens)[3:])
    # videos in a batch are coded one by one
    assert torch.equal(model.encode_video(torch.stack([video, video.flip(0)]))[0], tokens)


def test_key_frames_are_coded_whole_and_a_continuation_starts_with_motion(model):
    keyed = VQGAN(VQGANConfig(**{**model.config.to_dict(), "motion_key_interval": 3})).eval()
    keyed.load_state_dict(model.state_dict())
    video = square_video(start=(4, 2), step=(1, 2), frames=8)
    tokens, without_keys = keyed.encode_video(video), model.encode_video(video)
    for t in range(8):
        if t % 3 == 0:
            assert torch.equal(tokens[t], model.encode(video[t : t + 1])[0])
        else:
            assert torch.equal(tokens[t], without_keys[t])  # the same motion as without keys
    # a key frame shows the true frame, so what a motion frame got wrong before it does not carry on
    frames = keyed.decode_video(tokens)
    torch.testing.assert_close(frames[3], model.decode(tokens[3:4])[0])
    continued = keyed.encode_video(video[2:], context=video[:2])
    assert (continued[0] >= model.codebook_size).all() and (continued[3] < model.codebook_size).all()


def test_a_vqgan_without_motion_codes_every_frame_alone():
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", local_encoder=True, kmeans_init=False)).eval()
    video = square_video(start=(6, 4), step=(1, 2), frames=3)
    assert torch.equal(model.encode_video(video[1:], context=video[:1]), model.encode(video[1:]))
    assert model.num_tokens == model.codebook_size


def test_the_tokenizer_eval_measures_clips_told_by_motion(model):
    from lwm import media
    from lwm.eval.reconstruction import psnr
    from lwm.eval.world import evaluate_tokenizer
    from lwm.world import scene

    clips = [scene.generate_clip(seed) for seed in scene.split_seeds("held_out", 2)]
    metrics = evaluate_tokenizer(model, clips).summary["metrics"]
    assert 0.5 < metrics["motion.moved_patches"] <= 1  # objects glide on plain background: most patches move
    # each clip is told from its own first frame, not from the clip before it
    pixels = [media.preprocess(clip.frames, 32) for clip in clips]
    told = torch.cat([model.decode_video(model.encode_video(frames)) for frames in pixels])
    assert metrics["motion.psnr"] == pytest.approx(psnr(torch.cat(pixels), told))
    as_one_video = model.decode_video(model.encode_video(torch.cat(pixels)))
    assert psnr(torch.cat(pixels), as_one_video) != pytest.approx(metrics["motion.psnr"])
