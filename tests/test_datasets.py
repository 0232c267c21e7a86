"""Dataset loaders on tiny files in the real formats, and the federated split."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.config import from_dict
from fedsim.core.errors import ConfigError
from fedsim.scenarios.datasets import load_dataset
from fedsim.scenarios.datasets.mnist import ImageRootParams
from fedsim.scenarios.federation import build
from tests.conftest import tiny_raw


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root: Path, n_train: int = 30, n_test: int = 10, gz: bool = False) -> tuple[np.ndarray, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tx = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ty = rng.integers(0, 10, n_train, dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", tx, gz)
    write_idx(raw / "train-labels-idx1-ubyte", ty, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test, dtype=np.uint8), gz)
    return tx, ty


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    tx, ty = make_mnist(tmp_path, gz=gz)
    ds = load_dataset("mnist", ImageRootParams(root=str(tmp_path)), 0, 2)
    assert ds.x.shape == (30, 1, 28, 28) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x[:, 0] * 255.0, tx.astype(np.float32), atol=1e-3)
    assert ds.y.tolist() == ty.tolist()
    assert ds.test_x.shape == (10, 1, 28, 28) and ds.num_classes == 10


def test_mnist_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", ImageRootParams(root=str(tmp_path)), 0, 2)
    msg = str(info.value)
    assert msg.startswith("data.dataset.root = ") and "train-images-idx3-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "\n" not in msg


def test_mnist_truncated_file_is_reported(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    f = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(ConfigError, match="malformed MNIST file"):
        load_dataset("mnist", ImageRootParams(root=str(tmp_path)), 0, 2)


def make_cifar(root: Path, per_batch: int = 4) -> list[np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    datas = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with (folder / name).open("wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, fh)
        datas.append(data)
    return datas


def test_cifar10_reads_python_batches(tmp_path: Path) -> None:
    datas = make_cifar(tmp_path)
    ds = load_dataset("cifar10", ImageRootParams(root=str(tmp_path)), 0, 2)
    assert ds.x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    # Channel-major layout: the first 1024 values are the red plane.
    np.testing.assert_allclose(ds.x[0, 0].ravel() * 255.0, datas[0][0, :1024], atol=1e-3)


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path: Path) -> None:
    make_cifar(tmp_path)

    class Evil:
        def __reduce__(self):  # noqa: D105
            return (os.system, ("echo pwned",))

    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(ConfigError, match="refusing to load"):
        load_dataset("cifar10", ImageRootParams(root=str(tmp_path)), 0, 2)


def test_cifar10_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cifar-10-batches-py"):
        load_dataset("cifar10", ImageRootParams(root=str(tmp_path)), 0, 2)


def make_femnist(root: Path) -> None:
    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 2)):
        (root / split).mkdir(parents=True)
        users = ["f0001", "f0002", "f0003"]
        blob = {"users": users, "num_samples": [n] * 3,
                "user_data": {u: {"x": rng.random((n, 784)).round(3).tolist(),
                                  "y": rng.integers(0, 62, n).tolist()} for u in users}}
        (root / split / "all_data_0.json").write_text(json.dumps(blob))


def test_femnist_reads_leaf_json_with_writers_as_groups(tmp_path: Path) -> None:
    make_femnist(tmp_path)
    ds = load_dataset("femnist", ImageRootParams(root=str(tmp_path)), 0, 3)
    assert ds.x.shape == (18, 1, 28, 28) and ds.num_classes == 62
    assert np.bincount(ds.groups).tolist() == [6, 6, 6]
    assert ds.test_x.shape == (6, 1, 28, 28)


def test_femnist_missing_or_malformed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no FEMNIST LEAF files"):
        load_dataset("femnist", ImageRootParams(root=str(tmp_path)), 0, 3)
    make_femnist(tmp_path)
    (tmp_path / "train" / "bad.json").write_text('{"users": ["a"], "user_data": {}}')
    with pytest.raises(ConfigError, match="malformed LEAF file bad.json"):
        load_dataset("femnist", ImageRootParams(root=str(tmp_path)), 0, 3)


def test_mnist_scenario_end_to_end_split(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=40, n_test=12)
    cfg = from_dict(tiny_raw(data={"dataset": {"name": "mnist", "root": str(tmp_path)}, "num_clients": 4,
                                   "partitioner": "iid"}, model={"name": "cnn"}))
    fd = build(cfg.data, 0)
    assert len(fd.server_y) == 12  # the official test split
    assert sum(len(a) + len(b) for a, b in zip(fd.train_idx, fd.test_idx)) == 40


def test_digits_split_is_stratified_and_deterministic() -> None:
    cfg = from_dict(tiny_raw(data={"num_clients": 10, "server_test_fraction": 0.2, "client_test_fraction": 0.25}))
    a, b = build(cfg.data, 0), build(cfg.data, 0)
    assert a.x.shape[1:] == (1, 8, 8) and float(a.x.max()) <= 1.0
    total = len(a.y) + len(a.server_y)
    assert total == 1797
    assert abs(len(a.server_y) - 0.2 * 1797) < 10
    counts = np.bincount(a.server_y.numpy(), minlength=10)
    assert counts.min() >= 30  # every class is represented in the server's test set
    for cid in range(10):
        n_train, n_test = len(a.train_idx[cid]), len(a.test_idx[cid])
        assert abs(n_test - 0.25 * (n_train + n_test)) <= 1
        assert torch.equal(a.train_idx[cid], b.train_idx[cid])
        assert not set(a.train_idx[cid].tolist()) & set(a.test_idx[cid].tolist())
    assert sum(len(i) + len(j) for i, j in zip(a.train_idx, a.test_idx)) == len(a.y)
    other = build(cfg.data, 1)
    assert not torch.equal(a.train_idx[0], other.train_idx[0])


def test_synthetic_natural_server_test_set_covers_every_device() -> None:
    cfg = from_dict(tiny_raw(data={"dataset": {"name": "synthetic", "alpha": 1.0, "beta": 1.0},
                                   "partitioner": "natural", "num_clients": 8}, model={"name": "logreg"}))
    fd = build(cfg.data, 0)
    assert fd.num_clients == 8 and fd.input_shape == (60,)
    assert len(fd.server_y) > 0.15 * (len(fd.y) + len(fd.server_y))
