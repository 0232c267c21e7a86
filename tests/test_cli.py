"""The command line end to end, in fresh processes (as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedsim.engine.metrics import without_wall
from fedsim.report import read_metrics
from tests.clirun import fedsim_main

ROOT = Path(__file__).resolve().parents[1]
W1APP = ROOT / "benchmarks" / "w1app"


def fedsim_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_cli_run_preset_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    proc = fedsim_main("run", "quickstart", "--set", "run.rounds=3", "--set", "data.num_clients=8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "final centralized accuracy" in proc.stdout and str(out) in proc.stdout
    records = read_metrics(out)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert all(r["clients_sampled"] == 4 for r in records[1:])
    assert {p.name for p in out.iterdir()} >= {"config.toml", "metrics.jsonl", "summary.json", "accuracy.png",
                                              "loss.png", "label_distribution.png"}


def test_cli_presets_lists_shipped_scenarios() -> None:
    proc = fedsim_main("presets")
    assert proc.returncode == 0 and {"quickstart", "synthetic"} <= set(proc.stdout.split())


def test_run_app_runs_an_unmodified_flower_app_serial_and_ray(tmp_path: Path) -> None:
    runs = {}
    for executor in ("serial", "ray"):
        out = tmp_path / executor
        proc = fedsim_cli("run-app", str(W1APP), "--run-config", "num-server-rounds=3 num-devices=20",
                          "--num-supernodes", "20",
                          "--executor", executor, "--num-actors", "2", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        result = next(line for line in proc.stdout.splitlines() if line.startswith("W1-RESULT "))
        runs[executor] = (json.loads(result.removeprefix("W1-RESULT ")), read_metrics(out))
    (acc_s, rec_s), (acc_r, rec_r) = runs["serial"], runs["ray"]
    # The ServerApp's own centralized accuracy and loss, identical (loop_s is a wall time).
    assert (acc_s["accuracy"], acc_s["loss"]) == (acc_r["accuracy"], acc_r["loss"])
    assert [without_wall(r) for r in rec_s] == [without_wall(r) for r in rec_r]
    # The app's own evaluate_fn is the run's centralized accuracy, round 0 (the initial model) included.
    assert [r["round"] for r in rec_s] == [0, 1, 2, 3]
    assert rec_s[-1]["central_acc"] == acc_s["accuracy"] and rec_s[-1]["central_loss"] == acc_s["loss"]
    assert all(r["central_acc"] is not None for r in rec_s)
    assert all(r["clients_sampled"] == 2 and r["clients_failed"] == 0 for r in rec_s[1:])  # 10% of 20
    # Flower's aggregated train metrics and the ClientApps' metrics, under their prefixes.
    assert all("strategy_train_train_loss" in r and "client_train_train_loss" in r for r in rec_s[1:])


def test_run_app_bad_folder_and_bad_key(tmp_path: Path) -> None:
    proc = fedsim_main("run-app", str(tmp_path))
    assert proc.returncode == 2 and "pyproject.toml" in proc.stderr and "Traceback" not in proc.stderr
    proc = fedsim_main("run-app", str(W1APP), "--run-config", "num-rounds=3")
    assert proc.returncode == 2 and "unknown key" in proc.stderr and "num-server-rounds" in proc.stderr


@pytest.mark.slow
def test_ray_address_attaches_to_an_existing_cluster(tmp_path: Path) -> None:
    """A separate process owns a Ray cluster; `ray.address` makes fedsim join it, not start one."""
    head = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, ray
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        print(ray.get_runtime_context().gcs_address, flush=True)
        sys.stdin.read()  # live until the test closes stdin
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        address = head.stdout.readline().strip()
        assert ":" in address
        proc = fedsim_cli("run", "quickstart", "--set", "run.rounds=2", "--set", "executor.name=ray",
                          "--set", f'ray.address="{address}"', "--set", "ray.num_actors=2",
                          "--out", str(tmp_path / "r"))
        assert proc.returncode == 0, proc.stderr
        assert len(read_metrics(tmp_path / "r")) == 3
        assert head.poll() is None  # fedsim did not shut the cluster it joined
    finally:
        head.stdin.close()
        head.wait(timeout=60)
    time.sleep(0.5)


def test_run_app_under_a_scenarios_system_model(tmp_path: Path) -> None:
    """The app's own Strategy.start timeout (Flower's default 3600 s) is the virtual deadline."""
    out = tmp_path / "sys"
    proc = fedsim_cli("run-app", str(W1APP), "--run-config", "num-server-rounds=2", "--system", "mobile",
                      "--out", str(out), "--no-plots")  # a preset name
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(out)
    assert [r["round"] for r in records] == [0, 1, 2]  # round 0: the app's evaluation of the initial model
    for r in records[1:]:
        assert r["unavailable"] > 0  # 70 % availability
        assert r["virtual_round_s"] == 3600.0  # missing replies: the server waits out the deadline
    assert records[-1]["virtual_time_s"] == 7200.0


def test_run_config_is_parsed_as_flower_parses_it(tmp_path: Path) -> None:
    from fedsim.runapp import fused_run_config, read_app

    app = read_app(W1APP)
    assert app.run_config["num-server-rounds"] != 5
    got = fused_run_config(app, ["num-server-rounds=5 fraction-train=0.2", "seed=7"])
    assert (got["num-server-rounds"], got["fraction-train"], got["seed"]) == (5, 0.2, 7)
    (tmp_path / "over.toml").write_text("num-server-rounds = 4\nseed = 9\n")
    got = fused_run_config(app, [str(tmp_path / "over.toml")])
    assert (got["num-server-rounds"], got["seed"]) == (4, 9)
    from fedsim.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--run-config learning-rate = 0.05: unknown key; the app declares: "):
        fused_run_config(app, ["num-server-rounds=5 learning-rate=0.05"])
    with pytest.raises(ConfigError, match="TOML files cannot be passed alongside key-value pairs"):
        fused_run_config(app, ["seed=1", str(tmp_path / "over.toml")])
