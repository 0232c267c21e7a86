"""Data a user already has on disk: ``data.dataset = { name = "file", path = ... }``.

- ``.npz``: arrays ``x`` and ``y`` (other names with ``features = ["inputs"]`` and
  ``label = "labels"``), optionally ``test_x``/``test_y`` and ``client_ids``;
- ``.csv`` (a header row) and ``.parquet`` (needs ``pyarrow``): the ``label`` column, the
  ``features`` columns (default: every other column) and, optionally, a ``client_id``
  column whose values become natural clients (the ``natural`` partitioner);
- a folder written by Hugging Face's ``Dataset.save_to_disk`` (needs ``datasets``): a
  ``DatasetDict``'s ``train``/``test`` splits or a single ``Dataset``, with the same
  column options (an image or array column is used as it is).

Labels that are not integers (``"cat"``, ``"dog"``) become classes in sorted order.
``shape`` reshapes each input (``[1, 28, 28]``); ``test_path`` names an official test split
of the same layout. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from fedsim.scenarios.datasets.base import Dataset, as_dataset, register_dataset

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option

FIELD = "data.dataset"


@dataclasses.dataclass(frozen=True)
class FileParams:
    path: str = option("", doc="a .npz, .csv or .parquet file, or a folder saved by Hugging Face's save_to_disk")
    test_path: str = option("", doc="an official test split in the same layout (optional)")
    label: str = option("", doc='the label column / array (default: "label"; "y" in .npz files)')
    features: tuple[str, ...] = option((), doc='input columns (default: all others); .npz: the input array ("x")')
    client_id: str = option("", doc="a column naming each row's natural owner (for the natural partitioner)")
    shape: tuple[int, ...] = option((), ge=1, doc="reshape each input, e.g. [1, 28, 28]")
    num_classes: int = option(0, ge=0, doc="0 = the largest label + 1")

    def check(self, path: str) -> None:
        if not self.path:
            raise ConfigError(f"{path}.path", self.path, "required: a .npz, .csv or .parquet file, or a "
                                                         "save_to_disk folder")


@register_dataset("file", params=FileParams)
def load_file(params: FileParams, seed: int, num_clients: int) -> Dataset:
    train = read(params.path, params, "path")
    test = read(params.test_path, params, "test_path") if params.test_path else train.get("test")
    labels = [train["raw_y"]] + ([test["raw_y"]] if test is not None else [])
    ys = encode_labels(labels)
    parts: dict[str, Any] = {"x": train["x"], "y": ys[0]}
    if train.get("client_ids") is not None:
        parts["client_ids"] = train["client_ids"]
    if test is not None:
        parts["test_x"], parts["test_y"] = test["x"], ys[1]
    if params.shape:
        for key in ("x", "test_x"):
            if key in parts:
                parts[key] = _reshape(parts[key], params.shape)
    if params.num_classes:
        parts["num_classes"] = params.num_classes
    return as_dataset(parts, Path(params.path).name)


def encode_labels(columns: list[np.ndarray]) -> list[np.ndarray]:
    """Integer labels as they are; otherwise every distinct value (over all splits) is a
    class, numbered in sorted order."""
    try:
        floats = [np.asarray(c).astype(np.float64) for c in columns]
        if all(np.all(np.mod(f, 1) == 0) for f in floats):
            return [f.astype(np.int64) for f in floats]
    except (TypeError, ValueError):
        pass
    text = [np.asarray(c).astype(str) for c in columns]
    classes = np.unique(np.concatenate(text))
    return [np.searchsorted(classes, t).astype(np.int64) for t in text]


def read(path_text: str, params: FileParams, key: str) -> dict[str, Any]:
    path = Path(path_text)
    if not path.exists():
        raise ConfigError(f"{FIELD}.{key}", path_text, "file not found")
    try:
        if path.is_dir():
            return _from_hf(path, params, key)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _from_npz(path, params, key)
        if suffix == ".csv":
            return _table(_csv_columns(path), params, path_text, key)
        if suffix == ".parquet":
            return _table(_parquet_columns(path), params, path_text, key)
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{FIELD}.{key}", path_text, f"unreadable ({type(exc).__name__}: {exc})") from None
    raise ConfigError(f"{FIELD}.{key}", path_text, "must be .npz, .csv, .parquet or a save_to_disk folder")


def _from_npz(path: Path, params: FileParams, key: str) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        x_key = params.features[0] if params.features else "x"
        y_key = params.label or "y"
        for need in (x_key, y_key):
            if need not in names:
                raise ConfigError(f"{FIELD}.{key}", str(path), f"has no array {need!r}; it holds {sorted(names)}")
        out: dict[str, Any] = {"x": np.asarray(z[x_key]), "raw_y": np.asarray(z[y_key])}
        if "client_ids" in names:
            out["client_ids"] = np.asarray(z["client_ids"])
        if "test_x" in names and "test_y" in names:
            out["test"] = {"x": np.asarray(z["test_x"]), "raw_y": np.asarray(z["test_y"])}
    return out


def _csv_columns(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ConfigError(f"{FIELD}.path", str(path), "is empty (a CSV needs a header row)")
        rows = [row for row in reader if row]
    width = len(header)
    for i, row in enumerate(rows, start=2):
        if len(row) != width:
            raise ConfigError(f"{FIELD}.path", str(path), f"line {i} has {len(row)} fields, the header {width}")
    cols = list(zip(*rows)) if rows else [()] * width
    return {name.strip(): np.asarray(col) for name, col in zip(header, cols)}


def _parquet_columns(path: Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{FIELD}.path", str(path), "reading parquet needs pyarrow: pip install pyarrow") from None
    table = pq.read_table(path)
    return {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in table.column_names}


def _table(columns: dict[str, np.ndarray], params: FileParams, path: str, key: str) -> dict[str, Any]:
    label = params.label or "label"
    names = list(columns)
    wanted = [("label", label), *(("features", f) for f in params.features),
              *([("client_id", params.client_id)] if params.client_id else [])]
    for option_name, need in wanted:
        if need not in columns:
            raise ConfigError(f"{FIELD}.{option_name}", need, f"{path} has no such column; columns: {', '.join(names)}")
    features = list(params.features) or [n for n in names if n not in (label, params.client_id)]
    if not features:
        raise ConfigError(f"{FIELD}.features", [], f"{path} has no feature column besides {label!r}")
    try:
        x = np.column_stack([columns[f].astype(np.float64) for f in features]).astype(np.float32)
    except (TypeError, ValueError):
        bad = next(f for f in features if not _numeric(columns[f]))
        raise ConfigError(f"{FIELD}.features", bad, f"column {bad!r} of {path} is not numeric") from None
    out: dict[str, Any] = {"x": x, "raw_y": columns[label]}
    if params.client_id:
        out["client_ids"] = columns[params.client_id].astype(str)
    return out


def _numeric(col: np.ndarray) -> bool:
    try:
        col.astype(np.float64)
        return True
    except (TypeError, ValueError):
        return False


def _from_hf(path: Path, params: FileParams, key: str) -> dict[str, Any]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{FIELD}.{key}", str(path), "a save_to_disk folder needs Hugging Face datasets: "
                                                        "pip install 'fedsim[flwr-datasets]'") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ConfigError(f"{FIELD}.{key}", str(path), f"has splits {list(loaded)}; expected 'train' (and 'test')")
        out = _hf_split(loaded["train"], params, str(path), key)
        if "test" in loaded:
            out["test"] = _hf_split(loaded["test"], params, str(path), key)
        return out
    return _hf_split(loaded, params, str(path), key)


def _hf_split(ds: Any, params: FileParams, path: str, key: str) -> dict[str, Any]:
    label = params.label or "label"
    names = list(ds.column_names)
    if label not in names:
        raise ConfigError(f"{FIELD}.label", label, f"{path} has no column {label!r}; columns: {', '.join(names)}")
    features = list(params.features) or [n for n in names if n not in (label, params.client_id)]
    ds = ds.with_format("numpy")
    if len(features) == 1:
        x = np.asarray(ds[features[0]], dtype=np.float32)
        x = x if x.ndim > 1 else x[:, None]
    else:
        x = np.column_stack([np.asarray(ds[f], dtype=np.float32) for f in features])
    out: dict[str, Any] = {"x": x, "raw_y": np.asarray(ds[label])}
    if params.client_id:
        out["client_ids"] = np.asarray(ds[params.client_id]).astype(str)
    return out


def _reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    per = int(np.prod(shape))
    if x[0].size != per:
        raise ConfigError(f"{FIELD}.shape", list(shape), f"inputs have {x[0].size} values each, not {per}")
    return np.asarray(x).reshape((len(x), *shape))
