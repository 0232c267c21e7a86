"""The simulated system: virtual clock, devices, links, round policies; answers computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fedsim.scenarios.devices import DevicesSection
from fedsim.scenarios.network import GilbertElliottParams, LinkModel, NetworkSection
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.core.schema import parse
from fedsim.engine.executors import AppRef
from fedsim.engine.executors.serial import SerialExecutor
from fedsim.engine.grid import NODE_ID_OFFSET, Exchange, SimulationGrid
from fedsim.engine.metrics import SYSTEM_COUNTS, WALL_FIELDS
from fedsim.engine.policies import RoundSection, Selection
from fedsim.engine.system import SystemModel
from tests.conftest import tiny_config
from tests.test_grid import initial

TOY = AppRef("tests.apps.toy:app")


def system(n: int, devices: dict | None = None, network: dict | None = None, rounds: dict | None = None,
           seed: int = 0) -> SystemModel:
    return SystemModel(parse(DevicesSection, devices or {}, "devices"), parse(NetworkSection, network or {}, "network"),
                       parse(RoundSection, rounds or {}, "round"), n, seed)


def toy_grid(n: int, sys: SystemModel, run_config: dict | None = None) -> tuple[SimulationGrid, list[Exchange]]:
    exchanges: list[Exchange] = []
    ex = SerialExecutor()
    grid = SimulationGrid(n, ex, seed=0, observer=exchanges.append, system=sys)
    ex.start(TOY, grid.run.run_id, run_config or {})
    return grid, exchanges


def train_messages(grid: SimulationGrid, nodes: list[int] | None = None) -> list[Message]:
    content = RecordDict({"arrays": initial(), "config": ConfigRecord({"server-round": 1})})
    ids = nodes if nodes is not None else sorted(grid.get_node_ids())
    return [Message(content, node, "train") for node in ids]


# --------------------------------------------------------------------- policies
def select(policy: str, arrivals: list[float], deadline: float | None, keep: int | None = None) -> Selection:
    return RoundSection(policy=policy, deadline=deadline or 1.0).make().select(arrivals, deadline, keep)


def test_select_by_hand() -> None:
    inf = math.inf
    assert select("wait_all", [1.0, 3.0, inf], None).kept == [0, 1]
    assert select("wait_all", [1.0, 3.0, inf], None).wait == 3.0
    s = select("deadline", [1.0, 3.0, 2.0], 2.5)
    assert (s.kept, s.late, s.wait) == ([0, 2], [1], 2.5)
    s = select("deadline", [1.0, 2.0], 2.5)
    assert (s.kept, s.wait) == ([0, 1], 2.0)  # nobody late: the server stops at the last arrival
    assert select("deadline", [1.0, inf], 2.5).wait == 2.5  # a missing reply is waited for
    s = select("over_select", [5.0, 1.0, 4.0, 2.0], None, keep=2)
    assert (s.kept, s.late, s.wait) == ([1, 3], [0, 2], 2.0)


def test_deadline_drops_exactly_the_clients_arriving_after_it() -> None:
    # Toy clients report num-examples = pid + 1; at speed 1 and 1 s per sample, client
    # pid computes for pid + 1 seconds. Deadline 2.5: clients 0 and 1 make it.
    sys = system(4, devices={"seconds_per_sample": 1.0}, rounds={"policy": "deadline", "deadline": 2.5})
    grid, exchanges = toy_grid(4, sys)
    replies = list(grid.send_and_receive(train_messages(grid), timeout=2.5))
    assert sorted(r.metadata.src_node_id - NODE_ID_OFFSET for r in replies) == [0, 1]
    ex = exchanges[0]
    assert (ex.stragglers, ex.replied, ex.virtual_seconds) == (2, 2, 2.5)
    assert grid.clock.now == 2.5
    # Speeds change who makes it: client 3 at speed 4 computes 4 / 4 = 1 s.
    sys = system(4, devices={"seconds_per_sample": 1.0, "speed": {"name": "tiers", "values": [1.0, 1.0, 1.0, 4.0],
                                                                   "probs": [0.25, 0.25, 0.25, 0.25]}},
                 rounds={"policy": "deadline", "deadline": 2.5}, seed=1)
    expected = sorted(c for c in range(4) if (c + 1) / sys.devices.speeds[c] <= 2.5)
    grid, _ = toy_grid(4, sys)
    replies = list(grid.send_and_receive(train_messages(grid), timeout=2.5))
    assert sorted(r.metadata.src_node_id - NODE_ID_OFFSET for r in replies) == expected


def test_wait_all_advances_the_clock_to_the_last_arrival_including_links() -> None:
    # 1 Mbit/s both ways, 0.1 s latency: the model (bytes b) takes 0.1 + 8b/1e6 s each way.
    sys = system(3, devices={"seconds_per_sample": 0.5},
                 network={"down_mbps": {"name": "constant", "value": 1.0}, "up_mbps": {"name": "constant", "value": 1.0},
                          "latency_s": {"name": "constant", "value": 0.1}})
    grid, exchanges = toy_grid(3, sys)
    b = sum(len(a.data) for a in initial().values())
    grid.send_and_receive(train_messages(grid))
    slowest = 2 * (0.1 + 8 * b / 1e6) + 3 * 0.5  # client 2: 3 examples
    assert exchanges[0].virtual_seconds == pytest.approx(slowest)
    assert grid.clock.now == pytest.approx(slowest)


def test_over_select_samples_extra_clients_and_keeps_the_first_k() -> None:
    sys = system(8, devices={"seconds_per_sample": 1.0}, rounds={"policy": "over_select", "over_select": 0.5})
    grid, exchanges = toy_grid(8, sys)
    nodes = [NODE_ID_OFFSET + i for i in (7, 6, 5, 4)]  # slow clients: 8, 7, 6, 5 s
    replies = list(grid.send_and_receive(train_messages(grid, nodes)))
    ex = exchanges[0]
    assert ex.over_selected == 2 and len(replies) == 4 and ex.stragglers == 2
    arrivals = sorted(r.metadata.src_node_id - NODE_ID_OFFSET + 1 for r in replies)  # compute seconds
    assert ex.virtual_seconds == arrivals[-1]
    # The extras came from the idle clients 0..3, which are faster: both made the cut.
    assert sum(1 for r in replies if r.metadata.src_node_id - NODE_ID_OFFSET < 4) == 2


def test_partial_work_tells_clients_their_budget() -> None:
    cfg = tiny_config(devices={"seconds_per_sample": 0.01, "speed": {"name": "lognormal", "mu": 0.0, "sigma": 1.0}},
                      round={"policy": "partial_work", "deadline": 0.5},
                      client={"local_epochs": 5, "batch_size": 8, "lr": 0.1},
                      strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})
    partial = fedsim.run(cfg, write=False)
    plain = fedsim.run(cfg.replace(['round.policy="deadline"']), write=False)
    # Under the same deadline, partial work keeps (nearly) everyone; plain deadline drops the slow.
    assert sum(r["stragglers"] for r in partial.history) < sum(r["stragglers"] for r in plain.history)
    assert sum(r["clients_replied"] for r in partial.history) > sum(r["clients_replied"] for r in plain.history)
    assert all(r["virtual_round_s"] <= 0.5 + 1e-9 for r in partial.history)


@pytest.mark.parametrize("deadline, want", [(0.5, [0, 6, 6]), (1e6, [0, 0, 0])], ids=["budget-limits", "no-limit"])
def test_time_budget_partial_work_is_counted(deadline: float, want: list[int]) -> None:
    # 6 clients of ~240 samples, 5 epochs of batch 8 (~150 steps); 0.01 s a sample: a 0.5 s budget
    # is 50 samples (6 steps) for every client, far short of its work; 1e6 s never limits.
    cfg = tiny_config(devices={"seconds_per_sample": 0.01}, round={"policy": "partial_work", "deadline": deadline},
                      client={"local_epochs": 5, "batch_size": 8}, run={"rounds": 2},
                      strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})
    assert [r["partial"] for r in fedsim.run(cfg, write=False).history] == want


def test_steps_within_budget() -> None:
    from fedsim.clients.app import steps_within_budget

    assert steps_within_budget(ConfigRecord({}), 10) == 0  # no budget: no limit
    assert steps_within_budget(ConfigRecord({"time-budget": 1.0, "seconds-per-sample": 0.01}), 10) == 10
    assert steps_within_budget(ConfigRecord({"time-budget": 0.0, "seconds-per-sample": 0.01}), 10) == 1


# ---------------------------------------------------------------------- devices
def test_availability_and_dropout_rates_follow_their_probabilities() -> None:
    sys = system(400, devices={"availability": 0.7, "dropout": 0.2})
    online = [sys.devices.online(c, r, 0.0, "train") for c in range(400) for r in range(5)]
    dropped = [sys.devices.drops_out(c, r, "train") for c in range(400) for r in range(5)]
    assert abs(np.mean(online) - 0.7) < 0.03 and abs(np.mean(dropped) - 0.2) < 0.03
    grid, exchanges = toy_grid(400, sys)
    replies = list(grid.send_and_receive(train_messages(grid)))
    ex = exchanges[0]
    assert ex.unavailable + ex.dropouts + len(replies) == 400
    assert abs(ex.unavailable / 400 - 0.3) < 0.07 and abs(ex.dropouts / (400 - ex.unavailable) - 0.2) < 0.07


def test_availability_trace_decides_who_is_online(tmp_path: Path) -> None:
    trace = tmp_path / "online.csv"
    trace.write_text("client,start,end\n0,0,10\n0,20,30\n1,5,25\n")
    sys = system(4, devices={"availability_trace": str(trace)})
    on = sys.devices.online
    # client 2 follows trace client 0, client 3 trace client 1; the trace repeats every 30 s.
    assert [on(0, 0, t, "x") for t in (0, 9.9, 10, 15, 20, 31)] == [True, True, False, False, True, True]
    assert [on(3, 0, t, "x") for t in (0, 5, 24.9, 25)] == [False, True, True, False]
    assert on(2, 0, 25.0, "x") is True


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "trace file is empty"),
    ("client,start,end\n", "trace file is empty"),
    ("client,begin,end\n0,0,1\n", "no column 'start'"),
    ("client,start,end\n0,5,9\n0,1,3\n", "not sorted"),
    ("client,start,end\n0,x,3\n", "line 2, column 'start' is 'x'"),
    ("client,start,end\n0,4,3\n", "0 <= start < end"),
    ("client,start,end\nzz,0,3\n", "not an integer"),
])
def test_bad_availability_traces(tmp_path: Path, text: str, fragment: str) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse(DevicesSection, {"availability_trace": str(trace)}, "devices")
    assert str(info.value).startswith("devices.availability_trace = ") and fragment in str(info.value)
    with pytest.raises(ConfigError, match="trace file not found"):
        parse(DevicesSection, {"availability_trace": str(tmp_path / "none.csv")}, "devices")


def test_speed_trace_and_distributions(tmp_path: Path) -> None:
    trace = tmp_path / "speeds.csv"
    trace.write_text("device,speed\na,0.5\nb,2.0\nc,1.0\n")
    d = parse(DevicesSection, {"speed": {"name": "trace", "path": str(trace), "column": "speed"}}, "devices")
    sys = SystemModel(d, NetworkSection(), RoundSection(), 5, 0)
    assert sys.devices.speeds.tolist() == [0.5, 2.0, 1.0, 0.5, 2.0]
    trace.write_text("device,speed\na,0.5\nb,-2\n")
    with pytest.raises(ConfigError, match=r"devices.speed.path = .*speeds.csv': the trace holds -2; this quantity must be > 0"):
        parse(DevicesSection, {"speed": {"name": "trace", "path": str(trace), "column": "speed"}}, "devices")
    rng = np.random.default_rng(0)
    from fedsim.scenarios.distributions import (
        LogNormalParams,
        ParetoParams,
        TiersParams,
        sample,
    )

    from fedsim.core.schema import Named

    assert abs(np.median(sample(Named("lognormal", LogNormalParams(mu=1.0, sigma=0.5)), rng, 20000)) - math.e) < 0.1
    par = sample(Named("pareto", ParetoParams(shape=3.0, scale=2.0)), rng, 20000)
    assert par.min() >= 2.0 and abs(par.mean() - 3.0) < 0.1  # mean = a x_m / (a - 1)
    tiers = sample(Named("tiers", TiersParams(values=(1.0, 5.0), probs=(0.8, 0.2))), rng, 20000)
    assert abs((tiers == 5.0).mean() - 0.2) < 0.02


# ------------------------------------------------------------------------ links
def test_retransmissions_follow_the_geometric_expectation() -> None:
    p = 0.2
    links = LinkModel(parse(NetworkSection, {"loss": {"name": "iid", "p": p}, "max_retries": 50,
                                             "packet_bytes": 100}, "network"), 1, 0)
    t = [links.transfer(0, 100 * 1000, "up", r, "x") for r in range(20)]  # 20 x 1000 packets
    per_packet = sum(x.retransmissions for x in t) / 20000
    assert per_packet == pytest.approx(p / (1 - p), rel=0.05)  # E[attempts - 1] of a geometric
    assert all(x.complete for x in t)
    # With no retries, a packet is lost for good with probability p.
    links = LinkModel(parse(NetworkSection, {"loss": {"name": "iid", "p": p}, "retransmit": False,
                                             "packet_bytes": 100}, "network"), 1, 0)
    lost = sum(len(links.transfer(0, 100 * 1000, "up", r, "x").lost) for r in range(20)) / 20000
    assert lost == pytest.approx(p, rel=0.05)
    # With R retries: p^(R+1).
    links = LinkModel(parse(NetworkSection, {"loss": {"name": "iid", "p": 0.5}, "max_retries": 2,
                                             "packet_bytes": 100}, "network"), 1, 0)
    lost = sum(len(links.transfer(0, 100 * 1000, "up", r, "x").lost) for r in range(20)) / 20000
    assert lost == pytest.approx(0.125, rel=0.08)


def test_gilbert_elliott_burst_length_and_loss_rate() -> None:
    params = GilbertElliottParams(p_gb=0.02, p_bg=0.25, loss_good=0.0, loss_bad=1.0)
    links = LinkModel(parse(NetworkSection, {"loss": {"name": "gilbert_elliott", "p_gb": 0.02, "p_bg": 0.25},
                                             "retransmit": False, "packet_bytes": 16}, "network"), 1, 0)
    lost_runs, lost, total = [], 0, 0
    for r in range(40):
        t = links.transfer(0, 16 * 5000, "up", r, "x")
        mask = np.zeros(t.packets, dtype=int)
        mask[t.lost] = 1
        d = np.diff(np.concatenate([[0], mask, [0]]))
        lost_runs.extend((np.flatnonzero(d == -1) - np.flatnonzero(d == 1)).tolist())
        lost += len(t.lost)
        total += t.packets
    assert np.mean(lost_runs) == pytest.approx(1 / params.p_bg, rel=0.08)
    assert lost / total == pytest.approx(params.mean_loss, rel=0.1)


def test_transfer_time_by_hand() -> None:
    links = LinkModel(parse(NetworkSection, {"up_mbps": {"name": "constant", "value": 8.0},
                                             "latency_s": {"name": "constant", "value": 0.25}}, "network"), 1, 0)
    t = links.transfer(0, 1_000_000, "up", 0, "x")
    assert t.seconds == pytest.approx(0.25 + 1.0)  # 1 MB at 8 Mbit/s
    assert t.packets == 667 and t.retransmissions == 0


def test_lost_model_means_no_training() -> None:
    sys = system(50, network={"loss": {"name": "iid", "p": 0.5}, "retransmit": False, "packet_bytes": 64})
    grid, exchanges = toy_grid(50, sys)
    replies = list(grid.send_and_receive(train_messages(grid)))
    ex = exchanges[0]
    assert ex.model_lost > 40  # ~20 packets each: almost every download loses one
    assert len(replies) + ex.model_lost + ex.reply_lost == 50


def test_lost_reply_spans_are_filled_from_the_global_model() -> None:
    # Toy replies are w + 1 (value: partition id). Every uplink loses packets for good;
    # with fill = global the lost values are the global model's (0), the rest w + 1.
    sys = system(4, network={"loss": {"name": "iid", "p": 0.3}, "retransmit": False, "packet_bytes": 32,
                             "on_loss": "mark", "fill": "global", "lossy_downlink": False})
    grid, exchanges = toy_grid(4, sys)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(64)), "value": Array(np.zeros(1))}),
                          "config": ConfigRecord({"server-round": 1})})
    replies = list(grid.send_and_receive([Message(content, NODE_ID_OFFSET + i, "train") for i in range(4)]))
    assert replies and all(not r.has_error() for r in replies)
    some_filled = False
    for r in replies:
        w = r.content["arrays"]["w"].numpy()
        assert set(np.unique(w)) <= {0.0, 1.0}
        some_filled |= bool((w == 0.0).any())
    assert some_filled
    # With fill = exclude the same damage excludes the replies.
    sys = system(4, network={"loss": {"name": "iid", "p": 0.3}, "retransmit": False, "packet_bytes": 32,
                             "on_loss": "mark", "fill": "exclude", "lossy_downlink": False})
    grid, exchanges = toy_grid(4, sys)
    replies = list(grid.send_and_receive([Message(content, NODE_ID_OFFSET + i, "train") for i in range(4)]))
    assert exchanges[0].corrupted == sum(r.has_error() for r in replies) > 0
    assert all("lost for good" in r.error.reason for r in replies if r.has_error())


def test_bit_errors_are_detected_and_never_aggregated() -> None:
    sys = system(20, network={"bit_error_rate": 1e-4})
    grid, exchanges = toy_grid(20, sys)
    result = FedAvg(fraction_train=1.0, fraction_evaluate=0.0).start(
        grid=grid, initial_arrays=ArrayRecord({"w": Array(np.zeros(2000, dtype=np.float32))}), num_rounds=3)
    w = result.arrays["w"].numpy()
    assert np.isfinite(w).all() and np.abs(w).max() < 1e3 * 4  # replies are w + 1 per round
    flips = sum(e.bit_flips for e in exchanges)
    assert flips == pytest.approx(3 * 20 * 2000 * 32 * 1e-4, rel=0.2)  # binomial mean
    assert sum(e.corrupted for e in exchanges) > 0


# --------------------------------------------------------------------- fidelity
def test_no_loss_and_infinite_bandwidth_give_the_foundations_numbers() -> None:
    cfg = tiny_config()
    base = fedsim.run(cfg, write=False)
    explicit = fedsim.run(cfg.replace(['network.loss={name="iid", p=0.0}', "network.latency_s={value=0.0}",
                                       'network.up_mbps={name="constant", value=inf}']), write=False)
    drop = set(WALL_FIELDS)
    assert [{k: v for k, v in r.items() if k not in drop} for r in base.history] == \
           [{k: v for k, v in r.items() if k not in drop} for r in explicit.history]
    assert base.history[-1]["virtual_time_s"] == 0.0
    # A lossy, slow link with retransmission and wait_all changes time, not numbers.
    lossy = fedsim.run(cfg.replace(['network.loss={name="iid", p=0.1}', 'network.up_mbps={value=2.0}',
                                    'network.latency_s={value=0.05}']), write=False)
    same = [k for k in base.history[1] if k not in drop and k not in ("virtual_round_s", "virtual_time_s",
                                                                          *SYSTEM_COUNTS)]
    assert [[r[k] for k in same] for r in base.history] == [[r[k] for k in same] for r in lossy.history]
    assert lossy.history[-1]["virtual_time_s"] > 0 and sum(r["retransmissions"] for r in lossy.history) > 0


def test_system_config_errors() -> None:
    bad = [
        ({"network": {"down_mbps": {"name": "constant", "value": -5.0}}}, "network.down_mbps.value = -5.0", "> 0"),
        ({"network": {"loss": {"name": "iid", "p": 1.0}}}, "network.loss.p = 1.0", "[0, 1)"),
        ({"network": {"loss": {"name": "iid", "p": -0.1}}}, "network.loss.p = -0.1", "[0, 1)"),
        ({"network": {"loss": {"name": "burst"}}}, "network.loss.name = 'burst'", "known: gilbert_elliott, iid, none"),
        ({"round": {"policy": "deadline", "deadline": 0.0}}, "round.deadline = 0.0", "> 0"),
        ({"round": {"policy": "deadline", "deadline": -3}}, "round.deadline = -3.0", "> 0"),
        ({"round": {"policy": "deadline"}}, "round.deadline = None", "required"),
        ({"round": {"policy": "fastest"}}, "round.policy = 'fastest'", "wait_all"),
        ({"devices": {"speed": {"name": "tiers", "values": [1, 2], "probs": [0.5]}}}, "devices.speed.probs", "one probability per value"),
        ({"devices": {"speed": {"name": "tiers", "values": [1, 2], "probs": [0.5, 0.6]}}}, "devices.speed.probs", "sum to 1"),
        ({"devices": {"availability": 0.0}}, "devices.availability = 0.0", "(0, 1]"),
        ({"network": {"latency_s": {"name": "constant", "value": -1.0}}}, "network.latency_s.value = -1.0", ">= 0"),
    ]
    for edit, start, fragment in bad:
        with pytest.raises(ConfigError) as info:
            tiny_config(**edit)
        assert str(info.value).startswith(start) and fragment in str(info.value), str(info.value)


def test_fedprox_straggler_protocol() -> None:
    # 10 training clients, 40 % stragglers: exactly 4 per round.
    for policy, replied in (("deadline", 6), ("partial_work", 10)):
        sys = SystemModel(parse(DevicesSection, {"straggler_fraction": 0.4}, "devices"), NetworkSection(),
                          parse(RoundSection, {"policy": policy, "deadline": 1e9}, "round"), 10, 0, local_epochs=5)
        grid, exchanges = toy_grid(10, sys)
        replies = list(grid.send_and_receive(train_messages(grid), timeout=1e9))
        ex = exchanges[0]
        assert len(replies) == replied
        epochs = sorted(int(r.content["metrics"]["local-epochs"]) for r in replies)
        if policy == "deadline":
            assert ex.stragglers == 4 and ex.partial == 0 and epochs == [0] * 6  # the rest do full work
        else:
            assert ex.stragglers == 0 and ex.partial == 4
            assert epochs[:6] == [0] * 6 and all(1 <= e <= 4 for e in epochs[6:])  # U{1..E-1}
