"""One self-contained HTML page comparing runs: a summary table and embedded plots.

Plots are PNGs inlined as data URIs (no network, no scripts), so the page opens anywhere.
Plots: accuracy vs round and vs virtual time (mean over seeds, one line per
configuration), and a heatmap of final accuracy when the sweep has two axes.
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

from fedsim.compare import Loaded, label_columns, shown_columns
from fedsim.sweeps import describe


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(runs: list[Any], x_key: str) -> tuple[list[float], list[float], list[float]]:
    """Mean and std of centralized accuracy at each round over seeds (x = mean of x_key)."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for run in runs:
        for r in run.records:
            if r.get("central_acc") is not None:
                by_round.setdefault(int(r["round"]), []).append((float(r.get(x_key) or 0.0), float(r["central_acc"])))
    xs, ms, ss = [], [], []
    for rnd in sorted(by_round):
        pts = by_round[rnd]
        xs.append(statistics.mean(p[0] for p in pts) if x_key != "round" else rnd)
        accs = [p[1] for p in pts]
        ms.append(statistics.mean(accs))
        ss.append(statistics.pstdev(accs) if len(accs) > 1 else 0.0)
    return xs, ms, ss


MAX_PANELS = 9


def _panels(loaded: Loaded) -> list[tuple[str, list[Any]]]:
    """Runs split into panels: one per combination of the axes after the first.

    The first axis (the variants, else the first one written) gives the overlaid lines,
    so each panel compares strategies under one heterogeneity setting. Without axes, or
    with too many combinations, everything is one panel.
    """
    axes = list(loaded.axes)
    rest = axes[1:]
    if not rest:
        return [("", loaded.runs)]
    panels: dict[tuple[str, ...], list[Any]] = {}
    for run in loaded.runs:
        key = tuple(_label(run.point.get(a)) for a in rest)
        panels.setdefault(key, []).append(run)
    if len(panels) > MAX_PANELS:
        return [("", loaded.runs)]
    order = [tuple(_label(v) for v in combo) for combo in itertools.product(*(loaded.axes[a] for a in rest))]
    return [(", ".join(f"{a}={v}" for a, v in zip(rest, key)), panels[key]) for key in order if key in panels]


def _line_label(run: Any, axes: list[str]) -> str:
    if not axes:
        return run.group
    first = axes[0]
    value = _label(run.point.get(first))
    return value if first == "variant" else f"{first}={value}"


def plots(loaded: Loaded) -> list[tuple[str, str]]:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    axes = list(loaded.axes)
    panels = _panels(loaded)
    faceted = len(panels) > 1
    out = []
    has = {"round": True,
           "virtual_time_s": any((r.summary.get("virtual_time_s") or 0) > 0 for r in loaded.runs),
           "energy_total_j": any(r.summary.get("energy_j") is not None for r in loaded.runs)}
    for x_key, xlabel, title in (("round", "round", "Centralized accuracy vs round"),
                                 ("virtual_time_s", "virtual time (s)", "Centralized accuracy vs virtual time"),
                                 ("energy_total_j", "clients' energy so far (J)", "Centralized accuracy vs energy")):
        if not has[x_key]:
            continue
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, grid = plt.subplots(nrows, ncols, figsize=(8 if ncols == 1 else 4.6 * ncols, 4.5 if nrows == 1 else 3.6 * nrows),
                                 sharey=True, squeeze=False)
        colors: dict[str, Any] = {}
        for idx, (panel_title, runs) in enumerate(panels):
            ax = grid[idx // ncols][idx % ncols]
            lines: dict[str, list[Any]] = {}
            for run in runs:
                lines.setdefault(_line_label(run, axes) if faceted else run.group, []).append(run)
            for name, group in lines.items():
                xs, ms, ss = _mean_curve(group, x_key)
                step = x_key != "round"
                line = ax.plot(xs, ms, label=name, color=colors.get(name), drawstyle="steps-post" if step else "default")[0]
                colors.setdefault(name, line.get_color())
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
            if idx == 0:
                ax.legend(fontsize=7)
        for idx in range(len(panels), nrows * ncols):
            grid[idx // ncols][idx % ncols].set_visible(False)
        out.append((title, _png(fig)))
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
    groups: dict[str, list[Any]] = {}
    for run in loaded.runs:
        groups.setdefault(run.group, []).append(run)
    for name, runs in groups.items():
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
    fig.tight_layout()
    return "Privacy budget (ε) per round, beside accuracy", _png(fig)


def _leakage(plt: Any, loaded: Loaded) -> tuple[str, str]:
    """Accuracy, reconstruction PSNR and SSIM per round side by side: what a probe found, next
    to what training reached (one line per configuration; the mean over seeds)."""
    from matplotlib.ticker import MaxNLocator

    fig, (acc_ax, psnr_ax, ssim_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    groups: dict[str, list[Any]] = {}
    for run in loaded.runs:
        groups.setdefault(run.group, []).append(run)
    for name, runs in groups.items():
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
    fig.tight_layout()
    return "Leakage per round, beside accuracy", _png(fig)


def _heatmap(plt: Any, loaded: Loaded, a: str, b: str) -> tuple[str, str]:
    va, vb = loaded.axes[a], loaded.axes[b]
    grid = np.full((len(va), len(vb)), np.nan)
    for i, x in enumerate(va):
        for j, y in enumerate(vb):
            accs = [r.summary.get("final_central_acc") for r in loaded.runs
                    if r.point.get(a) == x and r.point.get(b) == y and r.summary.get("final_central_acc") is not None]
            if accs:
                grid[i, j] = statistics.mean(accs)
    fig, ax = plt.subplots(figsize=(1.8 * len(vb) + 3.5, 0.8 * len(va) + 2))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(vb)), [_label(v) for v in vb])
    ax.set_yticks(range(len(va)), [_label(v) for v in va])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    finite = grid[np.isfinite(grid)]
    mid = float(finite.mean()) if finite.size else 0.0
    for i in range(len(va)):
        for j in range(len(vb)):
            text = "failed" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if np.isnan(grid[i, j]) or grid[i, j] < mid else "black")
    fig.colorbar(im, ax=ax, label="final accuracy (mean over seeds)")
    return f"Final accuracy: {a} x {b}", _png(fig)


def _label(v: Any) -> str:
    return describe(v)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.label, th.label { text-align: left; }
td:not(.label) { white-space: nowrap; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.failed td { background: #fdecea; } code { background: #f6f6f6; padding: 0 3px; }
"""


def write(loaded: Loaded, rows: list[dict[str, Any]], path: Path, sources: list[str]) -> Path:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<title>fedsim report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>fedsim comparison report</h1>",
             f"<p>Sources: {', '.join('<code>' + e(s) + '</code>' for s in sources)}. "
             f"{len(loaded.runs)} runs, {len(rows)} configurations, target accuracy {rows[0]['target'] if rows else '-'}. "
             f"Generated {dt.datetime.now():%Y-%m-%d %H:%M}.</p>", "<h2>Summary</h2>", "<table>",
             ]
    headers, labels = label_columns(rows)
    columns = shown_columns(rows)
    parts.append("<tr>" + "".join(f"<th class=label>{e(h)}</th>" for h in headers)
                 + "".join(f"<th>{e(c)}</th>" for c, _ in columns) + "</tr>")
    for r in rows:
        cls = " class='failed'" if r["failed_cells"] else ""
        cells = [*labels(r), *(cell(r) for _, cell in columns)]
        parts.append(f"<tr{cls}>" + "".join(f"<td{' class=label' if i < len(headers) else ''}>{e(c)}</td>"
                                             for i, c in enumerate(cells)) + "</tr>")
    parts.append("</table>")
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
