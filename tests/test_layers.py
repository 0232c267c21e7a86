"""The layers import in one direction (docs/architecture.md):

    fedsim (app: config, runner, cli, sweep, report...)  ->  fedsim.engine  ->
    fedsim.scenarios / fedsim.clients / fedsim.strategies  ->  fedsim.core

Every import statement of every module counts, including those inside functions.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as.
PACKAGES = {"fedsim": "fedsim", "clients": "fedsim.clients", "scenarios": "fedsim.scenarios",
            "strategies": "fedsim.strategies"}
#: What clients may use of the simulated world: its data side.
DATA_SIDE = ("fedsim.scenarios.federation", "fedsim.scenarios.datasets", "fedsim.scenarios.partitioners",
             "fedsim.scenarios.lazy")
CORE_THIRD_PARTY = ("numpy", "torch", "flwr.app")


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return found


def layer(module: str) -> str:
    if module.startswith("fedsim.core"):
        return "core"
    if module.startswith(("fedsim.scenarios", "fedsim.clients", "fedsim.strategies")):
        return module.split(".")[1]
    if module.startswith("fedsim.engine"):
        return "engine"
    return "app"


def allowed(src: str, dst: str) -> bool:
    a, b = layer(src), layer(dst)
    if a == "app":
        return True
    if a == "engine":
        return b != "app"
    if a == "core":
        return b == "core"
    if a == "clients":
        return b in ("core", "clients") or dst.startswith(DATA_SIDE)
    return b in ("core", a)  # scenarios, strategies: themselves and the foundation


def known(name: str, mods: dict[str, Path]) -> str | None:
    """The fedsim module an import names (``from pkg import mod`` names ``pkg.mod`` if it is one)."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def test_modules_map_to_layers() -> None:
    mods = modules()
    assert {"fedsim.core.errors", "fedsim.engine.grid", "fedsim.clients.app", "fedsim.scenarios.federation",
            "fedsim.strategies.registry", "fedsim.config", "fedsim.runner"} <= set(mods)
    assert layer("fedsim.engine.executors.ray") == "engine" and layer("fedsim.runsetup") == "app"
    assert not allowed("fedsim.clients.app", "fedsim.config") and allowed("fedsim.clients.app", "fedsim.scenarios.federation")
    assert not allowed("fedsim.clients.app", "fedsim.scenarios.byzantine")
    assert not allowed("fedsim.scenarios.lazy", "fedsim.config") and allowed("fedsim.engine.grid", "fedsim.clients.codecs")


def test_no_import_points_up_or_sideways() -> None:
    mods = modules()
    bad = []
    for src, path in mods.items():
        for name in imports(path):
            if not name.startswith("fedsim"):
                continue
            dst = known(name, mods)
            if dst is not None and not allowed(src, dst):
                bad.append(f"{src} -> {dst} ({layer(src)} -> {layer(dst)})")
    assert not bad, "imports against the layer directions:\n" + "\n".join(sorted(set(bad)))


def test_core_uses_only_the_standard_library_numpy_torch_and_flwr_app() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = []
    for src, path in modules().items():
        if layer(src) != "core":
            continue
        for name in imports(path):
            top = name.split(".")[0]
            if top in stdlib or top == "fedsim" or name.startswith(CORE_THIRD_PARTY) or top in ("numpy", "torch"):
                continue
            bad.append(f"{src} imports {name}")
    assert not bad, bad


@pytest.mark.parametrize("module", ["fedsim.clients.app"])
def test_the_clientapp_loads_no_strategy_engine_or_app_module(module: str) -> None:
    """In a fresh process, importing the ClientApp (and reading a run config) loads nothing of the server."""
    code = f"""
import json, sys
import {module}
from fedsim.clients.spec import from_run_config, to_run_config
from fedsim.clients.spec import ClientSpec
loaded = sorted(m for m in sys.modules if m.startswith("fedsim"))
print(json.dumps(loaded))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    server_side = [m for m in loaded if m.startswith(("fedsim.strategies", "fedsim.engine"))
                   or layer(m) == "app" and m != "fedsim"]
    assert not server_side, server_side
    assert "fedsim.clients.app" in loaded and "fedsim.core.schema" in loaded
