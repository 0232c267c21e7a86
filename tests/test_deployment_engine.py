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
from fedsim.clients import spec as client_spec
from flwr.common.config import (
    get_fused_config_from_dir,
    get_project_config,
    validate_config,
)

import fedsim
from fedsim.config import load_config
from fedsim.deployment import (
    CONNECTION,
    RESULT_PREFIX,
    from_run_config,
    run_config,
    simulation_only,
    write_app,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PRESETS = ROOT / "scenarios" / "presets"
OVERRIDES = ["data.num_clients=2", "run.rounds=3", "strategy.fraction_train=1.0", "strategy.fraction_evaluate=0.0",
             "report.progress=false"]


def quickstart(*extra: str):  # type: ignore[no-untyped-def]
    return load_config(PRESETS / "quickstart.toml", [*OVERRIDES, *extra])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fedsim_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_app_carries_the_scenario_as_the_clientapp_sees_it(tmp_path: Path) -> None:
    cfg = quickstart()
    app = tmp_path / "app"
    doc = tomllib.loads(write_app(cfg, app, port=9200).read_text())
    assert doc["tool"]["flwr"]["app"]["components"] == {"serverapp": "fedsim.deployment:server_app",
                                                        "clientapp": "fedsim.clients.app:app"}
    ok, errors, _ = validate_config(get_project_config(app), check_module=True, project_dir=app)
    assert ok, errors
    # Flower's own parsing (what the ServerApp's and ClientApp's Context.run_config hold).
    seen = get_fused_config_from_dir(app, {})
    assert seen == run_config(cfg)
    client_keys = client_spec.to_run_config(cfg.client_spec())
    assert {k: seen[k] for k in client_keys} == client_keys
    # The ClientApp reads its contract from the app's config and ignores the server's keys.
    assert client_spec.from_run_config(seen) == cfg.client_spec()
    back = from_run_config(seen)  # [executor], [ray] and [report] do not travel: they are fedsim's own
    assert all(getattr(back, f) == getattr(cfg, f) for f in cfg.__dataclass_fields__ if f not in ("executor", "ray", "report"))
    # `flwr run --run-config` overrides arrive as Flower parses them, and still rebuild the scenario.
    assert from_run_config(get_fused_config_from_dir(app, {"run.rounds": 5})).run.rounds == 5
    home = tomllib.loads((app / ".flwr" / "config.toml").read_text())
    assert home["superlink"] == {"default": CONNECTION, CONNECTION: {"address": "127.0.0.1:9200", "insecure": True}}


def test_simulation_only_sections_reach_the_serverapp(tmp_path: Path) -> None:
    assert simulation_only(quickstart()) == []
    cfg = load_config(PRESETS / "stragglers.toml")
    write_app(cfg, tmp_path)
    # The ServerApp rebuilds the scenario from the run config, so it can name what does not apply.
    assert simulation_only(from_run_config(get_fused_config_from_dir(tmp_path, {}))) == ["[devices]", "[network]",
                                                                                          "[round]"]


def test_dp_client_wrapper_deploys_its_clipping_clientapp(tmp_path: Path) -> None:
    cfg = quickstart('strategy.wrapper={name = "dp_client_fixed", noise_multiplier = 0.0, clipping_norm = 0.01, '
                     'num_sampled_clients = 2}')
    doc = tomllib.loads(write_app(cfg, tmp_path).read_text())
    assert doc["tool"]["flwr"]["app"]["components"]["clientapp"] == "fedsim.clients.app:app_fixedclipping"


def test_deploy_app_cli(tmp_path: Path) -> None:
    out = tmp_path / "app"
    proc = fedsim_cli("deploy-app", "quickstart", "--set", "data.num_clients=2", "--out", str(out), "--port", "9300")
    assert proc.returncode == 0, proc.stderr
    assert (out / "pyproject.toml").is_file() and (out / ".flwr" / "config.toml").is_file()
    assert proc.stdout.count("flower-supernode") == 2 and '"partition-id=1 num-partitions=2"' in proc.stdout
    assert f"FLWR_HOME={out / '.flwr'} flwr run {out} {CONNECTION} --stream" in proc.stdout
    for args, field in ((["--set", "data.num_clients=0"], "data.num_clients"),
                        (["--set", 'codec=[{name = "fp16"}]'], "codec"),
                        (["--set", 'client.app="my_app:app"'], "client.app")):
        proc = fedsim_cli("deploy-app", "quickstart", *args, "--out", str(tmp_path / "bad"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"fedsim: error: {field}") and proc.stderr.count("\n") == 1, proc.stderr
    proc = fedsim_cli("deploy-app", "no-such-preset", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and proc.stderr.startswith("fedsim: error: SCENARIO"), proc.stderr
    assert not (tmp_path / "bad").exists()


def _wait_listening(port: int, procs: list[subprocess.Popen], logs: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    raise AssertionError(f"SuperLink not listening on 127.0.0.1:{port}: {(logs / 'superlink.log').read_text()[-2000:]}")


def stop(procs: list[subprocess.Popen], marker: str) -> None:
    """SIGTERM each process group (the SuperLink then stops its SuperExec), SIGKILL what is left,
    then any process started with ``marker`` in its environment: ``flower-superexec`` and the
    apps it launches run in sessions of their own."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for environ in Path("/proc").glob("[0-9]*/environ"):  # Linux; elsewhere there is nothing to glob
        try:
            if marker.encode() in environ.read_bytes():
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.slow
def test_quickstart_on_a_local_superlink_and_two_supernodes(tmp_path: Path) -> None:
    cfg = quickstart()
    app = tmp_path / "app"
    port = free_port()
    # A virtual-clock knob: it does not change the training, and the ServerApp must say it does not apply.
    write_app(quickstart("devices.seconds_per_sample=0.001"), app, port=port)
    # Nothing may touch the user's ~/.flwr: every process has its own FLWR_HOME (and HOME) under tmp_path.
    # The SuperLink and SuperNodes start `flower-superexec` by name: the venv's bin goes first on PATH.
    base = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}  # launch each ClientApp / ServerApp sooner (default 1 s)

    def env(home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        return {**base, "FLWR_HOME": str(home)}

    procs: list[subprocess.Popen] = []
    logs: list = []

    def start(name: str, cmd: list[str]) -> None:
        log = open(tmp_path / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=env(tmp_path / f"{name}-home"), cwd=tmp_path, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                            "--database", str(tmp_path / "state.db")])
        for i in range(2):
            start(f"supernode{i}", [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                    "--host", "127.0.0.1", "--port", str(free_port()),
                                    "--node-config", f"partition-id={i} num-partitions=2"])
        _wait_listening(port, procs, tmp_path)
        run = subprocess.run([str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream"], env=env(app / ".flwr"),
                             cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        out = run.stdout + run.stderr
        (tmp_path / "flwr-run.log").write_text(out)
        assert run.returncode == 0, out[-3000:]
        line = next((ln for ln in out.splitlines() if ln.startswith(RESULT_PREFIX)), None)
        assert line is not None, out[-3000:]
        result = json.loads(line[len(RESULT_PREFIX):])
        assert "round 3/3 centralized accuracy" in out, out[-3000:]
        assert "[devices] of scenario 'quickstart' apply to fedsim's simulated grid only" in out, out[-3000:]
    finally:
        stop(procs, f"FLWR_HOME={tmp_path}{os.sep}")
        for log in logs:
            log.close()
    assert not (tmp_path / "home" / ".flwr").exists()
    assert result["train_rounds"] == [1, 2, 3]
    assert [h["round"] for h in result["history"]] == [0, 1, 2, 3]
    # Real HTTP between SuperLink and SuperNodes, the same seed: the simulation's numbers.
    simulated = fedsim.run(cfg, write=False)
    assert [h["central_acc"] for h in result["history"]] == [r["central_acc"] for r in simulated.history]
    assert result["final_central_acc"] == result["history"][-1]["central_acc"] > 0.5
