"""The judge reads world clips back exactly, also through lossy video and blur, and rejects noise."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lwm import world
from lwm.media import load_video, save_video
from lwm.world import judge

SEEDS = range(200)


@pytest.fixture(scope="module")
def clips():
    return [world.generate_clip(seed) for seed in SEEDS]


def truth(clip):
    return sorted((o.colour, o.shape, o.size, o.direction, o.walls) for o in clip.objects)


def seen(judgement):
    return sorted((o.colour, o.shape, o.size, o.direction, o.walls) for o in judgement.objects)


def blur(frames, radius):
    return np.stack([np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(radius))) for frame in frames])


def test_reads_every_ground_truth_clip_exactly(clips):
    for clip in clips:
        judgement = judge.judge(clip.frames)
        assert seen(judgement) == truth(clip), f"seed {clip.seed}"
        for obj in judgement.objects:
            true = next(o for o in clip.objects if o.colour == obj.colour)
            assert np.abs(obj.positions - true.positions).max() < 0.1


def test_reads_clips_after_an_mp4_round_trip(clips, tmp_path):
    for clip in clips[:100]:
        path = tmp_path / f"{clip.seed}.mp4"
        save_video(clip.frames, path)
        judgement = judge.judge(load_video(path))
        assert seen(judgement) == truth(clip), f"seed {clip.seed}"
        for obj in judgement.objects:
            true = next(o for o in clip.objects if o.colour == obj.colour)
            assert not np.isnan(obj.positions).any()
            assert np.abs(obj.positions - true.positions).max() < 1.0


def half_resolution(frames):
    def resize(frame, size):
        return frame.resize((size, size), Image.BILINEAR)
    return np.stack([np.asarray(resize(resize(Image.fromarray(frame), 32), 64)) for frame in frames])


def blur_and_noise(frames, rng):
    return np.clip(blur(frames, 1.0) + rng.normal(0, 8, frames.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("degrade", ["blur", "blur_and_noise", "half_resolution"])
def test_reads_degraded_clips(clips, degrade):
    rng = np.random.default_rng(0)
    apply = {"blur": lambda f: blur(f, 1.5), "blur_and_noise": lambda f: blur_and_noise(f, rng),
             "half_resolution": half_resolution}[degrade]
    for clip in clips[:30]:
        assert seen(judge.judge(apply(clip.frames))) == truth(clip), f"seed {clip.seed}"


def _background(n_frames=8):
    return np.broadcast_to(np.array(world.BACKGROUND, np.uint8), (n_frames, 64, 64, 3)).copy()


def _noise_cases():
    rng = np.random.default_rng(0)
    palette = np.array(list(world.COLOURS.values()), np.uint8)
    y, x = np.indices((64, 64))
    radius = np.hypot(y - 32, x - 32)
    cases = {
        "uniform noise": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8),
        "blocky noise": np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), 8, 1), 8, 2),
        "noise on the background": np.clip(_background() + rng.normal(0, 30, (8, 64, 64, 3)), 0, 255).astype(np.uint8),
    }
    speckles = _background()
    dots = rng.random((8, 64, 64)) < 0.08
    speckles[dots] = palette[rng.integers(0, len(palette), dots.sum())]
    cases["scattered palette pixels"] = speckles
    line = _background()
    line[:, 30:33, 10:50] = world.COLOURS["red"]
    cases["a line"] = line
    ring = _background()
    ring[:, (radius < 12) & (radius > 8)] = world.COLOURS["green"]
    cases["a ring"] = ring
    speckled_disc = _background()
    speckled_disc[:, (rng.random((64, 64)) < 0.5) & (radius < 14)] = world.COLOURS["yellow"]
    cases["a speckled disc"] = speckled_disc
    return cases


@pytest.mark.parametrize("name", list(_noise_cases()))
def test_rejects_noise(name):
    frames = _noise_cases()[name]
    judgement = judge.judge(frames)
    assert not judgement.valid and judgement.objects == ()
    assert judgement.reason
    assert not judge.score(frames, "a red circle moving left").correct


def test_scores_videos_against_prompts(clips):
    for clip in clips[:30]:
        result = judge.score(clip.frames, world.prompt_for(clip))
        assert result.correct, (clip.seed, result.checks)
        assert {"count", "colour", "shape", "size", "direction"} <= set(result.checks)
    clip = next(c for c in clips if len(c.objects) == 1 and c.objects[0].direction == "left")
    obj = clip.objects[0]
    wrong_direction = judge.score(clip.frames, f"a {obj.colour} {obj.shape} moving right")
    assert not wrong_direction.correct and not wrong_direction.checks["direction"]
    assert wrong_direction.checks["colour"] and wrong_direction.checks["shape"]
    other_shape = next(s for s in world.SHAPES if s != obj.shape)
    wrong_shape = judge.score(clip.frames, f"a {obj.colour} {other_shape} moving left")
    assert not wrong_shape.correct and not wrong_shape.checks["shape"]
    other_colour = next(c for c in world.COLOURS if c != obj.colour)
    assert not judge.score(clip.frames, f"a {other_colour} {obj.shape} moving left").checks["colour"]
    two_objects = f"a {obj.colour} {obj.shape} and a {other_colour} {other_shape}"
    assert not judge.score(clip.frames, two_objects).checks["count"]


def test_scores_images_against_descriptions(clips):
    for clip in clips[:30]:
        frame = world.still_frame(clip)
        description = world.describe_frame(clip, frame)
        result = judge.score(clip.frames[frame], description)
        assert result.correct, (clip.seed, description, result.checks)
        assert result.checks["region"]
        assert judge.score(clip.frames[frame], world.image_prompt_for(clip, frame)).correct
    clip = clips[0]
    obj = clip.objects[0]
    x, y = obj.positions[0]
    far = "bottom right" if x < 32 and y < 32 else "top left"
    result = judge.score(clip.frames[0], f"a {obj.colour} {obj.shape} in the {far}")
    assert not result.checks["region"]


def test_generated_stills_match_their_prompt():
    for seed in range(10):
        prompt = "a small magenta triangle in the bottom left"
        image = world.clip_from_prompt(prompt, seed=seed, n_frames=1).frames[0]
        assert judge.score(image, prompt).correct


def test_scores_captions_against_the_truth(clips):
    for clip in clips[:50]:
        for variant in range(4):
            assert judge.score_caption(world.caption(clip, variant), clip).correct
    clip = next(c for c in clips if len(c.objects) == 2)
    first, second = clip.objects
    assert not judge.score_caption(f"A {first.colour} {first.shape} moves {first.direction}.", clip).correct
    assert not judge.score_caption(world.caption(clip).replace(first.colour, "purple"), clip).correct


@pytest.mark.parametrize("answer, expected, correct", [
    ("red", "red", True), ("Red.", "red", True), ("It is red", "red", True), ("red or blue", "red", False),
    ("blue", "red", False), ("2", "two", True), ("two objects", "two", True), ("three", "two", False),
    ("up-left", "up-left", True), ("up", "up-left", False), ("the left wall", "the left wall", True),
    ("left", "the left wall", True), ("the top wall", "the left wall", False), ("", "red", False),
])
def test_scores_answers(answer, expected, correct):
    qa_type = {"red": "colour", "two": "count", "up-left": "direction", "the left wall": "next_wall"}[expected]
    assert judge.score_answer(answer, world.QA(qa_type, "?", expected)) is correct


@pytest.mark.parametrize("answer, expected, parts", [
    ("up-right", "up-right", (True, True)), ("up", "up-right", (False, True)),
    ("It goes right.", "up-right", (True, False)),
    ("down-left", "up-right", (False, False)), ("left", "left", (True, True)), ("up-left", "left", (True, False)),
    ("up or down", "up", (False, False)), ("", "up", (False, False)),
])
def test_scores_the_parts_of_a_direction(answer, expected, parts):
    assert judge.direction_parts_right(answer, world.QA("direction", "?", expected)) == parts


def test_scores_continuations():
    clip = world.generate_clip(21)
    context, future = world.continuation(clip, clip.n_frames // 2, n_future=8)
    perfect = judge.score_continuation(future.frames, future)
    assert perfect.trajectory_error < 0.1 and perfect.found == 1.0 and perfect.direction_kept
    frozen = judge.score_continuation(np.repeat(context.frames[-1:], 8, axis=0), future)
    assert frozen.trajectory_error > 2 and not frozen.direction_kept
    backwards = judge.score_continuation(context.frames[::-1], future)
    assert not backwards.direction_kept
    empty = judge.score_continuation(_background(8), future)
    assert np.isnan(empty.trajectory_error) and empty.found == 0 and not empty.direction_kept


def test_trajectory_error():
    true = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    seen_positions = np.array([[0.0, 3.0], [np.nan, np.nan], [2.0, 4.0]])
    assert judge.trajectory_error(seen_positions, true) == pytest.approx(3.5)
    assert np.isnan(judge.trajectory_error(np.full((3, 2), np.nan), true))


@pytest.mark.parametrize("frames, error", [
    (np.zeros((4, 64, 64), np.uint8), "shaped"),
    (np.zeros((4, 64, 64, 3), np.float32), "uint8"),
    (np.zeros((0, 64, 64, 3), np.uint8), "shaped"),
])
def test_bad_frames_are_refused_clearly(frames, error):
    with pytest.raises(ValueError, match=error):
        judge.judge(frames)


def test_descriptions_without_world_objects_are_refused():
    with pytest.raises(ValueError, match="names no object"):
        judge.score(_background(2), "a purple elephant")
