"""A run's results folder: resolved config, metrics.jsonl, summary.json and PNG plots."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.core.schema import option
from fedsim.engine.metrics import SYSTEM_COUNTS


@dataclasses.dataclass(frozen=True)
class ReportSection:
    out_dir: str = option("results", doc="parent folder of run folders (the CLI's --out names the run folder)")
    plots: bool = True
    progress: bool = True
    flower_logs: bool = option(False, doc="show Flower's own INFO logs")
    tensorboard: bool = option(False, doc="also log rounds to <run>/tensorboard")
    mlflow: bool = option(False, doc="also log config and rounds to a local MLflow store, <run>/mlflow.db")
    mlflow_uri: str = option("", doc='tracking URI instead of <run>/mlflow.db, e.g. "sqlite:///results/mlflow.db"')


METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.toml"
MODEL = "model.safetensors"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _drop_none(value: Any) -> Any:
    """TOML has no null: an unset optional key is simply left out."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: A run's ``summary.json`` status (a summary without one was written by a completed run).
COMPLETED, STOPPED, INTERRUPTED = "completed", "stopped", "interrupted"


def read_summary(folder: Path) -> dict[str, Any] | None:
    """A run folder's summary.json, or None (none yet, or unreadable)."""
    try:
        summary = json.loads((Path(folder) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def run_status(folder: Path) -> str | None:
    """completed / stopped / interrupted, from summary.json; None without one."""
    summary = read_summary(folder)
    return None if summary is None else str(summary.get("status", COMPLETED))


class RunWriter:
    """Writes a run's folder as it goes (metrics.jsonl grows one line per round)."""

    def __init__(self, out_dir: str | Path) -> None:
        from fedsim.core.errors import ConfigError

        self.out = Path(out_dir)
        metrics = self.out / METRICS
        if metrics.exists() and metrics.stat().st_size > 0:  # (a run that failed before round 0 left none)
            raise ConfigError("--out", str(self.out), "already holds a run's results; choose a new folder")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError("--out", str(self.out), "is a file, not a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("--out", str(self.out), f"cannot be created ({exc.strerror or exc})") from None
        self.metrics_path = self.out / METRICS
        self.metrics_path.write_text("")

    kept: list[dict[str, Any]] = []  # rounds already recorded (a resumed run)

    @classmethod
    def reopen(cls, out_dir: str | Path, keep_rounds: int) -> RunWriter:
        """A resumed run's writer: metrics.jsonl cut back to rounds <= keep_rounds (a line
        being written when the process died is dropped)."""
        self = cls.__new__(cls)
        self.out = Path(out_dir)
        self.metrics_path = self.out / METRICS
        kept = []
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break
                if record.get("round", 0) > keep_rounds:
                    break
                kept.append(record)
        if [r["round"] for r in kept] != list(range(keep_rounds + 1)):
            from fedsim.core.errors import ConfigError

            raise ConfigError("--resume", str(self.out), f"metrics.jsonl does not hold rounds 0..{keep_rounds} "
                                                          "of the checkpoint")
        _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        for stale in (SUMMARY, MODEL):
            (self.out / stale).unlink(missing_ok=True)
        self.kept = kept
        return self

    def write_config(self, plain: dict[str, Any]) -> Path:
        import tomli_w

        path = self.out / CONFIG
        _atomic_write(path, tomli_w.dumps(_drop_none(plain)))
        return path

    def append(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(_clean(record), sort_keys=False) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.out / SUMMARY
        _atomic_write(path, json.dumps(_clean(summary), indent=2) + "\n")
        return path


def write_model(out: Path, arrays: Any) -> Path:
    """The final global arrays, ``model.safetensors`` (no pickle)."""
    import numpy as np
    from safetensors.numpy import save_file

    path = out / MODEL
    tmp = out / (MODEL + ".tmp")
    save_file({k: np.ascontiguousarray(v.numpy()) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if p.is_dir():
        p = p / METRICS
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    central = [(r["round"], r["central_acc"]) for r in records if r.get("central_acc") is not None]
    fed = [(r["round"], r["fed_acc"]) for r in records if r.get("fed_acc") is not None]
    last = records[-1] if records else {}
    return {
        "rounds": max((r["round"] for r in records), default=0),
        "final_central_acc": central[-1][1] if central else None,
        "final_central_loss": last.get("central_loss"),
        "best_central_acc": max((a for _, a in central), default=None),
        "best_central_acc_round": max(central, key=lambda t: t[1])[0] if central else None,
        "final_fed_acc": fed[-1][1] if fed else None,
        **{f"final_{key}": next((r[key] for r in reversed(records) if r.get(key) is not None), None)
           for key in ("client_acc_mean", "client_acc_p10", "client_acc_worst")},
        "final_train_loss": next((r["train_loss"] for r in reversed(records) if r.get("train_loss") is not None), None),
        "bytes_down": sum(r["bytes_down"] for r in records),
        "bytes_up": sum(r["bytes_up"] for r in records),
        "bytes_shared": sum(r.get("bytes_shared", 0) for r in records),
        "client_failures": sum(len(r["failures"]) for r in records),
        "virtual_time_s": last.get("virtual_time_s", 0.0),
        "energy_j": next((r["energy_total_j"] for r in reversed(records) if r.get("energy_total_j") is not None), None),
        "privacy_epsilon": next((r["privacy_epsilon"] for r in reversed(records) if r.get("privacy_epsilon") is not None),
                                None),
        "privacy_delta": next((r["privacy_delta"] for r in reversed(records) if r.get("privacy_delta") is not None),
                              None),
        **{key: sum(r.get(key, 0) for r in records) for key in SYSTEM_COUNTS},
        "wall_total_s": last.get("wall_total_s"),
    }


def _axes(size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes without pyplot: no backend is forced on the user's process (a
    notebook keeps its inline plots) and nothing is left open."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.add_subplot()


def _integer_ticks(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    paths = []
    rounds = [r["round"] for r in records]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["round"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for name, keys_labels, ylabel in (
        ("accuracy.png", (("central_acc", "centralized (server test set)"), ("fed_acc", "federated (clients' test splits)"),
                          ("client_acc_p10", "10th-percentile client"), ("client_acc_worst", "worst client")),
         "accuracy"),
        ("loss.png", (("central_loss", "centralized"), ("fed_loss", "federated"), ("train_loss", "train (clients)")), "loss"),
    ):
        fig, ax = _axes((6, 4))
        for key, label in keys_labels:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="." if len(xs) < 60 else None, label=label)
        ax.set_xlabel("round")
        _integer_ticks(ax.xaxis)
        ax.set_ylabel(ylabel)
        if rounds:
            ax.set_xlim(min(rounds), max(max(rounds), 1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def plot_system(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Accuracy vs virtual time, and each round's virtual duration with its straggler counts."""
    if not any(r.get("virtual_time_s") for r in records):
        return []
    paths = []
    fig, ax = _axes((6, 4))
    for key, label in (("central_acc", "centralized"), ("fed_acc", "federated")):
        pts = [(r["virtual_time_s"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 60 else None, label=label,
                    drawstyle="steps-post")
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    paths.append(out / "accuracy_vs_time.png")
    fig.savefig(paths[-1], dpi=100)

    rounds = [r["round"] for r in records if r["round"] > 0]
    fig, ax = _axes((7, 4))
    ax.bar(rounds, [r["virtual_round_s"] for r in records if r["round"] > 0], color="tab:gray", alpha=0.6,
           label="round duration")
    ax.set_xlabel("round")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("virtual seconds")
    ax2 = ax.twinx()
    for key, color in (("stragglers", "tab:red"), ("dropouts", "tab:orange"), ("unavailable", "tab:blue"),
                       ("reply_lost", "tab:purple"), ("model_lost", "tab:brown")):
        ys = [r.get(key, 0) for r in records if r["round"] > 0]
        if any(ys):
            ax2.plot(rounds, ys, color=color, marker="." if len(rounds) < 60 else None, label=key)
    ax2.set_ylabel("clients")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    fig.tight_layout()
    paths.append(out / "round_time.png")
    fig.savefig(paths[-1], dpi=100)
    return paths


def plot_label_distribution(counts: np.ndarray, out: Path, max_clients: int = 100) -> Path:
    """Stacked bars: each client's training samples by label."""
    shown = counts[:max_clients]
    n_clients, n_classes = shown.shape
    fig, ax = _axes((max(6, min(16, 0.25 * n_clients + 2)), 4))
    bottom = np.zeros(n_clients)
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if n_classes > 10 else "tab10"]
    for c in range(n_classes):
        ax.bar(np.arange(n_clients), shown[:, c], bottom=bottom, width=0.85,
               color=cmap(c % cmap.N), label=str(c) if n_classes <= 20 else None)
        bottom += shown[:, c]
    ax.set_xlabel("client (partition id)" + (f", first {max_clients} of {len(counts)}" if len(counts) > max_clients else ""))
    ax.set_ylabel("training samples")
    _integer_ticks(ax.xaxis)
    ax.set_title("label distribution per client")
    if n_classes <= 20:
        ax.legend(title="label", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    path = out / "label_distribution.png"
    fig.savefig(path, dpi=100)
    return path
