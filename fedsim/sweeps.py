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
(done, failed, interrupted, pending), error and the digest of its resolved configuration.

A cell is its resolved configuration (base file, variants, axes, ``--set``; the
``[report]`` section aside, which changes no number). Re-running the command skips a cell
whose folder holds a finished run of the *same* configuration, redoes one whose
configuration changed (saying which fields), resumes one that was interrupted (from its
checkpoint: the same numbers as an uninterrupted run) and runs the rest. So a report never
mixes results of different configurations. A cell that fails is recorded with its error and
the sweep goes on.

Ctrl-C (or SIGTERM) stops dispatching at once: the cells running stop at their round's end
(see `fedsim.interrupt`), each cell's true state is written to ``sweep.json``, and
re-running resumes exactly the unfinished cells.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedsim import report
from fedsim.config import Config, from_dict, load_config, load_toml, resolve_scenario
from fedsim.core.errors import ConfigError
from fedsim.core.schema import option, parse
from fedsim.engine import checkpoint

MANIFEST = "sweep.json"
log = logging.getLogger("fedsim")


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

    raw = apply_overrides(load_toml(resolve_scenario(path)), overrides or [])
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
            raise blame(exc, cell, spec) from None
    return sweep


def check_cells(sweep: Sweep) -> int:
    """`fedsim check` on a sweep: each distinct cell set-up (seeds and names aside) checked as
    `fedsim.runner.check` does, its no-effect settings logged; the number of distinct set-ups.
    A failing cell's error names the sweep axis (or variant) and the cell."""
    from fedsim.runner import check

    checked: set[str] = set()
    for cell in sweep.cells:
        cfg = sweep.config(cell)
        plain = cfg.to_dict()
        plain["run"].pop("seed")
        plain["run"].pop("name")
        key = json.dumps(plain, sort_keys=True, default=str)
        if key in checked:
            continue
        checked.add(key)
        for line in cfg.warnings():
            log.warning("%s (sweep cell %s)", line, cell.label)
        try:
            check(cfg)
        except ConfigError as exc:
            named = blame(exc, cell, sweep.spec)
            blamed = ConfigError(named.field, named.value, f"{named.allowed} (sweep cell {cell.label})")
            blamed.user_frames = getattr(exc, "user_frames", "")  # type: ignore[attr-defined]
            raise blamed from None
    return len(checked)


def blame(exc: ConfigError, cell: Cell, spec: SweepSection) -> ConfigError:
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


def identity(plain: dict[str, Any]) -> dict[str, Any]:
    """What makes a cell's numbers: the resolved configuration without ``[report]``."""
    return {k: v for k, v in plain.items() if k != "report"}


def config_digest(plain: dict[str, Any]) -> str:
    return checkpoint.digest_scenario(identity(plain))


#: What a cell's folder holds, against the configuration the cell has now.
NEW, DONE, CHANGED, RESUME = "new", "done", "changed", "resume"


def folder_state(folder: Path, plain: dict[str, Any]) -> tuple[str, list[str]]:
    """(state, the changed fields when CHANGED) of a cell's folder."""
    if not (folder / report.CONFIG).is_file():
        return NEW, []
    from fedsim import resuming

    try:
        before = _plain(load_config(folder / report.CONFIG))
    except ConfigError as exc:
        return CHANGED, [f"its config.toml no longer loads ({exc})"]
    changed = resuming.changes(identity(before), identity(plain))
    if changed:
        return CHANGED, [c.describe() for c in changed]
    status = report.run_status(folder)
    return (DONE, []) if status in ("completed", "stopped") else (RESUME, [])


#: In a cell process: set by the sweep when it is stopping (no new cell starts then).
_STOPPING: list[Any] = []


def _worker_init(stopping: Any) -> None:
    """A cell process ignores the terminal's Ctrl-C: the sweep stops it with SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOPPING.append(stopping)


def _run_cell(payload: tuple[dict[str, Any], str, bool], in_worker: bool = True) -> tuple[str, str | None, float]:
    """Run (or resume) one cell; (status, error, seconds). In a worker process an
    interruption is a status; in the sweep's own process it propagates."""
    raw, out, resume = payload
    start = time.perf_counter()
    if _STOPPING and _STOPPING[0].is_set():
        return "pending", None, 0.0  # queued before the sweep was stopped: not started
    try:
        import fedsim

        if resume:
            fedsim.resume(out)
        else:
            fedsim.run(from_dict(raw), out_dir=out)
        return "done", None, time.perf_counter() - start
    except KeyboardInterrupt:
        if not in_worker:
            raise
        return "interrupted", None, time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the sweep goes on
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
        return "failed", f"{type(exc).__name__}: {exc}{where}", time.perf_counter() - start


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM stopped a sweep; ``manifest`` holds every cell's true state."""

    def __init__(self, out_dir: Path, manifest: dict[str, Any], signum: int) -> None:
        super().__init__("sweep interrupted")
        self.out_dir = out_dir
        self.manifest = manifest
        self.signum = signum


def _plan(sweep: Sweep, out: Path, previous: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], str, bool]]]:
    """The manifest before running, and the cells to run: id -> (resolved config, folder,
    resume from its checkpoint?)."""
    entries = {c["id"]: c for c in previous.get("cells", [])}
    manifest = {"scenario": sweep.source, "target": sweep.spec.target, "axes": sweep.axes,
                "seeds": sorted({c.seed for c in sweep.cells}), "cells": []}
    todo: dict[str, tuple[dict[str, Any], str, bool]] = {}
    for cell in sweep.cells:
        folder = out / cell.id
        plain = _plain(sweep.config(cell))
        entry = {"id": cell.id, "index": cell.index, "label": cell.label, "point": cell.point, "overrides": cell.overrides,
                 "seed": cell.seed, "dir": cell.id, "config_digest": config_digest(plain)}
        state, changed = folder_state(folder, plain)
        if state == DONE:
            entry.update(status="done", error=None, wall_s=entries.get(cell.id, {}).get("wall_s"))
        else:
            if state == CHANGED:
                log.warning("%s [%s, seed %d]: its configuration changed (%s): redone", cell.id, cell.label, cell.seed,
                            "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else ""))
            resume = state == RESUME and (folder / checkpoint.FILE).is_file()
            if folder.exists() and not resume:
                shutil.rmtree(folder)  # a changed cell, or one interrupted before its first checkpoint, starts over
            entry.update(status="interrupted" if resume else "pending", error=None, wall_s=None)
            todo[cell.id] = (plain, str(folder), resume)
        manifest["cells"].append(entry)
    return manifest, todo


def run_sweep(sweep: Sweep, out_dir: str | Path, *, yes: bool = False, parallel: int | None = None,
              on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the cells not yet done (see the module doc); the manifest. Ctrl-C / SIGTERM end
    it with `SweepInterrupted` once every running cell has stopped and been recorded."""
    out = Path(out_dir)
    if len(sweep.cells) > sweep.spec.max_cells and not yes:
        raise ConfigError("sweep", f"{len(sweep.cells)} cells", f"more than sweep.max_cells ({sweep.spec.max_cells}); "
                                                                "pass --yes to run it anyway")
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest, payloads = _plan(sweep, out, previous)
    _write(manifest_path, manifest)
    by_id = {e["id"]: e for e in manifest["cells"]}
    uses_ray = sweep.base.get("executor", {}).get("name") == "ray"
    workers = 1 if uses_ray else (parallel or sweep.spec.parallel or os.cpu_count() or 1)
    workers = max(1, min(workers, len(payloads))) if payloads else 1

    def record(cell_id: str, result: tuple[str, str | None, float]) -> None:
        status, error, seconds = result
        by_id[cell_id].update(status=status, error=error, wall_s=seconds)
        _write(manifest_path, manifest)
        if on_cell is not None:
            on_cell(by_id[cell_id])

    try:
        if workers == 1:
            for cell_id, payload in payloads.items():
                record(cell_id, _run_cell(payload, in_worker=False))
        else:
            _run_parallel(payloads, workers, record)
    except KeyboardInterrupt as exc:
        _settle(out, manifest, manifest_path)
        signum = getattr(exc, "signum", signal.SIGTERM if type(exc).__name__ == "Terminated" else signal.SIGINT)
        raise SweepInterrupted(out, manifest, signum) from None
    return manifest


def _run_parallel(payloads: dict[str, tuple[dict[str, Any], str, bool]], workers: int,
                  record: Callable[[str, tuple[str, str | None, float]], None]) -> None:
    """Cells in spawned processes, which ignore Ctrl-C; on Ctrl-C (or SIGTERM) here, each gets
    SIGTERM (its run stops at the round's end) and nothing more is dispatched."""
    ctx = mp.get_context("spawn")
    stopping = ctx.Event()
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(stopping,))
    futures: dict[cf.Future, str] = {}
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers start ignoring it too
        try:
            futures = {pool.submit(_run_cell, payload): cell_id for cell_id, payload in payloads.items()}
        finally:
            signal.signal(signal.SIGINT, old)
        for fut in cf.as_completed(futures):
            record(futures[fut], _outcome(fut))
    except KeyboardInterrupt:
        stopping.set()
        for fut in futures:
            fut.cancel()
        for proc in list(getattr(pool, "_processes", {}).values()):  # (no public way to reach the workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGTERM)
        done, _ = cf.wait([f for f in futures if not f.cancelled()], timeout=60)
        for fut in done:
            if not fut.cancelled() and fut.exception() is None and fut.result()[0] in ("done", "failed"):
                record(futures[fut], fut.result())  # the rest: as their folders say (_settle)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _outcome(fut: cf.Future) -> tuple[str, str | None, float]:
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by the OS
        return ("failed", f"{type(exc).__name__}: {exc}", 0.0)


def _settle(out: Path, manifest: dict[str, Any], manifest_path: Path) -> None:
    """After an interruption: each unfinished cell's state as its folder says it."""
    for entry in manifest["cells"]:
        if entry["status"] in ("done", "failed"):
            continue
        status = report.run_status(out / entry["dir"])
        if status in ("completed", "stopped"):
            entry["status"] = "done"
        elif status == "interrupted" or (out / entry["dir"] / checkpoint.FILE).is_file():
            entry["status"] = "interrupted"
        else:
            entry["status"] = "pending"
    _write(manifest_path, manifest)


@dataclasses.dataclass
class SweepResult:
    """What ``fedsim.sweep`` returns: the sweep folder and its manifest (``cells``: each cell's
    id, label, point, seed, status, error, folder). ``runs()`` loads the cells' results."""

    out_dir: Path
    manifest: dict[str, Any]

    @property
    def cells(self) -> list[dict[str, Any]]:
        return list(self.manifest["cells"])

    def count(self, status: str) -> int:
        return sum(c["status"] == status for c in self.manifest["cells"])

    def runs(self) -> Any:
        """The cells' runs, loaded (`fedsim.load_runs`): typed results, ``frame()`` for pandas."""
        import fedsim

        return fedsim.load_runs([self.out_dir])


def default_out(sweep: Sweep) -> Path:
    return Path("results") / f"{sweep.base.get('run', {}).get('name', 'sweep')}-sweep"


def sweep(config: str | Path, *, overrides: list[str] | tuple[str, ...] = (), out_dir: str | Path | None = None,
          parallel: int | None = None, yes: bool = False) -> SweepResult:
    """Run a scenario's ``[sweep]`` grid (a file, or a preset such as ``quickstart-sweep``),
    as ``fedsim sweep`` does: cells already done with the same configuration are kept.
    Ctrl-C raises `SweepInterrupted` once every cell's state is recorded."""
    if parallel is not None and parallel < 1:
        raise ConfigError("parallel", parallel, "must be a number of processes >= 1")
    grid = load_sweep(config, list(overrides))
    out = Path(out_dir) if out_dir is not None else default_out(grid)
    return SweepResult(out, run_sweep(grid, out, yes=yes, parallel=parallel))


def _plain(cfg: Config) -> dict[str, Any]:
    from fedsim.report import _drop_none

    return _drop_none(cfg.to_dict())


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
