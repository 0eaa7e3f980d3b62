"""A corpus of real and hostile media, written at test time with PyAV and Pillow (no ffmpeg binary).

Real files in the containers users send (H.264 MP4 and MKV, VP9 WebM, MJPEG AVI, GIF, odd frame
sizes, one frame, audio only, rotated by a display matrix) and, built from them, what an outside
probe sends: files cut short, an empty file, a 35-byte GIF declaring 30000x30000 pixels, a PNG
declaring the same, text renamed to .mp4. Frames are tiny (32x24, 6 frames) so decoding is instant.
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from lwm import media

FRAMES, HEIGHT, WIDTH = 6, 24, 32
FPS = 8

# (file name, container format, codec, pixel format, width, height)
VIDEOS = [
    ("clip.mp4", "mp4", "libx264", "yuv420p", WIDTH, HEIGHT),
    ("clip.mkv", "matroska", "libx264", "yuv420p", WIDTH, HEIGHT),
    ("clip.webm", "webm", "libvpx-vp9", "yuv420p", WIDTH, HEIGHT),
    ("clip.avi", "avi", "mjpeg", "yuvj420p", WIDTH, HEIGHT),
    ("odd.mkv", "matroska", "libx264rgb", "rgb24", 33, 17),
    ("odd.avi", "avi", "mjpeg", "yuvj420p", 33, 17),
]
STILLS = ["still.png", "still.jpg", "still.tif", "still.webp"]
TRUNCATABLE = ["clip.mp4", "clip.mkv", "clip.webm", "clip.avi", "clip.gif", "odd.mkv", "odd.avi"]


def clip(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Frames whose blue channel encodes the frame index and whose top-left corner is marked, so
    both the order and the orientation of decoded frames can be checked."""
    yy, xx = np.mgrid[:height, :width]
    out = np.zeros((frames, height, width, 3), np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (xx * 7) % 256
        out[t, ..., 1] = (yy * 9) % 256
        out[t, ..., 2] = 30 * t
        out[t, : height // 3, : width // 4] = 255
    return out


def write_video(path: Path, container_format: str, codec: str, pix_fmt: str, frames: np.ndarray,
                rotation: int = 0, hflip: bool = False) -> Path:
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "libx264rgb":
            stream.options = {"qp": "0"}  # lossless: decoded frames equal the written ones
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bomb_gif(width: int = 30000, height: int = 30000) -> bytes:
    """A 35-byte GIF whose header declares width x height pixels (a 1x1 image inside)."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"  # 2 colours
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b";"


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def write_corpus(folder: Path) -> dict[str, Path]:
    """Every file of the corpus under `folder`, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, container_format, codec, pix_fmt, width, height in VIDEOS:
        files[name] = write_video(folder / name, container_format, codec, pix_fmt, clip(FRAMES, height, width))
    media.save_video(clip(), folder / "clip.gif", fps=FPS)
    files["clip.gif"] = folder / "clip.gif"
    files["one-frame.mp4"] = write_video(folder / "one-frame.mp4", "mp4", "libx264", "yuv420p", clip(1))
    files["rotated.mp4"] = write_video(folder / "rotated.mp4", "mp4", "libx264rgb", "rgb24", clip(), rotation=90)
    files["audio.m4a"] = write_audio_only(folder / "audio.m4a")
    exif = Image.Exif()
    exif[0x0112] = 6  # an orientation, as a phone writes it
    for name in STILLS:
        Image.fromarray(clip(1)[0]).save(folder / name, exif=exif)
        files[name] = folder / name
    for name in TRUNCATABLE:
        data = files[name].read_bytes()
        cut = folder / f"cut-{name}"
        cut.write_bytes(data[: len(data) // 2])
        files[f"cut-{name}"] = cut
    extra = {
        "empty.mp4": b"",
        "bomb.gif": bomb_gif(),
        "bomb.png": bomb_png(),
        "text.mp4": b"just some text, renamed\n" * 20,
    }
    for name, data in extra.items():
        (folder / name).write_bytes(data)
        files[name] = folder / name
    return files
