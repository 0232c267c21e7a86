"""The shipped examples: a custom strategy by name on Ray, and a user's own data and model
on every executor and in a sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fedsim
from fedsim.engine.metrics import without_wall

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_custom_strategy_by_name_on_ray_with_two_actors_equals_serial(ray_session) -> None:
    import examples.custom_strategy  # noqa: F401  (registers norm_filtered_fedavg in this process only)

    cfg = fedsim.load_config("examples/custom_strategy.toml", ['strategy.name="norm_filtered_fedavg"', "run.rounds=3",
                                                               "report.progress=false", "report.plots=false"])
    serial = fedsim.run(cfg, write=False)
    ray = fedsim.run(cfg.replace(['executor.name="ray"', "ray.num_actors=2"]), write=False)
    for record in ray.history[1:]:  # every sampled client replied: no client needs the server's strategy
        assert record["clients_replied"] == record["clients_sampled"] == 10 and not record["failures"]
    assert [without_wall(r) for r in ray.history] == [without_wall(r) for r in serial.history]
    # The ClientApp's contract never carries the strategy.
    assert "strategy" not in type(cfg.client_spec()).__dataclass_fields__


@pytest.fixture(scope="module")
def own_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples.own_data import write_csv

    return write_csv(str(tmp_path_factory.mktemp("own") / "patients.csv"), rows=2000)


def own_config(csv: Path, *overrides: str) -> fedsim.Config:
    return fedsim.load_config("examples/own_data.toml", [f'data.dataset.path="{csv}"', "run.rounds=3",
                                                        "report.progress=false", "report.plots=false", *overrides])


@pytest.mark.slow
def test_own_data_example_on_serial_vectorized_and_ray(own_data: Path, ray_session) -> None:
    cfg = own_config(own_data)
    assert cfg.data.num_clients == 50 and cfg.strategy.name == "fedprox"
    serial = fedsim.run(cfg, write=False)
    assert serial.final("central_acc") > serial.history[0]["central_acc"] + 0.05  # it learns
    assert serial.summary["client_failures"] == 0
    assert sum(r["partial"] for r in serial.history) > 0  # stragglers kept their partial work
    vectorized = fedsim.run(cfg.replace(['executor.name="vectorized"']), write=False)
    ray = fedsim.run(cfg.replace(['executor.name="ray"', "ray.num_actors=2"]), write=False)
    for other in (vectorized, ray):
        assert [r["clients_replied"] for r in other.history] == [r["clients_replied"] for r in serial.history]
        for a, b in zip(other.history[1:], serial.history[1:]):  # (round 0: no training)
            assert a["central_acc"] == pytest.approx(b["central_acc"], abs=0.005)  # float summation order only
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-6)
    assert [without_wall(r) for r in ray.history] == [without_wall(r) for r in serial.history]


@pytest.mark.slow
def test_own_data_example_runs_its_two_by_two_sweep(own_data: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "sweep", "examples/own_data.toml", "--out",
                           str(tmp_path / "sweep"), "--parallel", "2", "--set", f'data.dataset.path="{own_data}"',
                           "--set", "run.rounds=2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(manifest["cells"]) == 4 and {c["status"] for c in manifest["cells"]} == {"done"}
    assert (tmp_path / "sweep" / "report.html").is_file()


@pytest.mark.slow
def test_own_data_example_script_writes_its_csv_and_runs(tmp_path: Path) -> None:
    code = ("import sys; sys.path.insert(0, '.'); import examples.own_data as ex; import fedsim; "
            f"csv = ex.write_csv('{tmp_path}/p.csv', rows=600); "
            f"r = fedsim.run('examples/own_data.toml', out_dir='{tmp_path}/run', "
            "overrides=[f'data.dataset.path=\"{csv}\"', 'run.rounds=2', 'report.progress=false']); "
            "print(r.summary['final_central_acc'])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0.0 < float(proc.stdout.strip().splitlines()[-1]) <= 1.0
