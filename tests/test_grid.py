"""SimulationGrid drives unmodified Flower strategies; answers computed by hand.

The toy ClientApp (tests/apps/toy.py) replies ``w + 1`` and ``value = partition id`` with
``num-examples = partition id + 1``, so FedAvg's result is a weighted mean we know.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian

from fedsim.engine.executors import AppRef
from fedsim.engine.executors.serial import SerialExecutor
from fedsim.engine.grid import NODE_ID_OFFSET, Exchange, SimulationGrid

TOY = AppRef("tests.apps.toy:app")


def make_grid(n: int = 4, run_config: dict | None = None, seed: int = 0) -> tuple[SimulationGrid, list[Exchange]]:
    exchanges: list[Exchange] = []
    ex = SerialExecutor()
    grid = SimulationGrid(n, ex, seed=seed, observer=exchanges.append)
    ex.start(TOY, grid.run.run_id, run_config or {})
    return grid, exchanges


def initial() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(2)), "value": Array(np.zeros(1))})


def test_fedavg_weighted_mean_federated_and_centralized_eval() -> None:
    grid, exchanges = make_grid(4)
    seen_rounds = []

    def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        seen_rounds.append(rnd)
        return MetricRecord({"value": float(arrays["value"].numpy()[0])})

    result = FedAvg(fraction_train=1.0, fraction_evaluate=1.0).start(
        grid=grid, initial_arrays=initial(), num_rounds=3, evaluate_fn=evaluate_fn)
    arrays = result.arrays
    # value: sum(pid * (pid+1)) / sum(pid+1) = (0 + 2 + 6 + 12) / 10
    assert arrays["value"].numpy()[0] == pytest.approx(2.0)
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 3.0])  # +1 per round
    assert seen_rounds == [0, 1, 2, 3]
    assert result.evaluate_metrics_serverapp[3]["value"] == pytest.approx(2.0)
    # Federated evaluation: eval_loss = partition id, equal weights -> 1.5.
    assert result.evaluate_metrics_clientapp[2]["eval_loss"] == pytest.approx(1.5)
    # Per-node persistent state: every node trained in all 3 rounds.
    assert result.train_metrics_clientapp[3]["calls"] == pytest.approx(3.0)
    assert result.train_metrics_clientapp[1]["num-partitions"] == pytest.approx(4.0)
    phases = [(e.phase, e.round, e.sampled, e.replied) for e in exchanges]
    assert phases == [("train", 1, 4, 4), ("evaluate", 1, 4, 4), ("train", 2, 4, 4), ("evaluate", 2, 4, 4),
                      ("train", 3, 4, 4), ("evaluate", 3, 4, 4)]
    # Bytes are the serialized arrays: 4 clients x (w + value) each way.
    per_client = sum(len(a.data) for a in initial().values())
    assert exchanges[0].bytes_down == 4 * per_client and exchanges[0].bytes_up == 4 * per_client


def test_fedmedian_takes_the_coordinate_wise_median() -> None:
    grid, _ = make_grid(4)
    result = FedMedian(fraction_train=1.0, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(),
                                                                         num_rounds=1)
    assert result.arrays["value"].numpy()[0] == pytest.approx(1.5)  # median of 0, 1, 2, 3
    np.testing.assert_allclose(result.arrays["w"].numpy(), [1.0, 1.0])


def test_fedadam_applies_the_adam_server_step() -> None:
    grid, _ = make_grid(4)
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    result = FedAdam(fraction_train=1.0, fraction_evaluate=0.0, eta=eta, beta_1=b1, beta_2=b2, tau=tau).start(
        grid=grid, initial_arrays=initial(), num_rounds=1)
    delta = 2.0  # FedAvg of "value" minus the initial 0
    m, v = (1 - b1) * delta, (1 - b2) * delta**2
    eta_norm = eta * np.sqrt(1 - b2**2) / (1 - b1**2)
    assert result.arrays["value"].numpy()[0] == pytest.approx(eta_norm * m / (np.sqrt(v) + tau))


def test_failing_client_gets_an_error_reply_and_the_round_goes_on() -> None:
    grid, exchanges = make_grid(4, {"fail-partition": 1})
    result = FedAvg(fraction_train=1.0, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(),
                                                                      num_rounds=2)
    assert result.arrays["value"].numpy()[0] == pytest.approx((0 + 6 + 12) / (1 + 3 + 4))
    train = [e for e in exchanges if e.phase == "train"]
    assert [(e.sampled, e.replied) for e in train] == [(4, 3), (4, 3)]
    failure = train[0].failures[0]
    assert failure.partition_id == 1 and failure.node_id == NODE_ID_OFFSET + 1
    assert "RuntimeError: client 1 was told to fail" in failure.reason


def test_nan_reply_is_excluded_never_aggregated() -> None:
    grid, exchanges = make_grid(4, {"nan-partition": 2})
    result = FedAvg(fraction_train=1.0, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(),
                                                                      num_rounds=1)
    assert np.isfinite(result.arrays["value"].numpy()).all()
    assert result.arrays["value"].numpy()[0] == pytest.approx((0 + 2 + 12) / (1 + 2 + 4))
    (failure,) = exchanges[0].failures
    assert failure.partition_id == 2 and "non-finite values" in failure.reason


def test_sampling_is_seeded_by_the_run_seed() -> None:
    def sampled(seed: int) -> list[list[int]]:
        grid, exchanges = make_grid(20, seed=seed)
        picks: list[list[int]] = []
        orig = grid.executor.run

        def spy(tasks):  # record who was sampled
            picks.append(sorted(t.node_id for t in tasks))
            return orig(tasks)

        grid.executor.run = spy  # type: ignore[method-assign]
        FedAvg(fraction_train=0.25, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(), num_rounds=4)
        return picks

    a, b, c = sampled(1), sampled(1), sampled(2)
    assert a == b and a != c
    assert all(len(p) == 5 for p in a)
    assert len({tuple(p) for p in a}) > 1  # a fresh draw every round


def test_push_pull_and_grid_api() -> None:
    grid, _ = make_grid(3)
    ids = sorted(grid.get_node_ids())
    assert ids == [NODE_ID_OFFSET + i for i in range(3)]
    assert [n.node_id for n in grid.get_nodes()] == ids
    content = RecordDict({"arrays": initial(), "config": ConfigRecord({"server-round": 1})})
    msgs = [Message(content, node, "train") for node in ids] + [Message(content, 42, "train")]
    msg_ids = list(grid.push_messages(msgs))
    assert len(set(msg_ids)) == 4
    replies = list(grid.pull_messages(msg_ids))
    assert [r.metadata.reply_to_message_id for r in replies] == msg_ids
    assert [r.metadata.src_node_id for r in replies] == ids + [42]
    assert replies[-1].has_error() and "no node with id 42" in replies[-1].error.reason
    assert list(grid.pull_messages(msg_ids)) == []  # each reply is delivered once
    made = grid.create_message(content, "evaluate", ids[0], group_id="7")
    (reply,) = grid.send_and_receive([made])
    assert reply.metadata.group_id == "7" and reply.content["metrics"]["eval_loss"] == 0.0
    run = grid.run
    run.run_id = 99
    grid.set_run(run)
    assert grid.run.run_id == 99


def test_waiting_for_nodes_that_never_come_fails_fast_instead_of_hanging() -> None:
    grid, _ = make_grid(3)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"simulated nodes = 3: the strategy keeps waiting for more"):
        FedAvg(min_available_nodes=10).start(grid=grid, initial_arrays=initial(), num_rounds=1)
    assert time.monotonic() - start < 15


def _poll_from_a_helper_thread(grid: SimulationGrid, polls: int, gap: float) -> threading.Thread:
    """What Flower's legacy client manager does: a daemon thread refreshing the node list."""
    def refresh() -> None:
        for _ in range(polls):
            grid.get_node_ids()
            time.sleep(gap)

    thread = threading.Thread(target=refresh, daemon=True)
    thread.start()
    return thread


def test_helper_thread_polls_while_the_server_app_computes_are_no_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long protocol stage (SecAgg+ unmasking 100 clients) between two messages: the
    legacy refresher keeps polling, and that is no reason to stop the run."""
    import fedsim.engine.grid as grid_module

    monkeypatch.setattr(grid_module, "_STALL_GAP_S", 0.01)
    grid, _ = make_grid(3)
    thread = _poll_from_a_helper_thread(grid, polls=8, gap=0.03)
    busy = 0
    while thread.is_alive():  # computing, not waiting
        busy += 1
    assert busy > 0 and grid.stalled is False


def test_a_legacy_server_app_waiting_forever_for_nodes_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ServerApp's thread blocked in a wait while the refresher finds no new node: the
    grid interrupts it and says why (run_app turns that into the one-line error)."""
    import fedsim.engine.grid as grid_module

    monkeypatch.setattr(grid_module, "_STALL_GAP_S", 0.01)
    from flwr.server.client_manager import SimpleClientManager

    grid, _ = make_grid(3)
    # Waiting on anything else (SecAgg+ waits on its thread pool) is not waiting for nodes.
    cv = threading.Condition()
    thread = _poll_from_a_helper_thread(grid, polls=8, gap=0.03)
    with cv:
        cv.wait(timeout=0.5)
    thread.join()
    assert grid.stalled is False
    _poll_from_a_helper_thread(grid, polls=8, gap=0.03)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        SimpleClientManager().wait_for(10, timeout=30)  # Flower's legacy wait for min_available_clients
    assert grid.stalled is True and time.monotonic() - start < 10


def test_two_messages_for_one_node_run_in_order_with_its_state() -> None:
    grid, _ = make_grid(2)
    content = RecordDict({"arrays": initial(), "config": ConfigRecord({"server-round": 1})})
    node = NODE_ID_OFFSET
    replies = list(grid.send_and_receive([Message(content, node, "train") for _ in range(3)]
                                         + [Message(content, node + 1, "train")]))
    # The toy app counts calls in context.state: the node's three calls see 1, 2, 3.
    assert [r.content["metrics"]["calls"] for r in replies] == [1, 2, 3, 1]
