"""The packages of `lwm` import downward only, in the layer order of docs/architecture.md.

A module may import its own package and the packages of lower layers; packages of one layer never
import each other. Every import counts, also those inside functions, so a lazy import cannot hide an
upward one. The root `lwm/__init__.py` hands names on lazily and belongs to no layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def documented_layers(architecture: Path) -> list[set[str]]:
    """The layers of the fenced block under "## Layers" in docs/architecture.md, top layer first."""
    text = architecture.read_text()
    section = text.split("## Layers", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [{f"lwm.{name.strip()}" for name in line.split("|")} for line in block.strip().splitlines()]


def package_of(module: str) -> str:
    """lwm.<package> of a module name ("lwm.model.attention.ring" -> "lwm.model"); "lwm" for the root."""
    return ".".join(module.split(".")[:2])


def imports(root: Path) -> dict[str, set[str]]:
    """For each module under root/lwm: the lwm modules it imports (`from X import y` names X.y when y is a module)."""
    modules = {}
    for path in sorted((root / "lwm").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    found = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                            for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                raise AssertionError(f"{path}: a relative import; the package imports itself by absolute names")
        found[name] = {target for target in targets if target == "lwm" or target.startswith("lwm.")}
    return found


def upward_imports(root: Path, layers: list[set[str]]) -> list[str]:
    """Every import of a higher layer's package or of a sibling's, and every package without a layer."""
    depth = {package: index for index, layer in enumerate(layers) for package in layer}
    depth["lwm.__main__"] = -1  # `python -m lwm`, the entry point above every layer
    problems = []
    for module, targets in imports(root).items():
        source = package_of(module)
        if source == "lwm":
            continue
        if source not in depth:
            problems.append(f"{source} has no layer in docs/architecture.md")
            continue
        for target in sorted(targets):
            package = package_of(target)
            if package in ("lwm", source):
                continue
            if package not in depth or depth[package] <= depth[source]:
                problems.append(f"{module} imports {target}: {package} is not in a layer below {source}")
    return sorted(set(problems))


def test_layers_import_downward_only():
    layers = documented_layers(REPO / "docs" / "architecture.md")
    assert upward_imports(REPO, layers) == []


def test_the_check_finds_an_upward_import_and_a_sibling_import(tmp_path):
    def module(name: str, text: str = "") -> None:
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for package in ("lwm", "lwm.model", "lwm.data", "lwm.world", "lwm.api"):
        module(f"{package}.__init__")
    module("lwm.model.modeling", "def forward():\n    from lwm.api import LWM\n")  # lazy, and still upward
    module("lwm.data.loader", "from lwm.world import scene\n")
    module("lwm.world.scene", "import lwm.model.modeling\n")
    layers = [{"lwm.api"}, {"lwm.data", "lwm.world"}, {"lwm.model"}]
    assert upward_imports(tmp_path, layers) == [
        "lwm.data.loader imports lwm.world.scene: lwm.world is not in a layer below lwm.data",
        "lwm.model.modeling imports lwm.api: lwm.api is not in a layer below lwm.model",
    ]
