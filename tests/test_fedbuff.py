"""FedBuff: buffered asynchronous aggregation on the virtual clock (push/pull)."""

from __future__ import annotations

import numpy as np
import pytest
from fedsim.strategies.fedbuff import FedBuff
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

import fedsim
from fedsim.engine.grid import NODE_ID_OFFSET
from tests.conftest import tiny_config
from tests.test_system import system, toy_grid


def start_arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(3))})


def test_server_steps_by_hand_with_constant_staleness() -> None:
    # Toy clients reply w + 1, so every delta is -1: each step moves w by +server_lr.
    grid, _ = toy_grid(6, system(6))
    seen = []
    result = FedBuff(concurrency=3, buffer_size=2, server_lr=0.5, staleness="constant").start(
        grid=grid, initial_arrays=start_arrays(), num_rounds=4,
        evaluate_fn=lambda rnd, arrays: seen.append((rnd, float(arrays["w"].numpy()[0]))))
    np.testing.assert_allclose(result.arrays["w"].numpy(), [2.0] * 3)
    assert seen == [(0, 0.0), (1, 0.5), (2, 1.0), (3, 1.5), (4, 2.0)]


def test_pull_moves_the_clock_to_the_next_arrival() -> None:
    # 1 s per example; toy client pid reports pid + 1 examples: it arrives after pid + 1 s.
    grid, _ = toy_grid(4, system(4, devices={"seconds_per_sample": 1.0}))
    content = RecordDict({"arrays": start_arrays(), "config": ConfigRecord({"server-round": 0})})
    ids = list(grid.push_messages([Message(content, NODE_ID_OFFSET + p, "train") for p in (3, 1)]))
    first = list(grid.pull_messages(ids))
    assert [m.metadata.src_node_id for m in first] == [NODE_ID_OFFSET + 1] and grid.clock.now == 2.0
    second = list(grid.pull_messages(ids))
    assert [m.metadata.src_node_id for m in second] == [NODE_ID_OFFSET + 3] and grid.clock.now == 4.0
    assert list(grid.pull_messages(ids)) == []
    # A message pushed later starts later.
    (late,) = grid.push_messages([Message(content, NODE_ID_OFFSET, "train")])
    (reply,) = grid.pull_messages([late])
    assert grid.clock.now == 5.0 and not reply.has_error()


def test_an_offline_client_expires_at_its_ttl_and_is_replaced() -> None:
    grid, _ = toy_grid(3, system(3, devices={"availability": 0.5}, seed=3))
    content = RecordDict({"arrays": start_arrays(), "config": ConfigRecord({"server-round": 0})})
    msgs = [Message(content, NODE_ID_OFFSET + p, "train", ttl=30.0) for p in range(3)]
    ids = list(grid.push_messages(msgs))
    replies = []
    while len(replies) < 3:
        replies.extend(grid.pull_messages(ids))
    errors = [r for r in replies if r.has_error()]
    assert errors and all("TTL" in r.error.reason for r in errors)
    assert grid.clock.now == 30.0
    # FedBuff keeps going past such clients.
    grid, _ = toy_grid(8, system(8, devices={"availability": 0.5}, seed=3))
    result = FedBuff(concurrency=3, buffer_size=2, staleness="constant").start(
        grid=grid, initial_arrays=start_arrays(), num_rounds=3, timeout=30.0)
    assert len(result.train_metrics_clientapp) == 3


def test_staleness_is_measured_and_weighted() -> None:
    grid, _ = toy_grid(10, system(10, devices={"seconds_per_sample": 1.0}))
    fb = FedBuff(concurrency=6, buffer_size=2, staleness="polynomial", staleness_a=0.5)
    result = fb.start(grid=grid, initial_arrays=start_arrays(), num_rounds=6)
    stale_max = max(m["staleness_max"] for m in result.train_metrics_clientapp.values())
    assert stale_max >= 1  # slow clients return to a model that moved on
    weights = [m["staleness_weight_mean"] for m in result.train_metrics_clientapp.values()]
    assert min(weights) < 1.0


def test_fedbuff_from_toml_records_staleness_and_virtual_time() -> None:
    cfg = tiny_config(run={"rounds": 4}, strategy={"name": "fedbuff", "concurrency": 4, "buffer_size": 2},
                      devices={"seconds_per_sample": 0.01, "speed": {"name": "lognormal", "sigma": 1.0}})
    res = fedsim.run(cfg, write=False)
    assert [r["round"] for r in res.history] == [0, 1, 2, 3, 4]
    times = [r["virtual_time_s"] for r in res.history]
    assert times == sorted(times) and times[-1] > 0
    assert all("strategy_staleness_mean" in r for r in res.history[1:])


@pytest.mark.parametrize(("args", "fragment"), [({"buffer_size": 0}, "strategy.buffer_size = 0: must be >= 1"),
                                                ({"concurrency": 0}, "strategy.concurrency = 0: must be >= 1"),
                                                ({"staleness": "cubic"}, "strategy.staleness = 'cubic'")])
def test_fedbuff_bad_arguments(args: dict, fragment: str) -> None:
    from fedsim.core.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        tiny_config(strategy={"name": "fedbuff", **args})
