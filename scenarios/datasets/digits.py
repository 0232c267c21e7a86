"""scikit-learn's 8x8 handwritten digits (1,797 images; shipped with scikit-learn)."""

from __future__ import annotations

import numpy as np
from fedsim.scenarios.datasets.base import Dataset, NoParams, register_dataset


@register_dataset("digits", params=NoParams)
def load_digits(params: NoParams, seed: int, num_clients: int) -> Dataset:
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(name="digits", x=x, y=y, num_classes=10)
