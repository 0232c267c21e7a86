"""Strategy registry and aggregation maths, with answers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from fedsim.strategies.aggregation import (
    buffered_step,
    fednova,
    fednova_normalizer,
    staleness_weight,
    weighted_mean,
)
from fedsim.strategies.registry import (
    FLOWER_BUILTINS,
    STRATEGIES,
    build_strategy,
    resolve_strategy_args,
)

import fedsim
from fedsim.core.errors import ConfigError
from tests.conftest import tiny_config


def test_weighted_mean_by_hand() -> None:
    out = weighted_mean([{"w": np.array([0.0, 2.0])}, {"w": np.array([3.0, 5.0])}], [1, 2])
    np.testing.assert_allclose(out["w"], [2.0, 4.0])
    with pytest.raises(ValueError):
        weighted_mean([{"w": np.zeros(1)}], [0])


def test_fednova_normalizer() -> None:
    assert fednova_normalizer(3) == 3.0
    # Two momentum steps move lr*g then lr*(g + rho*g): 2.5 lr g at rho = 0.5.
    assert fednova_normalizer(2, 0.5) == pytest.approx(2.5)
    assert fednova_normalizer(1, 0.9) == pytest.approx(1.0)


def test_fednova_by_hand() -> None:
    g = {"w": np.array([0.0])}
    # Client 1: 1 step, moved -1 (d = 1); client 2: 3 steps, moved -6 (d = 2). Equal weights:
    # tau_eff = 2, sum p d = 1.5 -> x' = -3 (FedAvg would give -3.5, pulled by the long runner).
    out = fednova(g, [{"w": np.array([-1.0])}, {"w": np.array([-6.0])}], [1, 1], [1, 3])
    np.testing.assert_allclose(out["w"], [-3.0])
    # Same step counts: FedNova is FedAvg.
    locs = [{"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, -2.0])}]
    np.testing.assert_allclose(fednova({"w": np.zeros(2)}, locs, [1, 3], [4, 4])["w"],
                               weighted_mean(locs, [1, 3])["w"])


def test_staleness_weights_and_buffered_step() -> None:
    assert staleness_weight("constant", 7) == 1.0
    assert staleness_weight("polynomial", 3, a=0.5) == pytest.approx(0.5)
    assert staleness_weight("hinge", 3, a=0.5, b=4) == 1.0
    assert staleness_weight("hinge", 6, a=0.5, b=4) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        staleness_weight("cubic", 1)
    out = buffered_step({"w": np.array([1.0])}, [{"w": np.array([2.0])}, {"w": np.array([4.0])}], [1.0, 0.5], 0.5)
    np.testing.assert_allclose(out["w"], [1.0 - 0.5 * (2.0 + 2.0) / 2])


@pytest.mark.parametrize("name", [n.lower() for n in FLOWER_BUILTINS])
def test_every_flower_builtin_builds_by_name(name: str) -> None:
    extra = {"bulyan": {"num_malicious_nodes": 0}, "krum": {"num_malicious_nodes": 0},
             "multikrum": {"num_malicious_nodes": 0}, "qfedavg": {"client_learning_rate": 0.1}}.get(name, {})
    args = resolve_strategy_args(name, {"fraction_train": 0.5, **extra}, "strategy")
    strategy = build_strategy(name, args)
    assert type(strategy).__name__.lower() == name


def test_ours_are_registered_and_validated() -> None:
    assert "fednova" in STRATEGIES.names() or resolve_strategy_args("fednova", {}, "strategy") is not None
    with pytest.raises(ConfigError, match="strategy.momentum = 1.0: must be in"):
        resolve_strategy_args("fednova", {"momentum": 1.0}, "strategy")
    with pytest.raises(ConfigError, match="strategy.fraction_trian"):
        resolve_strategy_args("fednova", {"fraction_trian": 0.5}, "strategy")
    with pytest.raises(ConfigError, match="strategy.proximal_mu = -0.1: must be >= 0"):
        resolve_strategy_args("fedprox", {"proximal_mu": -0.1}, "strategy")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg'"):
        resolve_strategy_args("no_such_pkg:Thing", {}, "strategy")
    with pytest.raises(ConfigError, match="is not a flwr.serverapp.strategy.Strategy subclass"):
        resolve_strategy_args("collections:OrderedDict", {}, "strategy")


def test_fednova_equals_fedavg_when_every_client_takes_the_same_steps() -> None:
    cfg = tiny_config(client={"local_steps": 4, "local_epochs": 1, "batch_size": 8, "lr": 0.1},
                      strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})
    avg = fedsim.run(cfg, write=False)
    nova = fedsim.run(cfg.replace(['strategy.name="fednova"']), write=False)
    for k in avg.arrays:
        np.testing.assert_allclose(nova.arrays[k].numpy(), avg.arrays[k].numpy(), rtol=1e-5, atol=1e-6)


def test_fednova_differs_from_fedavg_with_heterogeneous_epochs() -> None:
    # Epoch-based work: clients with more data take more steps; FedNova re-weights them.
    cfg = tiny_config(data={"partitioner": {"name": "quantity", "exponent": 1.0}},
                      client={"local_epochs": 2, "batch_size": 8, "lr": 0.05},
                      strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})
    avg = fedsim.run(cfg, write=False)
    nova = fedsim.run(cfg.replace(['strategy.name="fednova"']), write=False)
    key = next(iter(avg.arrays))
    assert not np.allclose(nova.arrays[key].numpy(), avg.arrays[key].numpy())
    assert np.isfinite(nova.history[-1]["central_loss"])


def test_shared_data_mixing_sizes_balance_and_bytes() -> None:
    from fedsim.scenarios.federation import build

    cfg = tiny_config(data={"num_clients": 10, "partitioner": {"name": "shards", "shards_per_client": 1},
                            "sharing": {"beta": 0.05, "alpha": 0.5}})
    fd = build(cfg.data, 0)
    pool = len(fd.y)
    g_labels = fd.y[fd.shared_idx].numpy()
    assert len(fd.shared_idx) == round(0.05 * pool)
    counts = np.bincount(g_labels, minlength=10)
    assert counts.max() - counts.min() <= 1  # balanced over classes
    for cid in range(10):
        part = fd.client_shared_idx[cid]
        assert len(part) == round(0.5 * len(fd.shared_idx))
        assert set(part.tolist()) <= set(fd.shared_idx.tolist())
        x, y = fd.client_train(cid)
        assert len(y) == len(fd.train_idx[cid]) + len(part)
        assert len(np.unique(y.numpy())) > 1  # the 1-class client now sees other classes
    assert fd.shared_bytes() == 10 * len(fd.client_shared_idx[0]) * (64 * 4 + 8)
    # Partitions are the same with and without sharing: only G is added.
    plain = build(cfg.replace(["data.sharing={}"]).data, 0)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(fd.train_idx, plain.train_idx))


def test_shared_data_warm_up_trains_the_initial_model_and_bytes_are_recorded() -> None:
    cfg = tiny_config(data={"num_clients": 10, "partitioner": {"name": "shards", "shards_per_client": 1},
                            "sharing": {"beta": 0.1, "alpha": 1.0, "warmup_epochs": 10}},
                      run={"rounds": 1}, strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})
    warm = fedsim.run(cfg, write=False)
    cold = fedsim.run(cfg.replace(["data.sharing.warmup_epochs=0"]), write=False)
    assert warm.history[0]["central_acc"] > cold.history[0]["central_acc"] + 0.2
    assert warm.history[0]["bytes_shared"] > 0 and warm.history[1]["bytes_shared"] == 0
    assert warm.summary["bytes_shared"] == warm.history[0]["bytes_shared"]


@pytest.mark.parametrize(("sharing", "field", "fragment"), [
    ({"beta": 0.0}, "data.sharing.beta = 0.0", "(0, 1]"),
    ({"beta": 1.5}, "data.sharing.beta = 1.5", "(0, 1]"),
    ({"beta": 0.05, "alpha": 1.2}, "data.sharing.alpha = 1.2", "[0, 1]"),
    ({"beta": 0.05, "alpha": -0.1}, "data.sharing.alpha = -0.1", "[0, 1]"),
])
def test_sharing_config_errors(sharing: dict, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(data={"sharing": sharing})
    assert str(info.value).startswith(field) and fragment in str(info.value)


def test_custom_strategy_example_runs_by_path_and_by_name() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "examples/custom_strategy.py"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if "final centralized accuracy" in line]
    assert len(lines) == 2 and lines[0].split()[-1] == lines[1].split()[-1]  # same run either way


def test_norm_filter_drops_the_outlier() -> None:
    from flwr.app import Array, ArrayRecord

    from examples.custom_strategy import NormFilteredFedAvg
    from tests.test_system import system, toy_grid

    # Toy replies are w + 1 for every client; client 3 is told to return NaN -> excluded by the
    # grid; to get a big-but-finite outlier use a second array that only the 'value' key moves.
    grid, _ = toy_grid(5, system(5))
    strategy = NormFilteredFedAvg(max_ratio=1.5, fraction_train=1.0, fraction_evaluate=0.0)
    # "value" becomes the partition id: updates' norms are sqrt(2 + pid^2), client 4 is the outlier.
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord({"w": Array(np.zeros(2)),
                                                                   "value": Array(np.zeros(1))}), num_rounds=1)
    assert strategy.dropped == 1
    assert result.arrays["value"].numpy()[0] == pytest.approx((0 * 1 + 1 * 2 + 2 * 3 + 3 * 4) / 10)


def test_dp_wrappers_from_toml() -> None:
    base = {"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0}
    for wrapper in ({"name": "dp_server_fixed", "noise_multiplier": 0.0, "clipping_norm": 0.01, "num_sampled_clients": 6},
                    {"name": "dp_client_fixed", "noise_multiplier": 0.0, "clipping_norm": 0.01, "num_sampled_clients": 6}):
        cfg = tiny_config(strategy={**base, "wrapper": wrapper}, run={"rounds": 1})
        assert fedsim.from_dict(cfg.to_dict()) == cfg
        res = fedsim.run(cfg, write=False)
        plain = fedsim.run(cfg.replace(["strategy={}".format("{" + 'name="fedavg", fraction_train=1.0, fraction_evaluate=0.0' + "}")]),
                           write=False)
        init = fedsim.run(cfg.replace(["run.rounds=1", 'strategy.wrapper.clipping_norm=1e-12']), write=False)
        moved = np.sqrt(sum(float(((res.arrays[k].numpy() - init.arrays[k].numpy()) ** 2).sum()) for k in res.arrays))
        # Clipped updates of norm <= 0.01, no noise: the global model moves at most 0.01.
        assert moved <= 0.01 + 1e-6, wrapper["name"]
        assert res.summary["client_failures"] == 0
        # Clipping without noise is no differential privacy: epsilon infinite (null in JSON).
        assert res.summary["privacy_epsilon"] is None or res.summary["privacy_epsilon"] == float("inf")
        key = next(iter(res.arrays))
        assert not np.allclose(res.arrays[key].numpy(), plain.arrays[key].numpy())
    with pytest.raises(ConfigError, match="strategy.wrapper.noise_multiplier = 0.0: adds no noise"):
        tiny_config(strategy={**base, "wrapper": {"name": "dp_server_fixed", "noise_multiplier": 0.0,
                                                  "clipping_norm": 1.0, "num_sampled_clients": 3}},
                    privacy={"max_epsilon": 5.0})
    with pytest.raises(ConfigError, match="strategy.wrapper.name = 'dp_magic': unknown strategy wrapper"):
        tiny_config(strategy={**base, "wrapper": {"name": "dp_magic"}})
    with pytest.raises(ConfigError, match="strategy.wrapper.clipping_norm = 0.0: must be > 0"):
        tiny_config(strategy={**base, "wrapper": {"name": "dp_server_fixed", "noise_multiplier": 1.0,
                                                  "clipping_norm": 0.0, "num_sampled_clients": 3}})
