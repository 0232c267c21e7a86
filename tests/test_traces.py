"""FedScale trace import (on tiny pickles in FedScale's layout, written here) and
time-varying bandwidth."""

from __future__ import annotations

import csv
import pickle
import tomllib
from pathlib import Path

import pytest

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.core.schema import parse
from fedsim.scenarios.network import LinkModel, NetworkSection
from fedsim.scenarios.traces import convert
from tests.clirun import fedsim_main
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
# FedScale's layout: capacity {id: {"computation": ms/sample, "communication": kbit/s}},
# behaviour {id: {"active": [...], "inactive": [...], "finish_time": T, "duration": ...}}.
CAPACITY = {10: {"computation": 100.0, "communication": 1000.0}, 3: {"computation": 50.0, "communication": 2048.0},
            7: {"computation": 200.0, "communication": 500.0}}
BEHAVIOR = {1: {"active": [0, 50], "inactive": [10, 60], "finish_time": 100, "duration": 100},
            2: {"active": [5.0], "inactive": [25.0], "finish_time": 40.0, "duration": 40.0},
            4: {"active": [], "inactive": [], "finish_time": 30.0, "duration": 30.0}}


def write(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_fedscale_pickles_become_fedsims_csv_files(tmp_path: Path) -> None:
    done = convert(write(tmp_path / "cap.pkl", CAPACITY), write(tmp_path / "beh.pkl", BEHAVIOR), tmp_path / "out")
    # Sorted by id (3, 7, 10): 3 x ms / 1000 s per sample; speed = median / own; kbit = 1024 bits.
    devices = rows(tmp_path / "out" / "devices.csv")
    assert [float(r["seconds_per_sample"]) for r in devices] == pytest.approx([0.15, 0.6, 0.3])
    assert [float(r["speed"]) for r in devices] == pytest.approx([2.0, 0.5, 1.0])
    assert [float(r["mbps"]) for r in devices] == pytest.approx([2.097152, 0.512, 1.024])
    # Client 2's 40 s trace repeated to the longest period (100 s), the last span clipped;
    # client 4 is never online: no row.
    spans = [(int(r["client"]), float(r["start"]), float(r["end"])) for r in rows(tmp_path / "out" / "availability.csv")]
    assert spans == [(0, 0, 10), (0, 50, 60), (1, 5, 25), (1, 45, 65), (1, 85, 100)]
    assert done["never_online"] == 1 and done["period_s"] == 100.0
    system = tomllib.loads((tmp_path / "out" / "system.toml").read_text())
    assert system["devices"]["seconds_per_sample"] == pytest.approx(0.3)
    assert system["devices"]["availability_period"] == 100.0

    # The written sections run as a scenario: speeds, bandwidths and availability apply.
    raw = tiny_raw(run={"rounds": 3}, strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0})
    raw.update(devices=system["devices"], network=system["network"])
    result = fedsim.run(fedsim.from_dict(raw), write=False)
    r1 = result.history[1]
    assert r1["unavailable"] == 3  # at t = 0, trace client 1 (fedsim clients 1, 3, 5) is offline
    assert r1["virtual_round_s"] > 0


def test_the_cli_converts_and_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    ok = fedsim_main("traces", "import", "--capacity", str(write(tmp_path / "cap.pkl", CAPACITY)),
                     "--out", str(tmp_path / "out"))
    assert ok.returncode == 0 and "clients_capacity 3" in ok.stdout, ok.stderr

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({1: {"computation": Evil(), "communication": 1.0}}))
    bad = fedsim_main("traces", "import", "--capacity", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "out2"))
    assert bad.returncode == 2 and not marker.exists() and not (tmp_path / "out2").exists()
    assert bad.stderr.strip().splitlines() == [
        f"fedsim: error: --capacity = '{tmp_path / 'evil.pkl'}': not a plain pickle: refusing to load "
        "pathlib.Path.touch: only plain containers and numbers are read"], bad.stderr


@pytest.mark.parametrize("obj, fragment", [
    ([1, 2], "expected a non-empty dict of clients, got list"),
    ({1: {"computation": 5.0}}, "client 1 has no 'communication'"),
    ({1: {"computation": -5.0, "communication": 1.0}}, "client 1 computation is -5.0, must be a finite number > 0"),
    ({1: {"computation": float("nan"), "communication": 1.0}}, "client 1 computation is nan"),
    ({1: {"computation": True, "communication": 1.0}}, "client 1 computation is True"),
    ({1: 3}, "client 1 is int, not a dict"),
])
def test_malformed_capacity_traces_are_one_line(tmp_path: Path, obj: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"^--capacity = .*malformed FedScale trace: ") as err:
        convert(write(tmp_path / "cap.pkl", obj), None, tmp_path / "out")
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("trace, fragment", [
    ({1: {"active": [0], "inactive": [10]}}, "client 1 has no 'finish_time'"),
    ({1: {"active": [10], "inactive": [5], "finish_time": 20}}, "intervals must be sorted"),
    ({1: {"active": [0, 5], "inactive": [10, 8], "finish_time": 20}}, "intervals must be sorted"),
    ({1: {"active": [0], "inactive": [30], "finish_time": 20}}, "inactive <= finish_time"),
    ({1: {"active": [0, 1], "inactive": [10], "finish_time": 20}}, "of equal length"),
    ({1: {"active": [], "inactive": [], "finish_time": 20}}, "no client is ever online"),
])
def test_malformed_availability_traces_are_one_line(tmp_path: Path, trace: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"^--availability = ") as err:
        convert(None, write(tmp_path / "beh.pkl", trace), tmp_path / "out")
    assert fragment in str(err.value)


def test_a_file_that_is_not_a_pickle_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cap.pkl").write_bytes(b"\x80\x05not a pickle at all")
    with pytest.raises(ConfigError, match=r"--capacity = .*not a readable pickle"):
        convert(tmp_path / "cap.pkl", None, tmp_path / "out")


def bandwidth_csv(path: Path) -> Path:
    """Trace client 0: 1 Mbit/s up and 2 down until 10 s, then 8 and 16; client 1: 4 / 4."""
    path.write_text("client,start,up_mbps,down_mbps\n0,0,1,2\n0,10,8,16\n1,0,4,4\n")
    return path


def test_time_varying_bandwidth_by_hand(tmp_path: Path) -> None:
    cfg = parse(NetworkSection, {"bandwidth_trace": str(bandwidth_csv(tmp_path / "bw.csv"))}, "network")
    links = LinkModel(cfg, num_clients=3, seed=0)
    mb = 1_000_000  # bytes: 8 Mbit
    assert links.transfer(0, mb, "up", 1, "train", now=0.0).seconds == pytest.approx(8.0)
    assert links.transfer(0, mb, "down", 1, "train", now=9.99).seconds == pytest.approx(4.0)  # the rate at the start
    assert links.transfer(0, mb, "up", 1, "train", now=10.0).seconds == pytest.approx(1.0)
    assert links.transfer(0, mb, "down", 1, "train", now=1e6).seconds == pytest.approx(0.5)  # the last rate holds
    assert links.transfer(1, mb, "up", 1, "train", now=50.0).seconds == pytest.approx(2.0)
    assert links.transfer(2, mb, "up", 1, "train", now=0.0).seconds == pytest.approx(8.0)  # client 2 = trace client 0
    periodic = LinkModel(parse(NetworkSection, {"bandwidth_trace": str(tmp_path / "bw.csv"), "bandwidth_period": 20.0},
                               "network"), 1, 0)
    assert periodic.transfer(0, mb, "up", 1, "train", now=25.0).seconds == pytest.approx(8.0)  # 25 mod 20 = 5


def test_a_run_charges_each_transfer_the_rate_in_force_when_it_starts(tmp_path: Path) -> None:
    switch = 0.05
    (tmp_path / "bw.csv").write_text(f"client,start,up_mbps,down_mbps\n0,0,1,1\n0,{switch},10,10\n")
    raw = tiny_raw(run={"rounds": 3}, strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0},
                   network={"bandwidth_trace": str(tmp_path / "bw.csv")})
    history = fedsim.run(fedsim.from_dict(raw), write=False).history

    def seconds(nbytes: float, now: float) -> float:
        return nbytes * 8 / ((1 if now < switch else 10) * 1e6)

    for before, rec in zip(history, history[1:]):
        start = before["virtual_time_s"]
        down, up = rec["bytes_down"] / 6, rec["bytes_up"] / 6  # 6 clients, one model each way
        t_down = seconds(down, start)
        assert rec["virtual_round_s"] == pytest.approx(t_down + seconds(up, start + t_down))
    assert history[1]["virtual_round_s"] > 5 * history[3]["virtual_round_s"]  # slow at first, fast later


def test_malformed_bandwidth_traces_are_one_line(tmp_path: Path) -> None:
    for text, fragment in (("client,start,up_mbps\n0,0,1\n", "down_mbps"),
                           ("client,start,up_mbps,down_mbps\n0,5,1,1\n", "first rate must start at 0"),
                           ("client,start,up_mbps,down_mbps\n0,0,1,1\n0,0,2,2\n", "not sorted"),
                           ("client,start,up_mbps,down_mbps\n0,0,0,1\n", "rates > 0")):
        (tmp_path / "bw.csv").write_text(text)
        with pytest.raises(ConfigError, match=r"network.bandwidth_trace") as err:
            fedsim.from_dict(tiny_raw(network={"bandwidth_trace": str(tmp_path / "bw.csv")}))
        assert fragment in str(err.value), str(err.value)
