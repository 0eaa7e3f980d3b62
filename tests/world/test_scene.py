"""The synthetic world: determinism, valid ranges, physics against a step-by-step reference, language."""

import json

import numpy as np
import pytest

from lwm.data import world
from lwm.data.manifest import read_manifest
from lwm.media import load_image, load_video

SEEDS = range(100)


@pytest.fixture(scope="module")
def clips():
    return [world.generate_clip(seed) for seed in SEEDS]


def reference_trajectory(start, velocity, size, n_frames, frame_size=64):
    """Step by step: move, and mirror the position at a wall it reached or passed."""
    half = world.SIZES[size] / 2
    bounds = ((half, frame_size - half), (half, frame_size - half))
    walls = (("left", "right"), ("top", "bottom"))
    position, velocity = list(start), list(velocity)
    positions, bounces = [tuple(position)], []
    for frame in range(1, n_frames):
        for axis in range(2):
            position[axis] += velocity[axis]
            low, high = bounds[axis]
            if position[axis] <= low and velocity[axis] < 0:
                position[axis] = 2 * low - position[axis]
                velocity[axis] = -velocity[axis]
                bounces.append((frame, walls[axis][0]))
            elif position[axis] >= high and velocity[axis] > 0:
                position[axis] = 2 * high - position[axis]
                velocity[axis] = -velocity[axis]
                bounces.append((frame, walls[axis][1]))
        positions.append(tuple(position))
    return np.array(positions), sorted(bounces)


def test_same_seed_same_clip_and_different_seeds_differ():
    first, again, other = world.generate_clip(7), world.generate_clip(7), world.generate_clip(8)
    assert np.array_equal(first.frames, again.frames)
    assert [(o.name, o.size, o.velocity, o.bounces) for o in first.objects] == \
        [(o.name, o.size, o.velocity, o.bounces) for o in again.objects]
    assert not np.array_equal(first.frames[0], other.frames[0])
    assert world.caption(first) == world.caption(again)
    assert world.questions(first) == world.questions(again)


def test_clips_stay_in_range(clips):
    config = world.WorldConfig()
    for clip in clips:
        assert clip.frames.dtype == np.uint8
        assert clip.frames.shape[1:] == (64, 64, 3)
        assert config.min_frames <= clip.n_frames <= config.max_frames
        assert 1 <= len(clip.objects) <= 3
        assert len({o.colour for o in clip.objects}) == len(clip.objects)
        assert len({o.shape for o in clip.objects}) == len(clip.objects)
        for obj in clip.objects:
            half = world.SIZES[obj.size] / 2
            assert obj.positions.shape == (clip.n_frames, 2)
            assert obj.positions.min() >= half and obj.positions.max() <= 64 - half
            assert {abs(v) for v in obj.velocity} <= {0, *config.speeds} and any(obj.velocity)
            assert obj.direction in world.DIRECTIONS
            frames = [frame for frame, _ in obj.bounces]
            assert all(config.steps_before_bounce < f < clip.n_frames - 1 for f in frames)
            assert len(set(frames)) == len(frames)
        for i, a in enumerate(clip.objects):
            for b in clip.objects[i + 1:]:
                reach = (world.SIZES[a.size] + world.SIZES[b.size]) / 2
                apart = np.abs(a.positions - b.positions).max(axis=1) >= reach
                assert apart.all(), f"seed {clip.seed}: {a.name} and {b.name} overlap"


def test_the_world_has_variety(clips):
    objects = [obj for clip in clips for obj in clip.objects]
    assert {o.colour for o in objects} == set(world.COLOURS)
    assert {o.shape for o in objects} == set(world.SHAPES)
    assert {o.size for o in objects} == set(world.SIZES)
    assert {o.direction for o in objects} == set(world.DIRECTIONS)
    assert {len(c.objects) for c in clips} == {1, 2, 3}
    bouncing = sum(o.bounced for o in objects) / len(objects)
    assert 0.2 < bouncing < 0.8


def test_physics_matches_a_step_by_step_reference():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = str(rng.choice(list(world.SIZES)))
        half = world.SIZES[size] // 2
        start = tuple(float(v) for v in rng.integers(half + 1, 64 - half, size=2))
        velocity = tuple(int(v) for v in rng.integers(-3, 4, size=2))
        positions, velocities, bounces = world.simulate(start, velocity, size, 40)
        expected_positions, expected_bounces = reference_trajectory(start, velocity, size, 40)
        np.testing.assert_allclose(positions, expected_positions)
        assert list(bounces) == expected_bounces
        steps = np.diff(positions, axis=0)
        moving_freely = np.all(np.abs(steps) == np.abs(velocity), axis=1)
        np.testing.assert_array_equal(velocities[:-1][moving_freely], steps[moving_freely])


def test_rendered_objects_cover_their_shape_and_colour():
    clip = world.generate_clip(3)
    background = np.array(world.BACKGROUND, np.float64)
    for obj in clip.objects:
        colour = np.array(world.COLOURS[obj.colour], np.float64)
        x, y = obj.positions[0].astype(int)
        np.testing.assert_array_equal(clip.frames[0, y, x], colour)
        # Coverage summed over the object's box (and the gap around it) matches the shape's true area.
        side = world.SIZES[obj.size]
        reach = side // 2 + 1
        box = clip.frames[0, max(y - reach, 0):y + reach, max(x - reach, 0):x + reach].astype(np.float64)
        coverage = ((box - background) @ (colour - background) / np.sum((colour - background) ** 2)).sum()
        area = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "diamond": 0.5}[obj.shape] * side**2
        assert abs(coverage - area) < 0.01 * area, (obj.shape, coverage, area)


def test_continuation_is_the_true_future():
    clip = world.generate_clip(11)
    context, future = world.continuation(clip, 4)
    np.testing.assert_array_equal(context.frames, clip.frames[:4])
    np.testing.assert_array_equal(future.frames, clip.frames[4:])
    longer_context, longer = world.continuation(clip, 4, n_future=40)
    assert longer.n_frames == 40
    np.testing.assert_array_equal(longer.frames[: clip.n_frames - 4], clip.frames[4:])
    for obj, before in zip(longer.objects, longer_context.objects):
        expected, _ = reference_trajectory(tuple(before.positions[0]), before.velocity, obj.size, 44)
        np.testing.assert_allclose(obj.positions, expected[4:])
        step = expected[5] - expected[4]
        if np.all(np.abs(step) == np.abs(obj.velocity)):
            assert tuple(step) == obj.velocity
    with pytest.raises(ValueError, match="n_context"):
        world.continuation(clip, 0)


def test_captions_and_prompts_parse_back_to_the_truth(clips):
    for clip in clips:
        truth = {o.colour: o for o in clip.objects}
        for variant in range(4):
            text = world.caption(clip, variant)
            parsed = world.parse_description(text)
            assert [p.colour for p in parsed] == [o.colour for o in clip.objects], text
            for p in parsed:
                obj = truth[p.colour]
                assert (p.shape, p.direction) == (obj.shape, obj.direction), text
                assert p.size in (None, obj.size)
                assert (p.walls or ()) == obj.walls, text
        for p in world.parse_description(world.prompt_for(clip)):
            assert (p.shape, p.size, p.direction) == (truth[p.colour].shape, truth[p.colour].size,
                                                      truth[p.colour].direction)
        frame = world.still_frame(clip)
        for p in world.parse_description(world.describe_frame(clip, frame)):
            x, y = truth[p.colour].positions[frame]
            assert p.region == world.region_of(x, y, 64)
            assert p.shape == truth[p.colour].shape


def test_clip_from_prompt_shows_the_prompt():
    for seed in range(20):
        clip = world.clip_from_prompt("a small green triangle moving up-right and a red circle", seed=seed)
        triangle, circle = clip.objects
        assert (triangle.name, triangle.size, triangle.direction, triangle.bounces) == \
            ("green triangle", "small", "up-right", ())
        assert circle.name == "red circle" and circle.bounces == ()
    bouncing = world.clip_from_prompt("a blue square moving left and bouncing off the left wall", seed=1)
    assert bouncing.objects[0].walls == ("left",)
    still = world.clip_from_prompt("a white diamond in the top left", seed=2, n_frames=1)
    assert still.n_frames == 1
    assert world.region_of(*still.objects[0].positions[0], 64) == "top left"
    assert world.clip_from_prompt("a red circle moving left", seed=5).frames.tobytes() == \
        world.clip_from_prompt("a red circle moving left", seed=5).frames.tobytes()


@pytest.mark.parametrize("prompt, error", [
    ("a purple elephant", "names no object"),
    ("a red circle and a red square", "its own colour"),
    ("a red circle moving left and bouncing off the right wall", "cannot place"),
])
def test_bad_prompts_are_refused_clearly(prompt, error):
    with pytest.raises(ValueError, match=error):
        world.clip_from_prompt(prompt)


def test_questions_answer_from_the_ground_truth(clips):
    seen_types = set()
    for clip in clips:
        qas = world.questions(clip)
        seen_types |= {qa.type for qa in qas}
        answers = {(qa.type, qa.question): qa.answer for qa in qas}
        assert answers[("count", "How many objects are there?")] == world.NUMBER_WORDS[len(clip.objects)]
        for obj in clip.objects:
            assert answers[("colour", f"What colour is the {obj.shape}?")] == obj.colour
            assert answers[("shape", f"What shape is the {obj.colour} object?")] == obj.shape
            assert answers[("direction", f"Which way does the {obj.name} move at the start?")] == obj.direction
            assert answers[("bounce", f"Does the {obj.name} bounce off a wall?")] == ("yes" if obj.bounced else "no")
            # The next wall by the reference physics: the first bounce from the last frame on.
            _, bounces = reference_trajectory(tuple(obj.positions[0]), obj.velocity, obj.size, clip.n_frames + 128)
            upcoming = [b for b in bounces if b[0] >= clip.n_frames - 1]
            key = ("next_wall", f"Which wall will the {obj.name} hit next?")
            if upcoming[0][0] != upcoming[1][0]:
                assert answers[key] == f"the {upcoming[0][1]} wall"
    assert seen_types == set(world.QUESTION_TYPES)


def test_seed_splits_are_disjoint():
    train, held_out = world.split_seeds("train"), world.split_seeds("held_out")
    assert not set(range(train.start, train.stop)) & set(range(held_out.start, held_out.stop))
    assert list(world.split_seeds("held_out", 3)) == [held_out.start, held_out.start + 1, held_out.start + 2]
    with pytest.raises(ValueError, match="unknown split"):
        world.split_seeds("test")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="min_frames"):
        world.WorldConfig(min_frames=10, max_frames=5)
    with pytest.raises(ValueError, match="max_objects"):
        world.WorldConfig(max_objects=4)
    with pytest.raises(ValueError, match="speeds"):
        world.WorldConfig(speeds=(0,))


def test_write_world_dataset(tmp_path):
    manifest = world.write_world_dataset(tmp_path, [5, 6], progress=False)
    records = read_manifest(manifest)
    tasks = {record.task for record in records}
    assert tasks == set(world.DEFAULT_TASKS)
    clip = world.generate_clip(5)
    np.testing.assert_array_equal(load_video(tmp_path / world.clip_files(5)["video"]), clip.frames)  # lossless
    still = load_image(tmp_path / world.clip_files(5)["image"])
    np.testing.assert_array_equal(still, clip.frames[world.still_frame(clip)])
    first = json.loads(manifest.read_text().splitlines()[0])
    assert first == {"video": "clips/0000005.mp4", "caption": world.caption(clip), "task": "video_caption",
                     "direction": "understanding"}
    only_captions = world.write_world_dataset(tmp_path / "captions", [5], tasks=("video_caption",), progress=False)
    assert len(only_captions.read_text().splitlines()) == 1
    with pytest.raises(ValueError, match="unknown tasks"):
        world.write_world_dataset(tmp_path, [5], tasks=("dance",), progress=False)


def test_text_to_video_records_show_the_opening_frames_without_a_bounce(tmp_path):
    seeds = range(40)
    manifest = world.write_world_dataset(tmp_path, seeds, tasks=("text_to_video",), progress=False)
    records = read_manifest(manifest)
    assert len(records) == len(seeds)
    for seed, record in zip(seeds, records):
        clip = world.generate_clip(seed)
        assert record.data["caption"] == world.prompt_for(clip)
        frames = load_video(record.data["video"])
        np.testing.assert_array_equal(frames, clip.frames[: world.TEXT_TO_VIDEO_FRAMES])
        for obj in clip.objects:  # what the prompt says holds on every frame shown: no bounce yet
            assert all(frame >= world.TEXT_TO_VIDEO_FRAMES for frame, _ in obj.bounces)


def test_video_qa_can_ask_some_question_types_only(tmp_path):
    motion = ("direction", "bounce", "next_wall")
    manifest = world.write_world_dataset(tmp_path, [5, 6], tasks=("video_qa", "video_conversation"),
                                         qa_types=motion, progress=False)
    records = read_manifest(manifest)
    asked = {record.data["messages"][0]["content"][0]["text"] for record in records if record.task == "video_qa"}
    wanted = {qa.question for seed in (5, 6) for qa in world.questions(world.generate_clip(seed)) if qa.type in motion}
    assert asked == wanted
    assert sum(record.task == "video_conversation" for record in records) == 2
    with pytest.raises(ValueError, match="unknown question types"):
        world.write_world_dataset(tmp_path, [5], qa_types=("speed",), progress=False)


def test_conversations_ask_several_questions_with_the_video_first(clips):
    lengths = set()
    for clip in clips[:30]:
        messages = world.conversation(clip, "clips/x.mp4")
        roles = [message["role"] for message in messages]
        assert roles == ["user", "assistant"] * (len(messages) // 2)
        lengths.add(len(messages) // 2)
        media = [(turn, part) for turn, message in enumerate(messages) for part in message["content"]
                 if part["type"] != "text"]
        assert media == [(0, {"type": "video", "path": "clips/x.mp4"})]
        answers = {qa.question: qa.answer for qa in world.questions(clip)}
        asked = [message["content"][0]["text"] for message in messages[::2]]
        assert len(set(asked)) == len(asked)
        assert [message["content"][0]["text"] for message in messages[1::2]] == [answers[q] for q in asked]
    assert lengths == set(range(world.CONVERSATION_TURNS[0], world.CONVERSATION_TURNS[1] + 1))
    assert world.conversation(clips[0], "a.mp4") == world.conversation(clips[0], "a.mp4")


def test_opt_in_tasks_write_conversations_and_unconditional_stills(tmp_path):
    manifest = world.write_world_dataset(tmp_path, [5], tasks=("video_conversation", "unconditional"), progress=False)
    records = {record.task: record for record in read_manifest(manifest)}
    assert set(records) == {"video_conversation", "unconditional"}
    assert records["unconditional"].data["direction"] == "unconditional"
    assert records["unconditional"].data["image"] == str(tmp_path / world.clip_files(5)["image"])
    first_turn = records["video_conversation"].data["messages"][0]["content"]
    assert first_turn[1] == {"type": "video", "path": str(tmp_path / world.clip_files(5)["video"])}


def test_world_dataset_is_the_same_with_parallel_workers(tmp_path):
    one = world.write_world_dataset(tmp_path / "one", [5, 6, 7], progress=False, needles=2)
    two = world.write_world_dataset(tmp_path / "two", [5, 6, 7], progress=False, needles=2, workers=2)
    assert one.read_text() == two.read_text()
    for name in ("clips/0000006.mp4", "continuation/0000007_future.mp4"):
        np.testing.assert_array_equal(load_video(tmp_path / "one" / name), load_video(tmp_path / "two" / name))


def test_continuation_records_show_and_ask_for_a_fixed_number_of_frames(tmp_path):
    world.write_world_dataset(tmp_path, [5], tasks=("video_continuation",), progress=False)
    clip = world.generate_clip(5)
    context, future = world.continuation(clip, world.CONTINUATION_FRAMES, world.CONTINUATION_FRAMES)
    files = world.clip_files(5)
    for name, truth in (("context", context), ("future", future)):
        frames = load_video(tmp_path / files[name])
        assert len(frames) == world.CONTINUATION_FRAMES
        assert np.abs(frames.astype(int) - truth.frames).mean() < 3


def test_needle_records_train_the_layout_the_needle_eval_asks(tmp_path):
    manifest = world.write_world_dataset(tmp_path, [5], tasks=("text",), progress=False, needles=6,
                                         needle_chars=(300, 900))
    needles = [record for record in read_manifest(manifest) if record.task == "needle"]
    assert len(needles) == 6
    raw = [json.loads(line) for line in manifest.read_text().splitlines()][1:]
    lengths = []
    for seed, record in zip(world.split_seeds("train", 6), raw):
        prompt = record["messages"][0]["content"][0]["text"]
        answer = record["messages"][1]["content"][0]["text"]
        context, question = prompt.rsplit("\n\n", 1)
        key = question.removeprefix("What is the special magic number for ").removesuffix("?")
        assert f"The special magic number for {key} is {answer}." in context
        lengths.append(len(context))
        assert 300 - 60 <= len(context) <= 900  # the longest whole sentences that fit
    assert len(set(lengths)) > 1
    with pytest.raises(ValueError, match="haystack"):
        world.needle_records(2, (0, 10))


def test_log_spread_needles_give_short_haystacks_a_larger_share():
    def lengths(spread):
        records = world.needle_records(400, (100, 10000), spread)
        return np.array([len(r["messages"][0]["content"][0]["text"]) for r in records])

    uniform, log = lengths("uniform"), lengths("log")
    assert uniform.max() > 8000 and log.max() > 6000  # both reach the long end
    assert (uniform < 1000).mean() < 0.15 < 0.4 < (log < 1000).mean()  # expected 9% and 50%
    assert np.array_equal(lengths("uniform"), uniform)
    with pytest.raises(ValueError, match="spread"):
        world.needle_records(2, (100, 200), "normal")
