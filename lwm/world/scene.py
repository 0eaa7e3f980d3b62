"""The scenes of the synthetic world: coloured shapes moving in straight lines and bouncing off walls.

Everything is procedural and deterministic by seed:

- a clip is 8–16 frames of 64×64 RGB on a dark background with 1–3 objects; within a clip every
  object has its own colour and its own shape, so "the red object" and "the circle" are unambiguous;
- an object moves at a constant speed in one of 8 directions and reflects off the frame's walls
  (the only physics); objects never overlap during a clip, and each one moves at least
  `steps_before_bounce` steps before its first bounce, so its starting direction is always visible.

Positions are the centre (x, y) of an object's bounding square in continuous pixel coordinates: the
frame spans [0, frame_size] on both axes and pixel (row i, column j) covers [j, j+1) × [i, i+1).

Seeds: `split_seeds("train")` and `split_seeds("held_out")` are disjoint ranges; evaluation uses only
held-out seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------------
# The vocabulary of the world
# ---------------------------------------------------------------------------------------------------

BACKGROUND: tuple[int, int, int] = (16, 16, 24)

# Far apart in RGB (the closest pair, blue and cyan, 113 apart) and all far brighter than the
# background, so that a blurry reconstruction keeps its colour and its outline.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 255),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 210, 230),
    "white": (235, 235, 235),
}

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond")

# Side of the bounding square in pixels.
SIZES: dict[str, int] = {"small": 12, "large": 18}

# Unit steps (dx, dy); y grows downwards, as in the image.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "up": (0, -1),
    "down": (0, 1),
    "left": (-1, 0),
    "right": (1, 0),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
}

WALLS: tuple[str, ...] = ("left", "right", "top", "bottom")

# A frame is cut in thirds on each axis; the middle cell is "centre".
REGIONS: tuple[str, ...] = (
    "top left", "top middle", "top right",
    "middle left", "centre", "middle right",
    "bottom left", "bottom middle", "bottom right",
)

def shape_level(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A gauge of `shape` around its centre: the shape is where it is at most 1, for (u, v) in units of
    half the object's size. It scales with (u, v), so in pixels the shape is where it is at most half the size.

    The triangle points up: apex at v = -1, base at v = 1.
    """
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v))
    if shape == "circle":
        return np.hypot(u, v)
    if shape == "triangle":
        return np.maximum(v, 2 * np.abs(u) - v)
    if shape == "diamond":
        return np.abs(u) + np.abs(v)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v), in units of half the object's size around its centre, lie inside `shape`."""
    return shape_level(shape, u, v) <= 1


def direction_word(dx: float, dy: float) -> str:
    """The direction word for a step whose components have the signs of (dx, dy)."""
    step = (int(np.sign(dx)), int(np.sign(dy)))
    for word, unit in DIRECTIONS.items():
        if unit == step:
            return word
    raise ValueError("an object standing still has no direction")


def region_of(x: float, y: float, frame_size: int) -> str:
    """The region word for a point: the frame is cut in thirds on each axis."""
    column = min(int(3 * x / frame_size), 2)
    row = min(int(3 * y / frame_size), 2)
    return REGIONS[3 * max(row, 0) + max(column, 0)]


def in_region(x: float, y: float, region: str, frame_size: int, margin: float = 0.0) -> bool:
    """Whether (x, y) lies in `region`, grown by `margin` pixels on each side (a tolerance for judges)."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")
    index = REGIONS.index(region)
    row, column = divmod(index, 3)
    third = frame_size / 3
    return (column * third - margin <= x <= (column + 1) * third + margin
            and row * third - margin <= y <= (row + 1) * third + margin)


# ---------------------------------------------------------------------------------------------------
# Configuration, objects and clips
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    frame_size: int = 64
    min_frames: int = 8
    max_frames: int = 16
    min_objects: int = 1
    max_objects: int = 3
    speeds: tuple[int, ...] = (2, 3)  # pixels per frame along each moving axis
    steps_before_bounce: int = 3
    gap: int = 2  # the least distance in pixels between two objects' bounding squares

    def __post_init__(self):
        if self.frame_size < 32:
            raise ValueError(f"frame_size must be at least 32 pixels, got {self.frame_size}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if not 1 <= self.min_objects <= self.max_objects <= min(len(COLOURS), len(SHAPES), 3):
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 3, got {self.min_objects}, {self.max_objects}")
        if not self.speeds or min(self.speeds) <= 0:
            raise ValueError(f"speeds must be positive, got {self.speeds}")
        if max(self.speeds) * self.steps_before_bounce > self.frame_size - max(SIZES.values()):
            raise ValueError("the fastest object cannot move steps_before_bounce steps inside the frame")
        if self.steps_before_bounce < 1:
            raise ValueError(f"steps_before_bounce must be at least 1, got {self.steps_before_bounce}")


@dataclass(frozen=True)
class ObjectDescription:
    """What a text says (or a judge sees) about one object; None means "not stated"."""

    colour: str | None
    shape: str | None = None
    size: str | None = None
    direction: str | None = None
    walls: tuple[str, ...] | None = None  # walls hit, in order; () = moves without bouncing
    region: str | None = None  # where it is in a still image
    centre: tuple[float, float] | None = None  # where it is, when measured (judges, ground truth)


@dataclass(frozen=True, eq=False)
class WorldObject:
    """One object of a clip with its ground-truth trajectory."""

    shape: str
    colour: str
    size: str
    positions: np.ndarray  # float [T, 2]: centre (x, y) in pixels at each frame
    velocity: tuple[int, int]  # pixels per frame at the first frame
    bounces: tuple[tuple[int, str], ...]  # (frame, wall) for each bounce the clip shows

    @property
    def direction(self) -> str:
        """The direction it starts moving in."""
        return direction_word(*self.velocity)

    @property
    def bounced(self) -> bool:
        return bool(self.bounces)

    @property
    def walls(self) -> tuple[str, ...]:
        return tuple(wall for _, wall in self.bounces)

    @property
    def name(self) -> str:
        """How the language refers to it: "red circle"."""
        return f"{self.colour} {self.shape}"

    def description(self, frame: int | None = None, frame_size: int = 64) -> ObjectDescription:
        """The ground truth as a description; with `frame`, where it is in that frame."""
        if frame is None:
            return ObjectDescription(self.colour, self.shape, self.size, self.direction, self.walls)
        x, y = self.positions[frame]
        return ObjectDescription(self.colour, self.shape, self.size,
                                 region=region_of(x, y, frame_size), centre=(float(x), float(y)))


@dataclass(frozen=True, eq=False)
class Clip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    objects: tuple[WorldObject, ...]
    seed: int | None = None

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def frame_size(self) -> int:
        return self.frames.shape[1]


# ---------------------------------------------------------------------------------------------------
# Physics and rendering
# ---------------------------------------------------------------------------------------------------


def simulate(start: tuple[float, float], velocity: tuple[int, int], size: str, n_frames: int,
             frame_size: int = 64) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, str], ...]]:
    """An object moving at `velocity` from `start` and reflecting off the walls, over `n_frames` frames.

    Returns positions [T, 2], velocities [T, 2] (the step it takes after each frame) and its bounces
    as (frame, wall): the wall touched between frame - 1 and frame (or exactly at frame).

    Each axis is a straight line unfolded through mirror copies of the frame: cell k of the unfolded
    line is the frame itself for even k and its mirror image for odd k, fold k (between cells k - 1
    and k) is the low wall for even k and the high wall for odd k.
    """
    half = SIZES[size] / 2
    lo, span = half, frame_size - 2 * half
    steps = np.arange(n_frames)
    positions = np.empty((n_frames, 2))
    velocities = np.empty((n_frames, 2), dtype=int)
    events = []
    for axis, walls in enumerate((("left", "right"), ("top", "bottom"))):
        unfolded = start[axis] - lo + velocity[axis] * steps
        phase = np.mod(unfolded, 2 * span)
        positions[:, axis] = lo + np.where(phase <= span, phase, 2 * span - phase)
        # The cell the object is about to move through; a position on a fold belongs to the next cell.
        cell = np.floor(unfolded / span) if velocity[axis] >= 0 else np.ceil(unfolded / span) - 1
        velocities[:, axis] = np.where(cell % 2 == 0, velocity[axis], -velocity[axis])
        for frame in np.flatnonzero(np.diff(cell)) + 1:
            fold = int(max(cell[frame], cell[frame - 1]))
            events.append((int(frame), walls[fold % 2]))
    return positions, velocities, tuple(sorted(events))


def _visible(bounces: tuple[tuple[int, str], ...], start: int, stop: int) -> tuple[tuple[int, str], ...]:
    """The bounces that frames [start, stop) show, renumbered from start.

    A bounce shows when a frame after it moves away from the wall: one at the last frame does not.
    """
    return tuple((frame - start, wall) for frame, wall in bounces if start < frame < stop - 1)


def render(objects: tuple[WorldObject, ...], frame_size: int = 64, supersample: int = 4) -> np.ndarray:
    """Draw the objects' trajectories on the background: uint8 [T, frame_size, frame_size, 3].

    Each pixel's coverage is measured on a `supersample`² grid of points, so edges are anti-aliased.
    Points exactly on an edge count half: with integer centres the grid meets the diagonal edges of
    triangles and diamonds, and counting those points fully would draw them too large.
    """
    n_frames = objects[0].positions.shape[0]
    canvas = np.empty((n_frames, frame_size, frame_size, 3), np.float32)
    canvas[:] = BACKGROUND
    offsets = (np.arange(supersample) + 0.5) / supersample
    for obj in objects:
        half = SIZES[obj.size] / 2
        colour = np.asarray(COLOURS[obj.colour], np.float32)
        for t, (cx, cy) in enumerate(obj.positions):
            x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)), frame_size)
            y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)), frame_size)
            xs = (np.arange(x0, x1)[:, None] + offsets).ravel()
            ys = (np.arange(y0, y1)[:, None] + offsets).ravel()
            level = shape_level(obj.shape, xs[None, :] - cx, ys[:, None] - cy)  # in pixels: exact on the grid
            inside = (level < half) + 0.5 * (level == half)
            coverage = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
            patch = canvas[t, y0:y1, x0:x1]
            patch += coverage[..., None] * (colour - patch)
    return np.round(canvas).astype(np.uint8)


def _overlap(a: WorldObject, b: WorldObject, gap: int) -> bool:
    reach = (SIZES[a.size] + SIZES[b.size]) / 2 + gap
    distance = np.abs(a.positions - b.positions)
    return bool(np.any((distance[:, 0] < reach) & (distance[:, 1] < reach)))


# ---------------------------------------------------------------------------------------------------
# Sampling clips
# ---------------------------------------------------------------------------------------------------

SEED_SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "held_out": range(1_000_000, 1_100_000),
}


def split_seeds(split: str, n: int | None = None) -> range:
    """The seeds of `split` ("train" or "held_out"), or the first `n` of them. The ranges are disjoint."""
    if split not in SEED_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SEED_SPLITS)}")
    seeds = SEED_SPLITS[split]
    if n is None:
        return seeds
    if not 0 <= n <= len(seeds):
        raise ValueError(f"split {split!r} has {len(seeds)} seeds, asked for {n}")
    return seeds[:n]


_MAX_ATTEMPTS = 200


def _sample_object(rng: np.random.Generator, want: ObjectDescription, n_frames: int,
                   config: WorldConfig) -> tuple[WorldObject, tuple[tuple[int, str], ...]]:
    """A random object as `want` says, and all its wall contacts (visible or not) during the clip."""
    size = want.size or str(rng.choice(list(SIZES)))
    direction = want.direction or str(rng.choice(list(DIRECTIONS)))
    speed = int(rng.choice(config.speeds))
    velocity = (DIRECTIONS[direction][0] * speed, DIRECTIONS[direction][1] * speed)
    half = SIZES[size] // 2
    # Strictly inside: an object starting against a wall would start by bouncing.
    start = tuple(float(rng.integers(half + 1, config.frame_size - half)) for _ in range(2))
    positions, _, contacts = simulate(start, velocity, size, n_frames, config.frame_size)
    return WorldObject(want.shape, want.colour, size, positions, velocity, _visible(contacts, 0, n_frames)), contacts


def _acceptable(obj: WorldObject, contacts: tuple[tuple[int, str], ...], want: ObjectDescription,
                placed: list[WorldObject], config: WorldConfig) -> bool:
    """Whether the clip tells a clear story about `obj`: its start, its bounces and nobody in its way."""
    frames = [frame for frame, _ in contacts]
    if frames and frames[0] <= config.steps_before_bounce:
        return False
    if len(set(frames)) < len(frames):  # a corner: "which wall first" has no answer
        return False
    if obj.positions.shape[0] - 1 in frames:  # a bounce that the clip ends too early to show
        return False
    if want.walls is not None and obj.walls != want.walls:
        return False
    if want.region is not None and region_of(*obj.positions[0], config.frame_size) != want.region:
        return False
    return not any(_overlap(obj, other, config.gap) for other in placed)


def _sample_scene(rng: np.random.Generator, wanted: list[ObjectDescription], n_frames: int,
                  config: WorldConfig) -> tuple[WorldObject, ...]:
    """Objects as `wanted` (None fields sampled), none overlapping, by rejection sampling."""
    for _ in range(_MAX_ATTEMPTS):
        placed: list[WorldObject] = []
        for want in wanted:
            for _ in range(50):
                candidate, contacts = _sample_object(rng, want, n_frames, config)
                if _acceptable(candidate, contacts, want, placed, config):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) == len(wanted):
            return tuple(placed)
    raise ValueError(f"cannot place {len(wanted)} object(s) as described in a {config.frame_size}x"
                     f"{config.frame_size} clip of {n_frames} frames (a bounce its direction never reaches?)")


def _fill_colours_and_shapes(rng: np.random.Generator, wanted: list[ObjectDescription]) -> list[ObjectDescription]:
    """Give each object without a colour or shape one not used by the others."""
    colours = [want.colour for want in wanted if want.colour is not None]
    shapes = [want.shape for want in wanted if want.shape is not None]
    if len(set(colours)) < len(colours) or len(set(shapes)) < len(shapes):
        raise ValueError("every object in a clip needs its own colour and its own shape")
    free_colours = [c for c in COLOURS if c not in colours]
    free_shapes = [s for s in SHAPES if s not in shapes]
    rng.shuffle(free_colours)
    rng.shuffle(free_shapes)
    filled = []
    for want in wanted:
        colour = want.colour if want.colour is not None else free_colours.pop()
        shape = want.shape if want.shape is not None else free_shapes.pop()
        filled.append(ObjectDescription(colour, shape, want.size, want.direction, want.walls, want.region))
    return filled


def generate_clip(seed: int, config: WorldConfig = WorldConfig(), n_frames: int | None = None) -> Clip:
    """The clip of `seed`: 1–3 random objects, everything drawn from `numpy.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    if n_frames is None:
        n_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
    wanted = _fill_colours_and_shapes(rng, [ObjectDescription(colour=None)] * n_objects)
    objects = _sample_scene(rng, wanted, n_frames, config)
    return Clip(render(objects, config.frame_size), objects, seed)


def clip_showing(wanted: list[ObjectDescription], seed: int = 0, config: WorldConfig = WorldConfig(),
                 n_frames: int | None = None) -> Clip:
    """A clip whose objects are as `wanted` says (at most 3); what it leaves out is drawn from `seed`.

    `walls` None leaves bounces to chance, () asks for none; a `region` places the object there in
    the first frame. With `n_frames=1` the clip is a still image.
    """
    if len(wanted) > 3:
        raise ValueError(f"{len(wanted)} objects were asked for; the world holds at most 3")
    rng = np.random.default_rng(seed)
    if n_frames is None:
        n_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
    objects = _sample_scene(rng, _fill_colours_and_shapes(rng, wanted), n_frames, config)
    return Clip(render(objects, config.frame_size), objects, seed)


def continuation(clip: Clip, n_context: int, n_future: int | None = None) -> tuple[Clip, Clip]:
    """The first `n_context` frames of `clip` and the true next `n_future` frames (default: the rest).

    The future follows the world's physics, also past the end of the clip (objects may then overlap).
    Its objects' `velocity` is the one they have at its first frame.
    """
    n_future = clip.n_frames - n_context if n_future is None else n_future
    if n_context < 1 or n_future < 1:
        raise ValueError(f"need n_context >= 1 and n_future >= 1, got {n_context} and {n_future}")
    context, future = [], []
    for obj in clip.objects:
        positions, velocities, bounces = simulate(tuple(obj.positions[0]), obj.velocity, obj.size,
                                                  n_context + n_future, clip.frame_size)
        for part, start, stop in ((context, 0, n_context), (future, n_context, n_context + n_future)):
            part.append(WorldObject(
                obj.shape, obj.colour, obj.size, positions[start:stop], tuple(int(v) for v in velocities[start]),
                _visible(bounces, start, stop),
            ))
    return (Clip(render(tuple(context), clip.frame_size), tuple(context), clip.seed),
            Clip(render(tuple(future), clip.frame_size), tuple(future), clip.seed))
