"""Terminal thumbnails: frames drawn with truecolor half blocks, side by side.

Each character cell shows two pixels stacked: `▀` painted with the upper pixel as foreground and the
lower pixel as background (24-bit ANSI colours), so a `W x 2R` thumbnail takes W columns and R rows.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

UPPER_HALF_BLOCK = "\u2580"
RESET = "\x1b[0m"


def thumbnail(frame: np.ndarray, width: int) -> np.ndarray:
    """A `uint8[H, W, 3]` frame resized to `width` columns and an even number of pixel rows."""
    height = max(2, round(frame.shape[0] * width / frame.shape[1] / 2) * 2)
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


def render_rows(frame: np.ndarray) -> list[str]:
    """A frame with an even number of rows -> one ANSI string per pair of pixel rows."""
    lines = []
    for upper, lower in zip(frame[0::2], frame[1::2]):
        cells = (
            f"\x1b[38;2;{a[0]};{a[1]};{a[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m{UPPER_HALF_BLOCK}"
            for a, b in zip(upper.tolist(), lower.tolist())
        )
        lines.append("".join(cells) + RESET)
    return lines


def render(
    frames: np.ndarray, width: int = 24, max_frames: int = 6, gap: int = 1, columns: int | None = None
) -> str:
    """Frames `uint8[T, H, W, 3]` (or one `[H, W, 3]`) as thumbnails `width` columns wide, side by side.

    Videos longer than `max_frames` show frames spread evenly over the clip. Given the terminal's
    `columns`, thumbnails shrink so that the row fits.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"render needs frames [T, H, W, 3] or [H, W, 3], got {tuple(frames.shape)}")
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    if columns is not None:
        width = max(2, min(width, (columns - gap * (len(frames) - 1)) // len(frames)))
    thumbnails = [render_rows(thumbnail(frame, width)) for frame in frames]
    return "\n".join((" " * gap).join(row) for row in zip(*thumbnails))
