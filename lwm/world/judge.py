"""The world's judge: reads frames back into objects and scores them against what a text says.

Reading works on all frames at once:

1. the background is each frame's median colour; a frame where less than half the pixels are near
   it has no plain background (random pixels, say) and holds no object;
2. a pixel has a palette colour when it lies near the line from the background colour to that
   colour and at least half-way along it (anti-aliased and blurred edges mix the two);
3. per colour, the largest 8-connected blob of its pixels, with a thin halo for blurred edges, is
   the candidate object; its coverage, read from brightness, gives area, centroid and moments;
4. the shape is read from blur-invariant moments (see `_moments`), compared with each shape's;
   a blob too far from every shape, too spread out or too small is not an object;
5. over a video, a colour seen in at least `min_presence` of the frames is an object: its shape is
   the one nearest its mean moments, its size follows from its area, its direction is the sign of its
   velocity fitted over the first `direction_window` steps, and its bounces are the reversals after.

World clips give each object its own colour, which is what makes one blob per colour enough. On the
first 200 seeds the judge reads every clip exactly (colour, shape, size, direction, bounces), also
after H.264 at lwm.media's quality, a Gaussian blur of 1.5 pixels, a 2× down-and-up resize or
noise; tests/world/test_judge.py checks all 200 clean clips and subsets of the degraded ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lwm.world.language import NUMBER_WORDS, QA, parse_description
from lwm.world.scene import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    WALLS,
    Clip,
    ObjectDescription,
    direction_word,
    in_region,
    shape_mask,
)

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as H.264 stores brightness
_COLOUR_NAMES = list(COLOURS)
_SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2


@dataclass(frozen=True)
class JudgeConfig:
    background_distance: float = 48.0  # RGB distance within which a pixel counts as background
    min_background_fraction: float = 0.5
    colour_distance: float = 60.0  # RGB distance within which a pixel can take a palette colour
    min_area: float = 24.0  # pixels of coverage; the world's smallest object covers 72
    halo: int = 2  # pixels around a blob whose faint coverage (blur) still counts towards it
    max_shape_distance: float = 0.02  # between a blob's moment signature and its shape's
    max_spread_excess: float = 0.1  # how much more spread out than its shape a blob may be (blur)
    min_presence: float = 0.5  # fraction of a video's frames an object must be seen in
    direction_window: int = 3  # steps; the world guarantees no bounce within them
    still_speed: float = 0.75  # pixels per frame below which an axis counts as not moving


@dataclass(frozen=True, eq=False)
class SeenObject:
    colour: str
    shape: str
    size: str
    positions: np.ndarray  # float [T, 2]: centre (x, y) in pixels, NaN in frames where it was not found
    shape_distance: float  # between its mean moment signature and its shape's (0 for a perfect shape)
    direction: str | None  # None: not moving, or not seen often enough at the start
    walls: tuple[str, ...]  # walls it bounced off, in order (reversals of its velocity)

    def description(self, frame: int | None = None) -> ObjectDescription:
        """What was seen, as a description; with `frame`, where the object is in that frame."""
        if frame is None:
            return ObjectDescription(self.colour, self.shape, self.size, self.direction, self.walls)
        x, y = self.positions[frame]
        centre = None if np.isnan(x) else (float(x), float(y))
        return ObjectDescription(self.colour, self.shape, self.size, centre=centre)


@dataclass(frozen=True, eq=False)
class Judgement:
    objects: tuple[SeenObject, ...]
    frame_size: int
    reason: str = ""  # why nothing was found, when `objects` is empty

    @property
    def valid(self) -> bool:
        return bool(self.objects)


@dataclass(frozen=True)
class Score:
    correct: bool
    checks: dict[str, bool]  # "count" and each attribute the text states: colour, shape, size, direction, walls, region


# ---------------------------------------------------------------------------------------------------
# Reading frames
# ---------------------------------------------------------------------------------------------------


def _moments(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Area [K], centroid [K, 2], spread [K] and shape signature [K, 4] of coverage maps `weights` [K, ...].

    With z = (x - cx) + i (y - cy) around the centroid, the signature is (Σ w z³ / A^2.5, Σ w z⁴ / A³)
    as four reals, and the spread is Σ w |z|² / A². All are free of scale; the signature is also
    unchanged by an isotropic blur (for a circular Gaussian G, E[G^k] = 0 for k >= 1, so the z^n
    moments of a blurred shape are the shape's), while the spread grows with blur.
    """
    axes = tuple(range(1, weights.ndim))
    area = weights.sum(axis=axes)
    safe_area = np.maximum(area, 1e-9)
    centre_x = (weights * x).sum(axis=axes) / safe_area
    centre_y = (weights * y).sum(axis=axes) / safe_area
    expand = (slice(None),) + (None,) * len(axes)
    z = (x - centre_x[expand]) + 1j * (y - centre_y[expand])
    spread = (weights * np.abs(z) ** 2).sum(axis=axes) / safe_area**2
    third = (weights * z**3).sum(axis=axes) / safe_area**2.5
    fourth = (weights * z**4).sum(axis=axes) / safe_area**3
    signature = np.stack([third.real, third.imag, fourth.real, fourth.imag], axis=1)
    return area, np.stack([centre_x, centre_y], axis=1), spread, signature


@dataclass(frozen=True)
class _ShapeTable:
    """Each world shape's moments, measured on a fine grid of its bounding square [-1, 1]²."""

    fill: np.ndarray  # [S] fraction of the bounding square it covers
    offset: np.ndarray  # [S, 2] its centroid, in units of half the square, from the square's centre
    spread: np.ndarray  # [S]
    signature: np.ndarray  # [S, 4]

    @classmethod
    def measure(cls, resolution: int = 512) -> "_ShapeTable":
        points = (np.arange(resolution) + 0.5) / resolution * 2 - 1
        x, y = np.meshgrid(points, points)
        inside = np.stack([shape_mask(shape, x, y) for shape in SHAPES]).astype(np.float64)
        cell_area = (2 / resolution) ** 2
        area, centroid, spread, signature = _moments(inside * cell_area, x, y)
        return cls(area / 4, centroid, spread, signature)


_SHAPES = _ShapeTable.measure()


def _palette_colours(frames: np.ndarray, background: np.ndarray, config: JudgeConfig) -> np.ndarray:
    """Each pixel's palette colour [T, H, W], -1 for none.

    Seen as a mix of the background b and colour c, a pixel p holds alpha = clip((p - b)·(c - b) / |c - b|², 0, 1)
    of c, off the mixing line by the residual |p - b - alpha (c - b)|. Its colour is the one with the
    smallest residual if that residual is below `colour_distance` and its alpha at least one half.
    """
    offset = frames - background[:, None, None, :]  # [T, H, W, 3]
    axis = _PALETTE[None] - background[:, None, :]  # [T, C, 3]
    axis_norm2 = np.einsum("tck,tck->tc", axis, axis)[:, :, None, None]
    along = np.einsum("thwk,tck->tchw", offset, axis)
    alpha = np.clip(along / axis_norm2, 0.0, 1.0)
    offset_norm2 = np.einsum("thwk,thwk->thw", offset, offset)[:, None]
    residual2 = offset_norm2 - 2 * alpha * along + alpha**2 * axis_norm2
    nearest = residual2.argmin(axis=1)
    nearest_alpha = np.take_along_axis(alpha, nearest[:, None], axis=1)[:, 0]
    nearest_residual2 = np.take_along_axis(residual2, nearest[:, None], axis=1)[:, 0]
    keep = (nearest_alpha >= 0.5) & (nearest_residual2 <= config.colour_distance**2)
    return np.where(keep, nearest, -1)


def _largest_components(masks: np.ndarray) -> np.ndarray:
    """Each mask [K, H, W] reduced to its largest 8-connected component.

    Labels start as each pixel's own index and repeatedly take the smallest label in their 3×3
    neighbourhood, then jump to the label of the pixel they point to (which is in the same component),
    so a component agrees on its smallest index in a logarithmic number of rounds.
    """
    count, height, width = masks.shape
    none = masks.size + 1
    labels = np.where(masks, np.arange(1, masks.size + 1).reshape(masks.shape), none)
    while True:
        smallest = _neighbourhood(labels, np.minimum, none)
        smallest = np.where(masks, smallest, none)
        jumped = np.where(masks, np.append(smallest.ravel(), none)[smallest - 1], none)
        if np.array_equal(jumped, labels):
            break
        labels = jumped
    sizes = np.bincount(labels.ravel(), minlength=none + 1)[1:none].reshape(count, height * width)
    largest = sizes.argmax(axis=1) + 1 + np.arange(count) * height * width
    return labels == largest[:, None, None]


def _neighbourhood(values: np.ndarray, reduce: np.ufunc, fill) -> np.ndarray:
    """`reduce` (np.minimum or np.maximum) of each element's 3×3 neighbourhood in the last two axes of [K, H, W]."""
    height, width = values.shape[1:]
    padded = np.pad(values, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
    result = values.copy()
    for dy in range(3):
        for dx in range(3):
            reduce(result, padded[:, dy:dy + height, dx:dx + width], out=result)
    return result


@dataclass(frozen=True)
class _Blobs:
    """The candidate object of each (frame, colour) pair that has one."""

    frame: np.ndarray  # [K]
    colour: np.ndarray  # [K] palette index
    area: np.ndarray  # [K] pixels of coverage
    centroid: np.ndarray  # [K, 2] (x, y)
    signature: np.ndarray  # [K, 4]


def _find_blobs(frames: np.ndarray, config: JudgeConfig) -> tuple[_Blobs, np.ndarray]:
    """The blobs of every frame that look like a world shape, and which frames have a plain background [T]."""
    pixels = frames.astype(np.float32)
    background = np.median(pixels.reshape(len(pixels), -1, 3), axis=1)
    near_background = np.linalg.norm(pixels - background[:, None, None, :], axis=-1) <= config.background_distance
    plain = near_background.mean(axis=(1, 2)) >= config.min_background_fraction

    colour_of = _palette_colours(pixels, background, config)
    colour_of[~plain] = -1
    masks = colour_of[:, None] == np.arange(len(_PALETTE))[None, :, None, None]  # [T, C, H, W]
    frame, colour = np.nonzero(masks.sum(axis=(2, 3)) >= config.min_area)
    blob = _largest_components(masks[frame, colour])
    halo = blob
    for _ in range(config.halo):
        halo = _neighbourhood(halo, np.maximum, False)
    blobs_of_frame = np.zeros(masks.shape[:1] + masks.shape[2:], bool)
    np.logical_or.at(blobs_of_frame, frame, blob)
    region = blob | (halo & ~blobs_of_frame[frame])  # the halo stops at neighbouring blobs
    y, x = np.indices(frames.shape[1:3]) + 0.5
    # Coverage from brightness alone: lossy video shares colour between neighbouring pixels but keeps
    # each pixel's brightness, and every palette colour is far brighter than the background.
    luma = pixels @ _LUMA
    background_luma = background @ _LUMA
    # (A background as bright as the colour leaves nothing to measure: such a blob comes out empty.)
    contrast = np.maximum((_PALETTE @ _LUMA)[colour] - background_luma[frame], 1.0)
    coverage = np.clip((luma[frame] - background_luma[frame, None, None]) / contrast[:, None, None], 0.0, 1.0)
    area, centroid, spread, signature = _moments(coverage * region, x, y)

    distance = np.linalg.norm(signature[:, None] - _SHAPES.signature[None], axis=-1)
    nearest = distance.argmin(axis=1)
    valid = ((area >= config.min_area)
             & (distance.min(axis=1) <= config.max_shape_distance)
             & (spread <= _SHAPES.spread[nearest] + config.max_spread_excess))
    return _Blobs(frame[valid], colour[valid], area[valid], centroid[valid], signature[valid]), plain


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"the judge reads uint8 RGB frames shaped [T, H, W, 3] or an image [H, W, 3], "
                         f"got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"the judge reads uint8 frames, got {frames.dtype}")
    return frames


def judge(frames: np.ndarray, config: JudgeConfig = JudgeConfig()) -> Judgement:
    """The objects in a video uint8[T, H, W, 3] or an image uint8[H, W, 3]."""
    frames = _check_frames(frames)
    n_frames, frame_size = frames.shape[0], frames.shape[1]
    blobs, plain = _find_blobs(frames, config)
    if not plain.any():
        return Judgement((), frame_size, "no plain background: no colour covers half of any frame (noise?)")
    objects = []
    for colour in np.unique(blobs.colour):
        mine = blobs.colour == colour
        if mine.sum() < config.min_presence * n_frames:
            continue
        distance = np.linalg.norm(blobs.signature[mine].mean(axis=0) - _SHAPES.signature, axis=-1)
        shape = int(distance.argmin())
        side = np.sqrt(blobs.area[mine] / _SHAPES.fill[shape])
        positions = np.full((n_frames, 2), np.nan)
        positions[blobs.frame[mine]] = blobs.centroid[mine] - _SHAPES.offset[shape] * side[:, None] / 2
        direction = _initial_direction(positions, config)
        objects.append(SeenObject(
            colour=_COLOUR_NAMES[colour],
            shape=SHAPES[shape],
            size="small" if np.median(side) < _SIZE_THRESHOLD else "large",
            positions=positions,
            shape_distance=float(distance[shape]),
            direction=direction,
            walls=_walls(positions, direction, config),
        ))
    reason = "" if objects else "no blob of a world colour has a world shape"
    return Judgement(tuple(objects), frame_size, reason)


def _initial_velocity(positions: np.ndarray, config: JudgeConfig) -> np.ndarray | None:
    """Least-squares velocity (x, y) over the first `direction_window` steps, None if seen in < 2 of those frames."""
    window = positions[: config.direction_window + 1]
    seen = ~np.isnan(window[:, 0])
    if seen.sum() < 2:
        return None
    times = np.flatnonzero(seen).astype(np.float64)
    times -= times.mean()
    return (times[:, None] * window[seen]).sum(axis=0) / (times**2).sum()


def _initial_direction(positions: np.ndarray, config: JudgeConfig) -> str | None:
    velocity = _initial_velocity(positions, config)
    if velocity is None:
        return None
    moving = np.where(np.abs(velocity) >= config.still_speed, velocity, 0.0)
    return None if not moving.any() else direction_word(*moving)


def _walls(positions: np.ndarray, direction: str | None, config: JudgeConfig) -> tuple[str, ...]:
    """The walls implied by the reversals of the velocity, in order, starting from `direction`."""
    if direction is None:
        return ()
    seen = np.flatnonzero(~np.isnan(positions[:, 0]))
    steps = (positions[seen[1:]] - positions[seen[:-1]]) / (seen[1:] - seen[:-1])[:, None]
    heading = list(DIRECTIONS[direction])
    events = []
    for index, step in enumerate(steps):
        for axis, (low_wall, high_wall) in enumerate((("left", "right"), ("top", "bottom"))):
            sign = int(np.sign(step[axis])) if abs(step[axis]) >= config.still_speed else 0
            if sign and heading[axis] and sign != heading[axis]:
                events.append((index, axis, high_wall if heading[axis] > 0 else low_wall))
            if sign:
                heading[axis] = sign
    return tuple(wall for *_, wall in sorted(events))


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------


def compare(expected: list[ObjectDescription], observed: list[ObjectDescription], frame_size: int = 64,
            region_margin: float = 4.0) -> Score:
    """Whether `observed` objects are what `expected` says: the same count, and each stated attribute.

    Objects are matched by colour. A region holds if the observed centre lies in it, grown by
    `region_margin` pixels (a centre near a third's border belongs to both sides).
    """
    by_colour = {obj.colour: obj for obj in observed}
    checks = {"count": len(expected) == len(observed), "colour": all(e.colour in by_colour for e in expected)}
    for attribute in ("shape", "size", "direction", "walls"):
        stated = [e for e in expected if getattr(e, attribute) is not None]
        if stated:
            checks[attribute] = all(
                e.colour in by_colour and getattr(by_colour[e.colour], attribute) == getattr(e, attribute)
                for e in stated
            )
    stated = [e for e in expected if e.region is not None]
    if stated:
        checks["region"] = all(e.colour in by_colour and by_colour[e.colour].centre is not None
                               and in_region(*by_colour[e.colour].centre, e.region, frame_size, region_margin)
                               for e in stated)
    return Score(all(checks.values()), checks)


def score(frames: np.ndarray, text: str, config: JudgeConfig = JudgeConfig()) -> Score:
    """Whether a generated video [T, H, W, 3] or image [H, W, 3] shows what `text` describes.

    For an image, the text's regions ("in the top left") are checked; for a video, the directions.
    """
    expected = parse_description(text)
    if not expected:
        raise ValueError(f"the description {text!r} names no object of the world (colours: {', '.join(COLOURS)})")
    seen = judge(frames, config)
    frame = 0 if np.asarray(frames).ndim == 3 else None
    return compare(expected, [obj.description(frame) for obj in seen.objects], seen.frame_size)


def score_caption(text: str, clip: Clip, frame: int | None = None) -> Score:
    """Whether a caption of `clip` (or a description of its `frame`) is true of the ground truth."""
    truth = [obj.description(frame, clip.frame_size) for obj in clip.objects]
    return compare(parse_description(text), truth, clip.frame_size)


_ANSWER_WORDS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "count": NUMBER_WORDS,
    "direction": tuple(DIRECTIONS),
    "bounce": ("yes", "no"),
    "next_wall": WALLS,
}


def score_answer(predicted: str, qa: QA) -> bool:
    """Whether a free-text answer gives the right answer and no other of the question's kind.

    "Red.", "red" and "It is red" answer a colour question "red"; "red or blue" does not.
    """
    return _answer_words(predicted, qa.type) == _answer_words(qa.answer, qa.type)


def direction_parts_right(predicted: str, qa: QA) -> tuple[bool, bool]:
    """For a direction question: whether a free-text answer gets the horizontal and the vertical part of
    the motion right ("up" for "up-right" gets only the vertical part); an answer that does not name one
    direction gets neither."""
    given = _answer_words(predicted, "direction")
    if len(given) != 1:
        return False, False
    said, true = DIRECTIONS[given.pop()], DIRECTIONS[qa.answer]
    return said[0] == true[0], said[1] == true[1]


def _answer_words(text: str, kind: str) -> set[str]:
    """The words of `text` that answer a question of type `kind`, digits read as number words."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)?|\d+", text.lower())
    words = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w for w in words]
    return {w for w in words if w in _ANSWER_WORDS[kind]}


@dataclass(frozen=True)
class ContinuationScore:
    trajectory_error: float  # mean distance in pixels between found and true centres; NaN if nothing was found
    found: float  # fraction of the (object, frame) pairs in which the object was found
    direction_kept: bool  # every object was found, starting to move as it truly does


def trajectory_error(seen: np.ndarray, true: np.ndarray) -> float:
    """Mean distance in pixels between seen centres [T, 2] (NaN where not seen) and true ones; NaN if none seen."""
    n_frames = min(len(seen), len(true))
    distance = np.linalg.norm(seen[:n_frames] - true[:n_frames], axis=1)
    distance = distance[~np.isnan(distance)]
    return float(distance.mean()) if len(distance) else float("nan")


def score_continuation(generated: np.ndarray, future: Clip, config: JudgeConfig = JudgeConfig()) -> ContinuationScore:
    """How well generated frames follow the true future of a clip (the second half of `world.continuation`).

    Directions are read by the same estimator from both trajectories, so a bounce early in the true
    future is read the same way on both sides.
    """
    generated = _check_frames(generated)
    n_frames = min(len(generated), future.n_frames)
    seen = {obj.colour: obj.positions[:n_frames] for obj in judge(generated[:n_frames], config).objects}
    errors, found, kept = [], 0, True
    for obj in future.objects:
        true = obj.positions[:n_frames]
        positions = seen.get(obj.colour, np.full_like(true, np.nan))
        visible = ~np.isnan(positions[:, 0])
        found += int(visible.sum())
        if visible.any():
            errors.append(trajectory_error(positions, true) * visible.sum())
        kept &= visible.any() and _initial_direction(positions, config) == _initial_direction(true, config)
    error = sum(errors) / found if found else float("nan")
    return ContinuationScore(error, found / (n_frames * len(future.objects)), bool(kept))
