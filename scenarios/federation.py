"""The federated view of a dataset: the server's test set and each client's train/test split.

Built once per process from the data section and the data seed (``federated_data``
caches it), so Ray actors and the server derive identical partitions without shipping
data around. The scenario's ``[data]`` section (`DataSection`) lives here, with the data.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from fedsim.scenarios.datasets import Dataset, load_dataset
from fedsim.scenarios.partitioners import partition

from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.core.schema import Named, named, option


@dataclasses.dataclass(frozen=True)
class SharingSection:
    """Zhao et al. 2018: a globally shared, class-balanced set G held by the server."""

    beta: float | None = option(None, gt=0.0, le=1.0, doc="|G| = beta x |training data|; unset = no sharing")
    alpha: float = option(1.0, ge=0.0, le=1.0, doc="each client receives a random alpha-portion of G, once")
    warmup_epochs: int = option(0, ge=0, le=100_000, doc="train the initial global model on G first")
    warmup_lr: float | None = option(None, gt=0.0, doc="warm-up learning rate; unset = client.lr")

    @property
    def enabled(self) -> bool:
        return self.beta is not None


@dataclasses.dataclass(frozen=True)
class DataSection:
    dataset: Named = named("dataset", "fedsim.scenarios.datasets:resolve_dataset_params")
    partitioner: Named = named("partitioner", "fedsim.scenarios.partitioners:resolve_partitioner_params", "iid")
    num_clients: int = option(10, ge=1, le=10_000_000)
    server_test_fraction: float = option(0.2, gt=0.0, lt=1.0,
                                         doc="held out for the server when the dataset has no official test split")
    client_test_fraction: float = option(0.2, ge=0.0, lt=1.0, doc="each client's local test split")
    use_official_test: bool = option(True, doc="use the dataset's own test split as the server's test set")
    seed: int | None = option(None, ge=0, lt=2**32, doc="draws the dataset and the partition; unset = run.seed "
                                                        "(the run seed always draws the simulation)")
    sharing: SharingSection = SharingSection()

    def data_seed(self, run_seed: int) -> int:
        """The seed of the dataset and the partition: ``data.seed``, else the run seed."""
        return run_seed if self.seed is None else self.seed


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
    shared_idx: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    client_shared_idx: tuple[torch.Tensor, ...] = ()  # each client's alpha-portion of the shared set G

    @property
    def num_clients(self) -> int:
        return len(self.train_idx)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def client_train_index(self, cid: int) -> torch.Tensor:
        """Positions of the client's training samples in the pool (``x``, ``y``), in the
        order `client_train` returns them."""
        idx = self.train_idx[cid]
        return torch.cat([idx, self.client_shared_idx[cid]]) if self.client_shared_idx else idx

    def client_train(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training data: its partition, plus its portion of G when data is shared."""
        idx = self.train_idx[cid]
        if self.client_shared_idx:
            idx = torch.cat([idx, self.client_shared_idx[cid]])
        return self.x[idx], self.y[idx]

    def shared(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The server's shared set G."""
        return self.x[self.shared_idx], self.y[self.shared_idx]

    def shared_bytes(self) -> int:
        """Bytes of the one-time distribution of G's portions: inputs (float32) and labels (int64)."""
        per_sample = int(np.prod(self.input_shape)) * 4 + 8
        return sum(len(i) for i in self.client_shared_idx) * per_sample

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
        # the hold-out, not the dataset, is too big: it leaves under two samples a client
        if len(pool_y) < 2 * data.num_clients <= len(ds.y) and held.sum() > len(pool_y):
            raise ConfigError("data.server_test_fraction", data.server_test_fraction,
                              f"holds out {int(held.sum())} of {len(ds.y)} samples, leaving {len(pool_y)} for "
                              f"{data.num_clients} clients; lower it (or data.num_clients)")
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
    shared_idx, client_shared = _shared_set(data, pool_y, len(parts), seed)
    return FederatedData(
        name=ds.name,
        x=torch.from_numpy(np.ascontiguousarray(pool_x, dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(pool_y, dtype=np.int64)),
        num_classes=ds.num_classes,
        server_x=torch.from_numpy(np.ascontiguousarray(server_x, dtype=np.float32)),
        server_y=torch.from_numpy(np.ascontiguousarray(server_y, dtype=np.int64)),
        train_idx=tuple(train_idx),
        test_idx=tuple(test_idx),
        shared_idx=shared_idx,
        client_shared_idx=client_shared,
    )


def _shared_set(data: DataSection, y: np.ndarray, num_clients: int, seed: int
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """G: round(beta x |pool|) samples, balanced over classes, drawn from the training pool
    (clients keep their partitions, so runs with and without sharing differ only by G);
    each client's alpha-portion is drawn independently."""
    sharing = data.sharing
    if not sharing.enabled:
        return torch.zeros(0, dtype=torch.long), ()
    rng = seeding.rng(seed, 0, seeding.SERVER, "shared-set")
    size = max(1, int(round(sharing.beta * len(y))))
    classes = np.unique(y)
    per_class = np.full(len(classes), size // len(classes))
    per_class[: size % len(classes)] += 1
    chosen = []
    for c, k in zip(classes, per_class):
        idx = np.flatnonzero(y == c)
        chosen.append(rng.choice(idx, size=min(int(k), len(idx)), replace=False))
    g = np.sort(np.concatenate(chosen))
    portion = int(round(sharing.alpha * len(g)))
    client_parts = tuple(torch.from_numpy(np.sort(seeding.rng(seed, 0, cid, "shared-portion")
                                                  .choice(g, size=portion, replace=False)))
                         for cid in range(num_clients))
    return torch.from_numpy(g), client_parts


@functools.lru_cache(maxsize=4)
def federated_data(data: DataSection, seed: int) -> FederatedData:
    """`build`, cached per process (keyed by the frozen data section and seed); a lazy
    synthetic federation (`fedsim.scenarios.lazy`) builds clients on demand instead."""
    if data.dataset.name == "synthetic" and getattr(data.dataset.params, "lazy", False):
        from fedsim.scenarios.lazy import LazyFederatedData

        return LazyFederatedData(data, seed)  # type: ignore[return-value]
    return build(data, seed)


