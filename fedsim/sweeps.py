"""Sweeps: one scenario, a grid of overrides and seeds, each cell a full run.

A scenario file may carry a ``[sweep]`` table::

    [sweep]
    seeds = [0, 1]
    max_cells = 64            # refuse bigger grids unless --yes
    parallel = 0              # cells at once (0 = cores; Ray scenarios run one at a time)
    [sweep.axes]
    "strategy.name" = ["fedavg", "fedprox"]
    "data.partitioner.alpha" = [0.1, 1.0]

Several keys that must change together form one axis of named ``variants`` (it comes
first, before the ``axes``)::

    [sweep.variants]
    "FedAvg, drop stragglers" = { "strategy.name" = "fedavg", "round.policy" = "deadline" }
    "FedProx mu=1" = { "strategy.name" = "fedprox", "strategy.proximal_mu" = 1.0, "round.policy" = "partial_work" }

``fedsim sweep FILE`` expands the cartesian product (axes in the order written, seeds
last), validates every cell before running any, runs them (each deterministic), and
keeps ``sweep.json`` in the output folder: every cell's overrides, seed, folder, status
and error. Re-running the command skips completed cells (their folder holds
summary.json) and redoes the rest, so an interrupted sweep resumes. A cell that fails is
recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import dataclasses
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedsim.config import Config, from_dict, load_toml
from fedsim.core.errors import ConfigError
from fedsim.core.schema import option, parse

MANIFEST = "sweep.json"


@dataclasses.dataclass(frozen=True)
class SweepSection:
    axes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    variants: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = option((), ge=0, doc="seeds of every cell; empty = the scenario's run.seed")
    max_cells: int = option(64, ge=1, le=1_000_000, doc="a bigger grid needs --yes")
    parallel: int = option(0, ge=0, le=1024, doc="cells run at once; 0 = number of cores")
    target: float = option(0.8, gt=0.0, le=1.0, doc="the report's target accuracy (rounds and virtual time to reach it)")


VARIANT = "variant"


@dataclasses.dataclass(frozen=True)
class Cell:
    index: int
    point: dict[str, Any]  # axis -> value (the variant axis -> the variant's name)
    overrides: dict[str, Any]  # dotted config key -> value, variants expanded
    seed: int

    @property
    def id(self) -> str:
        digest = hashlib.sha1(json.dumps([self.overrides, self.seed], sort_keys=True, default=str).encode())
        return f"cell-{self.index:03d}-{digest.hexdigest()[:8]}"

    @property
    def label(self) -> str:
        return ", ".join(str(v) if k == VARIANT else f"{k}={describe(v)}" for k, v in self.point.items()) or "base"


def describe(value: Any) -> str:
    """A short, unambiguous label: ``shards(shards_per_client=2)``, ``[int8, topk(k=0.1)]``."""
    if isinstance(value, Mapping):
        rest = ", ".join(f"{k}={describe(v)}" for k, v in value.items() if k != "name")
        if "name" in value:
            return f"{value['name']}({rest})" if rest else str(value["name"])
        return "{" + rest + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    return str(value)



def set_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` at dotted ``key`` of raw scenario data (``a.b.c``)."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if isinstance(nxt, str) and part in ("model", "strategy", "dataset", "partitioner"):
            nxt = {"name": nxt}
        elif nxt is None:
            nxt = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"sweep.axes.{key}", value, f"{'.'.join(parts[: i + 1])} is not a table")
        node[part] = nxt
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


@dataclasses.dataclass
class Sweep:
    base: dict[str, Any]  # the scenario without [sweep]
    spec: SweepSection
    cells: list[Cell]
    source: str
    axes: dict[str, list[Any]]

    def config(self, cell: Cell) -> Config:
        raw = copy.deepcopy(self.base)
        for key, value in cell.overrides.items():
            set_value(raw, key, value)
        raw.setdefault("run", {})
        raw["run"]["seed"] = cell.seed
        name = raw["run"].get("name", "sweep")
        raw["run"]["name"] = f"{name}-{cell.id}"
        raw.setdefault("report", {})["progress"] = False
        return from_dict(raw)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    from fedsim.core.overrides import apply_overrides

    raw = apply_overrides(load_toml(path), overrides or [])
    if "sweep" not in raw:
        raise ConfigError("sweep", None, "required: this scenario has no [sweep] table to expand")
    spec = parse(SweepSection, raw.pop("sweep"), "sweep")
    if not spec.axes and not spec.variants and len(spec.seeds) < 2:
        raise ConfigError("sweep.axes", {}, "needs at least one axis, variants, or several seeds")
    for key, values in spec.axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.axes.{key}", values, "must be a non-empty list of values")
        if key == VARIANT:
            raise ConfigError("sweep.axes.variant", values, "is reserved: declare [sweep.variants] instead")
    for name, edits in spec.variants.items():
        if not isinstance(edits, Mapping) or not edits:
            raise ConfigError(f"sweep.variants.{name}", edits, 'must be a non-empty table of "key" = value')
        clash = sorted(set(edits) & set(spec.axes))
        if clash:
            raise ConfigError(f"sweep.variants.{name}", clash[0], "is also a sweep axis; set it in one place")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError("sweep.seeds", list(spec.seeds), "must not repeat a seed")
    seeds = list(spec.seeds) or [int(raw.get("run", {}).get("seed", 0))]
    axes: dict[str, list[Any]] = ({VARIANT: list(spec.variants)} if spec.variants else {})
    axes.update({k: list(v) for k, v in spec.axes.items()})
    keys = list(axes)
    combos = list(itertools.product(*(axes[k] for k in keys))) if keys else [()]
    cells = []
    for i, (combo, seed) in enumerate(itertools.product(combos, seeds)):
        point = dict(zip(keys, combo))
        overrides = {}
        for k, v in point.items():
            overrides.update(dict(spec.variants[v]) if k == VARIANT else {k: v})
        cells.append(Cell(i, point, overrides, seed))
    sweep = Sweep(base=raw, spec=spec, cells=cells, source=str(path), axes=axes)
    # Validate every cell before running any: an axis naming an unknown key fails here.
    for cell in cells:
        try:
            sweep.config(cell)
        except ConfigError as exc:
            raise _blame(exc, cell, spec) from None
    return sweep


def _blame(exc: ConfigError, cell: Cell, spec: SweepSection) -> ConfigError:
    """Name the sweep axis (or variant) behind a cell's configuration error."""
    def hits(key: str) -> bool:
        return exc.field == key or exc.field.startswith(key + ".") or key.startswith(exc.field + ".")

    for key in spec.axes:
        if hits(key):
            return ConfigError(f"sweep.axes.{key}", exc.value, exc.allowed)
    name = cell.point.get(VARIANT)
    if name is not None:
        for key in spec.variants[name]:
            if hits(key):
                return ConfigError(f"sweep.variants.{name}.{key}", exc.value, exc.allowed)
    return exc


def _run_cell(payload: tuple[dict[str, Any], str]) -> tuple[str, str | None, float]:
    """In a worker process: run one cell; (status, error, seconds)."""
    raw, out = payload
    start = time.perf_counter()
    try:
        import fedsim

        fedsim.run(from_dict(raw), out_dir=out)
        return "done", None, time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the sweep goes on
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
        return "failed", f"{type(exc).__name__}: {exc}{where}", time.perf_counter() - start


def run_sweep(sweep: Sweep, out_dir: str | Path, *, yes: bool = False, parallel: int | None = None,
              on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    out = Path(out_dir)
    if len(sweep.cells) > sweep.spec.max_cells and not yes:
        raise ConfigError("sweep", f"{len(sweep.cells)} cells", f"more than sweep.max_cells ({sweep.spec.max_cells}); "
                                                                "pass --yes to run it anyway")
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    entries = {c["id"]: c for c in previous.get("cells", [])}
    manifest = {"scenario": sweep.source, "target": sweep.spec.target, "axes": sweep.axes,
                "seeds": sorted({c.seed for c in sweep.cells}), "cells": []}
    todo = []
    for cell in sweep.cells:
        folder = out / cell.id
        entry = {"id": cell.id, "index": cell.index, "label": cell.label, "point": cell.point, "overrides": cell.overrides,
                 "seed": cell.seed, "dir": cell.id}
        if (folder / "summary.json").exists():
            entry.update(status="done", error=None, wall_s=entries.get(cell.id, {}).get("wall_s"))
        else:
            if folder.exists():
                shutil.rmtree(folder)  # an interrupted cell starts over
            entry.update(status="pending", error=None, wall_s=None)
            todo.append(cell)
        manifest["cells"].append(entry)
    _write(manifest_path, manifest)
    by_id = {e["id"]: e for e in manifest["cells"]}
    uses_ray = sweep.base.get("executor", {}).get("name") == "ray"
    workers = 1 if uses_ray else (parallel or sweep.spec.parallel or os.cpu_count() or 1)
    workers = max(1, min(workers, len(todo))) if todo else 1
    payloads = {cell.id: (_plain(sweep.config(cell)), str(out / cell.id)) for cell in todo}

    def record(cell_id: str, result: tuple[str, str | None, float]) -> None:
        status, error, seconds = result
        by_id[cell_id].update(status=status, error=error, wall_s=seconds)
        _write(manifest_path, manifest)
        if on_cell is not None:
            on_cell(by_id[cell_id])

    if workers == 1:
        for cell in todo:
            record(cell.id, _run_cell(payloads[cell.id]))
    else:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_cell, payloads[cell.id]): cell.id for cell in todo}
            for fut in cf.as_completed(futures):
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by the OS
                    result = ("failed", f"{type(exc).__name__}: {exc}", 0.0)
                record(futures[fut], result)
    return manifest


def _plain(cfg: Config) -> dict[str, Any]:
    from fedsim.report import _drop_none

    return _drop_none(cfg.to_dict())


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
