"""Test-wide settings.

Tiny models are dominated by per-op overhead, and distributed tests run several processes on CI's
two cores: one intra-op thread per process avoids oversubscription (it made tiny-model layers up to
20x slower on a loaded 2-core machine). Spawned processes inherit it through the environment.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

pytest_plugins = ["tests.helpers.tiny"]  # the session's tiny model folder and media (tiny_model_dir, media_dir)
