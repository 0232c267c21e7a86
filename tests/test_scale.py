"""Huge federations: lazily built clients, bounded memory, vectorized training at 1,000 per round."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from fedsim.scenarios.federation import federated_data
from fedsim.scenarios.lazy import CACHE_DEVICES, LazyFederatedData, device_size

from fedsim.config import from_dict
from fedsim.core.errors import ConfigError
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]


def lazy_raw(num_clients: int, **dataset) -> dict:
    raw = tiny_raw(data={"dataset": {"name": "synthetic", "lazy": True, "samples_per_device": 40, **dataset},
                         "partitioner": "natural", "num_clients": num_clients, "client_test_fraction": 0.1})
    raw["model"] = {"name": "logreg"}
    return raw


def test_lazy_clients_are_deterministic_and_independent_of_access_order() -> None:
    a = federated_data(from_dict(lazy_raw(50_000)).data, 3)
    b = LazyFederatedData(from_dict(lazy_raw(50_000)).data, 3)
    assert isinstance(a, LazyFederatedData)
    for cid in (49_999, 7, 12_345, 7):
        xa, ya = a.client_train(cid)
        xb, yb = b.client_train(cid)
        assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya.numpy(), yb.numpy())
        assert xa.shape == (a.client_size(cid), 60) and len(a.client_test(cid)[1]) == 3  # 40 - 8 server, 10 % test
    assert not np.array_equal(a.client_train(1)[0].numpy(), a.client_train(2)[0].numpy())
    assert len(a.server_y) == 100 * 8  # the held-out part of the first 100 devices
    other_seed = LazyFederatedData(from_dict(lazy_raw(50_000)).data, 4)
    assert not np.array_equal(other_seed.client_train(7)[0].numpy(), a.client_train(7)[0].numpy())


def test_lazy_devices_follow_fedprox_statistics() -> None:
    data = LazyFederatedData(from_dict(lazy_raw(2_000, samples_per_device=0)).data, 0)
    n = np.array([device_size(data.params, 0, c) for c in range(2_000)])
    assert n.min() >= 50 and np.median(n) == pytest.approx(np.exp(4) + 50, rel=0.15)  # int(lognormal(4, 2)) + 50
    assert data.client_size(5) == len(data.client_train(5)[1])
    labels = np.concatenate([data.client_train(c)[1].numpy() for c in range(200)])
    per_device_majority = np.mean([np.bincount(data.client_train(c)[1].numpy(), minlength=10).max()
                                   / max(1, data.client_size(c)) for c in range(200)])
    assert set(np.unique(labels)) <= set(range(10)) and per_device_majority > 0.3  # non-IID devices


def test_cache_is_bounded() -> None:
    data = LazyFederatedData(from_dict(lazy_raw(10_000)).data, 0)
    for cid in range(CACHE_DEVICES + 100):
        data.client_train(cid)
    assert data._device.cache_info().currsize == CACHE_DEVICES


@pytest.mark.parametrize("edit, field", [({"partitioner": "iid"}, "data.partitioner.name"),
                                         ({"dataset": {"name": "synthetic", "lazy": True, "num_devices": 5}},
                                          "data.dataset.num_devices")])
def test_lazy_needs_one_device_per_client(edit: dict, field: str) -> None:
    raw = lazy_raw(20)
    raw["data"].update(edit)
    with pytest.raises(ConfigError) as info:
        federated_data(from_dict(raw).data, 0)
    assert info.value.field == field


@pytest.mark.slow
def test_100k_clients_1000_per_round_within_3_gb(tmp_path: Path) -> None:
    raw = lazy_raw(100_000, samples_per_device=60)
    raw["run"] = {"name": "scale", "seed": 0, "rounds": 3}
    raw["strategy"] = {"name": "fedavg", "fraction_train": 0.01, "fraction_evaluate": 0.0}
    raw["executor"] = {"name": "vectorized"}
    path = tmp_path / "s.toml"
    path.write_bytes(tomli_w.dumps(raw).encode())
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb < 3 * 2**20 and peak_kb >= before  # ru_maxrss is in KiB on Linux
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_replied"] for r in records[1:]] == [1000, 1000, 1000]
