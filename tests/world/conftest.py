import pytest

from lwm import world

SEEDS = range(100)


@pytest.fixture(scope="session")
def clips():
    """The world's first 100 training clips."""
    return [world.generate_clip(seed) for seed in SEEDS]
