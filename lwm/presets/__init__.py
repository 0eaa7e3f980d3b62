"""Named configurations shipped inside the package: `models/` for `LWMConfig.from_preset`, `vqgan/`
for `VQGANConfig.from_preset`.

They are package data read through importlib.resources, so an installed wheel finds them without the
source tree.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

KINDS = {"models": "model", "vqgan": "VQGAN"}  # folder -> how an error names its presets

__all__ = ["KINDS", "preset_names", "read_preset"]


def preset_names(kind: str) -> list[str]:
    """The presets of `kind` ("models" or "vqgan"), sorted."""
    return sorted(entry.name.removesuffix(".json") for entry in _folder(kind).iterdir() if entry.name.endswith(".json"))


def read_preset(kind: str, name: str) -> dict:
    """The fields of preset `name` of `kind`, or of the JSON file `name` ends in ".json", without its `_comment`."""
    if name.endswith(".json"):
        entry = Path(name)
        if not entry.is_file():
            raise ValueError(f"{name}: no such {KINDS[kind]} config file")
    else:
        entry = _folder(kind) / f"{name}.json"
        if not entry.is_file():
            raise ValueError(f"unknown {KINDS[kind]} preset {name!r}; available: {', '.join(preset_names(kind))}")
    fields = json.loads(entry.read_text())
    fields.pop("_comment", None)
    return fields


def _folder(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown kind of preset {kind!r}; one of {', '.join(KINDS)}")
    return resources.files(__name__) / kind
