"""The eval's outputs: a table for the terminal, report.json, and PNGs drawn with Pillow.

A report is `{"model", "tasks": {task: summary}, "metrics": {"task.metric": value}, "bars": [...]}`;
the flat metric names are what bars refer to ("video_qa.accuracy", "needle.accuracy@1x").
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 64  # pixels per video frame and per heat-map cell
LABEL_HEIGHT = 14
MARGIN = 4
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def flat_metrics(tasks: dict[str, dict]) -> dict[str, float]:
    """{"task.metric": value} over every task's `metrics`."""
    return {f"{task}.{name}": value for task, summary in tasks.items() for name, value in summary["metrics"].items()}


def format_table(metrics: dict[str, float], bars: list[dict] | None = None) -> str:
    """Metrics one per line, with the bar each must meet and whether it does."""
    verdicts = {bar["metric"]: bar for bar in bars or []}
    width = max(len(name) for name in metrics) if metrics else 6
    lines = [f"{'metric':<{width}}  {'value':>10}  bar"]
    lines.append("-" * len(lines[0]) + "-" * 16)
    for name, value in metrics.items():
        line = f"{name:<{width}}  {_format_value(value):>10}"
        if name in verdicts:
            bar = verdicts[name]
            line += f"  {bar['op']} {bar['value']:g}  {'ok' if bar['passed'] else 'FAIL'}"
        lines.append(line)
    missing = [bar for bar in bars or [] if bar["metric"] not in metrics]
    lines += [f"{bar['metric']:<{width}}  {'-':>10}  {bar['op']} {bar['value']:g}  {bar['status']}" for bar in missing]
    return "\n".join(lines)


def write_json(report: dict, path: str | os.PathLike) -> None:
    """report.json; NaN (e.g. a trajectory error when nothing was found) is written as null."""
    Path(path).write_text(json.dumps(_finite(report), indent=2) + "\n")


def video_grid(rows: list[tuple[str, np.ndarray]], path: str | os.PathLike, cell: int = CELL) -> None:
    """A PNG with one labelled row of frames per video (`rows`: (label, uint8 [T, H, W, 3]))."""
    if not rows:
        raise ValueError("a video grid needs at least one video")
    columns = max(len(frames) for _, frames in rows)
    row_height = LABEL_HEIGHT + cell + MARGIN
    canvas = Image.new("RGB", (MARGIN + columns * (cell + 1), MARGIN + len(rows) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for index, (label, frames) in enumerate(rows):
        top = MARGIN + index * row_height
        draw.text((MARGIN, top), _fitted(label, canvas.width - 2 * MARGIN, font), fill=INK, font=font)
        for column, frame in enumerate(frames):
            tile = Image.fromarray(np.asarray(frame, np.uint8)).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (MARGIN + column * (cell + 1), top + LABEL_HEIGHT))
    canvas.save(path)


def heatmap(panels: list[dict], cells: list[dict], path: str | os.PathLike, cell: int = CELL) -> None:
    """The needle accuracy heat-map as LWM draws it: per panel, context length across, depth down, red (0)
    to green (1).

    `panels`: [{"title", "settings": [setting, ...]}], each setting one column; `cells`: {"setting",
    "length", "depth", "accuracy", "correct", "total"}; both as `lwm.eval.needle` reports them.
    """
    if not panels or not cells:
        raise ValueError("a heat-map needs at least one panel and one cell")
    by_place = {(c["setting"], c["depth"]): c for c in cells}
    lengths = {c["setting"]: c["length"] for c in cells}
    depths = sorted({c["depth"] for c in cells})
    font = ImageFont.load_default()
    left = MARGIN + int(font.getlength("depth 0.75")) + MARGIN
    columns = max(len(panel["settings"]) for panel in panels)
    panel_height = 3 * LABEL_HEIGHT + len(depths) * cell + MARGIN
    width = max(left + columns * cell + MARGIN, MARGIN + max(int(font.getlength(p["title"])) for p in panels) + MARGIN)
    canvas = Image.new("RGB", (width, len(panels) * panel_height + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, panel in enumerate(panels):
        top = MARGIN + index * panel_height
        draw.text((MARGIN, top), panel["title"], fill=INK, font=font)
        for column, setting in enumerate(panel["settings"]):
            x = left + column * cell
            draw.text((x + MARGIN, top + LABEL_HEIGHT), setting, fill=INK, font=font)
            draw.text((x + MARGIN, top + 2 * LABEL_HEIGHT), f"{lengths[setting]}", fill=INK, font=font)
            for row, depth in enumerate(depths):
                y = top + 3 * LABEL_HEIGHT + row * cell
                if column == 0:
                    draw.text((MARGIN, y + cell // 2 - LABEL_HEIGHT // 2), f"depth {depth:g}", fill=INK, font=font)
                entry = by_place.get((setting, depth))
                if entry is None:
                    continue
                draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=accuracy_colour(entry["accuracy"]))
                text = f"{entry['accuracy']:.2f}\n{entry['correct']}/{entry['total']}"
                draw.multiline_text((x + MARGIN, y + MARGIN), text, fill=INK, font=font)
    canvas.save(path)


def format_heatmap(panels: list[dict], cells: list[dict]) -> str:
    """The heat-map for the terminal: per panel a table of accuracy (%) by depth (rows) and length (columns)."""
    by_place = {(c["setting"], c["depth"]): c["accuracy"] for c in cells}
    lengths = {c["setting"]: c["length"] for c in cells}
    depths = sorted({c["depth"] for c in cells})
    blocks = []
    for panel in panels:
        width = max(7, *(len(setting) for setting in panel["settings"]))
        lines = [panel["title"], f"{'tokens':>6}  " + "  ".join(f"{lengths[s]:>{width}}" for s in panel["settings"]),
                 f"{'depth':>6}  " + "  ".join(f"{s:>{width}}" for s in panel["settings"])]
        for depth in depths:
            values = [by_place.get((s, depth)) for s in panel["settings"]]
            lines.append(f"{depth:>6g}  " + "  ".join(
                f"{'-' if v is None else f'{100 * v:.0f}%':>{width}}" for v in values))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _fitted(text: str, width: int, font) -> str:
    """The text, cut short with "..." if it is wider than `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def accuracy_colour(accuracy: float) -> tuple[int, int, int]:
    """Red at 0 through yellow to green at 1."""
    a = min(max(accuracy, 0.0), 1.0)
    return (int(230 * min(1.0, 2 * (1 - a))), int(200 * min(1.0, 2 * a)), 60)


def _format_value(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value
