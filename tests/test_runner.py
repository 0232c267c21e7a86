"""fedsim.run end to end (serial executor): results folder, records, user ClientApps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.engine.metrics import SYSTEM_COUNTS, WALL_FIELDS, without_wall
from fedsim.report import read_metrics
from tests.conftest import tiny_config

RECORD_KEYS = {"round", "central_loss", "central_acc", "fed_loss", "fed_acc", "train_loss", "clients_sampled",
               "clients_replied", "clients_failed", "eval_clients_sampled", "eval_clients_replied",
               "eval_clients_failed", "client_acc_mean", "client_acc_p10", "client_acc_worst", "bytes_down", "bytes_up", "bytes_shared", "failures", *WALL_FIELDS,
               "virtual_round_s", "virtual_time_s", *SYSTEM_COUNTS}


def test_run_writes_results_folder(tmp_path: Path) -> None:
    cfg = tiny_config(report={"plots": True, "progress": False})
    res = fedsim.run(cfg, out_dir=tmp_path / "r")
    out = tmp_path / "r"
    assert res.out_dir == out
    for name in ("config.toml", "metrics.jsonl", "summary.json", "accuracy.png", "loss.png",
                 "label_distribution.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    records = read_metrics(out)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert set(records[1]) == RECORD_KEYS
    r1 = records[1]
    assert r1["clients_sampled"] == 3 and r1["clients_replied"] == 3 and r1["clients_failed"] == 0
    model_bytes = sum(len(a.data) for a in res.arrays.values())
    # 3 train downloads + 3 eval downloads, 3 train uploads.
    assert r1["bytes_down"] == 6 * model_bytes and r1["bytes_up"] == 3 * model_bytes
    assert 0 <= r1["central_acc"] <= 1 and r1["train_loss"] > 0 and r1["fed_acc"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_central_acc"] == records[-1]["central_acc"]
    # The written config reproduces the run.
    again = fedsim.run(fedsim.load_config(out / "config.toml"), write=False)
    assert [without_wall(r) for r in again.history] == [without_wall(r) for r in records]


def test_eval_every_and_centralized_off() -> None:
    res = fedsim.run(tiny_config(run={"rounds": 5}, server={"eval_every": 2}), write=False)
    assert [r["central_acc"] is not None for r in res.history] == [True, False, True, False, True, True]
    res = fedsim.run(tiny_config(server={"centralized_eval": False}), write=False)
    assert all(r["central_acc"] is None for r in res.history)


def test_user_clientapp_by_module_path_runs_on_the_grid() -> None:
    # The toy app returns w + 1 for every array, so after R rounds the model is initial + R.
    cfg = tiny_config(client={"app": "tests.apps.toy:app", "app_config": {"fail-partition": 4}},
                      strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0},
                      run={"rounds": 2})
    res = fedsim.run(cfg, write=False)
    init = fedsim.run(cfg.replace(["run.rounds=1"]), write=False)  # same initial model (same seed)
    key = next(iter(res.arrays))
    first = init.arrays[key].numpy()
    np.testing.assert_allclose(res.arrays[key].numpy(), first + 1.0, rtol=1e-6)
    assert [r["clients_failed"] for r in res.history[1:]] == [1, 1]
    assert res.history[1]["failures"][0]["partition_id"] == 4


def test_flower_builtin_strategies_by_name() -> None:
    for name, extra in (("fedadam", {"eta": 0.05}), ("fedmedian", {}), ("fedavgm", {}), ("fedtrimmedavg", {})):
        cfg = tiny_config(strategy={"name": name, "fraction_train": 1.0, "fraction_evaluate": 0.0, **extra},
                          run={"rounds": 2})
        res = fedsim.run(cfg, write=False)
        assert res.history[-1]["clients_replied"] == 6, name
        assert np.isfinite(res.history[-1]["central_loss"]), name


def test_custom_strategy_by_module_class_path() -> None:
    cfg = tiny_config(strategy={"name": "tests.apps.strategies:HalfStepFedAvg", "fraction_train": 1.0,
                                "fraction_evaluate": 0.0, "step": 0.0}, run={"rounds": 2})
    res = fedsim.run(cfg, write=False)
    # step 0 keeps the global model: accuracy never moves from round 0.
    assert res.history[0]["central_acc"] == res.history[-1]["central_acc"]


@pytest.mark.slow
def test_quickstart_reaches_085_on_serial(tmp_path: Path) -> None:
    res = fedsim.run("scenarios/presets/quickstart.toml", out_dir=tmp_path / "qs",
                     overrides=["report.progress=false"])
    assert res.summary["final_central_acc"] >= 0.85
    assert (tmp_path / "qs" / "accuracy.png").is_file()
