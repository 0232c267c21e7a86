"""Ctrl-C and SIGTERM on a run and on a sweep: a fast stop, true states, an exact resume;
sweep cells are their resolved configuration (an edited file redoes what changed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

import fedsim
from fedsim.report import read_metrics
from fedsim.sweeps import MANIFEST, load_sweep, run_sweep
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
#: Exit bound in the tests (CI machines can be loaded); measured on a quiet machine: see the closing notes.
EXIT_S = 15.0


def numbers(records: list[dict]) -> list[dict]:
    """A run's records without wall-clock fields."""
    return [{k: v for k, v in r.items() if "wall" not in k} for r in records]


def wait_for_rounds(path: Path, n: int, proc: subprocess.Popen, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the run did not reach its rounds in time")


def stop(proc: subprocess.Popen, signum: int, group: bool = False) -> tuple[float, str]:
    start = time.monotonic()
    if group:
        import os

        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return time.monotonic() - start, err


@pytest.mark.parametrize("signum, epochs", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 12)],
                         ids=["ctrl-c", "sigterm", "ctrl-c-in-a-long-round"])
def test_a_signalled_run_stops_fast_and_resumes_with_the_same_numbers(tmp_path: Path, signum: int,
                                                                       epochs: int) -> None:
    # "long round": 12 local epochs make a round longer than the 2 s grace, so the stop is forced
    # mid-round and the run ends from its last checkpoint.
    sets = ["run.rounds=12", f"client.local_epochs={epochs}", "report.plots=false", "report.progress=false"]
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", "quickstart", "--out", str(out),
                             *(a for s in sets for a in ("--set", s))], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_rounds(out / "metrics.jsonl", 2, proc)
    seconds, err = stop(proc, signum)
    assert proc.returncode == 128 + signum, err
    assert seconds < EXIT_S, seconds
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"resume: fedsim run --resume {out}" in last, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 1 <= summary["interrupted_after_round"] < 12
    assert summary["checkpoint_round"] == summary["interrupted_after_round"] or epochs > 1
    assert not (out / "model.safetensors").exists()
    resumed = fedsim.resume(out)
    assert resumed.summary["status"] == "completed"
    straight = fedsim.run("quickstart", overrides=sets, write=False)
    assert numbers(read_metrics(out / "metrics.jsonl")) == numbers(straight.history)


def tiny_sweep(tmp_path: Path, lr: float = 0.1, rounds: int = 3) -> Path:
    raw = tiny_raw(client={"lr": lr})
    raw["run"]["rounds"] = rounds
    raw["sweep"] = {"seeds": [0, 1], "axes": {"data.partitioner.alpha": [0.1, 1.0]}}
    path = tmp_path / "s.toml"
    path.write_bytes(tomli_w.dumps(raw).encode())
    return path


def test_an_edited_sweep_redoes_the_changed_cells_and_keeps_the_rest(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path, out = tiny_sweep(tmp_path), tmp_path / "out"
    first = run_sweep(load_sweep(path), out, parallel=1)
    assert [c["status"] for c in first["cells"]] == ["done"] * 4
    old = {c["id"]: read_metrics(out / c["dir"] / "metrics.jsonl") for c in first["cells"]}

    ran: list[str] = []
    again = run_sweep(load_sweep(path), out, parallel=1, on_cell=lambda c: ran.append(c["id"]))
    assert ran == [] and again["cells"] == first["cells"]  # the same configuration: nothing redone

    # the base file changes: every cell is redone, and says why
    tiny_sweep(tmp_path, lr=0.05)
    with caplog.at_level("WARNING", logger="fedsim"):
        edited = run_sweep(load_sweep(path), out, parallel=1, on_cell=lambda c: ran.append(c["id"]))
    assert sorted(ran) == sorted(old) and all(c["status"] == "done" for c in edited["cells"])
    assert sum("its configuration changed (client.lr: 0.1 -> 0.05): redone" in r.message for r in caplog.records) == 4
    for cell in edited["cells"]:
        new = read_metrics(out / cell["dir"] / "metrics.jsonl")
        assert numbers(new) != numbers(old[cell["id"]])
        direct = fedsim.run(load_sweep(path).config(next(c for c in load_sweep(path).cells if c.id == cell["id"])),
                            write=False)
        assert numbers(new) == numbers(direct.history)
    assert len({c["config_digest"] for c in edited["cells"]}) == 4
    assert {c["config_digest"] for c in edited["cells"]}.isdisjoint(c["config_digest"] for c in first["cells"])

    # --set: a value equal to the file's changes nothing; a new one redoes every cell, once
    ran.clear()
    run_sweep(load_sweep(path, ["client.batch_size=16"]), out, parallel=1, on_cell=lambda c: ran.append(c["id"]))
    assert ran == []
    run_sweep(load_sweep(path, ["client.batch_size=8"]), out, parallel=1, on_cell=lambda c: ran.append(c["id"]))
    run_sweep(load_sweep(path, ["client.batch_size=8"]), out, parallel=1, on_cell=lambda c: ran.append(c["id"]))
    assert len(ran) == 4


def test_a_report_after_an_edit_shows_only_the_new_results(tmp_path: Path) -> None:
    from fedsim import compare

    path, out = tiny_sweep(tmp_path), tmp_path / "out"
    run_sweep(load_sweep(path), out, parallel=1)
    tiny_sweep(tmp_path, lr=0.05, rounds=2)
    run_sweep(load_sweep(path), out, parallel=1)
    loaded = compare.load([out])
    assert len(loaded.runs) == 4 and all(len(r.records) == 3 for r in loaded.runs)  # rounds 0..2, the new runs


@pytest.mark.slow
def test_ctrl_c_on_a_parallel_sweep_stops_at_once_and_resume_runs_exactly_the_rest(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["run"].update(rounds=40)
    raw["sweep"] = {"seeds": [0, 1], "axes": {"client.lr": [0.1, 0.05]}}
    path = tmp_path / "s.toml"
    path.write_bytes(tomli_w.dumps(raw).encode())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "sweep", str(path), "--out", str(out), "--parallel",
                             "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # two cells running, past a few rounds
        running = [m for m in out.glob("cell-*/metrics.jsonl") if len(m.read_text().splitlines()) > 3]
        if len(running) >= 2:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    seconds, err = stop(proc, signal.SIGINT, group=True)  # as a terminal's Ctrl-C: the whole process group
    assert proc.returncode == 130, err
    assert seconds < EXIT_S, seconds
    assert "Traceback" not in err and "resume: fedsim sweep" in err.strip().splitlines()[-1], err
    cells = json.loads((out / MANIFEST).read_text())["cells"]
    states = {c["id"]: c["status"] for c in cells}
    assert set(states.values()) <= {"done", "interrupted", "pending"}
    assert list(states.values()).count("interrupted") >= 1 and "pending" in states.values(), states
    for cid, status in states.items():  # each state is what its folder holds
        summary = out / cid / "summary.json"
        if status == "pending":
            assert not summary.exists()
        else:
            want = "completed" if status == "done" else "interrupted"
            assert json.loads(summary.read_text())["status"] == want

    ran: list[str] = []
    manifest = run_sweep(load_sweep(path), out, parallel=2, on_cell=lambda c: ran.append(c["id"]))
    assert sorted(ran) == sorted(cid for cid, s in states.items() if s != "done")
    assert all(c["status"] == "done" for c in manifest["cells"])
    sweep = load_sweep(path)
    for cell in sweep.cells:
        if states[cell.id] == "interrupted":  # resumed from its checkpoint: the numbers of a straight run
            direct = fedsim.run(sweep.config(cell), write=False)
            assert numbers(read_metrics(out / cell.id / "metrics.jsonl")) == numbers(direct.history)
            break
