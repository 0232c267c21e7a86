"""CIFAR-10 from the standard python batches (``cifar-10-batches-py``), nothing downloaded.

Put ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` in
``ROOT/cifar-10-batches-py/`` (what ``torchvision.datasets.CIFAR10(ROOT, download=True)``
leaves). The batches are pickles; they are read with an unpickler that only builds
plain containers and numpy arrays, so a hostile file cannot run code. Pixels are scaled
to [0, 1], shape (N, 3, 32, 32).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from fedsim.scenarios.datasets.base import Dataset, register_dataset
from fedsim.scenarios.datasets.mnist import ImageRootParams, find_files

from fedsim.core.errors import ConfigError

FILES = {f"data_batch_{i}": f"data_batch_{i}" for i in range(1, 6)} | {"test_batch": "test_batch"}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as fh:
        obj = _SafeUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name}: not a CIFAR batch (got {type(obj).__name__})")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path.name}: missing 'data' or 'labels'")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path.name}: data {data.shape} / labels {labels.shape}, expected (N, 3072) / (N,)")
    return data.reshape(-1, 3, 32, 32), labels


@register_dataset("cifar10", params=ImageRootParams)
def load_cifar10(params: ImageRootParams, seed: int, num_clients: int) -> Dataset:
    paths = find_files(Path(params.root), FILES, "data.dataset.root", "CIFAR-10", "cifar-10-batches-py")
    try:
        train = [read_batch(paths[f"data_batch_{i}"]) for i in range(1, 6)]
        test_x, test_y = read_batch(paths["test_batch"])
    except (ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise ConfigError("data.dataset.root", params.root, f"malformed CIFAR-10 batch: {exc}") from None
    x = np.concatenate([t[0] for t in train]).astype(np.float32) / 255.0
    y = np.concatenate([t[1] for t in train])
    if y.min() < 0 or y.max() > 9 or test_y.min() < 0 or test_y.max() > 9:
        raise ConfigError("data.dataset.root", params.root, "malformed CIFAR-10 batch: labels outside 0..9")
    return Dataset(name="cifar10", x=x, y=y, num_classes=10,
                   test_x=test_x.astype(np.float32) / 255.0, test_y=test_y)
