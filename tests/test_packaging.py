"""The package installs like one: a wheel built from the source tree and installed in a fresh virtual
environment, away from the tree, finds its presets and its bundled model through the package.

The fresh environment reaches the heavy dependencies (torch, transformers, ...) through a .pth file
naming this environment's site-packages; the wheel goes in with `--no-deps`, so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lwm import media, world

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no source tree
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh virtual environment holding only the wheel of this tree."""
    root = tmp_path_factory.mktemp("wheel")
    ignored = [line.strip() for line in (REPO / ".gitignore").read_text().splitlines() if line.strip()]
    source = shutil.copytree(REPO, root / "source", ignore=shutil.ignore_patterns(".git", *(p.rstrip("/") for p in ignored)))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(root / "dist"),
         str(source)], cwd=root)
    (wheel,) = (root / "dist").glob("lwm_pytorch-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], cwd=root)
    python = root / "env" / "bin" / "python"
    fresh_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip())
    (fresh_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)], cwd=root)
    return root / "env" / "bin"


def test_the_wheel_holds_its_presets_and_its_bundled_model(installed, tmp_path):
    shown = run([str(installed / "python"), "-c", "import lwm; from lwm import LWMConfig; "
                 "print(lwm.__file__); print(LWMConfig.from_preset('tiny').hidden_size)"], cwd=tmp_path)
    location, hidden = shown.split()
    assert Path(location).is_relative_to(installed.parent) and hidden == "64"
    clip = world.generate_clip(world.split_seeds("held_out")[0])
    media.save_video(clip.frames, tmp_path / "clip.mp4", lossless=True)
    caption = run([str(installed / "lwm"), "caption", "clip.mp4"], cwd=tmp_path)
    assert world.parse_description(caption), f"the bundled model's caption names no object: {caption!r}"
