"""lwm.media against hostile input: files cut short, bombs, FIFOs, rotated video, resize arithmetic, a fuzz pass.

Every case reads through the one bounded path (open without blocking, declared sizes checked before
decoding, a decoding time limit) and ends in frames or a `MediaError` naming the source and the
problem in one line of the module's own words.
"""

from __future__ import annotations

import io
import os
import threading
import time

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lwm import media
from lwm.media import MediaError, MediaLimitError
from tests.helpers.hostile_media import FRAMES, STILLS, TRUNCATABLE, VIDEOS, clip, write_corpus, write_video

# What decoders say, which must never reach a user: errno numbers, FFmpeg function names, box names.
DECODER_WORDS = ("Errno", "avcodec", "avformat", "Invalid data found", "moov", "Traceback", "PIL", "libav")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("hostile"))


def assert_clean(error: MediaError, source) -> None:
    """One line, naming the source, in lwm.media's words."""
    text = str(error)
    assert "\n" not in text and text.startswith(media.describe(source))
    assert not any(word in text for word in DECODER_WORDS), text


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", [video[0] for video in VIDEOS] + ["clip.gif"])
def test_every_real_file_of_the_corpus_decodes_whole(corpus, name):
    frames = media.load_video(corpus[name])
    assert frames.dtype == np.uint8 and frames.shape[0] == FRAMES and frames.shape[-1] == 3
    assert media.sniff_media_type(corpus[name]) == "video"


# ----------------------------------------------------------------------------- cut short


def packet_ends(path) -> list[int]:
    """The byte offsets where the video's packets end: cutting there leaves whole frames only."""
    with av.open(str(path)) as container:
        return sorted({p.pos + p.size for p in container.demux(video=0) if p.size and p.pos is not None})


@pytest.mark.parametrize("name", TRUNCATABLE)
def test_a_file_cut_short_raises_media_error_wherever_it_is_cut(corpus, tmp_path, name):
    data = corpus[name].read_bytes()
    cuts = {len(data) // 10, len(data) // 2, len(data) * 9 // 10, len(data) - 1}
    if not name.endswith(".gif"):
        cuts |= set(packet_ends(corpus[name])[:-1])  # between two frames: FFmpeg sees nothing wrong there
    for cut in sorted(cuts):
        path = tmp_path / f"{cut}-{name}"
        path.write_bytes(data[:cut])
        with pytest.raises(MediaError, match="truncated|corrupt") as error:
            media.load_video(path)
        assert_clean(error.value, path)
        with pytest.raises(MediaError, match="truncated|corrupt"):
            media.load_video(data[:cut])


def test_an_empty_file_is_called_empty(corpus):
    for read in (media.load_video, media.load_image, media.sniff_media_type):
        for source in (corpus["empty.mp4"], b""):
            with pytest.raises(MediaError, match="file is empty"):
                read(source)


# ----------------------------------------------------------------------------- declared sizes


@pytest.mark.parametrize("name", ["bomb.gif", "bomb.png"])
def test_decompression_bombs_are_refused_from_their_headers(corpus, name):
    """Sniffing opens a GIF (to tell a still from an animation) and so meets the bomb too; a PNG is
    known from its magic bytes alone."""
    assert corpus[name].stat().st_size < 100
    readers = (media.load_image, media.load_video)
    if name.endswith(".png"):
        assert media.sniff_media_type(corpus[name]) == "image"
    else:
        readers += (media.sniff_media_type,)
    for read in readers:
        for source in (corpus[name], corpus[name].read_bytes()):
            started = time.monotonic()
            with pytest.raises(MediaLimitError, match="decompression bomb") as error:
                read(source)
            assert time.monotonic() - started < 2
            assert_clean(error.value, source)


def test_frames_over_the_pixel_limit_are_refused_before_decoding(corpus):
    one_frame = 32 * 24
    with pytest.raises(MediaLimitError, match="frames of 32x24 exceed the pixel limit"):
        media.load_video(corpus["clip.mp4"], pixel_limit=one_frame - 1)
    with pytest.raises(MediaLimitError, match="pixel limit"):
        media.load_image(corpus["still.png"], pixel_limit=one_frame - 1)
    # WebM and GIF report no frame size until a frame is decoded, and FFmpeg refuses to decode it
    for name in ("clip.webm", "clip.gif"):
        with pytest.raises(MediaError, match="pixel limit") as error:
            media.load_video(corpus[name], pixel_limit=one_frame - 1)
        assert_clean(error.value, corpus[name])
    big_gif = io.BytesIO()
    frames = [Image.new("RGB", (3000, 3000), (i * 90, 0, 0)) for i in range(2)]
    frames[0].save(big_gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(MediaError, match="pixel limit"):
        media.load_video(big_gif.getvalue(), pixel_limit=1 << 20)


def test_decoding_stops_at_the_time_limit(corpus):
    with pytest.raises(MediaLimitError, match="time limit of 1e-09 s"):
        media.load_video(corpus["clip.mp4"], time_limit=1e-9)
    assert len(media.load_video(corpus["clip.mp4"], time_limit=60)) == FRAMES
    with pytest.raises(ValueError, match="time_limit must be positive"):
        media.load_video(corpus["clip.mp4"], time_limit=0)


# ----------------------------------------------------------------------------- what is not a file


def refused_promptly(read, path) -> MediaError:
    """`read(path)` in a thread: it must raise MediaError within 5 s, not wait for a writer."""
    outcome = {}

    def target():
        try:
            read(path)
        except BaseException as error:  # reported to the test below
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # frees a reader stuck opening a FIFO
        thread.join(5)
        pytest.fail(f"{read.__name__} blocked on {path}")
    assert isinstance(outcome.get("error"), MediaError), outcome
    return outcome["error"]


def test_fifos_devices_and_folders_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    sources = [fifo, tmp_path] + ([os.devnull] if os.path.exists(os.devnull) else [])
    for source in sources:
        for read in (media.load_video, media.load_image, media.sniff_media_type):
            error = refused_promptly(read, source)
            assert "not a regular file" in str(error)
            assert_clean(error, source)


def test_missing_files_nul_bytes_and_unknown_users_are_errors_not_crashes(tmp_path):
    with pytest.raises(MediaError, match="file not found"):
        media.load_video(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="NUL byte"):
        media.load_video(str(tmp_path / "a\x00.mp4"))
    with pytest.raises(MediaError, match="no such user's home folder"):
        media.user_path("~no-such-user-lwm/clip.mp4")


def test_a_name_with_terminal_escapes_is_shown_escaped(tmp_path):
    path = tmp_path / "\x1b[2Jclip.mp4"
    with pytest.raises(MediaError) as error:
        media.load_video(path)
    assert "\x1b" not in str(error.value) and "\\x1b" in str(error.value)


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("hflip", [False, True])
def test_a_rotated_video_loads_upright(tmp_path, rotation, hflip):
    """PyAV writes the display matrix of a counterclockwise rotation, then a mirror of x (as phones
    record portrait video as rotated landscape); the frames come back as they are shown."""
    frames = clip()
    path = write_video(tmp_path / "rotated.mp4", "mp4", "libx264rgb", "rgb24", frames, rotation, hflip)
    shown = np.rot90(frames, rotation // 90, axes=(1, 2))
    shown = shown[:, :, ::-1] if hflip else shown
    np.testing.assert_array_equal(media.load_video(path), shown)


def test_the_issues_portrait_video_loads_as_320_by_240(tmp_path):
    path = write_video(tmp_path / "phone.mp4", "mp4", "libx264", "yuv420p", clip(2, 320, 240), rotation=90)
    assert media.load_video(path).shape == (2, 240, 320, 3)


def test_an_images_exif_orientation_is_applied(tmp_path):
    image = clip(1)[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show"
    Image.fromarray(image).save(tmp_path / "phone.png", exif=exif)
    upright = np.rot90(image, -1)
    np.testing.assert_array_equal(media.load_image(tmp_path / "phone.png"), upright)
    np.testing.assert_array_equal(media.load_video(tmp_path / "phone.png"), upright[None])


# ----------------------------------------------------------------------------- LWM's resize


def lwm_process_frame(image: Image.Image, size: int) -> np.ndarray:
    """LWM's `_process_frame` (lwm/vision_chat.py), line for line."""
    width, height = image.size
    if width < height:
        new_width = size
        new_height = int(size * height / width)
    else:
        new_height = size
        new_width = int(size * width / height)
    image = image.resize((new_width, new_height))
    left = (new_width - size) / 2
    top = (new_height - size) / 2
    right = (new_width + size) / 2
    bottom = (new_height + size) / 2
    image = image.crop((left, top, right, bottom))
    return np.array(image, dtype=np.float32) / 127.5 - 1


@pytest.mark.parametrize("height, width", [(322, 322), (499, 499), (784, 784), (322, 644), (644, 322), (240, 320)])
def test_preprocessing_is_pixel_equal_to_lwms_resize(height, width):
    frame = np.random.default_rng(height + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours = media.preprocess(frame, 256)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, lwm_process_frame(Image.fromarray(frame), 256))
    assert (ours[-1] > -1).any() and (ours[:, -1] > -1).any()  # no black row or column from a short resize


# ----------------------------------------------------------------------------- fuzz


def mutated(data: bytes, edits: list[tuple[int, int]], cut: float) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[: max(1, int(len(out) * cut))])


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["clip.mp4", "clip.mkv", "clip.webm", "clip.avi", "clip.gif", "odd.mkv", "one-frame.mp4",
                          "rotated.mp4", *STILLS]),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.sampled_from([1.0, 1.0, 0.97, 0.6, 0.25]),
    max_frames=st.none() | st.integers(1, 8),
)
def test_fuzz_decoders_give_frames_or_media_error(corpus, name, edits, cut, max_frames):
    """Bytes flipped and cut in real files: every reader returns frames or raises a clean MediaError."""
    data = mutated(corpus[name].read_bytes(), edits, cut)
    for read in (lambda: media.sniff_media_type(data),
                 lambda: media.load_image(data, pixel_limit=1 << 22),
                 lambda: media.load_video(data, max_frames=max_frames, pixel_limit=1 << 22, time_limit=10)):
        try:
            result = read()
        except MediaError as error:
            assert_clean(error, data)
            continue
        if isinstance(result, np.ndarray):
            assert result.dtype == np.uint8 and result.shape[-1] == 3 and result.ndim in (3, 4)
