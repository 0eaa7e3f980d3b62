"""The language of the synthetic world: captions, prompts, still descriptions and questions about a
clip, all built from the same small, regular vocabulary so that a tiny model can learn it, and
`parse_description`, which reads them (or a model's answer) back into object descriptions."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lwm.world.scene import (
    COLOURS,
    DIRECTIONS,
    REGIONS,
    SHAPES,
    SIZES,
    Clip,
    ObjectDescription,
    WorldConfig,
    WorldObject,
    clip_showing,
    region_of,
    simulate,
)

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "size", "count", "direction", "bounce", "next_wall")


def _noun(obj: WorldObject | ObjectDescription, with_size: bool) -> str:
    size = f"{obj.size} " if with_size else ""
    return f"a {size}{obj.colour} {obj.shape}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _walls_phrase(walls: tuple[str, ...]) -> str:
    return " and then ".join(f"the {wall} wall" for wall in walls)


def _language_rng(clip: Clip, purpose: int) -> np.random.Generator:
    return np.random.default_rng([clip.seed if clip.seed is not None else 0, purpose])


def caption(clip: Clip, variant: int | None = None) -> str:
    """A caption of the clip; `variant` picks the template (default: drawn from the clip's seed)."""
    rng = _language_rng(clip, 1)
    variant = int(rng.integers(4)) if variant is None else variant
    with_size = bool(rng.integers(2))
    count = len(clip.objects)
    nouns = [_noun(obj, with_size) for obj in clip.objects]
    moving = [f"{noun} moving {obj.direction}" for noun, obj in zip(nouns, clip.objects)]
    clauses = [f"{noun} moves {obj.direction}" for noun, obj in zip(nouns, clip.objects)]
    objects_word = "object" if count == 1 else "objects"
    if variant == 0:
        text = _join(clauses) + "."
    elif variant == 1:
        text = f"{NUMBER_WORDS[count]} {objects_word}: {_join(moving)}."
    elif variant == 2:
        text = f"a video of {_join(moving)}."
    elif variant == 3:
        verb = "is" if count == 1 else "are"
        sentences = " ".join(clause[0].upper() + clause[1:] + "." for clause in clauses)
        text = f"there {verb} {NUMBER_WORDS[count]} {objects_word}. {sentences}"
    else:
        raise ValueError(f"caption variant must be 0..3, got {variant}")
    bounces = [f"The {obj.name} bounces off {_walls_phrase(obj.walls)}." for obj in clip.objects if obj.bounced]
    text = " ".join([text] + bounces)
    return text[0].upper() + text[1:]


def prompt_for(clip: Clip) -> str:
    """The text→video prompt that `clip` answers: "a red circle moving left and a blue square moving up"."""
    return _join([f"{_noun(obj, True)} moving {obj.direction}" for obj in clip.objects])


def describe_frame(clip: Clip, frame: int, centres: bool = False) -> str:
    """A description of one frame as a still image: "A large red circle in the top left."; with `centres`,
    each object's centre in pixels after its region ("... in the top left at 12, 40.")."""
    if not 0 <= frame < clip.n_frames:
        raise ValueError(f"frame {frame} is outside the clip's {clip.n_frames} frames")
    parts = []
    for obj in clip.objects:
        x, y = obj.positions[frame]
        at = f" at {round(x)}, {round(y)}" if centres else ""
        parts.append(f"{_noun(obj, True)} in the {region_of(x, y, clip.frame_size)}{at}")
    text = _join(parts) + "."
    return text[0].upper() + text[1:]


def image_prompt_for(clip: Clip, frame: int, centres: bool = False) -> str:
    """The text→image prompt for one frame: its description (`describe_frame`) without the capital and full stop."""
    text = describe_frame(clip, frame, centres)
    return text[0].lower() + text[1:-1]


@dataclass(frozen=True)
class QA:
    type: str  # one of QUESTION_TYPES
    question: str
    answer: str


def next_wall(obj: WorldObject, frame_size: int) -> str | None:
    """The first wall the object touches from the clip's last frame on (None when it reaches a corner)."""
    n_frames = obj.positions.shape[0]
    horizon = 2 * frame_size  # long enough to reach a wall at the slowest speed
    _, _, bounces = simulate(tuple(obj.positions[0]), obj.velocity, obj.size, n_frames + horizon, frame_size)
    upcoming = [(frame, wall) for frame, wall in bounces if frame >= n_frames - 1]
    if len(upcoming) > 1 and upcoming[0][0] == upcoming[1][0]:
        return None
    return upcoming[0][1]


def questions(clip: Clip) -> list[QA]:
    """Every question the world can ask about the clip, with its short answer."""
    qas = [QA("count", "How many objects are there?", NUMBER_WORDS[len(clip.objects)])]
    for obj in clip.objects:
        qas += [
            QA("colour", f"What colour is the {obj.shape}?", obj.colour),
            QA("shape", f"What shape is the {obj.colour} object?", obj.shape),
            QA("size", f"Is the {obj.name} small or large?", obj.size),
            QA("direction", f"Which way does the {obj.name} move at the start?", obj.direction),
            QA("bounce", f"Does the {obj.name} bounce off a wall?", "yes" if obj.bounced else "no"),
        ]
        wall = next_wall(obj, clip.frame_size)
        if wall is not None:
            qas.append(QA("next_wall", f"Which wall will the {obj.name} hit next?", f"the {wall} wall"))
    return qas


# ---------------------------------------------------------------------------------------------------
# Reading descriptions back
# ---------------------------------------------------------------------------------------------------

_WORD = r"[a-z]+(?:-[a-z]+)?"
_WALLS_PATTERN = re.compile(r"(?:bounces|bouncing|bounce) off ((?:the \w+ walls?(?: and then | and |, )?)+)")
_REGION_PATTERN = re.compile(r"\bin the (" + "|".join(sorted(REGIONS, key=len, reverse=True)) + r")\b")
_DIRECTION_PATTERN = re.compile(
    r"\b(?:mov\w*|go\w*|head\w*) (" + "|".join(sorted(DIRECTIONS, key=len, reverse=True)) + r")\b")
_COLOUR_PATTERN = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


def parse_description(text: str) -> list[ObjectDescription]:
    """The objects a caption, prompt or image description talks about, in order of first mention.

    Each object is introduced by its colour; the words up to the next colour word describe it. A
    later mention of the same colour ("The red circle bounces ...") adds to the first unless it names
    another shape, which makes it another object. The first statement of each attribute wins. Unknown
    words are ignored, so a sloppy model caption still parses as far as it makes sense.
    """
    found: list[dict] = []
    for sentence in re.split(r"[.!?;]", text.lower()):
        starts = [m.start() for m in _COLOUR_PATTERN.finditer(sentence)] + [len(sentence)]
        for begin, end in zip(starts, starts[1:]):
            mention = sentence[begin:end]
            words = mention.split()
            colour, shape = words[0], words[1] if len(words) > 1 and words[1] in SHAPES else None
            fields = next((f for f in found if f["colour"] == colour and shape in (None, f.get("shape"))), None)
            if fields is None:
                fields = {"colour": colour}
                found.append(fields)
            if shape:
                fields.setdefault("shape", shape)
            preceding = sentence[:begin].split()
            if preceding and preceding[-1] in SIZES:
                fields.setdefault("size", preceding[-1])
            walls = _WALLS_PATTERN.search(mention)
            if walls:
                fields.setdefault("walls", tuple(re.findall(r"the (\w+) wall", walls.group(1))))
                mention = mention[:walls.start()] + mention[walls.end():]
            region = _REGION_PATTERN.search(mention)
            if region:
                fields.setdefault("region", region.group(1))
                mention = mention[:region.start()] + mention[region.end():]
            direction = _DIRECTION_PATTERN.search(mention)
            if direction:
                fields.setdefault("direction", direction.group(1))
    return [ObjectDescription(**fields) for fields in found]


# A conversation asks this many of the clip's questions, one per user turn, the video with the first.
CONVERSATION_TURNS: tuple[int, int] = (2, 4)


def still_frame(clip: Clip) -> int:
    """The frame of the clip that serves as its still image (drawn from its seed)."""
    return int(_language_rng(clip, 2).integers(clip.n_frames))


def conversation_questions(clip: Clip) -> list[QA]:
    """`CONVERSATION_TURNS` of the clip's questions in an order drawn from its seed."""
    rng = _language_rng(clip, 3)
    qas = questions(clip)  # at least 6: the count and 5 about each object
    turns = int(rng.integers(CONVERSATION_TURNS[0], CONVERSATION_TURNS[1] + 1))
    return [qas[index] for index in rng.permutation(len(qas))[:turns]]


def clip_from_prompt(prompt: str, seed: int = 0, config: WorldConfig = WorldConfig(),
                     n_frames: int | None = None) -> Clip:
    """A clip that shows what `prompt` says ("a small green triangle moving up").

    What the prompt leaves out (size, direction, position, speed, other colours and shapes) is drawn
    from `seed`. Objects move without bouncing unless the prompt names the walls they bounce off; a
    region ("in the top left") places the object there in the first frame. With `n_frames=1` the
    clip is a still image for a text→image prompt.
    """
    wanted = parse_description(prompt)
    if not wanted:
        raise ValueError(f"the prompt {prompt!r} names no object; name a colour and a shape, "
                         f"e.g. 'a red circle moving left' (colours: {', '.join(COLOURS)})")
    if len(wanted) > 3:
        raise ValueError(f"the prompt {prompt!r} names {len(wanted)} objects; the world holds at most 3")
    unbounced = [ObjectDescription(w.colour, w.shape, w.size, w.direction, () if w.walls is None else w.walls, w.region)
                 for w in wanted]
    return clip_showing(unbounced, seed, config, n_frames)
