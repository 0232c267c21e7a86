"""Comparison report: summary numbers by hand, CSV, terminal table, HTML in a real Chromium."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fedsim import compare, htmlreport
from fedsim.cli import main, write_report
from fedsim.sweeps import MANIFEST

ROOT = Path(__file__).resolve().parents[1]


def fake_run(folder: Path, accs: list[float], seed: int, vtime_per_round: float = 0.0, psnr: float | None = None,
             failures: int = 0, bytes_up: int = 100, bytes_down: int = 200, config: dict[str, Any] | None = None,
             rounds: list[dict[str, Any]] | None = None, summary: dict[str, Any] | None = None,
             write_summary: bool = True) -> None:
    """A run folder by hand: ``rounds`` adds fields to rounds 1.. (round 0 has none of them),
    ``config`` is written as config.toml, ``summary`` updates summary.json."""
    folder.mkdir(parents=True)
    records = [{"round": i, "central_acc": a, "virtual_time_s": i * vtime_per_round,
                **({"probe_psnr_mean": psnr} if psnr is not None and i > 0 else {}),
                **((rounds or [])[i - 1] if 0 < i <= len(rounds or []) else {})} for i, a in enumerate(accs)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if config is not None:
        (folder / "config.toml").write_text(tomli_w.dumps(config))
    if write_summary:
        data = {"name": folder.name, "seed": seed, "rounds": len(accs) - 1, "final_central_acc": accs[-1],
                "best_central_acc": max(accs), "bytes_up": bytes_up, "bytes_down": bytes_down, "bytes_shared": 0,
                "virtual_time_s": (len(accs) - 1) * vtime_per_round, "client_failures": failures, **(summary or {})}
        (folder / "summary.json").write_text(json.dumps(data))


def scenario(**edits: Any) -> dict[str, Any]:
    """A small resolved config (as config.toml holds it); ``edits``: dotted key (``__`` for
    ``.``) -> value, or None to leave the key out."""
    cfg: dict[str, Any] = {"run": {"name": "study", "seed": 0, "rounds": 3, "checkpoint_every": 0},
                           "data": {"num_clients": 10, "dataset": {"name": "digits"},
                                    "partitioner": {"name": "dirichlet", "alpha": 0.1}},
                           "model": {"name": "mlp"}, "strategy": {"name": "fedavg"},
                           "devices": {"straggler_fraction": 0.0},
                           "round": {"policy": "deadline", "deadline": 5.0}, "report": {"progress": False}}
    for dotted, value in edits.items():
        *path, last = dotted.split("__")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


def fake_sweep(root: Path) -> Path:
    """2 variants x 2 seeds, with one failed cell; numbers chosen to be summed by hand."""
    cells = []
    spec = [("A", 0, [0.1, 0.5, 0.7, 0.6], 10.0, None, 0), ("A", 1, [0.1, 0.3, 0.8, 0.8], 10.0, None, 2),
            ("B", 0, [0.1, 0.9, 0.9, 0.9], 20.0, 30.0, 0), ("B", 1, None, 0, None, 0)]
    for i, (variant, seed, accs, vt, psnr, fails) in enumerate(spec):
        cell_id = f"cell-{i:03d}"
        if accs is not None:
            fake_run(root / cell_id, accs, seed, vt, psnr, fails)
        cells.append({"id": cell_id, "index": i, "label": variant, "point": {"variant": variant},
                      "overrides": {}, "seed": seed, "dir": cell_id, "status": "done" if accs else "failed",
                      "error": None if accs else "RuntimeError: boom", "wall_s": 1.0})
    (root / MANIFEST).write_text(json.dumps({"scenario": "x.toml", "axes": {"variant": ["A", "B"]},
                                              "seeds": [0, 1], "cells": cells}))
    return root


def test_summary_by_hand(tmp_path: Path) -> None:
    rows = {r["config"]: r for r in compare.summarize(compare.load([fake_sweep(tmp_path)]), target=0.75)}
    a, b = rows["A"], rows["B"]
    assert a["seeds"] == 2 and a["final_acc_mean"] == pytest.approx(0.7) and a["final_acc_std"] == pytest.approx(0.1)
    assert a["best_acc_mean"] == pytest.approx(0.75) and a["best_acc_std"] == pytest.approx(0.05)
    # Seed 0 never reaches 0.75; seed 1 does at round 2 (virtual time 20 s).
    assert (a["reached"], a["rounds_to_target"], a["virtual_s_to_target"]) == (1, 2, 20.0)
    assert a["bytes_total_mean"] == 300 and a["client_failures"] == 2 and a["failed_cells"] == 0
    assert a["probe_psnr_mean"] is None
    assert (b["seeds"], b["final_acc_mean"], b["final_acc_std"], b["failed_cells"]) == (1, 0.9, 0.0, 1)
    assert (b["rounds_to_target"], b["virtual_s_to_target"], b["probe_psnr_mean"]) == (1, 20.0, 30.0)


def test_runs_without_a_virtual_clock_report_no_virtual_time(tmp_path: Path) -> None:
    fake_run(tmp_path / "r", [0.2, 0.9], seed=0)
    (row,) = compare.summarize(compare.load([tmp_path / "r"]), target=0.5)
    assert row["rounds_to_target"] == 1 and row["virtual_s_to_target"] is None and row["virtual_time_s_mean"] is None


def test_all_seeds_failed_is_still_a_row(tmp_path: Path) -> None:
    root = fake_sweep(tmp_path / "s")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["cells"][2]["status"] = "failed"
    (root / MANIFEST).write_text(json.dumps(manifest))
    rows = {r["config"]: r for r in compare.summarize(compare.load([root]), target=0.75)}
    assert rows["B"]["seeds"] == 0 and rows["B"]["failed_cells"] == 2 and rows["B"]["final_acc_mean"] is None


def test_not_a_run_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fedsim: error: DIR = '{tmp_path}'") and "\n" not in err


def test_csv_and_html_are_self_contained(tmp_path: Path) -> None:
    root = fake_sweep(tmp_path / "s")
    html_path, csv_path = write_report([str(root)], 0.75, None)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["config"] for r in rows] == ["A", "B"]
    assert rows[0]["variant"] == "A" and float(rows[0]["final_acc_mean"]) == pytest.approx(0.7)
    assert rows[1]["failed_cells"] == "1" and rows[1]["final_acc_std"] == "0.0"
    page = html_path.read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = page.count("src='data:image/png;base64,")
    # accuracy vs round, vs virtual time, leakage beside accuracy (B probed); one axis: no heatmap
    assert images == 3
    assert "Leakage per round, beside accuracy" in page
    payload = page.split("src='data:image/png;base64,", 1)[1].split("'", 1)[0]
    assert base64.b64decode(payload).startswith(b"\x89PNG")
    assert "RuntimeError: boom" in page


def test_compare_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_sweep(tmp_path / "s")
    assert main(["compare", str(root), "--target", "0.75"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert len(lines) == 2
    assert "0.7000 ± 0.1000" in lines[0] and "2.0 (1/2)" in lines[0] and "2 clients, 0 cells" in lines[0]
    assert "0.9000 ± 0.0000" in lines[1] and "30.0" in lines[1] and "0 clients, 1 cells" in lines[1]


def three_runs(root: Path) -> list[str]:
    """Plain run folders: FedAvg at deadlines 5 and 2, FedProx (mu 0.5, seed 1) at 5."""
    for name, edits in (("a", {}), ("b", {"round__deadline": 2.0}),
                        ("c", {"run__seed": 1, "strategy__name": "fedprox", "strategy__proximal_mu": 0.5})):
        fake_run(root / name, [0.1, 0.5], seed=edits.get("run__seed", 0), config=scenario(run__name=name, **edits))
    return [str(root / n) for n in "abc"]


FIXED = {"run.rounds": 3, "data.num_clients": 10, "data.dataset.name": "digits", "data.partitioner.name": "dirichlet",
         "data.partitioner.alpha": 0.1, "model.name": "mlp", "devices.straggler_fraction": 0.0, "round.policy": "deadline"}


def test_setup_is_exactly_the_fixed_keys_and_labels_are_the_differing_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = three_runs(tmp_path)
    loaded = compare.load(dirs)
    # Fixed: every key equal in the three configs, in config order; not run.name / run.seed (they
    # differ), nor report.* and run.checkpoint_every (they do not change results).
    assert loaded.setup == FIXED and list(loaded.setup) == list(FIXED)
    assert loaded.differing == ["strategy.name", "round.deadline", "strategy.proximal_mu"]
    rows = compare.summarize(loaded, 0.5)
    # strategy.name and proximal_mu change together: one axis; a key a run lacks is left out of its label.
    assert [r["config"] for r in rows] == ["strategy.name=fedavg, round.deadline=5.0",
                                           "strategy.name=fedavg, round.deadline=2.0",
                                           "strategy.name=fedprox, strategy.proximal_mu=0.5, round.deadline=5.0"]
    headers, labels = compare.label_columns(rows)
    assert headers == ["strategy.name", "round.deadline", "strategy.proximal_mu"]
    assert [labels(r) for r in rows] == [["fedavg", "5.0", "-"], ["fedavg", "2.0", "-"], ["fedprox", "5.0", "0.5"]]
    assert list(loaded.axes) == ["strategy.name (+1)", "round.deadline"]

    html_path, csv_path = write_report(dirs, 0.5, str(tmp_path / "report.html"))
    page = html_path.read_text()
    setup = page.split("<h2>Setup</h2>", 1)[1].split("<h2>Summary</h2>", 1)[0]
    assert set(re.findall(r"<span class=kv title='([^']+)'>", setup)) == set(FIXED)
    assert "<span class=kv title='data.partitioner.alpha'>partitioner.alpha=0.1</span>" in setup
    assert "Compared: <code>strategy.name</code>, <code>round.deadline</code>, <code>strategy.proximal_mu</code>." in setup
    with csv_path.open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [(r["strategy.name"], r["round.deadline"], r["strategy.proximal_mu"]) for r in csv_rows] == [
        ("fedavg", "5.0", ""), ("fedavg", "2.0", ""), ("fedprox", "5.0", "0.5")]

    assert main(["compare", *dirs, "--target", "0.5"]) == 0
    out = capsys.readouterr().out
    assert ("setup, the same in all 3 runs: data.dataset.name=digits, data.num_clients=10, data.partitioner.name=dirichlet, "
            "model.name=mlp, run.rounds=3, round.policy=deadline (+2 more fixed keys)") in out
    assert "compared: strategy.name, round.deadline, strategy.proximal_mu" in out
    assert len([line for line in out.splitlines() if line.startswith("│")]) == 3


def events(**counts: int) -> dict[str, int]:
    return {**{k: 0 for k in ("stragglers", "partial", "dropouts", "unavailable", "model_lost", "reply_lost",
                              "corrupted")}, **counts}


def test_event_columns_and_round_time_by_hand(tmp_path: Path) -> None:
    # Two seeds of one configuration. Seed 0: stragglers 2+1, partial 2, dropped (dropouts +
    # unavailable) 1+1, lost (model + reply) 1+1, corrupted 1; rounds of 5 and 3 virtual s.
    # Seed 1: one straggler; rounds of 2 and 2 s. Round 0 (no training) does not count.
    fake_run(tmp_path / "s0", [0.1, 0.2, 0.3], 0, vtime_per_round=4.0, config=scenario(),
             rounds=[{**events(stragglers=2, dropouts=1, unavailable=1, reply_lost=1), "virtual_round_s": 5.0},
                     {**events(stragglers=1, partial=2, model_lost=1, corrupted=1), "virtual_round_s": 3.0}])
    fake_run(tmp_path / "s1", [0.1, 0.2, 0.4], 1, vtime_per_round=2.0, config=scenario(run__seed=1),
             rounds=[{**events(), "virtual_round_s": 2.0}, {**events(stragglers=1), "virtual_round_s": 2.0}])
    dirs = [str(tmp_path / "s0"), str(tmp_path / "s1")]
    (row,) = rows = compare.summarize(compare.load(dirs), 0.5)
    assert row["config"] == "study" and row["seeds"] == 2  # nothing but the seed differs: one configuration
    assert (row["stragglers_mean"], row["partial_mean"], row["dropped_mean"], row["lost_mean"],
            row["corrupted_mean"]) == (2, 1, 1, 1, 0.5)
    assert row["virtual_round_s_mean"] == pytest.approx(3.0)  # mean of (5+3)/2 and (2+2)/2
    cells = {c: cell(row) for c, cell in compare.shown_columns(rows)}
    assert {c: cells[c] for c in ("stragglers", "partial", "dropped", "lost", "corrupted", "virtual s / round")} == {
        "stragglers": "2", "partial": "1", "dropped": "1", "lost": "1", "corrupted": "0.5", "virtual s / round": "3.00"}
    assert "status" not in cells  # every run completed
    # Events that never happened are not columns; one that did is.
    only_seed1 = compare.summarize(compare.load(dirs[1:]), 0.5)
    shown = [c for c, _ in compare.shown_columns(only_seed1)]
    assert "stragglers" in shown and not {"partial", "dropped", "lost", "corrupted"} & set(shown)
    html_path, csv_path = write_report(dirs, 0.5, str(tmp_path / "r.html"))
    with csv_path.open() as fh:
        (line,) = list(csv.DictReader(fh))
    assert (line["stragglers_mean"], line["corrupted_mean"], line["virtual_round_s_mean"], line["status"]) == (
        "2", "0.5", "3.0", "completed")
    page = html_path.read_text()
    assert "<b>stragglers</b>: replies that missed the round&#x27;s deadline" in page


def mixed_study(root: Path) -> list[str]:
    """A sweep over the straggler fraction (deadline policy) and a standalone run keeping
    stragglers' partial work; every round uploads 100 bytes."""
    cells = []
    for i, frac in enumerate((0.0, 0.5)):
        fake_run(root / "sw" / f"cell-{i}", [0.1, 0.3, 0.5, 0.6 - frac / 5], 0, 2.0,
                 config=scenario(run__name=f"study-cell-{i}", devices__straggler_fraction=frac),
                 rounds=[{"bytes_up": 100}] * 3)
        cells.append({"id": f"cell-{i}", "index": i, "label": f"devices.straggler_fraction={frac}",
                      "point": {"devices.straggler_fraction": frac}, "overrides": {"devices.straggler_fraction": frac},
                      "seed": 0, "dir": f"cell-{i}", "status": "done", "error": None, "wall_s": 1.0})
    (root / "sw" / MANIFEST).write_text(json.dumps({"scenario": "x.toml", "target": 0.5, "seeds": [0], "cells": cells,
                                                    "axes": {"devices.straggler_fraction": [0.0, 0.5]}}))
    fake_run(root / "solo", [0.1, 0.4, 0.6, 0.7], 0, 2.0, rounds=[{"bytes_up": 100}] * 3,
             config=scenario(run__name="solo", devices__straggler_fraction=0.5, round__policy="partial_work"))
    return [str(root / "sw"), str(root / "solo")]


def legend_of(ax: Any) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_standalone_runs_and_a_sweep_are_compared_and_plotted_together(tmp_path: Path) -> None:
    dirs = mixed_study(tmp_path)
    loaded = compare.load(dirs)
    rows = compare.summarize(loaded, 0.5)
    assert [r["config"] for r in rows] == ["round.policy=deadline, devices.straggler_fraction=0.0",
                                           "round.policy=deadline, devices.straggler_fraction=0.5",
                                           "round.policy=partial_work, devices.straggler_fraction=0.5"]
    # The algorithm's key gives the lines, the heterogeneity's the panels: every run is drawn.
    assert loaded.axes == {"round.policy": ["deadline", "partial_work"], "devices.straggler_fraction": [0.0, 0.5]}
    figs = dict(htmlreport.figures(loaded))
    assert list(figs) == ["Centralized accuracy vs round", "Centralized accuracy vs virtual time",
                          "Centralized accuracy vs uplink bytes", "Final accuracy: round.policy x devices.straggler_fraction"]
    panels = {ax.get_title(): legend_of(ax) for ax in figs["Centralized accuracy vs round"].axes if ax.get_visible()}
    assert panels == {"devices.straggler_fraction=0.0": ["round.policy=deadline"],
                      "devices.straggler_fraction=0.5": ["round.policy=deadline", "round.policy=partial_work"]}
    # Accuracy against the uplink bytes sent so far: 0, 100, 200, 300 bytes after rounds 0..3.
    (bytes_ax,) = [ax for ax in figs["Centralized accuracy vs uplink bytes"].axes
                   if ax.get_title() == "devices.straggler_fraction=0.5"]
    solo = next(line for line in bytes_ax.get_lines() if line.get_label() == "round.policy=partial_work")
    assert list(solo.get_xdata()) == [0, 100, 200, 300] and list(solo.get_ydata()) == [0.1, 0.4, 0.6, 0.7]
    assert bytes_ax.get_xlabel() == "uplink bytes sent so far (all clients)"
    html_path, _ = write_report(dirs, None, str(tmp_path / "r.html"))
    assert html_path.read_text().count("src='data:image/png;base64,") == 4


def test_interrupted_runs_are_shown_and_not_averaged(tmp_path: Path) -> None:
    root = tmp_path / "sw"
    fake_run(root / "a0", [0.1, 0.5, 0.7, 0.8], 0)
    fake_run(root / "a1", [0.1, 0.4], 1, write_summary=False)  # killed after round 1, its last line cut short
    with (root / "a1" / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 2, "central_')
    fake_run(root / "b0", [0.1, 0.3, 0.2], 0, summary={"status": "stopped", "stopped": "accuracy is NaN"})
    cells = [("a0", "A", 0, "done"), ("a1", "A", 1, "interrupted"), ("a2", "A", 2, "pending"), ("b0", "B", 0, "done")]
    (root / MANIFEST).write_text(json.dumps({"scenario": "x.toml", "axes": {"variant": ["A", "B"]}, "seeds": [0, 1, 2],
                                             "cells": [{"id": d, "index": i, "label": v, "point": {"variant": v},
                                                        "overrides": {}, "seed": s, "dir": d, "status": st, "error": None}
                                                       for i, (d, v, s, st) in enumerate(cells)]}))
    loaded = compare.load([root])
    rows = compare.summarize(loaded, 0.75)
    assert [(r["config"], r["seeds"], r["status"], r["final_acc_mean"]) for r in rows] == [
        ("A", 1, "1 completed, 1 not run", 0.8),  # the interrupted seed is not in the mean
        ("A", 1, "interrupted after round 1", 0.4),  # its own row, numbers as of round 1
        ("B", 1, "1 stopped at round 2: accuracy is NaN", 0.2)]  # a stopped run is a result
    assert [r["interrupted"] for r in rows] == [False, True, False]
    assert [c for c, _ in compare.shown_columns(rows)][0] == "status"
    page = write_report([str(root)], 0.75, None)[0].read_text()
    assert "<tr class='interrupted'><td class=label>A</td><td>interrupted after round 1</td>" in page
    assert "not averaged with completed runs" in page
    fig = dict(htmlreport.figures(loaded))["Centralized accuracy vs round"]
    styles = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert styles == {"A": "-", "A (interrupted)": "--", "B": "-"}

    # Run folders: one whose summary says so, one without summary.json (rebuilt from its rounds).
    fake_run(tmp_path / "said", [0.1, 0.2], 0, summary={"status": "interrupted"})
    fake_run(tmp_path / "cut", [0.1, 0.2, 0.3], 0, bytes_up=7, write_summary=False)
    fake_run(tmp_path / "done", [0.1, 0.9], 0, summary={"status": "completed"})
    loaded = compare.load([tmp_path / "said", tmp_path / "cut", tmp_path / "done"])
    assert [r.status for r in loaded.runs] == ["interrupted", "interrupted", "completed"]
    assert loaded.runs[1].summary["final_central_acc"] == 0.3 and loaded.runs[1].summary["rounds"] == 2
    rows = compare.summarize(loaded, 0.5)
    assert [r["status"] for r in rows] == ["interrupted after round 1", "interrupted after round 2", "completed"]


def test_round_axes_have_integer_ticks(tmp_path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    privacy = [{"privacy_epsilon": 0.5, "privacy_delta": 1e-5}, {"privacy_epsilon": 0.9, "privacy_delta": 1e-5}]
    fake_run(tmp_path / "r", [0.1, 0.4, 0.5], 0, vtime_per_round=1.5, psnr=12.0, rounds=privacy)
    figs = htmlreport.figures(compare.load([tmp_path / "r"]))
    round_axes = [ax for _, fig in figs for ax in fig.axes if ax.get_xlabel() == "round"]
    assert len(round_axes) == 1 + 3 + 2  # accuracy; leakage: accuracy, PSNR, SSIM; privacy: accuracy, epsilon
    for ax in round_axes:
        ax.figure.canvas.draw()
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        lo, hi = sorted(ax.get_xlim())
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert all(re.fullmatch(r"-?\d+", label.get_text().replace("−", "-")) for label in ax.get_xticklabels()
                   if lo <= label.get_position()[0] <= hi)


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def hetero_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The acceptance study, in-process: the quickstart (digits, MLP, Dirichlet label skew)
    as a 2 x 2 sweep of FedProx's straggler fraction (0 / 50 %, dropped at the deadline) x
    label skew (alpha 0.1 / 1.0), 2 seeds, 3 rounds; beside it a standalone run that keeps
    the stragglers' partial work, and an interrupted copy of that run."""
    root = tmp_path_factory.mktemp("hetero")
    raw = tomllib.loads((ROOT / "scenarios" / "presets" / "quickstart-sweep.toml").read_text())
    raw["run"]["rounds"] = 3
    raw["data"]["num_clients"] = 10
    raw["model"]["hidden"] = [16]
    raw["devices"] = {"seconds_per_sample": 0.01}
    raw["round"] = {"policy": "deadline", "deadline": 100.0}
    raw["report"] = {"plots": False, "progress": False}
    raw["sweep"] = {"seeds": [0, 1], "target": 0.5,
                    "axes": {"devices.straggler_fraction": [0.0, 0.5], "data.partitioner.alpha": [0.1, 1.0]}}
    (root / "sweep.toml").write_text(tomli_w.dumps(raw))
    assert main(["sweep", str(root / "sweep.toml"), "--out", str(root / "sweep"), "--parallel", "1"]) == 0
    del raw["sweep"]
    raw["devices"]["straggler_fraction"] = 0.5
    raw["data"]["partitioner"]["alpha"] = 0.1
    raw["round"]["policy"] = "partial_work"
    (root / "partial.toml").write_text(tomli_w.dumps(raw))
    assert main(["run", str(root / "partial.toml"), "--out", str(root / "partial")]) == 0
    shutil.copytree(root / "partial", root / "partial-cut")  # killed during round 3: no summary, 2 rounds
    (root / "partial-cut" / "summary.json").unlink()
    lines = (root / "partial-cut" / "metrics.jsonl").read_text().splitlines()
    (root / "partial-cut" / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    return root / "sweep", root


@pytest.mark.slow
def test_quickstart_grid_report_renders_in_chromium(hetero_study: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    found = chromium()
    if found is None:
        pytest.skip("no chromium + chromedriver on PATH (scripts/install-test-browser installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    sweep, root = hetero_study
    with (sweep / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["seeds"] for r in rows} == {"2"} and {r["status"] for r in rows} == {"completed"}
    assert {(r["devices.straggler_fraction"], r["data.partitioner.alpha"]) for r in rows} == {
        ("0.0", "0.1"), ("0.0", "1.0"), ("0.5", "0.1"), ("0.5", "1.0")}
    assert all(0.0 < float(r["final_acc_mean"]) <= 1.0 for r in rows)
    # Of the 5 clients sampled per round (fraction_train 0.5 of 10), 2 straggle and are dropped: 2 x 3 rounds per run.
    assert {r["devices.straggler_fraction"]: r["stragglers_mean"] for r in rows} == {"0.0": "0", "0.5": "6"}
    assert all(float(r["virtual_round_s_mean"]) == pytest.approx(100.0, abs=1.0)
               for r in rows if r["devices.straggler_fraction"] == "0.5")  # the server waits out the deadline
    mixed = tmp_path / "mixed.html"
    assert main(["report", str(sweep), str(root / "partial"), str(root / "partial-cut"), "--out", str(mixed)]) == 0
    with (tmp_path / "summary.csv").open() as fh:
        mixed_rows = list(csv.DictReader(fh))
    assert [(r["round.policy"], r["devices.straggler_fraction"], r["data.partitioner.alpha"], r["status"])
            for r in mixed_rows][-2:] == [("partial_work", "0.5", "0.1", "completed"),
                                          ("partial_work", "0.5", "0.1", "interrupted after round 2")]
    assert {r["partial_mean"] for r in mixed_rows[-2:]} != {"0"}  # the stragglers did partial work

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1600", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    try:
        pages = {"sweep": (sweep / "report.html", 4, ["Centralized accuracy vs round", "Centralized accuracy vs virtual time",
                                                      "Centralized accuracy vs uplink bytes",
                                                      "Final accuracy: devices.straggler_fraction x data.partitioner.alpha"]),
                 "mixed": (mixed, 6, ["Centralized accuracy vs round", "Centralized accuracy vs virtual time",
                                      "Centralized accuracy vs uplink bytes"])}
        for name, (page, n_rows, plot_titles) in pages.items():
            driver.get(page.resolve().as_uri())
            assert driver.title == "fedsim report"
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
            assert [i[0] for i in images] == plot_titles
            assert all(complete and w > 300 and h > 200 for _, complete, w, h in images), images
            assert driver.execute_script("return document.querySelectorAll('table.summary tr').length;") == 1 + n_rows
            setup = driver.execute_script("return Array.from(document.querySelectorAll('span.kv')).map(s => s.title);")
            assert {"data.dataset.name", "model.name", "data.num_clients", "run.rounds", "strategy.name"} <= set(setup)
            assert "devices.straggler_fraction" not in setup and "data.partitioner.alpha" not in setup
            assert driver.execute_script("return document.querySelectorAll('tr.interrupted').length;") == (
                1 if name == "mixed" else 0)
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert errors == []
            shot = tmp_path / f"{name}.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        # Control: the same checks catch a page with a broken image and a script error.
        bad = tmp_path / "bad.html"
        bad.write_text("<html><body><img src='missing.png'><script>undefined_fn()</script></body></html>")
        driver.get(bad.as_uri())
        assert driver.execute_script("return document.images[0].naturalWidth;") == 0
        assert len([e for e in driver.get_log("browser") if e["level"] == "SEVERE"]) >= 2
    finally:
        driver.quit()


def test_plots_leave_the_users_matplotlib_backend_alone(tmp_path: Path) -> None:
    """A notebook's backend (inline) stays: run folders' plots and the report draw on bare Figures."""
    import matplotlib

    import fedsim
    from tests.conftest import tiny_config

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        run = fedsim.run(tiny_config(run={"rounds": 2}, report={"plots": True, "progress": False}),
                         out_dir=tmp_path / "r")
        write_report([str(run.out_dir)], 0.5, None)
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "r" / "accuracy.png").stat().st_size > 0 and (tmp_path / "r" / "report.html").exists()
    finally:
        matplotlib.use(before)
