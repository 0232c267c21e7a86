"""Dataset loaders on tiny files in the real formats, and the federated split."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fedsim.scenarios.datasets import load_dataset
from fedsim.scenarios.datasets.mnist import ImageRootParams
from fedsim.scenarios.federation import build

from fedsim.config import from_dict
from fedsim.core.errors import ConfigError
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


# ------------------------------------------------------------------ data from files
def file_config(path: Path, **dataset: Any) -> Any:
    from tests.conftest import tiny_raw

    return from_dict(tiny_raw(data={"dataset": {"name": "file", "path": str(path), **dataset}, "num_clients": 4,
                                    "partitioner": "iid"}, model={"name": "logreg"}))


def test_npz_csv_and_parquet_files_load_the_same_table(tmp_path: Path) -> None:
    from fedsim.scenarios.federation import federated_data

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).round(4)
    y = rng.integers(0, 3, size=40)
    np.savez(tmp_path / "d.npz", x=x, y=y, test_x=x[:8], test_y=y[:8])
    np.savez(tmp_path / "t.npz", x=x[:8], y=y[:8])  # a test split in a file of its own
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{int(t)}" for r, t in zip(x, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": y}), tmp_path / "d.parquet")
    loaded = {}
    for name in ("d.npz", "d.csv", "d.parquet"):
        cfg = file_config(tmp_path / name, **({"test_path": str(tmp_path / "t.npz")} if name != "d.npz" else {}))
        ds = load_dataset("file", cfg.data.dataset.params, 0, 4)
        loaded[name] = ds
        assert ds.x.shape == (40, 3) and ds.num_classes == 3 and ds.test_x.shape == (8, 3)
        data = federated_data(cfg.data, 0)
        assert sum(len(i) + len(j) for i, j in zip(data.train_idx, data.test_idx)) == 40  # official test split
    for ds in loaded.values():
        np.testing.assert_allclose(ds.x, x.astype(np.float32), rtol=1e-6)
        assert (ds.y == y).all()


def test_csv_with_string_labels_and_a_client_column_is_a_natural_federation(tmp_path: Path) -> None:
    rows = ["site,age,dose,outcome"]
    for i in range(30):
        rows.append(f"{['north', 'south', 'east'][i % 3]},{20 + i},{i % 5},{['bad', 'good'][i % 2]}")
    path = tmp_path / "patients.csv"
    path.write_text("\n".join(rows) + "\n")
    ds = load_dataset("file", file_config(path, label="outcome", client_id="site").data.dataset.params, 0, 3)
    assert ds.num_classes == 2 and list(ds.y[:4]) == [0, 1, 0, 1]  # "bad" < "good", sorted
    assert ds.x.shape == (30, 2) and list(ds.x[0]) == [20.0, 0.0]  # site is not a feature
    assert sorted(np.bincount(ds.groups)) == [10, 10, 10]
    raw = {"run": {"rounds": 1}, "data": {"dataset": {"name": "file", "path": str(path), "label": "outcome",
                                                     "client_id": "site"}, "partitioner": "natural", "num_clients": 3,
                                         "client_test_fraction": 0.0},
           "model": "logreg", "strategy": {"name": "fedavg", "fraction_evaluate": 0.0}, "report": {"progress": False}}
    import fedsim

    result = fedsim.run(from_dict(raw), write=False)
    assert result.summary["client_failures"] == 0


def test_file_dataset_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    (tmp_path / "short.csv").write_text("a,b,label\n1,2\n")
    np.savez(tmp_path / "d.npz", inputs=np.zeros((4, 2)), y=np.zeros(4))
    cases = [
        ({"path": str(tmp_path / "none.csv")}, "data.dataset.path", "file not found"),
        ({"path": str(tmp_path / "d.csv")}, "data.dataset.features = 'b'", "is not numeric"),
        ({"path": str(tmp_path / "d.csv"), "label": "y"}, "data.dataset.label = 'y'", "has no such column"),
        ({"path": str(tmp_path / "short.csv")}, "data.dataset.path", "line 2 has 2 fields"),
        ({"path": str(tmp_path / "d.npz")}, "data.dataset.path", "has no array 'x'"),
        ({"path": str(tmp_path / "d.npz"), "features": ["inputs"], "shape": [3]}, "data.dataset.shape", "2 values"),
        ({"path": ""}, "data.dataset.path", "required"),
    ]
    from tests.conftest import tiny_raw

    for params, start, fragment in cases:
        with pytest.raises(ConfigError) as info:
            cfg = from_dict(tiny_raw(data={"dataset": {"name": "file", **params}}, model={"name": "logreg"}))
            load_dataset("file", cfg.data.dataset.params, 0, 2)
        text = str(info.value)
        assert text.startswith(start) and fragment in text and "\n" not in text, text


def test_a_hugging_face_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(1)
    split = lambda n: datasets.Dataset.from_dict({"img": rng.random((n, 1, 4, 4)).astype("float32").tolist(),  # noqa: E731
                                                  "label": rng.integers(0, 4, n).tolist()})
    datasets.DatasetDict({"train": split(24), "test": split(6)}).save_to_disk(str(tmp_path / "hf"))
    ds = load_dataset("file", file_config(tmp_path / "hf").data.dataset.params, 0, 2)
    assert ds.x.shape == (24, 1, 4, 4) and ds.test_x.shape == (6, 1, 4, 4) and ds.num_classes <= 4


def test_flwr_datasets_partitioners_run_on_fedsims_labels() -> None:
    pytest.importorskip("flwr_datasets")
    from fedsim.scenarios.federation import federated_data

    from tests.conftest import tiny_raw

    raw = tiny_raw(data={"partitioner": {"name": "flwr_datasets", "partitioner": "DirichletPartitioner",
                                         "args": {"alpha": 0.5, "min_partition_size": 5}}})
    a, b = from_dict(raw), from_dict(raw)
    da, db = federated_data(a.data, 3), federated_data(b.data, 4)  # data seeds 3 and 4
    sizes = [len(t) + len(e) for t, e in zip(da.train_idx, da.test_idx)]
    assert sum(sizes) == len(da.y) and min(sizes) >= 5
    assert sizes != [len(t) + len(e) for t, e in zip(db.train_idx, db.test_idx)]  # seeded by the data seed
    again = federated_data.__wrapped__(a.data, 3)
    assert all((p == q).all() for p, q in zip(da.train_idx, again.train_idx))
    raw = tiny_raw(data={"partitioner": {"name": "flwr_datasets", "partitioner": "IidPartitioner"}})
    assert len(federated_data(from_dict(raw).data, 3).train_idx) == 6
    for edit, fragment in [({"partitioner": "Nope"}, "not a flwr_datasets partitioner"),
                           ({"args": {"num_partitions": 3}}, "is set by fedsim"),
                           ({"args": {"alpah": 0.5}}, "unknown argument of DirichletPartitioner")]:
        bad = tiny_raw(data={"partitioner": {"name": "flwr_datasets", "partitioner": "DirichletPartitioner",
                                             "args": {"alpha": 0.5}, **edit}})
        with pytest.raises(ConfigError, match=fragment):
            from_dict(bad)
