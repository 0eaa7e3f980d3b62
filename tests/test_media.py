"""lwm.media: round trips through MP4 and GIF, sampling, preprocessing, and MediaError for every bad input."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from lwm import media
from lwm.media import MediaError
from tests.helpers.hostile_media import write_audio_only


def gradient_clip(frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth frames whose brightness encodes the frame index, so sampled frames are identifiable."""
    yy, xx = np.mgrid[:height, :width]
    clip = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        clip[t, ..., 0] = (xx * 2 + t * 3) % 256
        clip[t, ..., 1] = (yy * 3) % 256
        clip[t, ..., 2] = 20 * t
    return clip


def frame_ids(frames: np.ndarray) -> list[int]:
    return [int(round(f[..., 2].mean() / 20)) for f in frames]


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    media.save_video(gradient_clip(), path, fps=6)
    return path


def test_mp4_round_trip(mp4):
    frames = media.load_video(mp4)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - gradient_clip().astype(int)).mean() < 3  # near-lossless H.264
    assert frame_ids(frames) == list(range(12))


def test_gif_round_trip(tmp_path):
    clip = np.zeros((5, 16, 20, 3), np.uint8)
    for t in range(5):
        clip[t, :, : 4 * (t + 1)] = [200, 30, 30]
        clip[t, 8:, :, 1] = 150
    media.save_video(clip, tmp_path / "clip.gif", fps=10)
    np.testing.assert_array_equal(media.load_video(tmp_path / "clip.gif"), clip)  # few colours: exact
    assert media.sniff_media_type(tmp_path / "clip.gif") == "video"


def test_image_round_trip_and_sources(tmp_path):
    image = gradient_clip(1)[0]
    media.save_image(image, tmp_path / "frame.png")
    np.testing.assert_array_equal(media.load_image(tmp_path / "frame.png"), image)
    np.testing.assert_array_equal(media.load_image((tmp_path / "frame.png").read_bytes()), image)
    np.testing.assert_array_equal(media.load_image(Image.fromarray(image)), image)
    np.testing.assert_array_equal(media.load_video(tmp_path / "frame.png"), image[None])
    assert media.sniff_media_type(tmp_path / "frame.png") == "image"


def test_linspace_sampling_matches_lwm(mp4):
    frames = media.load_video(mp4, max_frames=4)
    assert frame_ids(frames) == np.linspace(0, 11, 4, dtype=int).tolist() == [0, 3, 7, 11]
    assert frame_ids(media.load_video(mp4.read_bytes(), max_frames=100)) == list(range(12))
    clip = gradient_clip()
    np.testing.assert_array_equal(media.load_video(clip, max_frames=3), clip[[0, 5, 11]])
    pil_frames = [Image.fromarray(f) for f in clip[:2]]
    np.testing.assert_array_equal(media.load_video(pil_frames), clip[:2])


def test_fps_and_time_range(mp4):  # 12 frames at 6 fps: frame k starts at k/6 s
    assert frame_ids(media.load_video(mp4, fps=3)) == [0, 2, 4, 6, 8, 10]
    assert frame_ids(media.load_video(mp4, fps=12))[:6] == [0, 0, 1, 1, 2, 2]
    assert frame_ids(media.load_video(mp4, start=0.5, end=1.0)) == [3, 4, 5]
    assert frame_ids(media.load_video(mp4, start=1.0, fps=2, max_frames=2)) == [6, 9]


def test_preprocess_resizes_short_side_and_centre_crops():
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 20:60] = 255  # the centre half of a wide frame is white
    pixels = media.preprocess(frame, 20)
    assert pixels.shape == (1, 3, 20, 20) and pixels.dtype == torch.float32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert torch.allclose(pixels[..., 2:-2], torch.ones(1), atol=0.02)  # crop kept the white middle
    same = media.preprocess(gradient_clip(2, 32, 32), 32)
    assert torch.equal(same, torch.from_numpy(gradient_clip(2, 32, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1)
    np.testing.assert_array_equal(media.to_uint8(same), gradient_clip(2, 32, 32))


def test_sniffing(tmp_path, mp4):
    assert media.sniff_media_type(mp4) == "video"
    assert media.sniff_media_type(mp4.read_bytes()) == "video"
    buffer = io.BytesIO()
    Image.fromarray(gradient_clip(1)[0]).save(buffer, format="JPEG")
    assert media.sniff_media_type(buffer.getvalue()) == "image"
    assert media.sniff_media_type(b"hello world, not media") is None
    with pytest.raises(MediaError, match="file not found"):
        media.sniff_media_type(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="file is empty"):
        media.sniff_media_type(b"")


# ----------------------------------------------------------------------------- bad inputs


def audio_only_wav(path):
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(8000)
        file.writeframes(np.zeros(8000, np.int16).tobytes())


def written(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d, mp4: d / "missing.mp4", "file not found"),
        (lambda d, mp4: written(d / "empty.mp4", b""), "empty"),
        (lambda d, mp4: written(d / "noise.mp4", np.random.default_rng(0).bytes(5000)), "corrupt"),
        (lambda d, mp4: written(d / "cut.mp4", mp4.read_bytes()[: len(mp4.read_bytes()) // 2]), "corrupt|truncated"),
        (lambda d, mp4: written(d / "text.txt", b"just some text\n" * 50), "corrupt"),
        (lambda d, mp4: audio_only_wav(d / "tone.wav") or d / "tone.wav", "no video stream"),
        (lambda d, mp4: write_audio_only(d / "tone.m4a"), "no video stream"),
        (lambda d, mp4: d, "not a regular file"),
    ],
    ids=["missing", "empty", "corrupt", "truncated", "text", "audio-wav", "audio-m4a", "directory"],
)
def test_bad_video_inputs_raise_media_error(tmp_path, mp4, make, problem):
    source = make(tmp_path, mp4)
    with pytest.raises(MediaError, match=problem) as error:
        media.load_video(source)
    assert str(source) in str(error.value)


def test_bad_image_inputs_raise_media_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(gradient_clip(1)[0]).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "text.png").write_text("not an image")
    cases = {tmp_path / "cut.png": "corrupt or truncated", tmp_path / "text.png": "not a supported image",
             tmp_path / "none.png": "file not found", b"": "empty"}
    for source, problem in cases.items():
        with pytest.raises(MediaError, match=problem):
            media.load_image(source)
    with pytest.raises(MediaError, match="expected uint8"):
        media.load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(MediaError, match=r"\[T, H, W, 3\]"):
        media.load_video(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(MediaError, match="unsupported source type"):
        media.load_video(12345)


def test_huge_inputs_are_refused_before_decoding(mp4, tmp_path):
    with pytest.raises(MediaError, match="more than 5 frames"):
        media.load_video(mp4, frame_limit=5)
    with pytest.raises(MediaError, match="pixel limit"):
        media.load_video(mp4, pixel_limit=48 * 64 * 4)
    assert len(media.load_video(mp4, max_frames=4, pixel_limit=48 * 64 * 4)) == 4  # sampling fits the budget
    media.save_image(np.zeros((100, 100, 3), np.uint8), tmp_path / "big.png")
    with pytest.raises(MediaError, match="pixel limit"):
        media.load_image(tmp_path / "big.png", pixel_limit=5000)


def test_writing_bad_video_raises(tmp_path):
    with pytest.raises(MediaError, match="unsupported video extension"):
        media.save_video(gradient_clip(2), tmp_path / "clip.xyz")
    with pytest.raises(MediaError, match="even frame sizes"):
        media.save_video(np.zeros((2, 5, 6, 3), np.uint8), tmp_path / "odd.mp4")
