"""TensorBoard and MLflow logging, read back with their own readers from local files."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedsim
from tests.conftest import tiny_config


def test_tensorboard_and_mlflow_hold_every_round(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(report={"progress": False, "plots": False, "tensorboard": True, "mlflow": True})
    result = fedsim.run(cfg, out_dir=tmp_path / "run")
    expected = {r["round"]: r["central_acc"] for r in result.history}
    assert sorted(expected) == [0, 1, 2, 3]

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("central_acc")
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert [e.value for e in events] == pytest.approx([expected[s] for s in range(4)], rel=1e-6)
    assert "clients_replied" in acc.Tags()["scalars"]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "central_acc")
    assert {m.step: m.value for m in history} == expected  # MLflow stores doubles
    assert run.data.params["run.seed"] == "3" and run.data.params["strategy.name"] == "fedavg"
    assert run.info.status == "FINISHED"


def test_shared_mlflow_store_collects_several_runs(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    for seed in (1, 2):
        cfg = tiny_config(run={"name": "tiny", "seed": seed, "rounds": 2},
                          report={"progress": False, "plots": False, "mlflow": True, "mlflow_uri": uri})
        fedsim.run(cfg, out_dir=tmp_path / f"seed{seed}")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.params["run.seed"] for r in runs) == ["1", "2"]
    assert sorted(r.info.run_name for r in runs) == ["seed1", "seed2"]
    assert not (tmp_path / "seed1" / "mlflow.db").exists()


def test_tracking_off_writes_nothing(tmp_path: Path) -> None:
    fedsim.run(tiny_config(), out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "mlflow.db").exists()
