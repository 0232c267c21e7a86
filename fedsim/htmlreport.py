"""One self-contained HTML page comparing runs: the setup, a summary table and embedded plots.

Plots are PNGs inlined as data URIs (no network, no scripts), so the page opens anywhere.
At the top, the setup: the config keys equal in every run (by section), and the keys
that differ. Plots: accuracy vs round, vs virtual time, vs the uplink bytes sent so far
(and vs energy where modelled) — mean over seeds, one line per configuration (dashed: its
interrupted runs), one panel per setting of the other axes — and a heatmap of final
accuracy when the runs vary along two axes.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import itertools
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.compare import (
    EVENT_DOCS,
    EVENTS,
    Loaded,
    Run,
    label_columns,
    point_label,
    setup_line,
    shown_columns,
)
from fedsim.sweeps import describe


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class _Figures:
    """``subplots`` as pyplot's, on a bare `Figure`: no backend forced on the user's process
    (a notebook keeps its inline plots), nothing left open."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] | None = None,
                 **kwargs: Any) -> tuple[Any, Any]:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)


def _pyplot() -> Any:
    return _Figures


def _x_by_round(run: Run, x_key: str) -> dict[int, float]:
    """Each round's x: the round, a cumulative metric (virtual time, energy), or the uplink
    bytes sent so far (``bytes_up_cum``)."""
    out, total = {}, 0.0
    for r in run.records:
        total += float(r.get("bytes_up") or 0)
        out[int(r["round"])] = (float(r["round"]) if x_key == "round" else total if x_key == "bytes_up_cum"
                                else float(r.get(x_key) or 0.0))
    return out


def _mean_curve(runs: list[Any], x_key: str, scale: float = 1.0) -> tuple[list[float], list[float], list[float]]:
    """Mean and std of centralized accuracy at each round over seeds (x = mean of x_key / scale)."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for run in runs:
        xs = _x_by_round(run, x_key)
        for r in run.records:
            if r.get("central_acc") is not None:
                by_round.setdefault(int(r["round"]), []).append((xs[int(r["round"])] / scale, float(r["central_acc"])))
    xs, ms, ss = [], [], []
    for rnd in sorted(by_round):
        pts = by_round[rnd]
        xs.append(statistics.mean(p[0] for p in pts) if x_key != "round" else rnd)
        accs = [p[1] for p in pts]
        ms.append(statistics.mean(accs))
        ss.append(statistics.pstdev(accs) if len(accs) > 1 else 0.0)
    return xs, ms, ss


def _byte_unit(loaded: Loaded) -> tuple[float, str]:
    most = max((sum(float(r.get("bytes_up") or 0) for r in run.records) for run in loaded.runs), default=0.0)
    return next(((scale, unit) for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")) if most >= scale),
                (1.0, "bytes"))


MAX_PANELS = 9


def _panels(loaded: Loaded) -> list[tuple[str, list[Any]]]:
    """Runs split into panels: one per combination of the axes after the first.

    The first axis (the variants, else the first one written or the first differing config
    key) gives the overlaid lines, so each panel compares strategies under one
    heterogeneity setting. Every run lands in a panel (a run without a value for an axis
    in the "-" one). Without axes, or with too many combinations, everything is one panel.
    """
    axes = list(loaded.axes)
    rest = axes[1:]
    if not rest:
        return [("", loaded.runs)]
    panels: dict[tuple[str, ...], list[Any]] = {}
    for run in loaded.runs:
        key = tuple(point_label(a, run.point.get(a)) for a in rest)
        panels.setdefault(key, []).append(run)
    if len(panels) > MAX_PANELS:
        return [("", loaded.runs)]
    order = [tuple(point_label(a, v) for a, v in zip(rest, combo))
             for combo in itertools.product(*(loaded.axes[a] for a in rest))]
    order += [key for key in panels if key not in order]
    return [(", ".join(key), panels[key]) for key in order if key in panels]


def _line_label(run: Any, axes: list[str]) -> str:
    if not axes or axes[0] not in run.point:
        return run.group
    return point_label(axes[0], run.point[axes[0]])


def _lines(runs: list[Run], name: Any) -> dict[str, list[Run]]:
    """Runs by line: a configuration's interrupted runs are a line of their own."""
    lines: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.interrupted):
        lines.setdefault(name(run) + (INTERRUPTED_SUFFIX if run.interrupted else ""), []).append(run)
    return lines


INTERRUPTED_SUFFIX = " (interrupted)"


def plots(loaded: Loaded) -> list[tuple[str, str]]:
    """The page's plots as (title, PNG data URI)."""
    return [(title, _png(fig)) for title, fig in figures(loaded)]


def figures(loaded: Loaded) -> list[tuple[str, Any]]:
    """The page's plots as (title, matplotlib figure)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    axes = list(loaded.axes)
    panels = _panels(loaded)
    faceted = len(panels) > 1
    out = []
    scale, unit = _byte_unit(loaded)
    panel_lines = [_lines(runs, (lambda run: _line_label(run, axes)) if faceted else (lambda run: run.group))
                   for _, runs in panels]
    # One color per configuration on every panel (its interrupted runs: the same color, dashed).
    names = dict.fromkeys(n.removesuffix(INTERRUPTED_SUFFIX) for lines in panel_lines for n in lines)
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    has = {"round": True,
           "virtual_time_s": any((r.summary.get("virtual_time_s") or 0) > 0 for r in loaded.runs),
           "bytes_up_cum": any((x.get("bytes_up") or 0) > 0 for r in loaded.runs for x in r.records),
           "energy_total_j": any(r.summary.get("energy_j") is not None for r in loaded.runs)}
    for x_key, xlabel, title, x_scale in (
            ("round", "round", "Centralized accuracy vs round", 1.0),
            ("virtual_time_s", "virtual time (s)", "Centralized accuracy vs virtual time", 1.0),
            ("bytes_up_cum", f"uplink {unit} sent so far (all clients)", "Centralized accuracy vs uplink bytes", scale),
            ("energy_total_j", "clients' energy so far (J)", "Centralized accuracy vs energy", 1.0)):
        if not has[x_key]:
            continue
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(8 if ncols == 1 else 4.6 * ncols, 4.5 if nrows == 1 else 3.6 * nrows),
                                 sharey=True, squeeze=False)
        in_legend: set[str] = set()
        for idx, (panel_title, runs) in enumerate(panels):
            ax = grid[idx // ncols][idx % ncols]
            for name, group in panel_lines[idx].items():
                xs, ms, ss = _mean_curve(group, x_key, x_scale)
                step = x_key not in ("round", "bytes_up_cum")
                line = ax.plot(xs, ms, label=name, color=colors[name.removesuffix(INTERRUPTED_SUFFIX)],
                               drawstyle="steps-post" if step else "default",
                               linestyle="--" if group[0].interrupted else "-",
                               marker="." if len(xs) <= 12 else None)[0]
                if len(group) > 1:
                    ax.fill_between(xs, np.array(ms) - ss, np.array(ms) + ss, alpha=0.15, color=line.get_color(),
                                    step="post" if step else None)
            ax.set_title("\n".join(textwrap.wrap(panel_title, 60)), fontsize=8)
            if x_key == "round":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if idx % ncols == 0:
                ax.set_ylabel("centralized accuracy\n(mean ± std over seeds)")
            if idx == 0 or set(panel_lines[idx]) - in_legend:  # a panel with a line not named yet has a legend too
                ax.legend(fontsize=7)
                in_legend |= set(panel_lines[idx])
        for idx in range(len(panels), nrows * ncols):
            grid[idx // ncols][idx % ncols].set_visible(False)
        out.append((title, fig))
    if len(axes) == 2:
        out.append(_heatmap(plt, loaded, *axes))
    if any(r.get("probe_psnr_mean") is not None for run in loaded.runs for r in run.records):
        out.append(_leakage(plt, loaded))
    if any((r.get("privacy_epsilon") or 0) > 0 for run in loaded.runs for r in run.records):
        out.append(_privacy(plt, loaded))
    return out


def _privacy(plt: Any, loaded: Loaded) -> tuple[str, str]:
    """The privacy budget spent so far (ε at the run's δ) per round, beside accuracy: the
    trade-off a DP study reads (one line per configuration; the mean over seeds)."""
    from matplotlib.ticker import MaxNLocator

    fig, (acc_ax, eps_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, runs in _lines(loaded.runs, lambda run: run.group).items():
        color = None
        for ax, key in ((acc_ax, "central_acc"), (eps_ax, "privacy_epsilon")):
            by_round: dict[int, list[float]] = {}
            for run in runs:
                for r in run.records:
                    if r.get(key) is not None:
                        by_round.setdefault(int(r["round"]), []).append(float(r[key]))
            if by_round:
                xs = sorted(by_round)
                line = ax.plot(xs, [float(np.mean(by_round[x])) for x in xs], label=name,
                               **({"color": color} if color else {}))[0]
                color = color or line.get_color()
    deltas = sorted({r.get("privacy_delta") for run in loaded.runs for r in run.records if r.get("privacy_delta")})
    for ax, ylabel in ((acc_ax, "centralized accuracy"),
                       (eps_ax, "ε spent so far" + (f" (δ = {', '.join(f'{d:g}' for d in deltas)})" if deltas else ""))):
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
    return "Privacy budget (ε) per round, beside accuracy", fig


def _leakage(plt: Any, loaded: Loaded) -> tuple[str, str]:
    """Accuracy, reconstruction PSNR and SSIM per round side by side: what a probe found, next
    to what training reached (one line per configuration; the mean over seeds)."""
    from matplotlib.ticker import MaxNLocator

    fig, (acc_ax, psnr_ax, ssim_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, runs in _lines(loaded.runs, lambda run: run.group).items():
        line = None
        for ax, key in ((acc_ax, "central_acc"), (psnr_ax, "probe_psnr_mean"), (ssim_ax, "probe_ssim_mean")):
            by_round: dict[int, list[float]] = {}
            for run in runs:
                for r in run.records:
                    if r.get(key) is not None:
                        by_round.setdefault(int(r["round"]), []).append(float(r[key]))
            if not by_round:
                continue
            xs = sorted(by_round)
            ys = [float(np.mean(by_round[x])) for x in xs]
            kw = {"color": line.get_color()} if line is not None else {}
            drawn = ax.plot(xs, ys, marker="o" if key != "central_acc" else None, markersize=3, label=name, **kw)[0]
            line = line or drawn
    for ax, ylabel in ((acc_ax, "centralized accuracy"), (psnr_ax, "reconstruction PSNR (dB)"),
                       (ssim_ax, "reconstruction SSIM")):
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=7)
    psnr_ax.set_title("every image of a probed update counts (unreconstructed: 0 dB)", fontsize=8)
    return "Leakage per round, beside accuracy", fig


def _heatmap(plt: Any, loaded: Loaded, a: str, b: str) -> tuple[str, Any]:
    """Final accuracy over two axes (completed and stopped runs; a cell without one says
    whether its runs failed, were interrupted or were never run)."""
    va, vb = loaded.axes[a], loaded.axes[b]
    grid = np.full((len(va), len(vb)), np.nan)
    notes = [["no run"] * len(vb) for _ in va]
    for i, x in enumerate(va):
        for j, y in enumerate(vb):
            here = [r for r in loaded.runs if _same(r.point.get(a), x) and _same(r.point.get(b), y)]
            accs = [r.summary.get("final_central_acc") for r in here
                    if not r.interrupted and r.summary.get("final_central_acc") is not None]
            if accs:
                grid[i, j] = statistics.mean(accs)
            elif any(r.interrupted for r in here):
                notes[i][j] = "interrupted"
            elif any(_same(f["point"].get(a), x) and _same(f["point"].get(b), y) for f in loaded.failed):
                notes[i][j] = "failed"
    fig, ax = plt.subplots(figsize=(1.8 * len(vb) + 3.5, 0.8 * len(va) + 2))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(vb)), ["\n".join(textwrap.wrap(_label(v), 24)) for v in vb])
    ax.set_yticks(range(len(va)), ["\n".join(textwrap.wrap(_label(v), 30)) for v in va])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    finite = grid[np.isfinite(grid)]
    mid = float(finite.mean()) if finite.size else 0.0
    for i in range(len(va)):
        for j in range(len(vb)):
            text = notes[i][j] if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if np.isnan(grid[i, j]) or grid[i, j] < mid else "black")
    fig.colorbar(im, ax=ax, label="final accuracy (mean over seeds)")
    return f"Final accuracy: {a} x {b}", fig


def _same(x: Any, y: Any) -> bool:
    return x == y or describe(x) == describe(y)


def _label(v: Any) -> str:
    return describe(v)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.label, th.label { text-align: left; }
td:not(.label) { white-space: nowrap; }
table.setup td { text-align: left; white-space: normal; } table.setup { max-width: 70em; }
span.kv { white-space: nowrap; } p.note { font-size: 0.85em; color: #555; max-width: 70em; }
details summary { cursor: pointer; color: #555; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.failed td { background: #fdecea; } .interrupted td { background: #fff6d6; } code { background: #f6f6f6; padding: 0 3px; }
"""

#: Setup sections shown first; the others (fedsim's machinery, mostly defaults) fold away.
MAIN_SECTIONS = ("run", "data", "model", "strategy", "client", "codec", "round", "selection", "devices", "network",
                 "faults")


def _setup_sections(setup: dict[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    sections: dict[str, list[tuple[str, Any]]] = {}
    for key, value in setup.items():
        section = key.split(".", 1)[0]
        sections.setdefault(section, []).append((key, value))
    return sections


def _setup_table(sections: dict[str, list[tuple[str, Any]]], names: list[str]) -> str:
    e = html.escape
    rows = ["<table class='setup'><tr><th class=label>section</th><th class=label>fixed settings</th></tr>"]
    for name in names:
        items = ", ".join(f"<span class=kv title='{e(key)}'>{e(key.split('.', 1)[1] if '.' in key else key)}="
                          f"{e(describe(value))}</span>" for key, value in sections[name])
        rows.append(f"<tr><td class=label><b>{e(name)}</b></td><td class=label>{items}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def setup_html(loaded: Loaded) -> list[str]:
    """The setup block: what is fixed across every run compared (by section, the main
    sections first, the rest folded), and what differs."""
    e = html.escape
    with_config = [r for r in loaded.runs if r.config is not None]
    if not with_config:
        return []
    statuses = {s: sum(r.status == s for r in loaded.runs) for s in ("completed", "stopped", "interrupted")}
    seeds = sorted({r.seed for r in loaded.runs})
    parts = ["<h2>Setup</h2>",
             f"<p>{len(loaded.runs)} runs ({', '.join(f'{n} {s}' for s, n in statuses.items() if n)}), "
             f"seeds {', '.join(map(str, seeds))}. "
             + (f"The same in all {len(with_config)} runs: {e(setup_line(loaded))}." if loaded.setup else "")
             + (f" Compared: {', '.join('<code>' + e(k) + '</code>' for k in loaded.differing)}."
                if loaded.differing else " No config key differs between them (only seeds).")
             + (f" ({len(loaded.runs) - len(with_config)} runs have no config.toml and are left out of this "
                "comparison.)" if len(with_config) < len(loaded.runs) else "") + "</p>"]
    sections = _setup_sections(loaded.setup)
    main = [n for n in MAIN_SECTIONS if n in sections] + [n for n in sections if n not in MAIN_SECTIONS and "." not in
                                                          sections[n][0][0]]
    other = [n for n in sections if n not in main]
    if main:
        parts.append(_setup_table(sections, main))
    if other:
        count = sum(len(sections[n]) for n in other)
        parts.append(f"<details><summary>other fixed settings ({', '.join(map(e, other))}: {count} keys)</summary>"
                     + _setup_table(sections, other) + "</details>")
    return parts


def write(loaded: Loaded, rows: list[dict[str, Any]], path: Path, sources: list[str]) -> Path:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<title>fedsim report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>fedsim comparison report</h1>",
             f"<p>Sources: {', '.join('<code>' + e(s) + '</code>' for s in sources)}. "
             f"{len(loaded.runs)} runs, {len(rows)} configurations, target accuracy {rows[0]['target'] if rows else '-'}. "
             f"Generated {dt.datetime.now():%Y-%m-%d %H:%M}.</p>",
             *setup_html(loaded), "<h2>Summary</h2>", "<table class='summary'>",
             ]
    headers, labels = label_columns(rows)
    columns = shown_columns(rows)
    parts.append("<tr>" + "".join(f"<th class=label>{e(h).replace('.', '.<wbr>')}</th>" for h in headers)
                 + "".join(f"<th>{e(c)}</th>" for c, _ in columns) + "</tr>")
    for r in rows:
        cls = " class='interrupted'" if r.get("interrupted") else " class='failed'" if r["failed_cells"] else ""
        cells = [*labels(r), *(cell(r) for _, cell in columns)]
        parts.append(f"<tr{cls}>" + "".join(f"<td{' class=label' if i < len(headers) else ''}>{e(c)}</td>"
                                             for i, c in enumerate(cells)) + "</tr>")
    parts.append("</table>")
    notes = [f"<b>{e(name)}</b>: {e(EVENT_DOCS[name])}" for name, _ in columns if name in EVENTS]
    if notes:
        parts.append("<p class=note>System events, each run's total over its rounds (mean over seeds): "
                     + "; ".join(notes) + ". <b>virtual s / round</b>: the mean virtual duration of a round.</p>")
    if any(r.get("interrupted") for r in rows):
        parts.append("<p class=note>Interrupted runs are rows (and dashed lines) of their own, with their numbers as "
                     "of the last round they recorded; they are not averaged with completed runs. Stopped runs "
                     "(ended by their stop check) count as results.</p>")
    if loaded.failed:
        parts.append("<h2>Failed cells</h2><table><tr><th>configuration</th><th>seed</th><th>error</th></tr>")
        for f in loaded.failed:
            parts.append(f"<tr class='failed'><td>{e(f['label'])}</td><td>{f['seed']}</td><td>{e(str(f['error']))}</td></tr>")
        parts.append("</table>")
    for title, uri in plots(loaded):
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='{uri}'>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
