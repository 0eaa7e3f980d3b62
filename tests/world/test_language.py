"""The world's language: captions and prompts parse back to the truth, clips drawn from prompts,
questions answered from the ground truth."""

import pytest

from lwm import world
from tests.world.test_scene import reference_trajectory  # the physics, step by step


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


def test_a_frame_described_with_centres_adds_each_objects_centre_after_its_region():
    clip = world.generate_clip(5)
    frame = world.still_frame(clip)
    plain, placed = world.describe_frame(clip, frame), world.describe_frame(clip, frame, centres=True)
    for obj in clip.objects:
        x, y = obj.positions[frame]
        region = obj.description(frame, clip.frame_size).region
        assert f"{obj.colour} {obj.shape} in the {region} at {round(x)}, {round(y)}" in placed
    assert placed.count(" at ") == len(clip.objects) and " at " not in plain
    assert world.image_prompt_for(clip, frame, centres=True) == placed[0].lower() + placed[1:-1]
    assert [p.colour for p in world.parse_description(placed)] == [p.colour for p in world.parse_description(plain)]
