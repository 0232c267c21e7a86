"""The Ray executor: same numbers as serial, failures reported, dead actors replaced."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.engine.executors import AppRef
from fedsim.engine.executors.ray import RayExecutor
from fedsim.engine.grid import Exchange, SimulationGrid
from fedsim.engine.metrics import without_wall
from tests.conftest import tiny_config
from tests.test_grid import initial

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("ray_session")


def test_same_seed_same_metrics_on_serial_and_ray_with_1_or_2_actors() -> None:
    cfg = tiny_config(run={"rounds": 3, "seed": 11})
    serial = fedsim.run(cfg, write=False)
    runs = [fedsim.run(cfg.replace(["executor.name=ray", f"ray.num_actors={n}"]), write=False) for n in (1, 2)]
    want = [without_wall(r) for r in serial.history]
    for res in runs:
        assert [without_wall(r) for r in res.history] == want
        for key in serial.arrays:
            assert np.array_equal(serial.arrays[key].numpy(), res.arrays[key].numpy())
    other_seed = fedsim.run(cfg.replace(["run.seed=12"]), write=False)
    assert [without_wall(r) for r in other_seed.history] != want


def ray_grid(n: int, run_config: dict, **kwargs) -> tuple[SimulationGrid, RayExecutor, list[Exchange]]:
    exchanges: list[Exchange] = []
    ex = RayExecutor(num_actors=2, **kwargs)
    grid = SimulationGrid(n, ex, seed=0, observer=exchanges.append)
    ex.start(AppRef("tests.apps.toy:app"), grid.run.run_id, run_config)
    return grid, ex, exchanges


def test_failing_client_on_ray_is_reported_and_round_goes_on() -> None:
    grid, ex, exchanges = ray_grid(4, {"fail-partition": 3})
    try:
        result = FedAvg(fraction_train=1.0, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(),
                                                                          num_rounds=2)
    finally:
        ex.shutdown()
    assert result.arrays["value"].numpy()[0] == pytest.approx((0 + 2 + 6) / (1 + 2 + 3))
    assert [len(e.failures) for e in exchanges] == [1, 1]
    assert "client 3 was told to fail" in exchanges[0].failures[0].reason


def test_dead_actor_is_replaced_and_its_client_retried(tmp_path: Path) -> None:
    grid, ex, exchanges = ray_grid(4, {"exit-partition": 2, "marker-dir": str(tmp_path)})
    try:
        result = FedAvg(fraction_train=1.0, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(),
                                                                          num_rounds=2)
        replaced = ex.actors_replaced
    finally:
        ex.shutdown()
    assert (tmp_path / "exited-2").exists()  # it really died once
    assert replaced >= 1
    assert all(not e.failures for e in exchanges)
    assert result.arrays["value"].numpy()[0] == pytest.approx(2.0)  # nobody lost


def test_client_that_always_kills_its_actor_fails_after_one_retry(tmp_path: Path) -> None:
    grid, ex, exchanges = ray_grid(4, {"exit-partition": 1, "exit-always": True, "marker-dir": str(tmp_path)})
    try:
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(), num_rounds=1)
    finally:
        ex.shutdown()
    (failure,) = exchanges[0].failures
    assert failure.partition_id == 1 and "actor died" in failure.reason and "2 time" in failure.reason


def test_client_past_the_wall_timeout_is_abandoned() -> None:
    grid, ex, exchanges = ray_grid(3, {"sleep-partition": 0, "sleep-seconds": 120}, client_timeout=4.0)
    try:
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0).start(grid=grid, initial_arrays=initial(), num_rounds=1)
    finally:
        ex.shutdown()
    (failure,) = exchanges[0].failures
    assert failure.partition_id == 0 and "client_timeout" in failure.reason
    assert exchanges[0].replied == 2


@pytest.mark.slow
def test_quickstart_reaches_085_on_ray(tmp_path: Path) -> None:
    res = fedsim.run("scenarios/presets/quickstart.toml", out_dir=tmp_path / "qs",
                     overrides=["report.progress=false", "executor.name=ray", "ray.num_actors=2"])
    assert res.summary["final_central_acc"] >= 0.85


def test_identical_clocks_and_system_events_on_serial_and_ray() -> None:
    cfg = tiny_config(run={"rounds": 3, "seed": 5},
                      devices={"seconds_per_sample": 0.01, "speed": {"name": "lognormal", "sigma": 1.0},
                               "availability": 0.8, "dropout": 0.1, "jitter": 0.2},
                      network={"up_mbps": {"name": "tiers", "values": [1.0, 10.0], "probs": [0.5, 0.5]},
                               "latency_s": {"name": "constant", "value": 0.05},
                               "loss": {"name": "gilbert_elliott", "p_gb": 0.05, "p_bg": 0.5}, "max_retries": 1},
                      round={"policy": "deadline", "deadline": 1.0},
                      strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.5})
    serial = fedsim.run(cfg, write=False)
    ray_run = fedsim.run(cfg.replace(["executor.name=ray", "ray.num_actors=2"]), write=False)
    assert [without_wall(r) for r in serial.history] == [without_wall(r) for r in ray_run.history]
    assert serial.history[-1]["virtual_time_s"] > 0
    events = {k: sum(r[k] for r in serial.history) for k in ("stragglers", "unavailable", "dropouts", "retransmissions")}
    assert all(v > 0 for v in events.values()), events


@pytest.mark.parametrize("strategy", [
    {"name": "fedbuff", "concurrency": 4, "buffer_size": 2},
    {"name": "fednova", "fraction_train": 1.0, "fraction_evaluate": 0.0},
    {"name": "fedprox", "proximal_mu": 1.0, "fraction_train": 0.5},
])
def test_our_strategies_are_deterministic_on_both_executors(strategy: dict) -> None:
    cfg = tiny_config(run={"rounds": 3}, strategy=strategy,
                      devices={"seconds_per_sample": 0.01, "speed": {"name": "lognormal", "sigma": 1.0}},
                      data={"sharing": {"beta": 0.05, "alpha": 0.5}})
    serial = fedsim.run(cfg, write=False)
    ray_run = fedsim.run(cfg.replace(["executor.name=ray", "ray.num_actors=2"]), write=False)
    assert [without_wall(r) for r in serial.history] == [without_wall(r) for r in ray_run.history]
    again = fedsim.run(cfg, write=False)
    assert [without_wall(r) for r in serial.history] == [without_wall(r) for r in again.history]


def test_dp_noise_is_seeded_on_both_executors() -> None:
    cfg = tiny_config(run={"rounds": 2}, strategy={
        "name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0,
        "wrapper": {"name": "dp_server_fixed", "noise_multiplier": 0.5, "clipping_norm": 1.0, "num_sampled_clients": 6}})
    serial = fedsim.run(cfg, write=False)
    ray_run = fedsim.run(cfg.replace(["executor.name=ray", "ray.num_actors=2"]), write=False)
    for key in serial.arrays:
        assert np.array_equal(serial.arrays[key].numpy(), ray_run.arrays[key].numpy())
    other = fedsim.run(cfg.replace(["run.seed=99"]), write=False)
    assert not all(np.array_equal(serial.arrays[k].numpy(), other.arrays[k].numpy()) for k in serial.arrays)


@pytest.mark.parametrize("chain", [
    [{"name": "topk", "k": 0.05, "error_feedback": "classic"}, {"name": "qsgd", "bits": 4}],
    [{"name": "topk", "k": 0.05, "error_feedback": "ef21"}],
    [{"name": "lora", "rank": 4}, {"name": "int8"}],
])
def test_codecs_are_deterministic_on_both_executors(chain: list) -> None:
    base = tiny_config(run={"rounds": 3}, data={"sharing": {"beta": 0.1}},
                       strategy={"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0})
    cfg = fedsim.from_dict({**base.to_dict(), "codec": chain})
    serial = fedsim.run(cfg, write=False)
    ray_run = fedsim.run(cfg.replace(["executor.name=ray", "ray.num_actors=2"]), write=False)
    assert [without_wall(r) for r in serial.history] == [without_wall(r) for r in ray_run.history]


@pytest.mark.parametrize("attack", [{"name": "inverting_gradients", "iterations": 100, "restarts": 1},
                                    {"name": "idlg", "outer_steps": 5, "restarts": 1},
                                    {"name": "dlg", "outer_steps": 5, "restarts": 2},
                                    {"name": "analytic"}], ids=lambda a: a["name"])
def test_attack_probes_run_on_the_actors_with_the_same_results(attack: dict) -> None:
    cfg = tiny_config(run={"rounds": 2}, model={"name": "mlp", "hidden": [32]},
                      client={"local_steps": 1, "batch_size": 1, "lr": 0.1},
                      strategy={"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0},
                      probe={"attack": attack, "clients": 2})
    serial = fedsim.run(cfg, write=False)
    ray_run = fedsim.run(cfg.replace(["executor.name=ray", "ray.num_actors=2"]), write=False)
    assert [without_wall(r) for r in serial.history] == [without_wall(r) for r in ray_run.history]
    assert all(r["probes"] == 2 for r in serial.history[1:])
    assert all(r["probe_psnr_mean"] is not None for r in serial.history[1:])


def test_resource_tiers_route_clients_to_their_own_actors_with_serial_numbers(monkeypatch) -> None:
    from fedsim.engine.executors.ray import RayExecutor

    seen = []
    original = RayExecutor.shutdown

    def spy(self):
        seen.append(([t.name for t in self.tiers], list(self._slot_tier), [self.tier_of(c) for c in range(6)]))
        original(self)

    monkeypatch.setattr(RayExecutor, "shutdown", spy)
    tiers = [{"name": "phones", "clients": [0, 4], "num_actors": 1, "cpus": 0.5},
             {"name": "laptops", "clients": [4, 6], "num_actors": 2, "cpus": 0.5, "memory_mb": 64}]
    ray_res = fedsim.run(tiny_config(executor={"name": "ray"}, ray={"tiers": tiers}), write=False)
    serial = fedsim.run(tiny_config(), write=False)
    assert [without_wall(r) for r in ray_res.history] == [without_wall(r) for r in serial.history]
    assert seen == [(["phones", "laptops"], [0, 1, 1], [0, 0, 0, 0, 1, 1])]


def test_tiers_asking_for_more_than_the_cluster_has_are_refused() -> None:
    tiers = [{"name": "gpu", "clients": [0, 6], "num_actors": 1, "cpus": 0.5, "gpus": 1.0}]
    with pytest.raises(ConfigError, match=r"ray.tiers.gpus = 1.0: the actors ask for 1 GPUs in all; the cluster has 0"):
        fedsim.run(tiny_config(executor={"name": "ray"}, ray={"tiers": tiers}), write=False)


def test_actors_that_do_not_start_in_time_are_one_line_naming_the_setting() -> None:
    cfg = tiny_config(executor={"name": "ray"}, ray={"num_actors": 2, "start_timeout_s": 0.001}, run={"rounds": 1})
    with pytest.raises(ConfigError, match=r"^ray.start_timeout_s = 0.001: the Ray actors did not start \(") as info:
        fedsim.run(cfg, write=False)
    assert "\n" not in str(info.value) and "raise ray.start_timeout_s" in str(info.value)


@pytest.mark.parametrize("strategy", [
    {"name": "scaffold", "fraction_train": 0.5, "fraction_evaluate": 0.5},
    {"name": "fedper", "personal_layers": ["3"], "fraction_train": 0.5, "fraction_evaluate": 0.5},
    {"name": "ditto", "lam": 0.5, "fraction_train": 0.5, "fraction_evaluate": 0.5},
    {"name": "apfl", "alpha": 0.4, "fraction_train": 0.5, "fraction_evaluate": 0.5},
], ids=["scaffold", "fedper", "ditto", "apfl"])
def test_stateful_methods_give_the_same_numbers_on_serial_vectorized_and_ray(strategy: dict) -> None:
    """Client state (control variates, personal layers and models) follows each virtual
    client across actors: 2 Ray actors and the vectorized executor equal serial."""
    cfg = tiny_config(strategy=strategy, run={"rounds": 3, "seed": 5})
    serial = fedsim.run(cfg, write=False)
    for other in ("executor.name=ray", "executor.name=vectorized"):
        res = fedsim.run(cfg.replace([other, "ray.num_actors=2"]), write=False)
        assert [without_wall(r) for r in res.history] == [without_wall(r) for r in serial.history], other
        assert all(np.array_equal(serial.arrays[k].numpy(), res.arrays[k].numpy()) for k in serial.arrays)


def test_a_local_ray_that_does_not_start_is_retried_then_one_line(tmp_path: Path) -> None:
    """Ray gives its own node a fixed 30 s; here (a fresh process) every start fails as Ray's
    does under load: fedsim retries while ray.start_timeout_s lasts, then says so in one line."""
    script = tmp_path / "slow_ray.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import ray
        calls = []

        def init(*args, **kwargs):
            calls.append(kwargs.get("address"))
            time.sleep(0.3)
            raise Exception("The current node timed out during startup. This could happen because ...")

        ray.init = init
        from fedsim.cli import main
        code = main(["run", "quickstart", "--set", 'executor.name="ray"', "--set", "ray.start_timeout_s=1",
                     "--set", "run.rounds=1", "--out", {str(tmp_path / "r")!r}])
        print("RESULT", code, len(calls), set(calls))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert result, proc.stderr[-2000:]
    _, code, calls, addresses = result[0].split(" ", 3)
    assert code == "2" and int(calls) >= 2 and addresses == "{'local'}", result
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedsim: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.match(rf"fedsim: error: ray.start_timeout_s = 1(\.0)?: the local Ray node did not start in {calls} tries",
                    errors[0]), errors[0]
    assert "raise ray.start_timeout_s" in errors[0]
