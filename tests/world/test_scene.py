"""The world's scenes: determinism, valid ranges, variety, physics against a step-by-step reference,
rendering, the true future of a clip."""

import numpy as np
import pytest

from lwm import world


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


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="min_frames"):
        world.WorldConfig(min_frames=10, max_frames=5)
    with pytest.raises(ValueError, match="max_objects"):
        world.WorldConfig(max_objects=4)
    with pytest.raises(ValueError, match="speeds"):
        world.WorldConfig(speeds=(0,))
