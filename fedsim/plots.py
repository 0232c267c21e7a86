"""A metric against rounds, virtual time, cumulative bytes or energy: one line per
configuration, the mean over its seeds (for notebooks; `fedsim.results`).

The figures are `matplotlib.figure.Figure` objects made without pyplot: nothing is shown
or kept open, any backend (Agg included) draws them, and a notebook displays the one a
cell returns (once, whatever pyplot's backend: `NotebookFigure`).
"""

from __future__ import annotations

import dataclasses
import io
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from fedsim.core.errors import ConfigError
from fedsim.results import LoadedRun, Runs
from fedsim.sweeps import describe

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Per-round amounts that an x axis shows as the run's total so far.
CUMULATIVE = {
    "bytes_up": "uplink bytes (cumulative)",
    "bytes_down": "downlink bytes (cumulative)",
    "bytes_shared": "shared-data bytes (cumulative)",
    "energy_j": "client energy, J (cumulative)",
}
ACCURACY = "accuracy"  # the centralized accuracy where recorded, else the federated one
LABELS = {
    "round": "round",
    "virtual_time_s": "virtual time (s)",
    "central_acc": "accuracy (server test set)",
    "fed_acc": "accuracy (clients' test splits)",
    "central_loss": "loss (server test set)",
    "fed_loss": "loss (clients' test splits)",
    "train_loss": "training loss (clients)",
}


class NotebookFigure(Figure):
    """A Figure that IPython shows as a PNG even where pyplot's inline display is not set
    up (no pyplot figure made yet, or a backend forced to Agg); where it is, IPython's own
    Figure formatter takes precedence."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Curve:
    """One configuration's line: per round, the mean over the runs (seeds) that record
    both x and y, and the standard deviation of y over them (population; 0 for one run);
    ``runs`` counts the runs that record both."""

    label: str
    x: list[float]
    y: list[float]
    std: list[float]
    runs: int


def series(run: LoadedRun, key: str, cumulative: bool = False) -> dict[int, float]:
    """A metric per round, or (``cumulative``) the total up to each round, a round without
    it counting 0 (absent from every record: no series)."""
    if key == "round":
        return {int(r["round"]): float(r["round"]) for r in run.history}
    if not cumulative:
        return {int(r["round"]): float(r[key]) for r in run.history if r.get(key) is not None}
    if not any(r.get(key) is not None for r in run.history):
        return {}
    total, out = 0.0, {}
    for r in run.history:
        total += float(r.get(key) or 0.0)
        out[int(r["round"])] = total
    return out


def curves(runs: Runs | Sequence[LoadedRun] | LoadedRun, metric: str = ACCURACY, x: str = "round", *,
           by: str | Sequence[str] | None = None) -> list[Curve]:
    """The lines `plot_metric` draws: one per configuration (`Runs.groups`, or the values of
    the config keys ``by``) that records both, each point the mean over its runs at one round."""
    runs = _runs(runs)
    metric = resolve_metric(runs, metric)
    out = []
    for label, members in _grouped(runs, by).items():
        pairs = [(series(r, x, x in CUMULATIVE), series(r, metric)) for r in members]
        pairs = [(xs, ys) for xs, ys in pairs if xs.keys() & ys.keys()]  # the runs that record both
        rounds = sorted({k for xs, ys in pairs for k in xs.keys() & ys.keys()})
        points = [[(xs[k], ys[k]) for xs, ys in pairs if k in xs and k in ys] for k in rounds]
        if points:
            out.append(Curve(label, [statistics.fmean(p[0] for p in pts) for pts in points],
                             [statistics.fmean(p[1] for p in pts) for pts in points],
                             [statistics.pstdev(p[1] for p in pts) for pts in points], len(pairs)))
    if not out:
        known = sorted({"round", *(k for r in runs for rec in r.history for k in rec)})
        raise ConfigError("metric", f"{metric} vs {x}", f"recorded by no run; metrics: {', '.join(known)}")
    return out


def plot_metric(runs: Runs | Sequence[LoadedRun] | LoadedRun, metric: str = ACCURACY, x: str = "round", *,
                by: str | Sequence[str] | None = None, band: bool = True, ax: Axes | None = None,
                title: str | None = None) -> Figure:
    """``metric`` against ``x`` (``"round"``, ``"virtual_time_s"``, a per-round amount shown
    cumulated: ``"bytes_up"``, ``"bytes_down"``, ``"energy_j"``; or any other metric): a line
    per configuration, mean over seeds, with a ±1 std band (``band``) where seeds differ.
    ``metric="accuracy"`` is the centralized accuracy, or the federated one where no run
    evaluates centrally. Draws on ``ax`` if given; returns the Figure."""
    from matplotlib.ticker import MaxNLocator

    lines = curves(runs, metric, x, by=by)
    if ax is None:
        ax = NotebookFigure(figsize=(6.4, 4.0), layout="constrained").add_subplot()
    for c in lines:
        (line,) = ax.plot(c.x, c.y, marker="." if len(c.x) < 40 else None, label=c.label)
        if band and c.runs > 1:
            ax.fill_between(c.x, [m - s for m, s in zip(c.y, c.std)], [m + s for m, s in zip(c.y, c.std)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    resolved = resolve_metric(_runs(runs), metric)
    ax.set_xlabel(CUMULATIVE.get(x) or LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(resolved, resolved))
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(title=_legend_title(by), fontsize="small")
    if title is not None:
        ax.set_title(title)
    figure = ax.get_figure()
    assert figure is not None
    return figure  # type: ignore[return-value]


def resolve_metric(runs: Runs, metric: str) -> str:
    if metric != ACCURACY:
        return metric
    central = any(r.get("central_acc") is not None for run in runs for r in run.history)
    return "central_acc" if central else "fed_acc"


def _runs(runs: Runs | Sequence[LoadedRun] | LoadedRun) -> Runs:
    if isinstance(runs, Runs):
        return runs
    return Runs([runs] if isinstance(runs, LoadedRun) else list(runs))


def _grouped(runs: Runs, by: str | Sequence[str] | None) -> dict[str, list[LoadedRun]]:
    if by is None:
        return runs.groups()
    keys = [by] if isinstance(by, str) else list(by)
    for key in keys:
        if not any(key in r.flat_config for r in runs):
            raise ConfigError("by", key, "is not a config key of these runs (dotted, e.g. strategy.name)")
    out: dict[str, list[LoadedRun]] = {}
    for run in runs:
        flat = run.flat_config
        label = ", ".join(describe(flat.get(k)) if len(keys) == 1 else f"{k}={describe(flat.get(k))}" for k in keys)
        out.setdefault(label, []).append(run)
    return out


def _legend_title(by: str | Sequence[str] | None) -> str | None:
    if by is None:
        return None
    return by if isinstance(by, str) else ", ".join(by)
