"""Notebook API: run and sweep folders read back (fedsim.load_run / load_runs), the tidy
DataFrame, mean-over-seeds plots (numbers by hand), and the example notebook executed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.plots import curves, plot_metric
from fedsim.results import IDENTITY, LoadedRun, Runs, load_run, load_runs
from fedsim.sweeps import MANIFEST
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, config: dict[str, Any], records: list[dict[str, Any]],
              summary: dict[str, Any] | None) -> Path:
    """A run folder by hand: config.toml, metrics.jsonl, summary.json (None: interrupted)."""
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(tomli_w.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def config(strategy: str, seed: int, alpha: float = 0.5, name: str = "study") -> dict[str, Any]:
    return {"run": {"name": name, "seed": seed, "rounds": 2}, "strategy": {"name": strategy},
            "data": {"num_clients": 4, "partitioner": {"name": "dirichlet", "alpha": alpha}},
            "model": {"name": "mlp", "hidden": [8]}, "codec": [{"name": "topk", "k": 0.1}]}


def records(accs: list[float], bytes_up: int, energy: float | None = None) -> list[dict[str, Any]]:
    """Round 0 moves no bytes; every later round ``bytes_up`` (and ``energy`` joules)."""
    return [{"round": i, "central_acc": a, "bytes_up": 0 if i == 0 else bytes_up, "bytes_down": 0, "failures": [],
             "virtual_time_s": 10.0 * i,
             **({"energy_j": energy} if energy is not None and i > 0 else {})} for i, a in enumerate(accs)]


def summary(seed: int, **extra: Any) -> dict[str, Any]:
    return {"name": "study", "seed": seed, "rounds": 2, **extra}


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    """FedAvg with seeds 0 and 1, FedProx with seed 0: two configurations."""
    return [write_run(tmp_path / "avg0", config("fedavg", 0), records([0.1, 0.4, 0.6], 100, 2.0), summary(0)),
            write_run(tmp_path / "avg1", config("fedavg", 1), records([0.1, 0.6, 0.8], 300, 4.0), summary(1)),
            write_run(tmp_path / "prox0", config("fedprox", 0), records([0.1, 0.5, 0.9], 100), summary(0))]


def test_load_run_fields(study: list[Path]) -> None:
    run = load_run(study[0])
    assert isinstance(run, LoadedRun) and run.out_dir == study[0]
    assert (run.status, run.seed, run.label, run.point) == ("completed", 0, "study (avg0)", {})
    assert run.config["strategy"] == {"name": "fedavg"} and run.summary["rounds"] == 2
    assert [r["central_acc"] for r in run.history] == [0.1, 0.4, 0.6] and run.final("central_acc") == 0.6
    flat = run.flat_config
    assert flat["data.partitioner.alpha"] == 0.5 and flat["model.hidden"] == (8,) and flat["codec"] == ("topk(k=0.1)",)


def test_frame_rows_columns_values(study: list[Path]) -> None:
    df = load_runs(study).to_frame()
    assert df.shape[0] == 9  # 3 runs x rounds 0..2
    assert list(df.columns[: len(IDENTITY)]) == list(IDENTITY)
    assert {"strategy.name", "data.partitioner.alpha", "run.seed", "model.hidden", "round", "central_acc",
            "bytes_up", "energy_j"} <= set(df.columns)
    assert list(df["dir"].unique()) == [str(p) for p in study]
    assert list(df["label"].unique()) == ["strategy.name=fedavg", "strategy.name=fedprox"]
    assert list(df["seed"]) == [0, 0, 0, 1, 1, 1, 0, 0, 0] and set(df["status"]) == {"completed"}
    final = df[df["round"] == 2].groupby("strategy.name")["central_acc"].mean()
    assert final["fedavg"] == pytest.approx(0.7) and final["fedprox"] == pytest.approx(0.9)
    assert df["energy_j"].isna().sum() == 1 + 1 + 3  # round 0 of each energy run; FedProx has none
    assert df.groupby("model.hidden").size()[(8,)] == 9  # tuples group
    single = load_run(study[2]).to_frame()
    assert single.shape[0] == 3 and set(single["strategy.name"]) == {"fedprox"}


def test_groups_of_plain_runs(tmp_path: Path) -> None:
    same = [write_run(tmp_path / f"s{s}", config("fedavg", s), records([0.1, 0.2], 1), summary(s)) for s in (0, 1)]
    assert list(load_runs(same).groups()) == ["study"]  # only the seed differs: one configuration
    other = write_run(tmp_path / "b", config("fedavg", 0, alpha=1.0, name="wide"), records([0.1, 0.2], 1), summary(0))
    runs = load_runs([*same, other])
    assert list(runs.groups()) == ["data.partitioner.alpha=0.5", "data.partitioner.alpha=1.0"]
    assert runs[0].point == {"data.partitioner.alpha": 0.5} and runs.axes == {"data.partitioner.alpha": [0.5, 1.0]}


def test_mean_over_seeds_lines(study: list[Path]) -> None:
    runs = load_runs(study)
    fig = runs.plot("central_acc")
    ax = fig.axes[0]
    lines = {line.get_label(): line.get_xydata().tolist() for line in ax.lines}
    assert lines == {"strategy.name=fedavg": [[0, 0.1], [1, 0.5], [2, 0.7]],
                     "strategy.name=fedprox": [[0, 0.1], [1, 0.5], [2, 0.9]]}
    assert all(float(t).is_integer() for t in ax.get_xticks())  # integer round ticks
    assert ax.get_xlabel() == "round" and len(ax.collections) == 1  # one ±std band: FedAvg's two seeds
    # Cumulative uplink bytes: per round the mean over seeds of each run's total so far.
    up = {c.label: (c.x, c.y, c.std) for c in curves(runs, "central_acc", "bytes_up")}
    assert up["strategy.name=fedavg"] == ([0, 200, 400], [0.1, 0.5, 0.7], [0.0, pytest.approx(0.1), pytest.approx(0.1)])
    assert up["strategy.name=fedprox"][0] == [0, 100, 200]
    # Energy only where recorded: FedProx's run has no energy model, so no line points.
    energy = {c.label: (c.x, c.y) for c in curves(runs, "central_acc", "energy_j")}
    assert energy == {"strategy.name=fedavg": ([0.0, 3.0, 6.0], [0.1, 0.5, 0.7])}
    vt = curves(runs, "accuracy", "virtual_time_s", by="run.seed")  # accuracy = the centralized one here
    assert [(c.label, c.x, c.runs) for c in vt] == [("0", [0.0, 10.0, 20.0], 2), ("1", [0.0, 10.0, 20.0], 1)]
    assert vt[0].y == pytest.approx([0.1, 0.45, 0.75])


def test_plots_agg_without_pyplot(study: list[Path], tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plot_metric(load_runs(study), "central_acc", "bytes_up", by=["strategy.name", "run.seed"], title="t")
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0 and plt.get_fignums() == before  # nothing left open in pyplot
    assert fig._repr_png_().startswith(b"\x89PNG")  # what IPython shows for it
    assert [line.get_label() for line in fig.axes[0].lines] == [
        "strategy.name=fedavg, run.seed=0", "strategy.name=fedavg, run.seed=1", "strategy.name=fedprox, run.seed=0"]
    fig2, ax = plt.subplots()
    assert plot_metric(load_run(study[0]), ax=ax) is fig2  # draws on the caller's axes
    plt.close(fig2)


def test_unknown_names_fail_in_one_line(study: list[Path], tmp_path: Path) -> None:
    runs = load_runs(study)
    with pytest.raises(ConfigError, match="recorded by no run; metrics: .*central_acc"):
        runs.plot("nope")
    with pytest.raises(ConfigError, match="not a config key"):
        runs.plot(by="strategy.nme")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a run folder"):
        load_runs([tmp_path / "empty"])


def test_status_stopped_and_interrupted(tmp_path: Path) -> None:
    stopped = write_run(tmp_path / "stopped", config("fedavg", 0), records([0.1, 0.2], 1),
                        summary(0, stopped="no replies for 5 rounds"))
    marked = write_run(tmp_path / "marked", config("fedavg", 1), records([0.1, 0.2], 1), summary(1, status="stopped"))
    cut = write_run(tmp_path / "cut", config("fedavg", 2), records([0.1, 0.3], 1), None)
    runs = load_runs([stopped, marked, cut])
    assert [r.status for r in runs] == ["stopped", "stopped", "interrupted"]
    assert (runs[2].seed, runs[2].label, runs[2].final("central_acc")) == (2, "study", 0.3)
    assert (runs[2].summary["status"], runs[2].summary["rounds"], runs[2].summary["bytes_up"]) == ("interrupted", 1, 1)
    assert list(runs[1:].to_frame()["status"]) == ["stopped", "stopped", "interrupted", "interrupted"]
    # An interrupted run is never averaged with complete ones: a line of its own.
    assert {k: [r.seed for r in v] for k, v in runs.groups().items()} == {"study": [0, 1], "study (interrupted)": [2]}
    assert load_run(cut).label == "study (cut)" and "Runs(3 runs, 2 configurations)" in repr(runs)


def test_sweep_folder(tmp_path: Path) -> None:
    """Two seeds of one cell done, one cell failed, one interrupted mid-run (pending)."""
    root = tmp_path / "sweep"
    spec = [("done", 0, "A", [0.2, 0.4]), ("done", 1, "A", [0.2, 0.6]), ("failed", 0, "B", None),
            ("pending", 1, "B", [0.2, 0.9])]
    cells = []
    for i, (status, seed, label, accs) in enumerate(spec):
        if accs is not None:
            write_run(root / f"cell-{i}", config("fedavg", seed, name=f"s-cell-{i}"), records(accs, 10),
                      summary(seed) if status == "done" else None)
        cells.append({"id": f"cell-{i}", "index": i, "label": label, "point": {"variant": label}, "overrides": {},
                      "seed": seed, "dir": f"cell-{i}", "status": status,
                      "error": "RuntimeError: boom" if status == "failed" else None})
    (root / MANIFEST).write_text(json.dumps({"axes": {"variant": ["A", "B"]}, "cells": cells}))
    runs = load_runs(root)
    assert [(r.label, r.seed, r.status, r.point, r.out_dir.name) for r in runs] == [
        ("A", 0, "completed", {"variant": "A"}, "cell-0"), ("A", 1, "completed", {"variant": "A"}, "cell-1"),
        ("B", 1, "interrupted", {"variant": "B"}, "cell-3")]
    assert [(f.label, f.seed, f.error, f.point) for f in runs.failed] == [("B", 0, "RuntimeError: boom", {"variant": "B"})]
    assert runs.axes == {"variant": ["A", "B"]}
    assert {k: len(v) for k, v in runs.groups().items()} == {"A": 2, "B (interrupted)": 1}
    lines = {c.label: c.y for c in curves(runs, "central_acc")}
    assert lines == {"A": pytest.approx([0.2, 0.5]), "B (interrupted)": [0.2, 0.9]}
    assert runs.to_frame().shape[0] == 6
    # With another run folder, runs are labelled by the config keys that differ.
    plain = write_run(tmp_path / "plain", config("fedprox", 0), records([0.1, 0.1], 10), summary(0))
    mixed = load_runs([root, plain])
    assert [r.label for r in mixed] == ["strategy.name=fedavg"] * 3 + ["strategy.name=fedprox"]
    with pytest.raises(ConfigError, match="sweep folder"):
        load_run(root)


def test_missing_pandas_names_the_extra(study: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ModuleNotFoundError, match=r"needs pandas: pip install 'fedsim\[notebook\]'"):
        load_runs(study).to_frame()


def test_real_run_loads_back(tmp_path: Path) -> None:
    result = fedsim.run(tiny_config(run={"rounds": 2}), out_dir=tmp_path / "run")
    run = fedsim.load_run(tmp_path / "run")
    assert run.history == json.loads(json.dumps(result.history))
    assert run.summary == result.summary and run.status == "completed" and run.seed == 3
    assert run.scenario() == result.config
    df = fedsim.load_runs([tmp_path / "run"]).to_frame()
    assert df.shape[0] == 3 and df["strategy.name"].tolist() == ["fedavg"] * 3
    assert df["central_acc"].tolist() == [r["central_acc"] for r in result.history]
    assert isinstance(fedsim.load_runs([tmp_path / "run"]), Runs)


@pytest.mark.slow
def test_example_notebook_runs(tmp_path: Path) -> None:
    """The example notebook in a fresh kernel: it shows the DataFrame and a figure."""
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev extra: pip install -e '.[dev]'")
    import nbformat

    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"notebook executed in {time.perf_counter() - start:.1f} s")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("dataframe" in o.get("data", {}).get("text/html", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
