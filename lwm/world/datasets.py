"""Datasets of the synthetic world: the manifest records (lwm.data.manifest) each clip makes for the
tasks a model learns, written by `lwm data world`, and needle-retrieval records."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from lwm.media import save_image, save_video
from lwm.tokenizers import CONTINUATION_REQUEST
from lwm.world import needles
from lwm.world.language import (
    QA,
    QUESTION_TYPES,
    caption,
    conversation_questions,
    describe_frame,
    prompt_for,
    questions,
    still_frame,
)
from lwm.world.scene import Clip, WorldConfig, continuation, generate_clip, split_seeds

# What `world_records` can write per clip. DEFAULT_TASKS is what `lwm data world` writes unless asked:
# the tasks the shipped bundled model was trained on (its recipe, docs/bundled-model.md, reproduces it).
TASKS: tuple[str, ...] = ("video_caption", "video_qa", "video_conversation", "image_text", "unconditional",
                          "text_to_video", "video_continuation", "text")
DEFAULT_TASKS: tuple[str, ...] = ("video_caption", "video_qa", "image_text", "text_to_video",
                                  "video_continuation", "text")


def clip_files(seed: int) -> dict[str, str]:
    """Where `write_world_dataset` puts the files of a seed's clip, relative to the manifest."""
    return {
        "video": f"clips/{seed:07d}.mp4",
        "image": f"images/{seed:07d}.png",  # one frame of the clip
        "opening": f"openings/{seed:07d}.mp4",  # the first TEXT_TO_VIDEO_FRAMES frames
        "context": f"continuation/{seed:07d}_context.mp4",  # the first CONTINUATION_FRAMES frames
        "future": f"continuation/{seed:07d}_future.mp4",  # the next CONTINUATION_FRAMES, by the physics
    }


# A continuation example shows this many frames and asks for as many more, at the clip's own frame rate:
# a fixed count (not a share of the clip) keeps the motion per frame the same in every example, so a
# processor sampling `max_frames` frames leaves both videos whole when max_frames >= this.
CONTINUATION_FRAMES = 4

# A text -> video example draws this many consecutive frames from the clip's start: the prompt names each
# object's starting direction and no bounce, which frames spread over the whole clip (bounces included)
# would contradict. Objects move at least `steps_before_bounce` steps before a bounce, so these show none.
TEXT_TO_VIDEO_FRAMES = 4


def conversation(clip: Clip, video: str) -> list[dict]:
    """A chat about the clip: its `conversation_questions`, the video attached after the first (as
    `lwm chat` sends it), later questions relying on the history."""
    return _qa_chat(conversation_questions(clip), video)


def _qa_chat(qas: list[QA], video: str) -> list[dict]:
    """Each question a user turn and its answer an assistant turn; the video follows the first question."""
    messages = []
    for number, qa in enumerate(qas):
        content = [{"type": "text", "text": qa.question}]
        if number == 0:
            content.append({"type": "video", "path": video})
        messages += [{"role": "user", "content": content},
                     {"role": "assistant", "content": [{"type": "text", "text": qa.answer}]}]
    return messages


def world_records(clip: Clip, files: dict[str, str], tasks: tuple[str, ...] = DEFAULT_TASKS,
                  qa_types: tuple[str, ...] = QUESTION_TYPES) -> list[dict]:
    """The manifest records of one clip for `tasks`, pointing at its `files` (see `clip_files`).

    The format is lwm.data.manifest's. A caption is learnt video→text and a prompt text→video (their
    "direction"); an image and its description both ways. `video_qa` asks every question of `qa_types` alone;
    `video_conversation` asks a few of any type in one chat (see `conversation`); `unconditional` is the
    still after `<s><vision>` alone, the branch classifier-free guidance subtracts.
    """
    records = []
    if "video_caption" in tasks:
        records.append({"video": files["video"], "caption": caption(clip), "task": "video_caption",
                        "direction": "understanding"})
    if "video_qa" in tasks:
        for qa in questions(clip):
            if qa.type in qa_types:
                records.append({"messages": _qa_chat([qa], files["video"]), "task": "video_qa"})
    if "video_conversation" in tasks:
        records.append({"messages": conversation(clip, files["video"]), "task": "video_conversation"})
    if "image_text" in tasks:
        records.append({"image": files["image"], "caption": describe_frame(clip, still_frame(clip)),
                        "task": "image_text"})
    if "unconditional" in tasks:
        records.append({"image": files["image"], "task": "unconditional", "direction": "unconditional"})
    if "text_to_video" in tasks:
        records.append({"video": files["opening"], "caption": prompt_for(clip), "task": "text_to_video",
                        "direction": "generation"})
    if "video_continuation" in tasks:
        records.append({"messages": [
            {"role": "user", "content": [{"type": "text", "text": CONTINUATION_REQUEST},
                                         {"type": "video", "path": files["context"]}]},
            {"role": "assistant", "content": [{"type": "video", "path": files["future"], "continues": True}]},
        ], "task": "video_continuation"})
    if "text" in tasks:
        records.append({"text": caption(clip, variant=3), "task": "text"})
    return records


def write_world_dataset(out_dir: str | Path, seeds, config: WorldConfig = WorldConfig(),
                        tasks: tuple[str, ...] = DEFAULT_TASKS, fps: float = 8.0, progress: bool = True,
                        workers: int = 1, needles: int = 0, needle_chars: tuple[int, int] = (200, 12000),
                        needle_spread: NeedleSpread = "uniform", needle_depths: tuple[float, float] = (0.0, 1.0),
                        needle_keys: tuple[int, int] = (1, 1), qa_types: tuple[str, ...] = QUESTION_TYPES) -> Path:
    """Render the clips of `seeds` under `out_dir` with their files (see `clip_files`) and write
    `out_dir/manifest.jsonl`, one JSON record per line (see `world_records`); returns its path.

    Use `split_seeds("train", n)` for training data and `split_seeds("held_out", n)` for evaluation.
    `workers` processes render in parallel; the manifest is the same whatever their number. `needles`
    adds that many needle-retrieval records (see `needle_records`) after the clips' records. `qa_types`
    narrows the questions that `video_qa` asks (conversations keep every type).
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; expected some of {TASKS}")
    unknown = set(qa_types) - set(QUESTION_TYPES)
    if unknown:
        raise ValueError(f"unknown question types {sorted(unknown)}; expected some of {QUESTION_TYPES}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out_dir = Path(out_dir)
    for folder in ("clips", "images", "openings", "continuation"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    # first: bad settings fail before any rendering
    needle_examples = needle_records(needles, needle_chars, needle_spread, needle_depths, keys=needle_keys)
    seeds = list(seeds)
    render_one = partial(_write_clip, out_dir=out_dir, config=config, tasks=tasks, fps=fps, qa_types=qa_types)
    manifest = out_dir / "manifest.jsonl"
    with manifest.open("w") as sink, _pool(workers) as pool:
        rendered = pool.imap(render_one, seeds, chunksize=16) if pool else map(render_one, seeds)
        for records in tqdm(rendered, total=len(seeds), desc="world clips", disable=not progress):
            for record in records:
                sink.write(json.dumps(record) + "\n")
        for record in needle_examples:
            sink.write(json.dumps(record) + "\n")
    return manifest


NeedleSpread = Literal["uniform", "log"]


def needle_records(count: int, chars: tuple[int, int], spread: NeedleSpread = "uniform",
                   depths: tuple[float, float] = (0.0, 1.0), seeds: range | None = None,
                   keys: tuple[int, int] = (1, 1)) -> list[dict]:
    """`count` needle-retrieval records (lwm.world.needles) at training seeds: needles at depths drawn
    uniformly from `depths` (0: the haystack's start) in a haystack whose length in characters is drawn
    from `chars` uniformly or log-uniformly (`spread`; "log" gives the short haystacks, where a model first
    learns to copy, a larger share). Shallow depths in long haystacks train the longest distances, which
    uniform depths make rare. The tokenizer does not exist yet when the world is written; its tokens per
    character decide the lengths in tokens.

    A record hides between `keys[0]` and `keys[1]` needles, each with its own key (uniformly many); with
    more than one, the question asks for one of them or, as often, for all (the multi-needle variants of
    the needle eval, as RULER asks). The default, one needle, draws exactly the records it always did.
    """
    low, high = chars
    if count < 0 or not 0 < low <= high:
        raise ValueError(f"need count >= 0 and 0 < shortest <= longest haystack, got {count} and {chars}")
    if not 0 <= depths[0] <= depths[1] <= 1:
        raise ValueError(f"needle depths must satisfy 0 <= shallowest <= deepest <= 1, got {depths}")
    if spread not in ("uniform", "log"):
        raise ValueError(f"needle spread must be 'uniform' or 'log', got {spread!r}")
    if not 1 <= keys[0] <= keys[1] <= len(needles.KEYS):
        raise ValueError(f"needle keys must satisfy 1 <= fewest <= most <= {len(needles.KEYS)}, got {keys}")
    seeds = split_seeds("train", count) if seeds is None else seeds
    records = []
    for seed in seeds:
        rng = np.random.default_rng([seed, 7])
        if spread == "uniform":
            length = int(rng.integers(low, high + 1))
        else:
            length = int(np.exp(rng.uniform(np.log(low), np.log(high))))
        hidden = 1 if keys[1] == 1 else int(rng.integers(keys[0], keys[1] + 1))
        ask = "all" if hidden > 1 and rng.random() < 0.5 else None
        try:
            example = needles.make_example(length, rng.uniform(*depths, size=hidden).tolist(), seed, ask=ask)
        except ValueError:
            raise ValueError(f"a haystack of {length} characters cannot hold {hidden} needle(s); make the shortest "
                             f"haystack longer (about 55 characters a needle)") from None
        records.append(example.to_record())
    return records


def _write_clip(seed: int, out_dir: Path, config: WorldConfig, tasks: tuple[str, ...], fps: float,
                qa_types: tuple[str, ...]) -> list[dict]:
    clip = generate_clip(seed, config)
    files = clip_files(seed)
    save_video(clip.frames, out_dir / files["video"], fps=fps, lossless=True)
    save_image(clip.frames[still_frame(clip)], out_dir / files["image"])
    if "text_to_video" in tasks:
        save_video(clip.frames[:TEXT_TO_VIDEO_FRAMES], out_dir / files["opening"], fps=fps, lossless=True)
    if "video_continuation" in tasks:
        context, future = continuation(clip, CONTINUATION_FRAMES, CONTINUATION_FRAMES)
        save_video(context.frames, out_dir / files["context"], fps=fps, lossless=True)
        save_video(future.frames, out_dir / files["future"], fps=fps, lossless=True)
    return world_records(clip, files, tasks, qa_types)


@contextlib.contextmanager
def _pool(workers: int):
    if workers == 1:
        yield None
        return
    # Forked workers would inherit the parent's thread pools; spawn starts them clean.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield pool
