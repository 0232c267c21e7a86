"""The federated view of a dataset: the server's test set and each client's train/test split.

Built once per process from the data section and the run seed (``federated_data``
caches it), so Ray actors and the server derive identical partitions without shipping
data around.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from fedsim import seeding
from fedsim.config import DataSection
from scenarios.datasets import Dataset, load_dataset
from scenarios.partitioners import partition


@dataclasses.dataclass(frozen=True)
class FederatedData:
    """Partitioned data. Index arrays point into ``x``/``y`` (the clients' pool)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    server_x: torch.Tensor
    server_y: torch.Tensor
    train_idx: tuple[torch.Tensor, ...]
    test_idx: tuple[torch.Tensor, ...]

    @property
    def num_clients(self) -> int:
        return len(self.train_idx)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def client_train(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.train_idx[cid]
        return self.x[idx], self.y[idx]

    def client_test(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.test_idx[cid]
        return self.x[idx], self.y[idx]

    def label_counts(self) -> np.ndarray:
        """(num_clients, num_classes) counts of each client's training labels."""
        y = self.y.numpy()
        return np.stack([np.bincount(y[i.numpy()], minlength=self.num_classes) for i in self.train_idx])


def _stratified_holdout(strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask selecting ``round(fraction * n)`` random samples of each stratum."""
    mask = np.zeros(len(strata), dtype=bool)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        take = int(round(fraction * len(idx)))
        if take >= len(idx):
            take = len(idx) - 1
        mask[rng.choice(idx, size=take, replace=False)] = True
    return mask


def build(data: DataSection, seed: int) -> FederatedData:
    ds: Dataset = load_dataset(data.dataset.name, data.dataset.params, seed, data.num_clients)
    rng = seeding.rng(seed, 0, seeding.SERVER, "holdout")
    if ds.test_x is not None and ds.test_y is not None and data.use_official_test:
        pool_x, pool_y, groups = ds.x, ds.y, ds.groups
        server_x, server_y = ds.test_x, ds.test_y
    else:
        strata = ds.groups if ds.groups is not None else ds.y
        held = _stratified_holdout(strata, data.server_test_fraction, rng)
        pool_x, pool_y = ds.x[~held], ds.y[~held]
        groups = None if ds.groups is None else ds.groups[~held]
        server_x, server_y = ds.x[held], ds.y[held]
    parts = partition(data.partitioner.name, data.partitioner.params, pool_y, groups, data.num_clients,
                      seeding.rng(seed, 0, seeding.SERVER, "partition"))
    train_idx, test_idx = [], []
    for cid, idx in enumerate(parts):
        crng = seeding.rng(seed, 0, cid, "client-split")
        shuffled = crng.permutation(idx)
        n_test = int(round(data.client_test_fraction * len(idx)))
        n_test = min(n_test, max(len(idx) - 1, 0))
        test_idx.append(torch.from_numpy(np.sort(shuffled[:n_test])))
        train_idx.append(torch.from_numpy(np.sort(shuffled[n_test:])))
    return FederatedData(
        name=ds.name,
        x=torch.from_numpy(np.ascontiguousarray(pool_x, dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(pool_y, dtype=np.int64)),
        num_classes=ds.num_classes,
        server_x=torch.from_numpy(np.ascontiguousarray(server_x, dtype=np.float32)),
        server_y=torch.from_numpy(np.ascontiguousarray(server_y, dtype=np.int64)),
        train_idx=tuple(train_idx),
        test_idx=tuple(test_idx),
    )


@functools.lru_cache(maxsize=4)
def federated_data(data: DataSection, seed: int) -> FederatedData:
    """`build`, cached per process (keyed by the frozen data section and seed)."""
    return build(data, seed)


