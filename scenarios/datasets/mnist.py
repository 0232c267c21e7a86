"""MNIST from the standard IDX files, in torchvision's layout (nothing is downloaded).

Put ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte`` (optionally ``.gz``) in ``ROOT/MNIST/raw/`` (what
``torchvision.datasets.MNIST(ROOT, download=True)`` leaves) or directly in ``ROOT``.
Pixels are scaled to [0, 1].
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
from fedsim.scenarios.datasets.base import Dataset, register_dataset

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True)
class ImageRootParams:
    root: str = option("data", doc="folder holding the dataset files")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (big-endian header, unsigned-byte payload)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if ndim else 0
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {expected} bytes of data, file has {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(tuple(dims))


def find_files(root: Path, files: dict[str, str], field: str, what: str, layout: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for key, name in files.items():
        for folder in (root / layout, root):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
            if key in found:
                break
    missing = [name for key, name in files.items() if key not in found]
    if missing:
        raise ConfigError(field, str(root), f"{what} files not found ({', '.join(missing)}); put them "
                          f"(optionally .gz) in {root / layout} - torchvision's layout")
    return found


@register_dataset("mnist", params=ImageRootParams)
def load_mnist(params: ImageRootParams, seed: int, num_clients: int) -> Dataset:
    paths = find_files(Path(params.root), FILES, "data.dataset.root", "MNIST", "MNIST/raw")
    try:
        arrays = {k: read_idx(p) for k, p in paths.items()}
    except ValueError as exc:
        raise ConfigError("data.dataset.root", params.root, f"malformed MNIST file: {exc}") from None
    for split in ("train", "test"):
        xs, ys = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise ConfigError("data.dataset.root", params.root,
                              f"malformed MNIST {split} split: images {xs.shape}, labels {ys.shape}")

    def images(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0)[:, None, :, :]

    return Dataset(
        name="mnist",
        x=images(arrays["train_x"]),
        y=arrays["train_y"].astype(np.int64),
        num_classes=10,
        test_x=images(arrays["test_x"]),
        test_y=arrays["test_y"].astype(np.int64),
    )
