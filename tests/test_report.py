"""Comparison report: summary numbers by hand, CSV, terminal table, HTML in a real Chromium."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim import compare
from fedsim.cli import main, write_report
from fedsim.sweeps import MANIFEST

ROOT = Path(__file__).resolve().parents[1]


def fake_run(folder: Path, accs: list[float], seed: int, vtime_per_round: float = 0.0, psnr: float | None = None,
             failures: int = 0, bytes_up: int = 100, bytes_down: int = 200) -> None:
    folder.mkdir(parents=True)
    records = [{"round": i, "central_acc": a, "virtual_time_s": i * vtime_per_round,
                **({"probe_psnr_mean": psnr} if psnr is not None and i > 0 else {})} for i, a in enumerate(accs)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"name": folder.name, "seed": seed, "rounds": len(accs) - 1, "final_central_acc": accs[-1],
               "best_central_acc": max(accs), "bytes_up": bytes_up, "bytes_down": bytes_down, "bytes_shared": 0,
               "virtual_time_s": (len(accs) - 1) * vtime_per_round, "client_failures": failures}
    (folder / "summary.json").write_text(json.dumps(summary))


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


def test_compare_prints_the_table(tmp_path: Path) -> None:
    root = fake_sweep(tmp_path / "s")
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "compare", str(root), "--target", "0.75"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert len(lines) == 2
    assert "0.7000 ± 0.1000" in lines[0] and "2.0 (1/2)" in lines[0] and "2 clients, 0 cells" in lines[0]
    assert "0.9000 ± 0.0000" in lines[1] and "30.0" in lines[1] and "0 clients, 1 cells" in lines[1]


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def quickstart_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The acceptance grid: quickstart x 2 strategies x 2 skews x 2 seeds, via the CLI."""
    out = tmp_path_factory.mktemp("qs") / "sweep"
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "sweep", "quickstart-sweep", "--out", str(out),
                           "--set", "run.rounds=6", "--target", "0.5"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "8 done, 0 failed of 8 cells" in proc.stdout
    return out


@pytest.mark.slow
def test_quickstart_grid_report_renders_in_chromium(quickstart_sweep: Path, tmp_path: Path) -> None:
    found = chromium()
    if found is None:
        pytest.skip("no chromium + chromedriver on PATH (scripts/install-test-browser installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    html_path = quickstart_sweep / "report.html"
    with (quickstart_sweep / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["seeds"] for r in rows} == {"2"}
    assert {(r["variant"], r["data.partitioner.alpha"]) for r in rows} == {
        ("FedAvg", "0.1"), ("FedAvg", "1.0"), ("FedProx mu=0.5", "0.1"), ("FedProx mu=0.5", "1.0")}
    assert all(0.0 < float(r["final_acc_mean"]) <= 1.0 for r in rows)

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1600", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    try:
        driver.get(html_path.resolve().as_uri())
        assert driver.title == "fedsim report"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        titles = [i[0] for i in images]
        assert titles == ["Centralized accuracy vs round", "Final accuracy: variant x data.partitioner.alpha"]
        assert all(complete and w > 300 and h > 200 for _, complete, w, h in images), images
        body_rows = driver.execute_script("return document.querySelectorAll('table tr').length;")
        assert body_rows == 1 + 4
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        shot = tmp_path / "report.png"
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
