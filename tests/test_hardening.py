"""Inputs and replies a careful user (or an attacker) might send: names that are paths,
absurd replies, folders that cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.config import from_dict
from fedsim.core.errors import ConfigError
from tests.conftest import tiny_raw


@pytest.mark.parametrize("name", ["../../x", "/", "/etc", "a/b", "a\\\\b", "..", ".", "x" * 101, "a\x00b",
                                  "a\x1b[31mred", "r\u202eevil", " lead", ""])
def test_run_names_are_one_folder_name(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(tiny_raw(run={"name": name}))
    assert str(info.value).startswith("run.name = ") and "\n" not in str(info.value)


def test_results_folder_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    cfg = from_dict(tiny_raw(report={"out_dir": str(tmp_path / "file"), "progress": False, "plots": False}))
    with pytest.raises(ConfigError, match="report.out_dir = .*: is a file, not a folder"):
        fedsim.run(cfg)
    with pytest.raises(ConfigError, match="--out = .*: cannot be created"):
        fedsim.run(cfg, out_dir=tmp_path / "file" / "run")


def test_absurd_replies_are_excluded_with_the_reason() -> None:
    cfg = from_dict(tiny_raw(client={"app": "tests.apps.absurd:app"}, run={"rounds": 1},
                             strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0},
                             server={"max_update_norm": 10.0}))
    result = fedsim.run(cfg, write=False)
    reasons = {f["partition_id"]: f["reason"] for f in result.history[1]["failures"]}
    assert reasons[0] == "reply excluded: num-examples = -1000: must be an integer >= 0"
    assert reasons[2] == "reply excluded: num-examples = 2.5: must be an integer >= 0"
    assert reasons[1].startswith("reply excluded: update norm ") and "> server.max_update_norm (10)" in reasons[1]
    assert set(reasons) == {0, 1, 2} and result.history[1]["clients_replied"] == 3
    unlimited = fedsim.run(cfg.replace(["server.max_update_norm=0"]), write=False)
    assert unlimited.history[1]["clients_replied"] == 4  # without the norm limit the huge update gets through
    # Only the three sane clients count: every weight moved by exactly 0.01.
    from fedsim.runsetup import prepare

    start = prepare(cfg).initial
    for key in result.arrays:
        np.testing.assert_allclose(result.arrays[key].numpy() - start[key].numpy(), 0.01, atol=1e-6)



EXITS = dict(client={"app": "tests.apps.exits:app"}, run={"rounds": 2},
             strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})


@pytest.mark.parametrize("executor", ["serial", "vectorized"])
def test_a_client_that_exits_the_process_is_a_failed_client(executor: str) -> None:
    cfg = from_dict(tiny_raw(**EXITS, executor={"name": executor}))
    result = fedsim.run(cfg, write=False)
    for rnd in (1, 2):
        reasons = {f["partition_id"]: f["reason"] for f in result.history[rnd]["failures"]}
        assert reasons[0].startswith("ClientExited: ClientApp called os._exit(1)")
        assert reasons[1].startswith("ClientExited: ClientApp called sys.exit(3)")
        assert result.history[rnd]["clients_replied"] == 4
    assert result.stopped is None


def test_client_timeout_stops_an_in_process_run_cleanly(tmp_path: Path) -> None:
    import json
    import time

    raw = tiny_raw(**EXITS)
    raw["client"] = {**raw["client"], "app_config": {"hang": True}, "timeout_s": 1.0}
    start = time.monotonic()
    result = fedsim.run(from_dict(raw), out_dir=tmp_path / "run")
    assert time.monotonic() - start < 60
    assert result.stopped is not None and result.stopped.startswith("client 2 ran past client.timeout_s = 1 s")
    assert 'executor.name = "ray"' in result.stopped
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped"] == result.stopped  # everything written so far is kept
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()


def _group_processes(pgid: int) -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80])
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.mark.slow
@pytest.mark.parametrize("executor, delay, sig", [("serial", 4.0, "SIGTERM"), ("ray", 3.0, "SIGTERM"),
                                                  ("ray", 7.0, "SIGTERM"), ("serial", 4.0, "SIGINT"),
                                                  ("ray", 3.0, "SIGINT"), ("ray", 7.0, "SIGINT")])
def test_sigterm_stops_a_run_at_any_point_and_leaves_no_ray_process(tmp_path: Path, executor: str,
                                                                    delay: float, sig: str) -> None:
    """SIGTERM or SIGINT (Ctrl-C) while Ray starts, or during rounds: exit 143 / 130 with one
    last line, Ray's processes gone (Ray's own graceful shutdown takes 1-3 s of that)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", "quickstart", "--set", f"executor.name={executor}",
                             "--set", "run.rounds=200", "--set", "report.progress=false", "--out", str(tmp_path / "r")],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(delay)
        sent = time.monotonic()
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert proc.returncode == (143 if sig == "SIGTERM" else 130), err[-2000:]
        last = "fedsim: terminated (SIGTERM)" if sig == "SIGTERM" else "fedsim: interrupted"
        assert err.strip().splitlines()[-1].startswith(last), err[-2000:]
        assert "Traceback" not in err
        assert took < (2 if executor == "serial" else 15), took
        time.sleep(1.0)
        assert _group_processes(proc.pid) == [], _group_processes(proc.pid)
    finally:
        if _group_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


LOOPBACK_IPS = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listeners(pgid: int) -> dict[str, set[str]]:
    """Listening TCP addresses of every process in the group, by process name."""
    import psutil

    out: dict[str, set[str]] = {}
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out.setdefault(proc.info["name"], set()).add(conn.laddr.ip)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def _this_machines_address() -> str:
    """An IPv4 address of this machine beyond loopback ("" when it has none)."""
    import socket

    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return ""


@pytest.mark.slow
@pytest.mark.parametrize("host", ["", "this machine"])
def test_a_local_ray_run_listens_on_loopback_only(tmp_path: Path, host: str) -> None:
    """By default every Ray process listens on loopback only; ``ray.host`` set to one of the
    machine's addresses is the explicit way out (Ray then listens there: multi-machine use)."""
    import signal
    import subprocess
    import sys
    import time

    if host:
        host = _this_machines_address()
        if not host:
            pytest.skip("this machine has no address beyond loopback")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", "quickstart", "--set", "executor.name=ray",
                             "--set", f'ray.host="{host}"',
                             "--set", "run.rounds=300", "--set", "report.progress=false", "--out", str(tmp_path / "r")],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: dict[str, set[str]] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            for name, ips in _listeners(proc.pid).items():
                seen.setdefault(name, set()).update(ips)
            if (tmp_path / "r" / "metrics.jsonl").is_file() and \
                    len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) >= 3:
                break  # rounds are running: every actor is up
            time.sleep(0.5)
        for name, ips in _listeners(proc.pid).items():
            seen.setdefault(name, set()).update(ips)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        if _group_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert {"gcs_server", "raylet"} <= set(seen), seen  # the listing saw Ray's servers
    assert sum(len(v) for v in seen.values()) >= 4, seen
    beyond = {name: ips - LOOPBACK_IPS for name, ips in seen.items() if ips - LOOPBACK_IPS}
    if not host:
        assert not beyond, f"listening beyond loopback: {beyond}"
    else:  # the setting is honoured: Ray's servers are reachable on the named address
        assert {"gcs_server", "raylet"} <= set(beyond), seen
        assert all(ips & {host, "0.0.0.0", "::"} for ips in beyond.values()), beyond


@pytest.mark.parametrize("address, why", [("127.0.0.1:1", "Connection refused"), ("ray://127.0.0.1:1", "Connection refused"),
                                          ("no-such-host.invalid:6379", "")])
def test_an_unreachable_ray_address_is_one_line_at_once(address: str, why: str, tmp_path: Path) -> None:
    """In a fresh process (a test process may already hold a Ray, which fedsim reuses)."""
    import subprocess
    import sys
    import time

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", "quickstart", "--set", "executor.name=ray",
                           "--set", f'ray.address="{address}"', "--set", "run.rounds=1", "--out", str(tmp_path / "r")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"fedsim: error: ray.address = '{address}': nothing answers there ({why}")
    assert time.monotonic() - start < 30


def test_sigterm_or_ctrl_c_while_fedsim_is_still_importing_is_one_line(tmp_path: Path) -> None:
    """A SIGTERM before the run has started (imports take seconds on a loaded machine) ends
    with one line and exit 143, not a bare kill, and writes nothing."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", "quickstart", "--out", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("fedsim: terminated (SIGTERM)"), err
    assert "Traceback" not in err
    # Ctrl-C at the same moment: one line, exit 130, no import traceback.
    proc = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "run", "quickstart", "--out", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("fedsim: interrupted"), err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()
