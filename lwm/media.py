"""Reading and writing images and videos, frame sampling, and preprocessing for the VQGAN.

Frames are always `uint8[T, H, W, 3]` RGB arrays (an image is `uint8[H, W, 3]`), upright as they are
shown: a video's display matrix (phones record portrait video as rotated landscape) and an image's
EXIF orientation are applied. Decoding uses PyAV (FFmpeg) for videos and Pillow for images (a still
image read as a video too). Every failure a user can cause (a missing, empty, corrupt, truncated,
audio-only, unsupported or oversized file, a FIFO or a device) raises `MediaError` naming the source
and the problem in words written here, never a decoder's message. Everything is read through one
path: a source is opened without blocking and checked to be a regular file, then the sizes the file
declares (pixels per frame, frames, the container's own length) are checked before anything is
decoded, and decoding a video stops at a time limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import stat
import time
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Literal, Sequence, Union

import av
import numpy as np
import torch
from av.sidedata.sidedata import Type as SideDataType
from PIL import Image, ImageOps, UnidentifiedImageError

MediaSource = Union[str, os.PathLike, bytes, np.ndarray, Image.Image, Sequence[Image.Image]]

# Refuse inputs beyond these before decoding: about an hour of 30 fps video, 1 Gi pixels (3 GiB of
# RGB frames) in what we would return, and ten minutes of decoding. All are keyword arguments where
# they apply.
DEFAULT_FRAME_LIMIT = 100_000
DEFAULT_PIXEL_LIMIT = 1 << 30
DEFAULT_TIME_LIMIT = 600.0

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}

# What Pillow raises on bytes it cannot decode (its decoders report through all of these).
_IMAGE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)

logger = logging.getLogger(__name__)


class MediaError(ValueError):
    """A media input that cannot be used: `source` names it, `problem` says what is wrong.

    `problem` is written in this module (never an exception text from a decoder) and never holds
    the source's name, so a server may show it to a client that should not learn file names.
    """

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source, self.problem = source, problem


class MediaLimitError(MediaError):
    """Media refused for its size, its length or its decoding time: a limit the caller may raise."""


# ----------------------------------------------------------------------------- sources


def describe(src: MediaSource) -> str:
    """A short human name for a source, used in error messages (escaped when not printable)."""
    if isinstance(src, (str, os.PathLike)):
        name = os.fsdecode(src)
        return name if name.isprintable() else ascii(name)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {tuple(src.shape)} {src.dtype}>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.size[0]}x{src.size[1]}>"
    return f"<{type(src).__name__}>"


def user_path(path: str | os.PathLike) -> Path:
    """A path as a person typed it, `~` expanded; `~name` of a user that does not exist raises `MediaError`."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib cannot find that user's home folder
        raise MediaError(describe(path), "no such user's home folder") from None


def open_regular_file(path: str | os.PathLike, *, follow_symlinks: bool = True) -> BinaryIO:
    """Opens a non-empty regular file for reading; anything else raises `MediaError`.

    The descriptor is opened with O_NONBLOCK (opening a FIFO would otherwise wait for a writer) and
    judged by `fstat` on it, so no one can swap the path between the check and the open.
    """
    name = describe(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise MediaError(name, "file not found") from None
    except PermissionError:
        raise MediaError(name, "permission denied") from None
    except ValueError:  # os.open refuses a NUL byte in the path
        raise MediaError(name, "the path holds a NUL byte") from None
    except OSError as error:
        reason = os.strerror(error.errno).lower() if error.errno else "unknown error"
        raise MediaError(name, f"cannot be opened ({reason})") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(name, "not a regular file")
        if info.st_size == 0:
            raise MediaError(name, "file is empty")
    except BaseException:
        os.close(descriptor)
        raise
    return open(descriptor, "rb")


def _readable(src: MediaSource) -> BinaryIO:
    """A binary stream over a path (opened by `open_regular_file`) or over non-empty bytes.

    FFmpeg must see content only, never a file name: from a name (even a file object's `.name`) it
    picks demuxers by extension (a .txt file "plays" as ANSI art) and honours protocol prefixes such
    as "http:" or "concat:". A stream opened from a descriptor has no usable name.
    """
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise MediaError(describe(src), "file is empty")
        return io.BytesIO(bytes(src))
    if not isinstance(src, (str, os.PathLike)):
        raise MediaError(describe(src), f"unsupported source type {type(src).__name__}")
    return open_regular_file(src)


def sniff_media_type(src: str | os.PathLike | bytes) -> Literal["image", "video"] | None:
    """Classify a file by its first bytes: "image", "video", or None when it is neither.

    An animated GIF counts as a video, a still one as an image. A source that cannot be read
    (missing, empty, not a regular file, a GIF that declares a decompression bomb) raises `MediaError`.
    """
    with _readable(src) as readable:
        return _sniff(readable, describe(src))


def _sniff(readable: BinaryIO, name: str) -> Literal["image", "video"] | None:
    head = readable.read(32)
    readable.seek(0)
    if head.startswith(b"GIF87a") or head.startswith(b"GIF89a"):
        with _opened_image(readable, name) as image:
            animated = getattr(image, "is_animated", False)
        readable.seek(0)
        return "video" if animated else "image"
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
        head.startswith(_EBML_MAGIC)  # Matroska / WebM
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith(b"FLV")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG program stream
    ):
        return "video"
    return None


# ----------------------------------------------------------------------------- images


def load_image(src: MediaSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT) -> np.ndarray:
    """Load one image as `uint8[H, W, 3]` RGB, upright by its EXIF orientation (the first frame of an
    animated GIF). An image of more than `pixel_limit` pixels is refused from its header, undecoded."""
    name = describe(src)
    if isinstance(src, np.ndarray):
        return _checked_frames(src, name, single=True)
    if isinstance(src, Image.Image):
        return np.asarray(src.convert("RGB"))
    with _readable(src) as readable:
        return _decode_image(readable, name, pixel_limit)


def _decode_image(readable: BinaryIO, name: str, pixel_limit: int) -> np.ndarray:
    with _opened_image(readable, name) as image:
        width, height = image.size
        if width * height > pixel_limit:
            raise MediaLimitError(name, f"an image of {width}x{height} exceeds the pixel limit {pixel_limit}")
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@contextlib.contextmanager
def _opened_image(readable: BinaryIO, name: str) -> Iterator[Image.Image]:
    """Pillow's lazy open (the header only); what Pillow raises, here or in the body, as `MediaError`."""
    try:
        with Image.open(readable) as image:
            yield image
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(name, "not a supported image format") from None
    except Image.DecompressionBombError:
        raise MediaLimitError(
            name, f"the image declares more than {2 * Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb)"
        ) from None
    except _IMAGE_DECODE_ERRORS as error:
        logger.debug("%s: Pillow: %r", name, error)
        raise MediaError(name, "corrupt or truncated image") from None


def save_image(frame: np.ndarray, path: str | os.PathLike) -> None:
    """Write a `uint8[H, W, 3]` frame; the format follows the file extension."""
    frame = _checked_frames(frame, str(path), single=True)
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        raise MediaError(str(path), f"unsupported image extension (use one of {sorted(IMAGE_SUFFIXES)})")
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
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> np.ndarray:
    """Load a video (or a still image, as one frame) as `uint8[T, H, W, 3]` RGB.

    `start`/`end` (seconds) select a time range; `fps` resamples it to that frame rate (repeating or
    dropping frames); `max_frames` then keeps that many frames spread uniformly with `linspace`.
    Refused before decoding: files with more than `frame_limit` frames, frames of more than
    `pixel_limit` pixels, a selection that would hold more than `pixel_limit` pixels, and files shorter
    than their container declares (truncated). Decoding stops with `MediaLimitError` after
    `time_limit` seconds.
    """
    name = describe(src)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if not time_limit > 0:
        raise ValueError(f"time_limit must be positive, got {time_limit}")

    if isinstance(src, (np.ndarray, Image.Image)) or (
        isinstance(src, Sequence) and not isinstance(src, (str, bytes, bytearray))
    ):
        if fps is not None or start is not None or end is not None:
            raise ValueError(f"{name}: fps/start/end need a timed source (a file or bytes), not in-memory frames")
        frames = _frames_from_memory(src, name)
        return frames[sample_indices(len(frames), max_frames)] if max_frames else frames

    deadline = time.monotonic() + time_limit
    with _readable(src) as readable:
        if _sniff(readable, name) == "image":
            wanted = _select_frames(np.zeros(1), max_frames, fps, start, end)
            if len(wanted) == 0:
                raise MediaError(name, f"no frames in the requested range start={start} end={end}")
            return _decode_image(readable, name, pixel_limit)[None][wanted]
        _check_complete(readable, name)
        limits = _VideoLimits(frame_limit, pixel_limit, time_limit, deadline)
        try:
            return _decode_video(readable, name, limits, max_frames, fps, start, end)
        except MediaError:
            raise
        except av.ExitError:  # FFmpeg's own wait for the deadline (av.open's timeout) ran out
            raise limits.over_time(name) from None
        except (av.FFmpegError, OSError, ValueError, IndexError) as error:
            logger.debug("%s: FFmpeg: %r", name, error)
            raise MediaError(name, "corrupt, truncated or unsupported media (it cannot be decoded)") from None


@dataclasses.dataclass(frozen=True)
class _VideoLimits:
    frames: int
    pixels: int
    seconds: float
    deadline: float  # time.monotonic() when decoding must stop

    def check_time(self, name: str) -> None:
        if time.monotonic() > self.deadline:
            raise self.over_time(name)

    def over_time(self, name: str) -> MediaLimitError:
        return MediaLimitError(name, f"decoding took longer than the time limit of {self.seconds:g} s")

    def open(self, readable: BinaryIO):
        # max_pixels: FFmpeg's decoders refuse larger frames, even those decoded while probing the
        # streams; the timeout interrupts FFmpeg's own loops at the deadline.
        readable.seek(0)
        remaining = max(self.deadline - time.monotonic(), 1e-3)
        return av.open(readable, mode="r", options={"max_pixels": str(self.pixels)}, timeout=remaining)


def _decode_video(readable: BinaryIO, name: str, limits: _VideoLimits, max_frames, fps, start, end) -> np.ndarray:
    with limits.open(readable) as container:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["no"]
            raise MediaError(name, f"has no video stream (found {', '.join(kinds)} streams)")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for it
            raise MediaError(name, "its video codec is not supported")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.pixels:
            raise MediaLimitError(name, f"frames of {width}x{height} exceed the pixel limit {limits.pixels}")
        if not (width and height):  # the decoder refused the first frame while probing
            raise MediaError(
                name, f"its video cannot be decoded (corrupt, or frames over the pixel limit {limits.pixels})"
            )
        times = _frame_times(container, stream, name, limits)
    wanted = _select_frames(times, max_frames, fps, start, end)
    if len(wanted) == 0:
        raise MediaError(name, f"no frames in the requested range start={start} end={end}")
    if len(wanted) * width * height > limits.pixels:
        raise MediaLimitError(
            name,
            f"{len(wanted)} frames of {width}x{height} exceed the pixel limit {limits.pixels}; "
            "ask for fewer frames (max_frames) or raise pixel_limit",
        )
    with limits.open(readable) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"max_pixels": str(limits.pixels)}
        return _decode_selected(container, stream, wanted, name, limits)


def _check_complete(readable: BinaryIO, name: str) -> None:
    """Refuses a file that ends before the length its own structure declares (a cut download or copy).

    FFmpeg reads such Matroska/WebM and AVI files, and GIFs, to where they end without a word and
    returns fewer frames; an MP4 cut between two frames does the same.
    """
    size = readable.seek(0, io.SEEK_END)
    readable.seek(0)
    head = readable.read(_HEADER_BYTES)
    if head.startswith(b"GIF87a") or head.startswith(b"GIF89a"):
        readable.seek(-1, io.SEEK_END)
        if readable.read(1) != b";":
            raise MediaError(name, "truncated: the GIF ends before its trailer")
        return
    declared = _declared_length(readable, head, size)
    if declared is not None and declared > size:
        raise MediaError(name, f"truncated: the file holds {size} bytes where its container declares {declared}")


_HEADER_BYTES = 4096
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_MATROSKA_SEGMENT = b"\x18\x53\x80\x67"
_RIFF_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what writers leave when they cannot seek back to fill it in
_MAX_ISO_BOXES = 100_000  # a long fragmented MP4 has thousands; more is not worth walking


def _declared_length(readable: BinaryIO, head: bytes, size: int) -> int | None:
    """The byte length a Matroska, RIFF (AVI) or ISO media (MP4/MOV) file declares; None if it says none."""
    if head.startswith(b"RIFF"):
        riff_size = int.from_bytes(head[4:8], "little")
        return None if riff_size in _RIFF_UNKNOWN_SIZES else 8 + riff_size
    if head.startswith(_EBML_MAGIC):
        return _matroska_length(head)
    if head[4:8] == b"ftyp":
        return _iso_media_length(readable, size)
    return None


def _matroska_length(head: bytes) -> int | None:
    """The end of the Segment after the EBML header; None when its size is unknown (a live recording)."""
    try:
        header_size, position = _ebml_size(head, len(_EBML_MAGIC))
        if header_size is None:
            return None
        position += header_size
        if head[position : position + len(_MATROSKA_SEGMENT)] != _MATROSKA_SEGMENT:
            return None
        segment_size, position = _ebml_size(head, position + len(_MATROSKA_SEGMENT))
    except IndexError:  # a header longer than what was read, or malformed: FFmpeg will judge it
        return None
    return None if segment_size is None else position + segment_size


def _ebml_size(data: bytes, position: int) -> tuple[int | None, int]:
    """An EBML element size at `position` and the position after it; None for "unknown" (all ones)."""
    first = data[position]
    length = 9 - first.bit_length()  # the length is marked by the first set bit
    if length > 8:
        raise IndexError("no length marker")
    if position + length > len(data):
        raise IndexError("cut short")
    value = first & (0xFF >> length)
    for byte in data[position + 1 : position + length]:
        value = value << 8 | byte
    return (None if value == (1 << 7 * length) - 1 else value), position + length


def _iso_media_length(readable: BinaryIO, size: int) -> int | None:
    """Where the last top-level box of an MP4/MOV ends, walking the boxes by their declared sizes."""
    position = 0
    for _ in range(_MAX_ISO_BOXES):
        if position >= size:
            return position
        readable.seek(position)
        header = readable.read(16)
        if len(header) < 8:  # a few stray bytes at the end, not a box
            return position
        box_size = int.from_bytes(header[:4], "big")
        if box_size == 1:  # a 64-bit size follows the type
            box_size = int.from_bytes(header[8:16], "big") if len(header) == 16 else 16
        elif box_size == 0:  # the last box runs to the end of the file
            return size
        if box_size < 8:
            return None  # malformed: FFmpeg will judge it
        position += box_size
    return None


def _frames_from_memory(src, name: str) -> np.ndarray:
    if isinstance(src, np.ndarray):
        frames = src[None] if src.ndim == 3 else src
    elif isinstance(src, Image.Image):
        frames = np.asarray(src.convert("RGB"))[None]
    else:
        if len(src) == 0:
            raise MediaError(name, "no frames")
        frames = np.stack([load_image(image) for image in src])
    return _checked_frames(frames, name, single=False)


def _checked_frames(frames: np.ndarray, name: str, single: bool) -> np.ndarray:
    expected = "[H, W, 3]" if single else "[T, H, W, 3]"
    if frames.ndim != (3 if single else 4) or frames.shape[-1] != 3:
        raise MediaError(name, f"expected uint8 RGB frames shaped {expected}, got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise MediaError(name, f"expected uint8 frames, got {frames.dtype}")
    if 0 in frames.shape:
        raise MediaError(name, "no frames")
    return frames


def _frame_times(container, stream, name: str, limits: _VideoLimits) -> np.ndarray:
    """Presentation times (seconds) of every frame, from the packets alone: nothing is decoded."""
    time_base = stream.time_base or Fraction(1, 1)
    pts = []
    for packet in container.demux(stream):
        limits.check_time(name)
        if packet.size == 0:  # the flush packet at the end of the stream
            continue
        pts.append(packet.pts if packet.pts is not None else (pts[-1] + 1 if pts else 0))
        if len(pts) > limits.frames:
            raise MediaLimitError(name, f"more than {limits.frames} frames; refusing to decode (raise frame_limit)")
    if not pts:
        raise MediaError(name, "the video stream holds no frames")
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


def _decode_selected(container, stream, wanted: np.ndarray, name: str, limits: _VideoLimits) -> np.ndarray:
    stream.thread_type = "AUTO"
    last_wanted = int(wanted[-1])
    kept: dict[int, np.ndarray] = {}
    needed = set(wanted.tolist())
    index = -1
    for index, frame in enumerate(container.decode(stream)):
        limits.check_time(name)
        if index in needed:
            kept[index] = _upright(frame)
        if index >= last_wanted:
            break
    if index < last_wanted:
        raise MediaError(name, f"truncated or corrupt: decoded {index + 1} frames, expected at least {last_wanted + 1}")
    return np.stack([kept[i] for i in wanted.tolist()])


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as it is shown: its display matrix (a rotation, maybe mirrored) applied.

    FFmpeg's matrix maps a stored pixel (x, y) to (a x + c y, b x + d y) on screen; a mirror image
    has a negative determinant, and FFmpeg mirrors x after rotating.
    """
    pixels = frame.to_ndarray(format="rgb24")
    matrix = next((bytes(data) for data in frame.side_data if data.type == SideDataType.DISPLAYMATRIX), None)
    if matrix is None:
        return pixels
    a, b, _, c, d = np.frombuffer(matrix, dtype=np.int32)[:5].tolist()
    mirrored = a * d - b * c < 0
    if mirrored:
        a, c = -a, -c
    quarter_turns = round(math.degrees(math.atan2(c, a)) / 90) % 4  # counterclockwise, as np.rot90 turns
    pixels = np.rot90(pixels, quarter_turns)
    return pixels[:, ::-1] if mirrored else pixels


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
        raise MediaError(str(path), "unsupported video extension (use .mp4, .mov, .mkv or .gif)")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise MediaError(str(path), f"H.264 needs even frame sizes, got {width}x{height}")
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
    # LWM's arithmetic exactly: int(h * (R / w)) loses a pixel to rounding for many sizes (322x322
    # would become 256x255 and a black row after the crop).
    if width < height:
        size = (resolution, int(resolution * height / width))
    else:
        size = (int(resolution * width / height), resolution)
    image = image.resize(size, Image.Resampling.BICUBIC)
    width, height = image.size
    box = ((width - resolution) / 2, (height - resolution) / 2, (width + resolution) / 2, (height + resolution) / 2)
    return np.asarray(image.crop(tuple(round(v) for v in box)))


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """`[T, 3, H, W]` (or `[3, H, W]`) in [-1, 1] -> `uint8[T, H, W, 3]`, rounding to nearest."""
    pixels = pixels.detach().float().clamp(-1, 1)
    pixels = ((pixels + 1) * 127.5).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()
