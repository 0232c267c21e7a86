"""Injected faults are reported with the client id, excluded, and never reach the model."""

from __future__ import annotations

import pytest
from fedsim.scenarios.faults import FaultsSection, draw

import fedsim
from fedsim.core.errors import ConfigError
from tests.conftest import tiny_config

REASONS = {
    "raise": "InjectedFault: injected fault: client {cid} raises",
    "nan": "reply excluded: non-finite values in array",
    "shape": "reply excluded: array '1.weight' has shape (15, 64), expected (16, 64)",
    "empty": "reply excluded: empty reply (no records)",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_every_faulty_reply_is_excluded_and_the_model_is_untouched(kind: str) -> None:
    res = fedsim.run(tiny_config(faults={f"{kind}_fraction": 1.0}), write=False)
    first = res.history[0]["central_acc"]
    for record in res.history[1:]:
        assert record["clients_replied"] == 0 and record["clients_failed"] == record["clients_sampled"] == 3
        for f in record["failures"]:
            assert f["phase"] == "train"
            assert f["reason"].startswith(REASONS[kind].format(cid=f["partition_id"])), f["reason"]
        assert record["central_acc"] == first  # nothing was aggregated
        assert record["eval_clients_replied"] == 3  # evaluation is not faulted
    assert res.arrays is not None


def test_a_mix_of_faults_only_removes_the_faulty_clients() -> None:
    faults = {"raise_fraction": 0.15, "nan_fraction": 0.15, "shape_fraction": 0.15, "empty_fraction": 0.15}
    cfg = tiny_config(run={"name": "mix", "seed": 4, "rounds": 6}, faults=faults)
    res = fedsim.run(cfg, write=False)
    section = FaultsSection(**faults)
    for record in res.history[1:]:
        failed = {f["partition_id"] for f in record["failures"]}
        sampled = record["clients_sampled"]
        assert record["clients_replied"] + len(failed) == sampled
        for cid in failed:
            assert draw(section, 4, record["round"], cid) is not None
    assert sum(r["clients_failed"] for r in res.history) > 0
    assert sum(r["clients_replied"] for r in res.history) > 0
    assert res.history[-1]["central_acc"] > res.history[0]["central_acc"]  # it still learns


def test_fault_draws_follow_the_fractions() -> None:
    section = FaultsSection(raise_fraction=0.1, nan_fraction=0.2, hog_fraction=0.05)
    kinds = [draw(section, 0, r, c) for r in range(50) for c in range(100)]
    n = len(kinds)
    assert kinds.count("raise") / n == pytest.approx(0.1, abs=0.015)
    assert kinds.count("nan") / n == pytest.approx(0.2, abs=0.02)
    assert kinds.count("hog") / n == pytest.approx(0.05, abs=0.01)
    assert kinds.count(None) / n == pytest.approx(0.65, abs=0.02)


def test_fractions_over_one_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="faults.raise_fraction = 1.2: the fault fractions must sum to <= 1"):
        tiny_config(faults={"raise_fraction": 0.6, "nan_fraction": 0.6})


def test_vectorized_executor_runs_faults_client_by_client_with_the_same_outcome() -> None:
    faults = {"raise_fraction": 0.2, "nan_fraction": 0.2}
    a = fedsim.run(tiny_config(faults=faults), write=False)
    b = fedsim.run(tiny_config(faults=faults, executor={"name": "vectorized"}), write=False)
    assert [r["central_acc"] for r in a.history] == [r["central_acc"] for r in b.history]
    assert [r["failures"] for r in a.history] == [r["failures"] for r in b.history]


@pytest.mark.slow
def test_faults_are_identical_on_ray_and_memory_hogs_hit_the_actor_limit(ray_session) -> None:
    faults = {"raise_fraction": 0.1, "nan_fraction": 0.1, "shape_fraction": 0.1, "empty_fraction": 0.1}
    serial = fedsim.run(tiny_config(run={"name": "f", "seed": 2, "rounds": 4}, faults=faults), write=False)
    ray = fedsim.run(tiny_config(run={"name": "f", "seed": 2, "rounds": 4}, faults=faults,
                                 executor={"name": "ray"}, ray={"num_actors": 2}), write=False)
    assert [r["failures"] for r in serial.history] == [r["failures"] for r in ray.history]
    assert [r["central_acc"] for r in serial.history] == [r["central_acc"] for r in ray.history]

    hog = fedsim.run(tiny_config(run={"name": "hog", "seed": 2, "rounds": 2},
                                 faults={"hog_fraction": 0.5, "hog_mb": 2048},
                                 executor={"name": "ray"}, ray={"num_actors": 2, "client_memory_mb": 512}), write=False)
    failures = [f for r in hog.history for f in r["failures"]]
    assert failures and all("MemoryError" in f["reason"] for f in failures), failures
    assert sum(r["clients_replied"] for r in hog.history) > 0
