"""Finished (or interrupted) runs read back from their folders, for notebooks.

``load_run(dir)`` reads one run folder (config.toml, metrics.jsonl, summary.json);
``load_runs(dirs)`` reads run folders and sweep folders (sweep.json: each cell is a run
folder) into ``Runs``, whose ``to_frame()`` is a tidy pandas DataFrame (one row per run
and round) and whose ``plot(...)`` draws a metric per configuration, mean over seeds
(`fedsim.plots`). The folders are read by `fedsim.compare.load`, the loader of ``fedsim
compare``: the same statuses (a run without summary.json is ``interrupted``, its summary
rebuilt from the rounds it recorded), labels and groups as the comparison report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from fedsim import compare
from fedsim.config import load_toml
from fedsim.core.errors import ConfigError
from fedsim.report import CONFIG
from fedsim.sweeps import MANIFEST, describe

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from fedsim.config import Config

Status = Literal["completed", "stopped", "interrupted"]
IDENTITY = ("dir", "label", "seed", "status")  # the frame's first columns


@dataclasses.dataclass(frozen=True, repr=False)
class LoadedRun:
    """A run read back from its folder; the fields follow `fedsim.RunResult`.

    ``config`` is the resolved scenario as written to config.toml (plain data, {} for a
    Flower app's run, which writes none; ``scenario()`` validates it into a `fedsim.Config`),
    ``flat_config`` the same with dotted keys (``"data.partitioner.alpha"``; lists as
    tuples, so that they group), ``history`` the metrics.jsonl records (round 0 = the
    initial model), ``summary`` summary.json (an interrupted run's rebuilt from
    ``history``). ``label`` names the run's configuration as ``fedsim compare`` does (a
    sweep's cell label; else the config keys that differ between the runs loaded
    together), ``point`` the configuration's axis values.
    """

    config: dict[str, Any]
    flat_config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path
    label: str
    seed: int
    status: Status
    point: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        rounds = self.history[-1]["round"] if self.history else None
        return (f"LoadedRun({self.label!r}, seed={self.seed}, status={self.status!r}, rounds={rounds}, "
                f"out_dir={str(self.out_dir)!r})")

    def final(self, key: str) -> Any:
        """The last non-missing value of a metric (like `fedsim.RunResult.final`)."""
        return next((r[key] for r in reversed(self.history) if r.get(key) is not None), None)

    def scenario(self) -> Config:
        """The scenario validated into a `fedsim.Config` (imports its plug-ins)."""
        from fedsim.config import from_dict

        return from_dict(self.config)

    def to_frame(self) -> pd.DataFrame:
        """This run's rounds as a DataFrame (see `Runs.to_frame`)."""
        return Runs([self]).to_frame()


@dataclasses.dataclass(frozen=True)
class FailedCell:
    """A sweep cell whose run raised (nothing to load but the error)."""

    label: str
    seed: int
    error: str
    point: dict[str, Any]


@dataclasses.dataclass(frozen=True, repr=False)
class Runs(Sequence[LoadedRun]):
    """Loaded runs (a sequence of `LoadedRun`), the failed cells of the sweeps among them,
    and the sweeps' axes."""

    runs: list[LoadedRun]
    failed: list[FailedCell] = dataclasses.field(default_factory=list)
    axes: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        groups = "".join(f"\n  {name}: seeds {[r.seed for r in runs]}, {_statuses(runs)}"
                         for name, runs in self.groups().items())
        failed = f"\n  failed sweep cells: {len(self.failed)}" if self.failed else ""
        return f"Runs({len(self.runs)} runs, {len(self.groups())} configurations){groups}{failed}"

    def __len__(self) -> int:
        return len(self.runs)

    @overload
    def __getitem__(self, index: int) -> LoadedRun: ...

    @overload
    def __getitem__(self, index: slice) -> Runs: ...

    def __getitem__(self, index: int | slice) -> LoadedRun | Runs:
        if isinstance(index, slice):
            return dataclasses.replace(self, runs=self.runs[index])
        return self.runs[index]

    def __iter__(self) -> Iterator[LoadedRun]:
        return iter(self.runs)

    def groups(self) -> dict[str, list[LoadedRun]]:
        """The runs by configuration (their label: the same scenario but for the seeds);
        as in ``fedsim compare``, interrupted runs are never averaged with complete ones
        but form a group of their own, ``"<label> (interrupted)"``."""
        out: dict[str, list[LoadedRun]] = {}
        for run in self.runs:
            out.setdefault(run.label + (" (interrupted)" if run.status == "interrupted" else ""), []).append(run)
        return out

    def to_frame(self) -> pd.DataFrame:
        """A tidy DataFrame: one row per run and round. Columns: dir, label, seed, status;
        every config key, dotted; every metric of the round's record."""
        pd = require("pandas", "Runs.to_frame")
        rows = [{"dir": str(run.out_dir), "label": run.label, "seed": run.seed, "status": run.status,
                 **run.flat_config, **record}
                for run in self.runs for record in run.history]
        config_keys = [k for run in self.runs for k in run.flat_config]
        metric_keys = [k for run in self.runs for r in run.history for k in r]
        columns = list(dict.fromkeys([*IDENTITY, *config_keys, *metric_keys]))
        return pd.DataFrame.from_records(rows, columns=columns)

    def plot(self, metric: str = "accuracy", x: str = "round", *, by: str | Sequence[str] | None = None,
             **kwargs: Any) -> Figure:
        """`fedsim.plots.plot_metric` of these runs: ``metric`` against ``x``, one line per
        configuration (or per value of the config keys ``by``), mean over seeds."""
        from fedsim.plots import plot_metric

        return plot_metric(self, metric, x, by=by, **kwargs)


def _statuses(runs: Sequence[LoadedRun]) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in dict.fromkeys(r.status for r in runs)}
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def require(package: str, what: str) -> Any:
    """Import an optional dependency, or fail in one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{what} needs {package}: pip install 'fedsim[notebook]'", name=package) from None


def load_run(path: str | Path) -> LoadedRun:
    """One run folder: complete, stopped early, or interrupted (no summary.json)."""
    if (Path(path) / MANIFEST).is_file():
        raise ConfigError("dir", str(path), "is a sweep folder; load it with fedsim.load_runs")
    return load_runs([path])[0]


def load_runs(paths: str | Path | Sequence[str | Path]) -> Runs:
    """Run folders and sweep folders: every run that recorded a round (completed, stopped
    or interrupted); a sweep's failed cells in ``Runs.failed``."""
    loaded = compare.load([paths] if isinstance(paths, (str, Path)) else list(paths))
    failed = [FailedCell(f["label"], int(f["seed"]), str(f["error"]), dict(f.get("point", {}))) for f in loaded.failed]
    return Runs([_loaded(run) for run in loaded.runs], failed, dict(loaded.axes))


def _loaded(run: compare.Run) -> LoadedRun:
    config = load_toml(run.path / CONFIG) if (run.path / CONFIG).is_file() else {}
    flat = {k: _leaf(v) for k, v in (run.config or {}).items()}
    return LoadedRun(config, flat, run.records, run.summary, run.path, run.group, run.seed,
                     run.status, dict(run.point))  # type: ignore[arg-type]


def _leaf(value: Any) -> Any:
    """A list as a tuple (a groupable value); a table inside it as its short description."""
    if isinstance(value, (list, tuple)):
        return tuple(describe(v) if isinstance(v, Mapping) else _leaf(v) for v in value)
    return value
