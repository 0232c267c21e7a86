"""Comparing runs: load run folders (or sweeps), summarize per configuration over seeds.

A group is one configuration: for a sweep, the cells that differ only by seed; for plain
run folders, each run. Per group: final and best centralized accuracy (mean and std over
seeds), the rounds and virtual time to a target accuracy (mean over the seeds that reach
it), total bytes, leakage PSNR where probed, client failures and failed cells.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedsim.core.errors import ConfigError
from fedsim.report import METRICS, SUMMARY, read_metrics
from fedsim.sweeps import MANIFEST


@dataclasses.dataclass
class Run:
    path: Path
    group: str
    seed: int
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    point: dict[str, Any]  # sweep axis -> value ({} for a plain run folder)


@dataclasses.dataclass
class Loaded:
    runs: list[Run]
    failed: list[dict[str, Any]]  # sweep cells that failed: label, seed, error
    axes: dict[str, list[Any]]
    target: float = 0.8  # the first sweep's target accuracy, else 0.8


def check_target(target: float) -> float:
    if not (0.0 < target <= 1.0):
        raise ConfigError("--target", target, "must be an accuracy in (0, 1]")
    return target


def load(paths: Sequence[str | Path]) -> Loaded:
    runs: list[Run] = []
    failed: list[dict[str, Any]] = []
    axes: dict[str, list[Any]] = {}
    targets: list[float] = []
    for p in map(Path, paths):
        if (p / MANIFEST).is_file():
            manifest = json.loads((p / MANIFEST).read_text())
            if "target" in manifest:
                targets.append(float(manifest["target"]))
            for k, v in manifest.get("axes", {}).items():
                axes.setdefault(k, list(v))
            for cell in manifest["cells"]:
                folder = p / cell["dir"]
                if cell["status"] == "done" and (folder / SUMMARY).is_file():
                    runs.append(_run(folder, cell["label"], int(cell["seed"]), cell.get("point", cell["overrides"])))
                elif cell["status"] == "failed":
                    failed.append({"label": cell["label"], "seed": cell["seed"], "error": cell["error"],
                                   "point": cell.get("point", {})})
        elif (p / METRICS).is_file() and (p / SUMMARY).is_file():
            summary = json.loads((p / SUMMARY).read_text())
            runs.append(_run(p, f"{summary.get('name', p.name)} ({p.name})", int(summary.get("seed", 0)), {}))
        else:
            raise ConfigError("DIR", str(p), "is neither a run folder (metrics.jsonl, summary.json) nor a sweep (sweep.json)")
    return Loaded(runs, failed, axes, targets[0] if targets else 0.8)


def _run(folder: Path, group: str, seed: int, point: dict[str, Any]) -> Run:
    return Run(folder, group, seed, read_metrics(folder), json.loads((folder / SUMMARY).read_text()), point)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.pstdev(vals) if len(vals) > 1 else 0.0)


def to_target(records: list[dict[str, Any]], target: float, key: str = "central_acc") -> tuple[int | None, float | None]:
    """First round whose accuracy (``key``) reaches ``target``, and its virtual time."""
    for r in records:
        if r.get(key) is not None and r[key] >= target:
            vt = r.get("virtual_time_s")
            return int(r["round"]), (None if vt is None else float(vt))
    return None, None


def energy_to_target(records: list[dict[str, Any]], target: float, key: str = "central_acc") -> float | None:
    """The clients' energy spent (joules) up to the first round whose accuracy reaches ``target``."""
    for r in records:
        if r.get(key) is not None and r[key] >= target:
            return None if r.get("energy_total_j") is None else float(r["energy_total_j"])
    return None


def summarize(loaded: Loaded, target: float) -> list[dict[str, Any]]:
    groups: dict[str, list[Run]] = {}
    for run in loaded.runs:
        groups.setdefault(run.group, []).append(run)
    rows = []
    for group, runs in groups.items():
        # The centralized accuracy; a run without one (a Flower app evaluating only on its
        # clients) is summarized by its federated accuracy, and the row says so.
        central = any(r.summary.get("final_central_acc") is not None for r in runs)
        key = "central_acc" if central else "fed_acc"
        finals = [next((x[key] for x in reversed(r.records) if x.get(key) is not None), None) for r in runs]
        bests = [max((x[key] for x in r.records if x.get(key) is not None), default=None) for r in runs]
        reach = [to_target(r.records, target, key) for r in runs]
        rounds = [t[0] for t in reach if t[0] is not None]
        clocked = any((r.summary.get("virtual_time_s") or 0) > 0 for r in runs)  # else no virtual clock
        vtimes = [t[1] for t in reach if t[1] is not None] if clocked else []
        joules = [j for j in (energy_to_target(r.records, target, key) for r in runs) if j is not None]
        psnr = [x["probe_psnr_mean"] for r in runs for x in r.records if x.get("probe_psnr_mean") is not None]
        fm, fs = _mean_std(finals)
        bm, bs = _mean_std(bests)
        rows.append({
            "config": group, "seeds": len(runs),
            "final_acc_mean": fm, "final_acc_std": fs, "best_acc_mean": bm, "best_acc_std": bs,
            "target": target, "reached": len(rounds),
            "rounds_to_target": statistics.mean(rounds) if rounds else None,
            "virtual_s_to_target": statistics.mean(vtimes) if vtimes else None,
            "bytes_up_mean": statistics.mean(r.summary.get("bytes_up", 0) for r in runs),
            "bytes_total_mean": statistics.mean(r.summary.get("bytes_up", 0) + r.summary.get("bytes_down", 0)
                                                + r.summary.get("bytes_shared", 0) for r in runs),
            "virtual_time_s_mean": (statistics.mean(r.summary.get("virtual_time_s") or 0.0 for r in runs)
                                    if clocked else None),
            "probe_psnr_mean": statistics.mean(psnr) if psnr else None,
            "energy_j_mean": _mean_std([r.summary.get("energy_j") for r in runs])[0],
            "energy_j_to_target": statistics.mean(joules) if joules else None,
            "epsilon_mean": _mean_std([r.summary.get("privacy_epsilon") for r in runs])[0],
            "client_acc_mean": _mean_std([r.summary.get("final_client_acc_mean") for r in runs])[0],
            "client_acc_p10_mean": _mean_std([r.summary.get("final_client_acc_p10") for r in runs])[0],
            "client_acc_worst_mean": _mean_std([r.summary.get("final_client_acc_worst") for r in runs])[0],
            "client_failures": sum(int(r.summary.get("client_failures", 0)) for r in runs),
            "failed_cells": sum(1 for f in loaded.failed if f["label"] == group),
            "accuracy": "centralized" if central else "federated",
            "point": runs[0].point,
        })
    for f in loaded.failed:  # configurations whose every seed failed
        if f["label"] not in groups and not any(r["config"] == f["label"] for r in rows):
            rows.append({"config": f["label"], "seeds": 0, "final_acc_mean": None, "final_acc_std": None,
                         "best_acc_mean": None, "best_acc_std": None, "target": target, "reached": 0,
                         "rounds_to_target": None, "virtual_s_to_target": None, "bytes_up_mean": None, "bytes_total_mean": None,
                         "virtual_time_s_mean": None, "probe_psnr_mean": None, "epsilon_mean": None,
                         "energy_j_mean": None, "energy_j_to_target": None,
                         "client_acc_mean": None, "client_acc_p10_mean": None, "client_acc_worst_mean": None,
                         "client_failures": 0,
                         "failed_cells": sum(1 for g in loaded.failed if g["label"] == f["label"]), "point": f["point"]})
    return rows


CSV_FIELDS = ["config", "seeds", "final_acc_mean", "final_acc_std", "best_acc_mean", "best_acc_std", "target",
              "reached", "rounds_to_target", "virtual_s_to_target", "bytes_up_mean", "bytes_total_mean", "virtual_time_s_mean",
              "probe_psnr_mean", "energy_j_mean", "energy_j_to_target", "epsilon_mean", "client_acc_mean", "client_acc_p10_mean", "client_acc_worst_mean",
              "client_failures",
              "failed_cells", "accuracy"]


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per configuration; a sweep's axes come first as their own columns."""
    axes = list(dict.fromkeys(k for r in rows for k in r.get("point", {})))
    fields = ["config", *axes, *CSV_FIELDS[1:]]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            cells = {k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS}
            cells.update({a: _cell(r.get("point", {}).get(a)) for a in axes})
            w.writerow(cells)
    return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _mb(value: float | None) -> str:
    return fmt(None if value is None else value / 1e6, ".2f")


# Display columns shared by the terminal table and the HTML page: (header, cell).
METRIC_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("seeds", lambda r: str(r["seeds"])),
    ("final acc", lambda r: f"{fmt(r['final_acc_mean'])} ± {fmt(r['final_acc_std'])}"),
    ("best acc", lambda r: f"{fmt(r['best_acc_mean'])} ± {fmt(r['best_acc_std'])}"),
    ("rounds to target", lambda r: f"{fmt(r['rounds_to_target'], '.1f')} ({r['reached']}/{r['seeds']})"),
    ("virtual s to target", lambda r: fmt(r["virtual_s_to_target"], ".1f")),
    ("MB up", lambda r: _mb(r["bytes_up_mean"])),
    ("MB total", lambda r: _mb(r["bytes_total_mean"])),
    ("leakage PSNR dB", lambda r: fmt(r["probe_psnr_mean"], ".1f")),
    ("energy kJ", lambda r: fmt(None if r.get("energy_j_mean") is None else r["energy_j_mean"] / 1e3, ".3f")),
    ("kJ to target", lambda r: fmt(None if r.get("energy_j_to_target") is None else r["energy_j_to_target"] / 1e3,
                                   ".3f")),
    ("epsilon", lambda r: fmt(r.get("epsilon_mean"), ".3g")),
    ("client acc mean / p10 / worst", lambda r: f"{fmt(r.get('client_acc_mean'), '.3f')} / "
                                                f"{fmt(r.get('client_acc_p10_mean'), '.3f')} / "
                                                f"{fmt(r.get('client_acc_worst_mean'), '.3f')}"),
    ("failures", lambda r: f"{r['client_failures']} clients, {r['failed_cells']} cells"),
]


def label_columns(rows: list[dict[str, Any]]) -> tuple[list[str], Callable[[dict[str, Any]], list[str]]]:
    """A sweep's rows are labelled by one column per axis; other runs by their name."""
    from fedsim.sweeps import describe

    axes = list(dict.fromkeys(k for r in rows for k in r.get("point", {})))
    if axes and all(r.get("point") for r in rows):
        return axes, lambda r: [describe(r["point"].get(a, "-")) for a in axes]
    return ["configuration"], lambda r: [r["config"]]


def shown_columns(rows: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The metric columns with something to show: a column that is "-" in every row (no
    probe, no DP, no energy model, no per-client evaluation) is left out."""
    empty = {"-", "- / - / -"}
    return [(c, cell) for c, cell in METRIC_COLUMNS if not rows or any(cell(r) not in empty for r in rows)]


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs compared (target accuracy {rows[0]['target'] if rows else '-'})")
    headers, labels = label_columns(rows)
    for col in headers:
        table.add_column(col, justify="left", overflow="fold")
    columns = shown_columns(rows)
    for col, _ in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*labels(r), *(cell(r) for _, cell in columns))
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table to 80 columns
        console = Console(width=200)
    console.print(table)
