"""What a dataset loader returns, the dataset registry, and the contract of a user's dataset.

A dataset plug-in is a function named in the scenario, by a registered name
(``@register_dataset``) or by path (``data.dataset = "my_pkg.data:load"``). By path, the
other keys of ``[data.dataset]`` are its keyword arguments (checked against its
signature); it may also take ``seed`` (the data seed) and ``num_clients``, which fedsim
passes. It returns one of (see `as_dataset`):

- a `Dataset`;
- a mapping with ``x`` and ``y``, and optionally ``test_x``/``test_y`` (an official test
  split), ``client_ids`` (each sample's natural owner, for the ``natural`` partitioner:
  any hashable values) and ``num_classes``;
- a tuple ``(x, y)`` or ``(x, y, test_x, test_y)``;
- a torch ``Dataset`` of ``(input, label)`` pairs, or a tuple ``(train_set, test_set)`` of them.

Arrays may be numpy arrays, torch tensors or nested lists; inputs become float32 of
shape ``(N, *input_shape)``, labels int64 in ``[0, num_classes)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedsim.core.errors import ConfigError
from fedsim.core.plugins import call_with
from fedsim.core.registry import NoParams, PathContract, PluginRegistry  # noqa: F401  (NoParams: re-exported)

FIELD = "data.dataset.name"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An in-memory labelled dataset.

    ``x`` is float32 of shape (N, *input_shape); ``y`` int64 labels in [0, num_classes).
    ``groups`` (optional) gives each sample's natural owner (device, writer), used by the
    ``natural`` partitioner. ``test_x``/``test_y`` are the dataset's official test split
    if it has one.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if self.groups is not None and len(self.groups) != len(self.y):
            raise ValueError(f"{self.name}: groups do not match samples")


def _adapt(obj: Any, target: str, field: str) -> Callable[..., Dataset]:
    if not callable(obj):
        raise ConfigError(field, target, "must be a function returning the data (see fedsim's dataset contract)")

    def load(params: Any, seed: int, num_clients: int) -> Dataset:
        return as_dataset(call_with(obj, params, FIELD, target, seed=seed, num_clients=num_clients), target)

    return load


DATASETS = PluginRegistry("dataset", PathContract(adapt=_adapt, field=FIELD, provided=("seed", "num_clients")))


def register_dataset(name: str, params: type | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a dataset function under ``name``: the same function a scenario could name by
    path (its keywords from ``[data.dataset]``; ``seed`` and ``num_clients`` if it takes them;
    any return value of the contract above). fedsim's built-ins pass a ``params`` dataclass and
    take ``load(params, seed, num_clients) -> Dataset``."""
    return DATASETS.register_fn(name, params)


def resolve_dataset_params(name: str, raw: Mapping[str, Any], path: str) -> Any:
    return DATASETS.resolve_params(name, raw, path)


resolve_dataset_params.registry = DATASETS  # type: ignore[attr-defined]  (see fedsim.core.schema.iter_named)


def load_dataset(name: str, params: Any, seed: int, num_clients: int) -> Dataset:
    return DATASETS.get(name, FIELD).fn(params, seed, num_clients)


# ------------------------------------------------------------ the user's return value
def as_dataset(result: Any, name: str) -> Dataset:
    """A `Dataset` from whatever a dataset plug-in returned (see the module docstring)."""
    if isinstance(result, Dataset):
        return result
    parts: dict[str, Any]
    if isinstance(result, Mapping):
        unknown = sorted(set(result) - {"x", "y", "test_x", "test_y", "client_ids", "num_classes"})
        if unknown:
            _bad(name, f"returned a mapping with unknown key(s) {unknown}; allowed: x, y, test_x, test_y, "
                       "client_ids, num_classes")
        if "x" not in result or "y" not in result:
            _bad(name, "returned a mapping without 'x' and 'y'")
        parts = dict(result)
    elif isinstance(result, tuple) and len(result) == 2 and all(_is_torch_dataset(r) for r in result):
        (x, y), (tx, ty) = _from_torch(result[0], name), _from_torch(result[1], name)
        parts = {"x": x, "y": y, "test_x": tx, "test_y": ty}
    elif isinstance(result, tuple) and len(result) in (2, 4):
        parts = dict(zip(("x", "y", "test_x", "test_y"), result))
    elif _is_torch_dataset(result):
        x, y = _from_torch(result, name)
        parts = {"x": x, "y": y}
    else:
        _bad(name, f"returned a {type(result).__name__}; expected a fedsim Dataset, a mapping with x and y, "
                   "a tuple (x, y[, test_x, test_y]) or a torch Dataset of (input, label) pairs")
    x = _inputs(parts["x"], name, "x")
    y = _labels(parts["y"], name, "y", len(x))
    test_x = test_y = None
    if parts.get("test_x") is not None or parts.get("test_y") is not None:
        test_x = _inputs(parts.get("test_x"), name, "test_x")
        test_y = _labels(parts.get("test_y"), name, "test_y", len(test_x))
        if test_x.shape[1:] != x.shape[1:]:
            _bad(name, f"test inputs have shape {test_x.shape[1:]}, training inputs {x.shape[1:]}")
    groups = None
    if parts.get("client_ids") is not None:
        ids = np.asarray(_numpy(parts["client_ids"]))
        if ids.shape != (len(x),):
            _bad(name, f"client_ids must give one owner per training sample ({len(x)}), got shape {ids.shape}")
        groups = np.unique(ids, return_inverse=True)[1].astype(np.int64)
    seen = int(max(y.max(), test_y.max() if test_y is not None and len(test_y) else 0)) + 1
    num_classes = parts.get("num_classes", seen)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        _bad(name, f"num_classes must be a positive integer, got {num_classes!r}")
    if int(num_classes) < seen:
        _bad(name, f"labels go up to {seen - 1}, but num_classes is {num_classes}")
    return Dataset(name=name, x=x, y=y, num_classes=int(num_classes), groups=groups, test_x=test_x, test_y=test_y)


def _bad(name: str, why: str) -> Any:
    raise ConfigError(FIELD, name, why)


def _numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    if hasattr(value, "to_numpy"):  # pandas
        return value.to_numpy()
    return value


def _inputs(value: Any, name: str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(_numpy(value), dtype=np.float32)
    except (TypeError, ValueError) as exc:
        _bad(name, f"{what} is not numeric: {exc}")
    if arr.ndim < 2 or len(arr) == 0:
        _bad(name, f"{what} must have shape (samples, features...) with at least one sample, got {arr.shape}")
    if not np.isfinite(arr).all():
        _bad(name, f"{what} holds NaN or Inf values")
    return np.ascontiguousarray(arr)


def _labels(value: Any, name: str, what: str, n: int) -> np.ndarray:
    raw = np.asarray(_numpy(value))
    if raw.ndim != 1 or len(raw) != n:
        _bad(name, f"{what} must be one label per sample ({n}), got shape {raw.shape}")
    if raw.dtype.kind not in "iub" and not (raw.dtype.kind == "f" and np.all(np.mod(raw, 1) == 0)):
        _bad(name, f"{what} must be integer class labels, got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    if len(labels) and labels.min() < 0:
        _bad(name, f"{what} holds negative labels; classes are 0..num_classes-1")
    return labels


def _is_torch_dataset(obj: Any) -> bool:
    try:
        from torch.utils.data import Dataset as TorchDataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, TorchDataset)


def _from_torch(ds: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in range(len(ds)):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            _bad(name, f"torch Dataset item {i} is a {type(item).__name__}, not an (input, label) pair")
        xs.append(np.asarray(_numpy(item[0]), dtype=np.float32))
        ys.append(int(_numpy(item[1])))
    if not xs:
        _bad(name, "the torch Dataset is empty")
    x = np.stack(xs)
    return (x if x.ndim >= 2 else x[:, None]), np.asarray(ys, dtype=np.int64)
