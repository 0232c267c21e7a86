"""FEMNIST in LEAF's JSON format, one natural client per writer (nothing downloaded).

Put LEAF's output in ``ROOT/train/*.json`` and ``ROOT/test/*.json``; each file holds
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[784 floats]], "y": [...]}}}``.
Writers become natural groups; the test files form the official test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fedsim.scenarios.datasets.base import Dataset, register_dataset
from fedsim.scenarios.datasets.mnist import ImageRootParams

from fedsim.core.errors import ConfigError


def _read_split(folder: Path, writer_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, gs = [], [], []
    for path in sorted(folder.glob("*.json")):
        try:
            blob = json.loads(path.read_text())
            users = blob["users"]
            for user in users:
                record = blob["user_data"][user]
                x = np.asarray(record["x"], dtype=np.float32)
                y = np.asarray(record["y"], dtype=np.int64)
                if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                    raise ValueError(f"user {user}: x {x.shape}, y {y.shape}; expected (n, 784) and (n,)")
                gid = writer_ids.setdefault(user, len(writer_ids))
                xs.append(x.reshape(-1, 1, 28, 28))
                ys.append(y)
                gs.append(np.full(len(y), gid, dtype=np.int64))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ConfigError("data.dataset.root", str(folder), f"malformed LEAF file {path.name}: {exc}") from None
    if not xs:
        raise ConfigError("data.dataset.root", str(folder.parent),
                          "no FEMNIST LEAF files; put LEAF's train/*.json and test/*.json under it")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


@register_dataset("femnist", params=ImageRootParams)
def load_femnist(params: ImageRootParams, seed: int, num_clients: int) -> Dataset:
    root = Path(params.root)
    writer_ids: dict[str, int] = {}
    x, y, groups = _read_split(root / "train", writer_ids)
    test_x, test_y, _ = _read_split(root / "test", writer_ids)
    num_classes = 62
    if y.min() < 0 or y.max() >= num_classes:
        raise ConfigError("data.dataset.root", params.root, "malformed FEMNIST: labels outside 0..61")
    return Dataset(name="femnist", x=x, y=y, num_classes=num_classes, groups=groups, test_x=test_x, test_y=test_y)
