"""Pre-reduced training replies: FedAvg-family results are bit-identical, everything else untouched."""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import FedAvg, FedMedian, Krum

import fedsim
from fedsim.engine.streaming import reducible
from tests.conftest import tiny_config


@pytest.mark.parametrize("strategy", [{"name": "fedavg"}, {"name": "fedprox", "proximal_mu": 0.1},
                                      {"name": "fedadam", "eta": 0.05}, {"name": "fedavgm"}])
def test_bit_identical_with_and_without_reduction(strategy: dict) -> None:
    base = dict(strategy={**strategy, "fraction_train": 0.5, "fraction_evaluate": 0.5},
                faults={"raise_fraction": 0.2})  # error replies pass through the reduction
    on = fedsim.run(tiny_config(**base), write=False)
    off = fedsim.run(tiny_config(**base, server={"reduce_replies": False}), write=False)
    for k in on.arrays:
        assert on.arrays[k].numpy().tobytes() == off.arrays[k].numpy().tobytes()
    assert [r["failures"] for r in on.history] == [r["failures"] for r in off.history]
    assert sum(r["clients_failed"] for r in on.history) > 0
    for rnd, metrics in off.flower_result.train_metrics_clientapp.items():
        assert metrics["train_loss"] == on.flower_result.train_metrics_clientapp[rnd]["train_loss"]


def test_only_fedavgs_default_aggregation_is_reduced() -> None:
    assert reducible(FedAvg())
    assert not reducible(FedMedian()) and not reducible(Krum())
    assert not reducible(FedAvg(train_metrics_aggr_fn=lambda records, key: None))

    class Mine(FedAvg):  # a user's subclass may aggregate differently
        pass

    assert not reducible(Mine())
