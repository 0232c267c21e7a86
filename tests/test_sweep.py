"""Sweeps: grid expansion, validation errors, failed cells, resume, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.report import read_metrics
from fedsim.sweeps import MANIFEST, load_sweep, run_sweep
from tests.clirun import fedsim_main
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]


def write_scenario(tmp_path: Path, sweep: dict, name: str = "s.toml", **sections) -> Path:
    raw = tiny_raw(**sections)
    raw["run"]["rounds"] = 2
    raw["sweep"] = sweep
    path = tmp_path / name
    path.write_bytes(tomli_w.dumps(raw).encode())
    return path


def fedsim_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_grid_expands_axes_in_order_then_seeds(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {"seeds": [4, 5], "axes": {"strategy.name": ["fedavg", "fedprox"],
                                                               "client.lr": [0.1, 0.05, 0.01]}})
    sweep = load_sweep(path)
    assert len(sweep.cells) == 2 * 3 * 2
    assert [(c.point["strategy.name"], c.point["client.lr"], c.seed) for c in sweep.cells[:4]] == [
        ("fedavg", 0.1, 4), ("fedavg", 0.1, 5), ("fedavg", 0.05, 4), ("fedavg", 0.05, 5)]
    cfg = sweep.config(sweep.cells[-1])
    assert (cfg.strategy.name, cfg.client.lr, cfg.run.seed) == ("fedprox", 0.01, 5)
    assert len({c.id for c in sweep.cells}) == 12  # distinct folders


def test_variants_change_several_keys_together(tmp_path: Path) -> None:
    variants = {"avg": {"strategy.name": "fedavg"},
                "prox": {"strategy.name": "fedprox", "strategy.proximal_mu": 0.5, "client.lr": 0.02}}
    path = write_scenario(tmp_path, {"variants": variants, "axes": {"data.partitioner.alpha": [0.1, 1.0]}})
    sweep = load_sweep(path)
    assert list(sweep.axes) == ["variant", "data.partitioner.alpha"]
    assert [c.label for c in sweep.cells] == ["avg, data.partitioner.alpha=0.1", "avg, data.partitioner.alpha=1.0",
                                              "prox, data.partitioner.alpha=0.1", "prox, data.partitioner.alpha=1.0"]
    cfg = sweep.config(sweep.cells[3])
    assert (cfg.strategy.name, cfg.strategy.params.args["proximal_mu"], cfg.client.lr) == ("fedprox", 0.5, 0.02)
    assert cfg.data.partitioner.params.alpha == 1.0
    assert sweep.config(sweep.cells[0]).client.lr == 0.1  # the base value where a variant is silent


@pytest.mark.parametrize("sweep, field, words", [
    ({"axes": {"client.lrr": [0.1]}}, "sweep.axes.client.lrr", "unknown"),
    ({"axes": {"client.lr": []}}, "sweep.axes.client.lr", "non-empty list"),
    ({"axes": {"client.lr": 0.1}}, "sweep.axes.client.lr", "non-empty list"),
    ({"axes": {"client.lr": [0.1, -1.0]}}, "sweep.axes.client.lr", "-1.0"),
    ({"axes": {"strategy.name": ["fedavg", "nosuch"]}}, "sweep.axes.strategy.name", "nosuch"),
    ({"axes": {"nosection.key": [1]}}, "sweep.axes.nosection.key", "unknown"),
    ({"variants": {"bad": {"client.momentum": 7.0}}}, "sweep.variants.bad.client.momentum", "7.0"),
    ({"variants": {"empty": {}}}, "sweep.variants.empty", "non-empty"),
    ({"seeds": [1, 1]}, "sweep.seeds", "repeat"),
    ({"seeds": [0]}, "sweep.axes", "at least one axis"),
    ({"axes": {"client.lr": [0.1]}, "max_cells": 0}, "sweep.max_cells", "0"),
    ({"axes": {"client.lr": [0.1]}, "colour": 1}, "sweep.colour", "unknown"),
])
def test_bad_sweeps_name_the_field(tmp_path: Path, sweep: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sweep(write_scenario(tmp_path, sweep))
    assert info.value.field == field, str(info.value)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_bad_sweeps_exit_2_with_one_line(tmp_path: Path) -> None:
    unknown = write_scenario(tmp_path, {"axes": {"client.lrr": [0.1, 0.2]}}, name="unknown.toml")
    empty = write_scenario(tmp_path, {"axes": {"client.lr": []}}, name="empty.toml")
    big = write_scenario(tmp_path, {"seeds": [0, 1, 2], "max_cells": 2, "axes": {"client.lr": [0.1, 0.2]}},
                         name="big.toml")
    for path, field in ((unknown, "sweep.axes.client.lrr"), (empty, "sweep.axes.client.lr"), (big, "sweep ")):
        proc = fedsim_main("sweep", str(path), "--out", str(tmp_path / "out"))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"fedsim: error: {field}"), proc.stderr
    assert "6 cells" in proc.stderr and "max_cells (2)" in proc.stderr and "--yes" in proc.stderr
    assert not (tmp_path / "out" / MANIFEST).exists()  # nothing ran


def test_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    variants = {"digits": {"data.num_clients": 4},
                "mnist-missing": {"data.dataset": {"name": "mnist", "root": str(tmp_path / "nowhere")}}}
    sweep = load_sweep(write_scenario(tmp_path, {"variants": variants, "seeds": [0, 1]}))
    seen = []
    manifest = run_sweep(sweep, tmp_path / "out", parallel=1, on_cell=lambda c: seen.append(c["status"]))
    status = {(c["label"], c["seed"]): c["status"] for c in manifest["cells"]}
    assert status == {("digits", 0): "done", ("digits", 1): "done",
                      ("mnist-missing", 0): "failed", ("mnist-missing", 1): "failed"}
    failed = [c for c in manifest["cells"] if c["status"] == "failed"]
    assert all("MNIST files not found" in c["error"] and "data.dataset.root" in c["error"] for c in failed)
    assert seen == ["done", "done", "failed", "failed"]
    on_disk = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert [c["status"] for c in on_disk["cells"]] == ["done", "done", "failed", "failed"]
    # A re-run retries only the failed cells.
    again = []
    run_sweep(sweep, tmp_path / "out", parallel=1, on_cell=lambda c: again.append(c["label"]))
    assert again == ["mnist-missing", "mnist-missing"]


def test_resume_reruns_only_missing_cells_and_keeps_finished_ones(tmp_path: Path) -> None:
    sweep = load_sweep(write_scenario(tmp_path, {"seeds": [0, 1], "axes": {"client.lr": [0.1, 0.05]}}))
    out = tmp_path / "out"
    run_sweep(sweep, out, parallel=1)
    stamps = {c.id: (out / c.id / "summary.json").stat().st_mtime_ns for c in sweep.cells}
    # As if interrupted: one cell never finished (half-written folder), one never started.
    (out / sweep.cells[1].id / "summary.json").unlink()
    import shutil

    shutil.rmtree(out / sweep.cells[2].id)
    ran = []
    manifest = run_sweep(sweep, out, parallel=1, on_cell=lambda c: ran.append(c["id"]))
    assert sorted(ran) == sorted([sweep.cells[1].id, sweep.cells[2].id])
    assert all(c["status"] == "done" for c in manifest["cells"])
    for cell in (sweep.cells[0], sweep.cells[3]):
        assert (out / cell.id / "summary.json").stat().st_mtime_ns == stamps[cell.id]


def test_cells_are_deterministic_across_worker_counts_and_match_a_plain_run(tmp_path: Path) -> None:
    sweep = load_sweep(write_scenario(tmp_path, {"seeds": [0, 1], "variants": {
        "avg": {"strategy.name": "fedavg"}, "prox": {"strategy.name": "fedprox", "strategy.proximal_mu": 0.1}}}))
    run_sweep(sweep, tmp_path / "one", parallel=1)
    run_sweep(sweep, tmp_path / "two", parallel=2)
    direct = fedsim.run(sweep.config(sweep.cells[3]), out_dir=tmp_path / "direct")

    def accs(folder: Path) -> list[float]:
        return [r["central_acc"] for r in read_metrics(folder)]

    for cell in sweep.cells:
        assert accs(tmp_path / "one" / cell.id) == accs(tmp_path / "two" / cell.id)
    assert accs(tmp_path / "one" / sweep.cells[3].id) == [r["central_acc"] for r in direct.history]
    # Different seeds give different runs.
    assert accs(tmp_path / "one" / sweep.cells[0].id) != accs(tmp_path / "one" / sweep.cells[1].id)


@pytest.mark.slow
def test_interrupted_cli_sweep_resumes_with_only_the_missing_cells(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {"seeds": [0, 1, 2], "axes": {"client.lr": [0.1, 0.05]}})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fedsim.cli", "sweep", str(path), "--out", str(out), "--parallel", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    done: list[str] = []
    while time.monotonic() < deadline:
        if (out / MANIFEST).exists():
            try:
                cells = json.loads((out / MANIFEST).read_text())["cells"]
            except json.JSONDecodeError:
                cells = []
            done = [c["id"] for c in cells if c["status"] == "done"]
            if len(done) >= 2:
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 2 <= len(done) < 6, done
    finished = [d for d in done if (out / d / "summary.json").exists()]
    again = fedsim_cli("sweep", str(path), "--out", str(out), "--parallel", "1")
    assert again.returncode == 0, again.stderr
    rerun = [line.split()[0] for line in again.stdout.splitlines() if line.startswith("  cell-")]
    assert set(rerun).isdisjoint(finished) and len(rerun) == 6 - len(finished)
    manifest = json.loads((out / MANIFEST).read_text())
    assert all(c["status"] == "done" for c in manifest["cells"])
    assert "6 done, 0 failed of 6 cells" in again.stdout
    assert (out / "report.html").exists() and (out / "summary.csv").exists()


def test_run_on_a_sweep_file_runs_its_base_scenario(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {"seeds": [0, 1], "axes": {"client.lr": [0.1, 0.05]}})
    res = fedsim.run(path, write=False)
    assert res.config.client.lr == 0.1 and res.config.run.seed == 3
