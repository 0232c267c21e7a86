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
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.compare import Loaded, fmt


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


def plots(loaded: Loaded) -> list[tuple[str, str]]:
    plt = _pyplot()
    groups: dict[str, list[Any]] = {}
    for run in loaded.runs:
        groups.setdefault(run.group, []).append(run)
    out = []
    has_time = any((r.summary.get("virtual_time_s") or 0) > 0 for r in loaded.runs)
    for x_key, xlabel, title in (("round", "round", "Centralized accuracy vs round"),
                                 ("virtual_time_s", "virtual time (s)", "Centralized accuracy vs virtual time")):
        if x_key == "virtual_time_s" and not has_time:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for group, runs in groups.items():
            xs, ms, ss = _mean_curve(runs, x_key)
            line = ax.plot(xs, ms, label=group, drawstyle="steps-post" if x_key != "round" else "default")[0]
            if len(runs) > 1:
                ax.fill_between(xs, np.array(ms) - ss, np.array(ms) + ss, alpha=0.15, color=line.get_color(),
                                step="post" if x_key != "round" else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("centralized accuracy (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append((title, _png(fig)))
    axes = list(loaded.axes)
    if len(axes) == 2:
        a, b = axes
        va, vb = loaded.axes[a], loaded.axes[b]
        grid = np.full((len(va), len(vb)), np.nan)
        for i, x in enumerate(va):
            for j, y in enumerate(vb):
                accs = [r.summary.get("final_central_acc") for r in loaded.runs
                        if r.overrides.get(a) == x and r.overrides.get(b) == y and r.summary.get("final_central_acc") is not None]
                if accs:
                    grid[i, j] = statistics.mean(accs)
        fig, ax = plt.subplots(figsize=(1.6 * len(vb) + 3, 1.0 * len(va) + 2))
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(vb)), [_label(v) for v in vb])
        ax.set_yticks(range(len(va)), [_label(v) for v in va])
        ax.set_xlabel(b)
        ax.set_ylabel(a)
        for i in range(len(va)):
            for j in range(len(vb)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center",
                            color="white" if grid[i, j] < np.nanmean(grid) else "black")
        fig.colorbar(im, ax=ax, label="final accuracy (mean over seeds)")
        out.append((f"Final accuracy: {a} x {b}", _png(fig)))
    return out


def _label(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("name", v))
    return str(v)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
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
             "<tr><th>configuration</th><th>seeds</th><th>final acc</th><th>best acc</th><th>rounds to target</th>"
             "<th>virtual s to target</th><th>MB total</th><th>leakage PSNR dB</th><th>failures</th></tr>"]
    for r in rows:
        cls = " class='failed'" if r["failed_cells"] else ""
        parts.append(
            f"<tr{cls}><td>{e(r['config'])}</td><td>{r['seeds']}</td>"
            f"<td>{fmt(r['final_acc_mean'])} ± {fmt(r['final_acc_std'])}</td>"
            f"<td>{fmt(r['best_acc_mean'])} ± {fmt(r['best_acc_std'])}</td>"
            f"<td>{fmt(r['rounds_to_target'], '.1f')} ({r['reached']}/{r['seeds']})</td>"
            f"<td>{fmt(r['virtual_s_to_target'], '.1f')}</td>"
            f"<td>{fmt(None if r['bytes_total_mean'] is None else r['bytes_total_mean'] / 1e6, '.2f')}</td>"
            f"<td>{fmt(r['probe_psnr_mean'], '.1f')}</td>"
            f"<td>{r['client_failures']} clients, {r['failed_cells']} cells</td></tr>")
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
