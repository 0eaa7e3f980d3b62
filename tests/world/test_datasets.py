"""The world's datasets: disjoint seed splits, the manifest records of each task, needle records."""

import json
import re

import numpy as np
import pytest

from lwm import world
from lwm.data.manifest import read_manifest
from lwm.media import load_image, load_video


def test_seed_splits_are_disjoint():
    train, held_out = world.split_seeds("train"), world.split_seeds("held_out")
    assert not set(range(train.start, train.stop)) & set(range(held_out.start, held_out.stop))
    assert list(world.split_seeds("held_out", 3)) == [held_out.start, held_out.start + 1, held_out.start + 2]
    with pytest.raises(ValueError, match="unknown split"):
        world.split_seeds("test")


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


def test_needle_depths_put_the_needles_where_asked():
    def where(depths):  # each needle's place in its haystack, as a fraction of the haystack's length
        places = []
        for record in world.needle_records(200, (2000, 4000), depths=depths):
            context, question = record["messages"][0]["content"][0]["text"].rsplit("\n\n", 1)
            key = question.removeprefix("What is the special magic number for ").removesuffix("?")
            places.append(context.index(f"The special magic number for {key}") / len(context))
        return np.array(places)

    everywhere, shallow = where((0.0, 1.0)), where((0.0, 0.2))
    assert everywhere.max() > 0.8 and shallow.max() < 0.25  # a sentence's length of slack
    assert shallow.min() < 0.05 and everywhere.mean() > 2 * shallow.mean()
    with pytest.raises(ValueError, match="depths"):
        world.needle_records(2, (100, 200), depths=(0.5, 0.2))


def test_needle_records_with_several_keys_ask_for_one_or_for_all():
    records = world.needle_records(60, (1500, 3000), keys=(2, 4))
    hidden, asked_all = [], 0
    for record in records:
        context, question = record["messages"][0]["content"][0]["text"].rsplit("\n\n", 1)
        answer = record["messages"][1]["content"][0]["text"]
        values = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", context))
        hidden.append(len(values))
        if question.startswith("What are"):  # asked for all: every key named, every value answered
            asked_all += 1
            assert all(key in question for key in values)
            assert sorted(answer.split(", ")) == sorted(values.values())
        else:
            key = question.removeprefix("What is the special magic number for ").removesuffix("?")
            assert values[key] == answer
    assert set(hidden) == {2, 3, 4}
    assert 0.3 < asked_all / len(records) < 0.7
    # one key is the records as they always were
    assert world.needle_records(5, (300, 900), keys=(1, 1)) == world.needle_records(5, (300, 900))
    with pytest.raises(ValueError, match="keys"):
        world.needle_records(2, (100, 200), keys=(0, 2))
    with pytest.raises(ValueError, match=r"cannot hold 4 needle\(s\); make the shortest haystack longer"):
        world.needle_records(2, (80, 90), keys=(4, 4))
