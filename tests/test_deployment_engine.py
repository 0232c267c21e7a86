"""Flower's Deployment Engine: a local SuperLink and two SuperNodes on loopback run the quickstart
with fedsim's strategy and ClientApp, and give the simulation's numbers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import fedsim
from clients.runconfig import to_run_config
from fedsim.config import load_config
from fedsim.deployment import RESULT_PREFIX, simulation_only, write_app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERRIDES = ["data.num_clients=2", "run.rounds=3", "strategy.fraction_train=1.0", "strategy.fraction_evaluate=1.0",
             "report.progress=false"]


def quickstart():  # type: ignore[no-untyped-def]
    return load_config(ROOT / "scenarios" / "presets" / "quickstart.toml", OVERRIDES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_carries_the_scenario_as_the_clientapp_sees_it(tmp_path: Path) -> None:
    cfg = quickstart()
    doc = tomllib.loads(write_app(cfg, tmp_path / "app").read_text())
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedsim.deployment:server_app", "clientapp": "clients.app:app"}
    assert app["config"] == to_run_config(cfg)
    assert simulation_only(cfg) == []
    assert simulation_only(load_config(ROOT / "scenarios" / "presets" / "stragglers.toml")) == ["[devices]", "[network]",
                                                                                                   "[round]"]


@pytest.mark.slow
def test_quickstart_on_a_local_superlink_and_two_supernodes(tmp_path: Path) -> None:
    cfg = quickstart()
    app = tmp_path / "app"
    write_app(cfg, app)
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        procs.append(subprocess.Popen([str(BIN / "flower-superlink"), "--insecure", "--port", str(port),
                                       "--database", str(tmp_path / "state.db")], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=open(tmp_path / "superlink.log", "w"),
                                      start_new_session=True))
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions=2"],
                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"supernode{i}.log", "w"),
                start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for the SuperLink to listen
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        run = subprocess.run([str(BIN / "flwr"), "run", str(app), "local", "--stream"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=400)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-3000:]
        line = next((ln for ln in out.splitlines() if ln.startswith(RESULT_PREFIX)), None)
        assert line is not None, out[-3000:]
        result = json.loads(line[len(RESULT_PREFIX):])
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
    assert [h["round"] for h in result["history"]] == [0, 1, 2, 3]
    # Real gRPC/HTTP, the same seed: the simulation's numbers.
    simulated = fedsim.run(cfg, write=False)
    assert [h["central_acc"] for h in result["history"]] == [r["central_acc"] for r in simulated.history]
    assert result["history"][-1]["central_acc"] > 0.5
