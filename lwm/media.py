"""Reading and writing images and videos, frame sampling, and preprocessing for the VQGAN.

Frames are always `uint8[T, H, W, 3]` RGB arrays (an image is `uint8[H, W, 3]`). Decoding uses PyAV
(FFmpeg) for videos and Pillow for images. Every failure a user can cause (a missing, empty, corrupt,
truncated, audio-only, unsupported or oversized file) raises `MediaError` naming the source and the
problem. Size limits are checked from the container headers, before anything big is decoded.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal, Sequence, Union

import av
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MediaSource = Union[str, os.PathLike, bytes, np.ndarray, Image.Image, Sequence[Image.Image]]

# Refuse inputs beyond these before decoding: about an hour of 30 fps video, and 1 Gi pixels
# (3 GiB of RGB frames) in what we would return. Both are keyword arguments where they apply.
DEFAULT_FRAME_LIMIT = 100_000
DEFAULT_PIXEL_LIMIT = 1 << 30

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class MediaError(ValueError):
    """A media input that cannot be used; the message names the source and the problem."""


# ----------------------------------------------------------------------------- sources


def describe(src: MediaSource) -> str:
    """A short human name for a source, used in error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {tuple(src.shape)} {src.dtype}>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.size[0]}x{src.size[1]}>"
    return f"<{type(src).__name__}>"


def _readable(src: MediaSource) -> BinaryIO:
    """A binary stream over a path (checked to be a non-empty file) or over bytes.

    FFmpeg must see content only, never a file name: from a name (even a file object's `.name`) it
    picks demuxers by extension (a .txt file "plays" as ANSI art) and honours protocol prefixes such
    as "http:" or "concat:". A stream opened from a descriptor has no usable name.
    """
    name = describe(src)
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise MediaError(f"{name}: file is empty")
        return io.BytesIO(bytes(src))
    if not isinstance(src, (str, os.PathLike)):
        raise MediaError(f"{name}: unsupported source type {type(src).__name__}")
    path = Path(src)
    if not path.exists():
        raise MediaError(f"{name}: file not found")
    if not path.is_file():
        raise MediaError(f"{name}: not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(f"{name}: file is empty")
    return io.BufferedReader(io.FileIO(os.open(path, os.O_RDONLY)))


def sniff_media_type(src: str | os.PathLike | bytes) -> Literal["image", "video"] | None:
    """Classify a file by its first bytes: "image", "video", or None when it is neither.

    An animated GIF counts as a video, a still one as an image.
    """
    if isinstance(src, (bytes, bytearray)):
        head = bytes(src[:32])
    else:
        try:
            with open(src, "rb") as file:
                head = file.read(32)
        except OSError:
            return None
    if head.startswith(b"GIF87a") or head.startswith(b"GIF89a"):
        try:
            with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as image:
                return "video" if getattr(image, "is_animated", False) else "image"
        except (OSError, UnidentifiedImageError):
            return None
    if (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")  # JPEG
        or head.startswith(b"BM")
        or head.startswith(b"II*\x00")  # TIFF, little-endian
        or head.startswith(b"MM\x00*")  # TIFF, big-endian
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
    ):
        return "image"
    if head[4:8] == b"ftyp":  # ISO media: MP4/MOV, but HEIF/AVIF brands are still images
        return "image" if head[8:12] in {b"heic", b"heix", b"mif1", b"avif", b"msf1"} else "video"
    if (
        head.startswith(b"\x1a\x45\xdf\xa3")  # Matroska / WebM
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith(b"FLV")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG program stream
    ):
        return "video"
    return None


# ----------------------------------------------------------------------------- images


def load_image(src: MediaSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT) -> np.ndarray:
    """Load one image as `uint8[H, W, 3]` RGB (the first frame of an animated GIF)."""
    name = describe(src)
    if isinstance(src, np.ndarray):
        return _checked_frames(src, name, single=True)
    if isinstance(src, Image.Image):
        return np.asarray(src.convert("RGB"))
    try:
        with _readable(src) as readable, Image.open(readable) as image:
            width, height = image.size
            if width * height > pixel_limit:
                raise MediaError(f"{name}: image of {width}x{height} exceeds the pixel limit {pixel_limit}")
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise MediaError(f"{name}: not a supported image format") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise MediaError(f"{name}: corrupt or truncated image ({error})") from None


def save_image(frame: np.ndarray, path: str | os.PathLike) -> None:
    """Write a `uint8[H, W, 3]` frame; the format follows the file extension."""
    frame = _checked_frames(frame, str(path), single=True)
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        raise MediaError(f"{path}: unsupported image extension (use one of {sorted(IMAGE_SUFFIXES)})")
    Image.fromarray(frame).save(path)


# ----------------------------------------------------------------------------- videos


def sample_indices(num_frames: int, max_frames: int) -> np.ndarray:
    """Indices of `max_frames` frames spread uniformly over `num_frames`, endpoints included (as LWM)."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.linspace(0, num_frames - 1, max_frames, dtype=int)


def load_video(
    src: MediaSource,
    max_frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    *,
    frame_limit: int = DEFAULT_FRAME_LIMIT,
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
) -> np.ndarray:
    """Load a video (or a still image, as one frame) as `uint8[T, H, W, 3]` RGB.

    `start`/`end` (seconds) select a time range; `fps` resamples it to that frame rate (repeating or
    dropping frames); `max_frames` then keeps that many frames spread uniformly with `linspace`.
    Files with more than `frame_limit` frames, or whose returned frames would hold more than
    `pixel_limit` pixels, are refused before decoding.
    """
    name = describe(src)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")

    if isinstance(src, (np.ndarray, Image.Image)) or (
        isinstance(src, Sequence) and not isinstance(src, (str, bytes, bytearray))
    ):
        if fps is not None or start is not None or end is not None:
            raise ValueError(f"{name}: fps/start/end need a timed source (a file or bytes), not in-memory frames")
        frames = _frames_from_memory(src, name)
        return frames[sample_indices(len(frames), max_frames)] if max_frames else frames

    try:
        with _readable(src) as readable:
            with av.open(readable, mode="r") as container:
                if not container.streams.video:
                    kinds = sorted({stream.type for stream in container.streams}) or ["no"]
                    raise MediaError(f"{name}: has no video stream (found {', '.join(kinds)} streams)")
                stream = container.streams.video[0]
                width, height = stream.codec_context.width, stream.codec_context.height
                times = _frame_times(container, stream, name, frame_limit)
            wanted = _select_frames(times, max_frames, fps, start, end)
            if len(wanted) == 0:
                raise MediaError(f"{name}: no frames in the requested range start={start} end={end}")
            if len(wanted) * width * height > pixel_limit:
                raise MediaError(
                    f"{name}: {len(wanted)} frames of {width}x{height} exceed the pixel limit {pixel_limit}; "
                    "ask for fewer frames (max_frames) or raise pixel_limit"
                )
            readable.seek(0)
            with av.open(readable, mode="r") as container:
                return _decode_selected(container, container.streams.video[0], wanted, name)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        raise MediaError(f"{name}: corrupt, truncated or unsupported media ({error})") from None


def _frames_from_memory(src, name: str) -> np.ndarray:
    if isinstance(src, np.ndarray):
        frames = src[None] if src.ndim == 3 else src
    elif isinstance(src, Image.Image):
        frames = np.asarray(src.convert("RGB"))[None]
    else:
        if len(src) == 0:
            raise MediaError(f"{name}: no frames")
        frames = np.stack([load_image(image) for image in src])
    return _checked_frames(frames, name, single=False)


def _checked_frames(frames: np.ndarray, name: str, single: bool) -> np.ndarray:
    expected = "[H, W, 3]" if single else "[T, H, W, 3]"
    if frames.ndim != (3 if single else 4) or frames.shape[-1] != 3:
        raise MediaError(f"{name}: expected uint8 RGB frames shaped {expected}, got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise MediaError(f"{name}: expected uint8 frames, got {frames.dtype}")
    if 0 in frames.shape:
        raise MediaError(f"{name}: no frames")
    return frames


def _frame_times(container, stream, name: str, frame_limit: int) -> np.ndarray:
    """Presentation times (seconds) of every frame, from the packets alone: nothing is decoded."""
    time_base = stream.time_base or Fraction(1, 1)
    pts = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end of the stream
            continue
        pts.append(packet.pts if packet.pts is not None else (pts[-1] + 1 if pts else 0))
        if len(pts) > frame_limit:
            raise MediaError(f"{name}: more than {frame_limit} frames; refusing to decode (raise frame_limit)")
    if not pts:
        raise MediaError(f"{name}: the video stream holds no frames")
    return np.sort(np.asarray(pts, dtype=np.float64)) * float(time_base)


def _select_frames(
    times: np.ndarray, max_frames: int | None, fps: float | None, start: float | None, end: float | None
) -> np.ndarray:
    """Indices (into the decode order) of the frames to return, possibly repeated when upsampling fps."""
    origin = times[0]
    relative = times - origin
    in_range = np.flatnonzero((relative >= (start or 0.0)) & (relative < (end if end is not None else np.inf)))
    if len(in_range) == 0:
        return in_range
    if fps is not None:
        first, last = relative[in_range[0]], relative[in_range[-1]]
        targets = first + np.arange(int(np.floor((last - first) * fps + 1e-9)) + 1) / fps
        # the frame on screen at each target time: the last one that started at or before it
        positions = np.searchsorted(relative[in_range], targets + 1e-9, side="right") - 1
        in_range = in_range[np.clip(positions, 0, len(in_range) - 1)]
    if max_frames is not None:
        in_range = in_range[sample_indices(len(in_range), max_frames)]
    return in_range


def _decode_selected(container, stream, wanted: np.ndarray, name: str) -> np.ndarray:
    stream.thread_type = "AUTO"
    last_wanted = int(wanted[-1])
    kept: dict[int, np.ndarray] = {}
    needed = set(wanted.tolist())
    index = -1
    for index, frame in enumerate(container.decode(stream)):
        if index in needed:
            kept[index] = frame.to_ndarray(format="rgb24")
        if index >= last_wanted:
            break
    if index < last_wanted:
        raise MediaError(f"{name}: truncated or corrupt: decoded {index + 1} frames, expected at least {last_wanted + 1}")
    return np.stack([kept[i] for i in wanted.tolist()])


def save_video(frames: np.ndarray, path: str | os.PathLike, fps: float = 8.0, lossless: bool = False) -> None:
    """Write `uint8[T, H, W, 3]` frames as MP4 (H.264), MOV/MKV (H.264) or GIF, chosen by extension.

    lossless: H.264 in RGB at quantiser 0, which decodes to exactly the frames written (training media:
    a tokenizer whose codes each see one patch changes a code for any compression noise in it).
    """
    frames = _checked_frames(np.asarray(frames), str(path), single=False)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, optimize=False
        )
        return
    if suffix not in {".mp4", ".mov", ".mkv"}:
        raise MediaError(f"{path}: unsupported video extension (use .mp4, .mov, .mkv or .gif)")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise MediaError(f"{path}: H.264 needs even frame sizes, got {width}x{height}")
    codec, pix_fmt, options = ("libx264rgb", "rgb24", {"qp": "0"}) if lossless else ("libx264", "yuv420p", {"crf": "12"})
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {**options, "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ----------------------------------------------------------------------------- preprocessing


def preprocess(frames: np.ndarray, resolution: int) -> torch.Tensor:
    """Frames `uint8[T, H, W, 3]` (or one `[H, W, 3]`) -> `float32[T, 3, R, R]` in [-1, 1].

    As LWM: the short side is resized to `resolution` (bicubic; the long side becomes
    int(R * long / short)), then the centre is cropped, then x / 127.5 - 1.
    """
    frames = np.asarray(frames)
    frames = _checked_frames(frames[None] if frames.ndim == 3 else frames, "frames", single=False)
    height, width = frames.shape[1:3]
    if (height, width) != (resolution, resolution):
        frames = np.stack([_resize_and_crop(frame, resolution) for frame in frames])
    pixels = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)  # a copy: decoded frames are read-only
    return pixels / 127.5 - 1.0


def _resize_and_crop(frame: np.ndarray, resolution: int) -> np.ndarray:
    image = Image.fromarray(frame)
    width, height = image.size
    scale = resolution / min(width, height)
    size = (resolution, int(height * scale)) if width <= height else (int(width * scale), resolution)
    image = image.resize(size, Image.Resampling.BICUBIC)
    width, height = image.size
    box = ((width - resolution) / 2, (height - resolution) / 2, (width + resolution) / 2, (height + resolution) / 2)
    return np.asarray(image.crop(tuple(round(v) for v in box)))


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """`[T, 3, H, W]` (or `[3, H, W]`) in [-1, 1] -> `uint8[T, H, W, 3]`, rounding to nearest."""
    pixels = pixels.detach().float().clamp(-1, 1)
    pixels = ((pixels + 1) * 127.5).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()
