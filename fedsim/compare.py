"""Comparing runs: load run folders (or sweeps), summarize per configuration over seeds.

A group is one configuration. For one sweep, the cells that differ only by seed, labelled
by the sweep's axes. Otherwise (run folders, several sweeps, or a mix), the runs' resolved
``config.toml`` files are compared key by key: the keys equal in every run are the
*setup* (shown once), the keys that differ label the runs (``strategy.name=fedprox,
round.deadline=2``) and runs with the same values (seeds aside) form one group. Keys that
always change together (a variant's ``strategy.name`` and ``strategy.proximal_mu``) are
one plotting axis.

Per group: final and best centralized accuracy (mean and std over seeds), the rounds and
virtual time to a target accuracy (mean over the seeds that reach it), total bytes, the
system's events (stragglers, partial work, dropped, lost and corrupted updates; each
run's total, mean over seeds) and mean virtual round time, leakage PSNR where probed,
client failures and failed cells.

A run is completed, stopped (by its stop check; it counts as a result) or interrupted
(``summary.json`` says so, the folder has no ``summary.json``, or its sweep cell was
interrupted). Interrupted runs are never averaged with complete ones: a configuration's
interrupted runs form a row of their own whose status says after which round they
stopped, and whose numbers are as of that round.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedsim.core.errors import ConfigError
from fedsim.report import COMPLETED, CONFIG, INTERRUPTED, METRICS, STOPPED, SUMMARY, read_metrics
from fedsim.report import summarize as summarize_records
from fedsim.sweeps import MANIFEST, VARIANT, describe


#: Config keys that do not change a run's results: never part of the setup or a label.
NOT_SETUP = ("report.", "run.checkpoint_every")
#: Keys that name a run or draw its seeds: in the setup when equal, never a label (runs that
#: differ only in these are seeds of one configuration).
NOT_LABELS = ("run.name", "run.seed", "data.seed")
#: Keys about the algorithm (strategy, round policy, local training, codecs, selection) come
#: first among the differing keys: they are a plot's lines; the others (data, devices,
#: network, ...: the heterogeneity) its panels.
ALGORITHM_KEYS = ("strategy.", "round.", "client.", "codec", "codec.", "selection.")


@dataclasses.dataclass(frozen=True)
class Keys:
    """Several config keys that change together, as one axis value (absent keys left out)."""

    items: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        text = ", ".join(f"{k}={describe(v)}" for k, v in self.items if k != MORE) or "-"
        return text + "".join(f" (+{v} more keys)" for k, v in self.items if k == MORE)


MORE = "…"  # a Keys item counting the keys left out of the label


@dataclasses.dataclass
class Run:
    path: Path
    group: str
    seed: int
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    point: dict[str, Any]  # plotting axis -> value ({} for a run without config.toml outside a sweep)
    config: dict[str, Any] | None = None  # config.toml flattened to dotted keys (None: no config.toml)
    status: str = COMPLETED
    keys: dict[str, Any] = dataclasses.field(default_factory=dict)  # label column -> value

    @property
    def interrupted(self) -> bool:
        return self.status == INTERRUPTED

    @property
    def last_round(self) -> int | None:
        return int(self.records[-1]["round"]) if self.records else None


@dataclasses.dataclass
class Loaded:
    runs: list[Run]
    failed: list[dict[str, Any]]  # sweep cells that failed: label, seed, error, point
    axes: dict[str, list[Any]]
    target: float = 0.8  # the first sweep's target accuracy, else 0.8
    pending: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # sweep cells not run: label, seed, point
    setup: dict[str, Any] = dataclasses.field(default_factory=dict)  # config keys equal in every run
    differing: list[str] = dataclasses.field(default_factory=list)  # config keys that label the runs


def point_label(axis: str, value: Any) -> str:
    """An axis value as a plot label: ``alpha=0.1``; a variant or a set of keys as itself."""
    if axis == VARIANT or isinstance(value, Keys):
        return describe(value)
    return f"{axis}={describe('-' if value is None else value)}"


def check_target(target: float) -> float:
    if not (0.0 < target <= 1.0):
        raise ConfigError("--target", target, "must be an accuracy in (0, 1]")
    return target


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML document as dotted keys -> leaf values (lists are leaves; an empty table has none)."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / CONFIG
    if not path.is_file():
        return None
    try:
        return flatten(tomllib.loads(path.read_text()))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("DIR", str(folder), f"has an unreadable {CONFIG} ({exc})") from None


def _status(summary: dict[str, Any] | None, cell_status: str | None = None) -> str:
    if summary is None or cell_status in (INTERRUPTED, "pending") or summary.get("status") == INTERRUPTED:
        return INTERRUPTED
    if summary.get("status") == STOPPED or summary.get("stopped"):
        return STOPPED
    return COMPLETED


def _run(folder: Path, group: str, seed: int | None, point: dict[str, Any], cell_status: str | None = None) -> Run:
    """A run folder: metrics.jsonl, and summary.json unless the run was interrupted (its
    summary is then rebuilt from the rounds recorded)."""
    records = _read_records(folder)
    config = read_config(folder)
    summary = json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).is_file() else None
    status = _status(summary, cell_status)
    if summary is None:
        summary = {"name": (config or {}).get("run.name", folder.name), "seed": (config or {}).get("run.seed", 0),
                   **summarize_records([{"bytes_down": 0, "bytes_up": 0, "failures": [], **r} for r in records]),
                   "status": INTERRUPTED}
    if seed is None:
        seed = int(summary.get("seed", (config or {}).get("run.seed", 0)))
    return Run(folder, group, seed, records, summary, dict(point), config, status, dict(point))


def _read_records(folder: Path) -> list[dict[str, Any]]:
    """metrics.jsonl; a last line cut short by an interruption is dropped."""
    try:
        return read_metrics(folder)
    except json.JSONDecodeError:
        out = []
        for line in (folder / METRICS).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out


def load(paths: Sequence[str | Path]) -> Loaded:
    runs: list[Run] = []
    failed: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    axes: dict[str, list[Any]] = {}
    targets: list[float] = []
    sweeps = 0
    for p in map(Path, paths):
        if (p / MANIFEST).is_file():
            sweeps += 1
            manifest = json.loads((p / MANIFEST).read_text())
            if "target" in manifest:
                targets.append(float(manifest["target"]))
            for k, v in manifest.get("axes", {}).items():
                axes.setdefault(k, list(v))
            for cell in manifest["cells"]:
                folder = p / cell["dir"]
                point = cell.get("point", cell["overrides"])
                status = cell["status"]
                if status == "done" and (folder / SUMMARY).is_file():
                    runs.append(_run(folder, cell["label"], int(cell["seed"]), point))
                elif status == "failed":
                    failed.append({"label": cell["label"], "seed": cell["seed"], "error": cell["error"],
                                   "point": cell.get("point", {}), "config": read_config(folder)})
                elif _has_rounds(folder):  # interrupted (or pending with a run that was cut off)
                    runs.append(_run(folder, cell["label"], int(cell["seed"]), point, cell_status=INTERRUPTED))
                else:  # not run yet (pending, or interrupted before its first round)
                    pending.append({"label": cell["label"], "seed": cell["seed"], "point": cell.get("point", {}),
                                    "status": status, "config": read_config(folder)})
        elif (p / METRICS).is_file():
            summary = json.loads((p / SUMMARY).read_text()) if (p / SUMMARY).is_file() else {}
            runs.append(_run(p, f"{summary.get('name', p.name)} ({p.name})", None, {}))
        else:
            raise ConfigError("DIR", str(p), "is neither a run folder (metrics.jsonl) nor a sweep (sweep.json)")
    loaded = Loaded(runs, failed, axes, targets[0] if targets else 0.8, pending)
    configs = [r.config for r in runs if r.config is not None]
    loaded.setup, differing = compare_configs(configs)
    loaded.differing = sorted((k for k in differing if not _is(k, NOT_SETUP + NOT_LABELS)),
                              key=lambda k: not _is(k, ALGORITHM_KEYS))
    if not (sweeps == 1 and len(paths) == 1):
        _label_by_config(loaded)
    return loaded


def _has_rounds(folder: Path) -> bool:
    path = folder / METRICS
    return path.is_file() and path.stat().st_size > 0


def _is(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def compare_configs(configs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """(the keys whose value is the same in every config, in the first config's order; the
    keys that differ or are missing from some config)."""
    order = list(dict.fromkeys(k for c in configs for k in c))
    fixed, differing = {}, []
    for key in order:
        values = [c.get(key, _MISSING) for c in configs]
        if all(v is not _MISSING for v in values) and all(_same(v, values[0]) for v in values[1:]):
            if not _is(key, NOT_SETUP):
                fixed[key] = values[0]
        else:
            differing.append(key)
    return fixed, differing


_MISSING = object()


#: A plotting axis made of more than this many keys is labelled by its first keys only (any
#: one of its keys tells its values apart: they change together).
LABEL_KEYS_PER_AXIS = 2


def _label_by_config(loaded: Loaded) -> None:
    """Runs that are not one sweep's cells: labelled by the config keys that differ, grouped
    by them; keys that always change together become one plotting axis."""
    keys = loaded.differing
    with_config = [r for r in loaded.runs if r.config is not None]
    loaded.axes = {}
    if not with_config:
        return
    # Axes: keys grouped by the partition of the runs their values induce.
    partitions: dict[tuple[int, ...], list[str]] = {}
    for key in keys:
        seen: dict[str, int] = {}
        ids = tuple(seen.setdefault(json.dumps(r.config.get(key), sort_keys=True, default=str), len(seen))
                    for r in with_config)
        partitions.setdefault(ids, []).append(key)
    groups = list(partitions.values())

    def axis_value(config: dict[str, Any], group: list[str]) -> Any:
        if len(group) == 1:
            return config.get(group[0])
        present = [k for k in group if k in config]
        shown = present if len(present) <= LABEL_KEYS_PER_AXIS + 1 else present[:LABEL_KEYS_PER_AXIS]
        return Keys(tuple((k, config[k]) for k in shown) + (((MORE, len(present) - len(shown)),)
                                                            if len(shown) < len(present) else ()))

    def label(config: dict[str, Any]) -> str:
        parts = []
        for group in groups:
            value = axis_value(config, group)
            if isinstance(value, Keys):
                if any(k != MORE for k, _ in value.items):
                    parts.append(str(value))
            elif group[0] in config:
                parts.append(f"{group[0]}={describe(value)}")
        return ", ".join(parts)

    for name, group in zip((g[0] if len(g) == 1 else f"{g[0]} (+{len(g) - 1})" for g in groups), groups):
        values = list(dict.fromkeys(_Hashable(axis_value(r.config, group)) for r in with_config))
        plain = [v.value for v in values]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in plain):
            plain = sorted(plain)
        loaded.axes[name] = plain
    names = list(dict.fromkeys(r.config.get("run.name") for r in with_config))
    for run in loaded.runs:
        if run.config is None:
            run.keys = dict(run.point)
            continue
        run.point = {name: axis_value(run.config, group) for name, group in zip(loaded.axes, groups)}
        run.keys = {k: run.config.get(k) for k in keys}
        run.group = label(run.config) or (str(names[0]) if len(names) == 1 and names[0] is not None
                                          else "same configuration")
    if not keys and len(with_config) == 1:
        with_config[0].group = f"{with_config[0].group} ({with_config[0].path.name})"
    for cell in loaded.failed + loaded.pending:
        if cell.get("config") is not None:
            cell["label"] = label(cell["config"]) or cell["label"]
            cell["point"] = {k: cell["config"].get(k) for k in keys}


@dataclasses.dataclass(frozen=True)
class _Hashable:
    value: Any

    def __hash__(self) -> int:
        return hash(json.dumps(self.value, sort_keys=True, default=str))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Hashable) and _same(self.value, other.value)


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


#: The system's events shown per configuration: column -> the metrics.jsonl counts summed
#: (each run's total over its rounds; the row shows the mean over its runs).
EVENTS: dict[str, tuple[str, ...]] = {
    "stragglers": ("stragglers",),  # replies past the deadline (or past the first K), and dropped protocol stragglers
    "partial": ("partial",),  # stragglers told to do fewer local epochs (FedProx's protocol)
    "dropped": ("dropouts", "unavailable"),  # offline when sampled, or dropped out mid-round
    "lost": ("model_lost", "reply_lost"),  # model download or reply lost for good
    "corrupted": ("corrupted",),  # replies excluded for damage in transit
}
EVENT_DOCS = {
    "stragglers": "replies that missed the round's deadline (or came after the first K), and FedProx's designated "
                  "stragglers dropped",
    "partial": "stragglers told to do fewer local epochs (their partial work is kept)",
    "dropped": "sampled clients that were offline, or dropped out mid-round",
    "lost": "model downloads or replies lost for good in transit",
    "corrupted": "replies excluded for damage in transit",
}


def run_events(run: Run) -> dict[str, int | None]:
    """A run's total of each event (None: its metrics do not record the event at all)."""
    out: dict[str, int | None] = {}
    for name, keys in EVENTS.items():
        known = any(k in r for r in run.records for k in keys)
        out[name] = sum(int(r.get(k) or 0) for r in run.records for k in keys) if known else None
    return out


def mean_round_seconds(run: Run) -> float | None:
    """The mean virtual duration of the run's rounds (round 0, the initial evaluation, aside)."""
    times = [float(r["virtual_round_s"]) for r in run.records if r["round"] > 0 and r.get("virtual_round_s") is not None]
    return statistics.mean(times) if times else None


def _status_text(runs: list[Run], pending: int) -> str:
    if runs and all(r.interrupted for r in runs):
        rounds = sorted({r.last_round for r in runs if r.last_round is not None})
        if not rounds:
            return "interrupted before round 0"
        return f"interrupted after round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))}"
    parts = []
    stopped = [r for r in runs if r.status == STOPPED]
    if stopped:
        reasons = sorted({str(r.summary.get("stopped") or "stop check") for r in stopped})
        at = sorted({r.last_round for r in stopped if r.last_round is not None})
        parts.append(f"{len(stopped)} stopped at round {', '.join(map(str, at))}: {'; '.join(reasons)}")
    if pending:
        parts.append(f"{pending} not run")
    if not parts:
        return COMPLETED
    done = len(runs) - len(stopped)
    return ", ".join(([f"{done} completed"] if done else []) + parts)


class Rows(list):  # type: ignore[type-arg]
    """The summary's rows (dicts), and the runs they summarize (``loaded``: its setup and
    differing keys head the terminal table)."""

    def __init__(self, rows: list[dict[str, Any]], loaded: Loaded) -> None:
        super().__init__(rows)
        self.loaded = loaded


def summarize(loaded: Loaded, target: float) -> Rows:
    """One row per configuration; its interrupted runs, if any, in a row of their own just after."""
    groups: dict[tuple[str, bool], list[Run]] = {}
    order: list[str] = []
    for run in loaded.runs:
        groups.setdefault((run.group, run.interrupted), []).append(run)
        order.append(run.group)
    for cell in loaded.failed + loaded.pending:
        order.append(cell["label"])
    rows = []
    for label in dict.fromkeys(order):
        failed = [f for f in loaded.failed if f["label"] == label]
        pending = [c for c in loaded.pending if c["label"] == label]
        complete = groups.get((label, False), [])
        cut = groups.get((label, True), [])
        if complete or not cut:
            rows.append(_row(label, complete, target, failed, pending))
        if cut:
            rows.append(_row(label, cut, target, [], []))
    return Rows(rows, loaded)


def _row(group: str, runs: list[Run], target: float, failed: list[dict[str, Any]],
         pending: list[dict[str, Any]]) -> dict[str, Any]:
    # The centralized accuracy; a run without one (a Flower app evaluating only on its
    # clients) is summarized by its federated accuracy, and the row says so.
    central = not runs or any(any(x.get("central_acc") is not None for x in r.records) for r in runs)
    key = "central_acc" if central else "fed_acc"
    finals = [next((x[key] for x in reversed(r.records) if x.get(key) is not None), None) for r in runs]
    bests = [max((x[key] for x in r.records if x.get(key) is not None), default=None) for r in runs]
    reach = [to_target(r.records, target, key) for r in runs]
    rounds = [t[0] for t in reach if t[0] is not None]
    clocked = any((r.summary.get("virtual_time_s") or 0) > 0 for r in runs)  # else no virtual clock
    vtimes = [t[1] for t in reach if t[1] is not None] if clocked else []
    joules = [j for j in (energy_to_target(r.records, target, key) for r in runs) if j is not None]
    psnr = [x["probe_psnr_mean"] for r in runs for x in r.records if x.get("probe_psnr_mean") is not None]
    events = [run_events(r) for r in runs]
    fm, fs = _mean_std(finals)
    bm, bs = _mean_std(bests)
    first = runs[0] if runs else None
    point = first.point if first else (failed or pending)[0]["point"]
    keys = first.keys if first else (failed or pending)[0]["point"]
    return {
        "config": group, "seeds": len(runs),
        "status": _status_text(runs, len(pending)),
        "interrupted": bool(runs) and all(r.interrupted for r in runs),
        "final_acc_mean": fm, "final_acc_std": fs, "best_acc_mean": bm, "best_acc_std": bs,
        "target": target, "reached": len(rounds),
        "rounds_to_target": statistics.mean(rounds) if rounds else None,
        "virtual_s_to_target": statistics.mean(vtimes) if vtimes else None,
        "bytes_up_mean": statistics.mean(r.summary.get("bytes_up", 0) for r in runs) if runs else None,
        "bytes_total_mean": statistics.mean(r.summary.get("bytes_up", 0) + r.summary.get("bytes_down", 0)
                                            + r.summary.get("bytes_shared", 0) for r in runs) if runs else None,
        "virtual_time_s_mean": (statistics.mean(r.summary.get("virtual_time_s") or 0.0 for r in runs)
                                if clocked else None),
        "virtual_round_s_mean": _mean_std([mean_round_seconds(r) for r in runs])[0] if clocked else None,
        **{f"{name}_mean": _mean_std([e[name] for e in events])[0] for name in EVENTS},
        "probe_psnr_mean": statistics.mean(psnr) if psnr else None,
        "energy_j_mean": _mean_std([r.summary.get("energy_j") for r in runs])[0],
        "energy_j_to_target": statistics.mean(joules) if joules else None,
        "epsilon_mean": _mean_std([r.summary.get("privacy_epsilon") for r in runs])[0],
        "client_acc_mean": _mean_std([r.summary.get("final_client_acc_mean") for r in runs])[0],
        "client_acc_p10_mean": _mean_std([r.summary.get("final_client_acc_p10") for r in runs])[0],
        "client_acc_worst_mean": _mean_std([r.summary.get("final_client_acc_worst") for r in runs])[0],
        "client_failures": sum(int(r.summary.get("client_failures", 0)) for r in runs),
        "failed_cells": len(failed),
        "pending_cells": len(pending),
        "accuracy": "centralized" if central else "federated",
        "point": point,
        "keys": keys,
    }


CSV_FIELDS = ["config", "seeds", "status", "final_acc_mean", "final_acc_std", "best_acc_mean", "best_acc_std", "target",
              "reached", "rounds_to_target", "virtual_s_to_target", "bytes_up_mean", "bytes_total_mean",
              "virtual_time_s_mean", "virtual_round_s_mean", *(f"{name}_mean" for name in EVENTS),
              "probe_psnr_mean", "energy_j_mean", "energy_j_to_target", "epsilon_mean", "client_acc_mean",
              "client_acc_p10_mean", "client_acc_worst_mean", "client_failures", "failed_cells", "pending_cells",
              "accuracy"]


def key_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns that tell rows apart: a sweep's axes, else the config keys that differ."""
    return list(dict.fromkeys(k for r in rows for k in r.get("keys", {})))


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per configuration (and one per configuration's interrupted runs); a sweep's
    axes, or the config keys that differ between the runs, come first as their own columns."""
    axes = key_columns(rows)
    fields = ["config", *axes, *CSV_FIELDS[1:]]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            cells = {k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS}
            cells.update({a: _cell(r.get("keys", {}).get(a)) for a in axes})
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


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


# Display columns shared by the terminal table and the HTML page: (header, cell).
METRIC_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("status", lambda r: r.get("status", COMPLETED)),
    ("seeds", lambda r: str(r["seeds"])),
    ("final acc", lambda r: f"{fmt(r['final_acc_mean'])} ± {fmt(r['final_acc_std'])}"),
    ("best acc", lambda r: f"{fmt(r['best_acc_mean'])} ± {fmt(r['best_acc_std'])}"),
    ("rounds to target", lambda r: f"{fmt(r['rounds_to_target'], '.1f')} ({r['reached']}/{r['seeds']})"),
    ("virtual s to target", lambda r: fmt(r["virtual_s_to_target"], ".1f")),
    ("virtual s / round", lambda r: fmt(r.get("virtual_round_s_mean"), ".2f")),
    *((name, (lambda key: lambda r: _count(r.get(key)))(f"{name}_mean")) for name in EVENTS),
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

#: What a column shows when it has nothing to say; a column showing only that is left out.
EMPTY = {"-", "- / - / -"}
EMPTY_BY_COLUMN = {"status": {COMPLETED}, "failures": {"0 clients, 0 cells"}, **{name: {"-", "0"} for name in EVENTS}}


#: More differing keys than this: the rows are labelled in one column (their group label).
MAX_KEY_COLUMNS = 6


def label_columns(rows: list[dict[str, Any]]) -> tuple[list[str], Callable[[dict[str, Any]], list[str]]]:
    """Rows are labelled by one column per sweep axis or differing config key ("-": the run
    has no such key); runs without a config, or too many differing keys, by their label."""
    axes = key_columns(rows)
    if axes and len(axes) <= MAX_KEY_COLUMNS and all(r.get("keys") for r in rows):
        return axes, lambda r: [describe("-" if r["keys"].get(a) is None else r["keys"][a]) for a in axes]
    return ["configuration"], lambda r: [r["config"]]


def shown_columns(rows: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The metric columns with something to show: a column that is "-" in every row (no
    probe, no DP, no energy model, no per-client evaluation), an event that never happened,
    failures when there were none, and the status when every run completed are left out."""
    return [(c, cell) for c, cell in METRIC_COLUMNS
            if not rows or any(cell(r) not in EMPTY_BY_COLUMN.get(c, EMPTY) for r in rows)]


#: The setup keys named first (when fixed): what a reader asks before anything else.
HEADLINE = ("data.dataset", "data.dataset.name", "data.num_clients", "data.partitioner", "data.partitioner.name",
            "model.name", "strategy.name", "run.rounds", "client.local_epochs", "round.policy", "round.deadline",
            "executor.name")


def setup_line(loaded: Loaded) -> str:
    """The fixed setup in one line: the headline keys that are fixed, and how many others."""
    head = [k for k in HEADLINE if k in loaded.setup]
    text = ", ".join(f"{k}={describe(loaded.setup[k])}" for k in head)
    more = len(loaded.setup) - len(head)
    return text + (f" (+{more} more fixed keys)" if more else "")


def differing_line(loaded: Loaded, at_most: int = 12) -> str:
    shown = loaded.differing[:at_most]
    more = len(loaded.differing) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more else "")


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table; above it, for rows from `summarize`, the fixed setup and the keys compared."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table to 80 columns
        console = Console(width=200)
    loaded = getattr(rows, "loaded", None)
    if loaded is not None and loaded.setup:
        runs = len([r for r in loaded.runs if r.config is not None])
        console.print(f"setup, the same in all {runs} runs: {setup_line(loaded)}", highlight=False, markup=False)
        if loaded.differing:
            console.print(f"compared: {differing_line(loaded)}", highlight=False, markup=False)
    table = Table(title=f"runs compared (target accuracy {rows[0]['target'] if rows else '-'})")
    headers, labels = label_columns(rows)
    for col in headers:
        table.add_column(col, justify="left", overflow="fold")
    columns = shown_columns(rows)
    for col, _ in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*labels(r), *(cell(r) for _, cell in columns))
    console.print(table)
    if any(r.get("interrupted") for r in rows):
        console.print("interrupted runs are rows of their own (numbers as of their last round), not averaged with "
                      "completed runs", highlight=False, markup=False)
