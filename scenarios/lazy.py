"""Lazily materialised federations: 100,000 registered clients without 100,000 partitions in memory.

``dataset = { name = "synthetic", lazy = true }`` (with the ``natural`` partitioner: one
device per client) generates each device's data on first use from its own stream
``(seed, device)`` and keeps recently used devices in a bounded cache, so memory grows with
the clients sampled per round, not with the federation. Every device follows FedProx's
generator (the same distributions as the eager ``synthetic`` dataset; the numbers differ
because each device has its own random stream instead of one shared sequence). The server's
test set is the held-out ``server_test_fraction`` of the first ``server_devices`` devices;
each device keeps the rest, split by ``client_test_fraction``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from fedsim.scenarios.datasets.synthetic import SyntheticParams
from fedsim.scenarios.federation import DataSection

from fedsim.core import seeding
from fedsim.core.errors import ConfigError

CACHE_DEVICES = 4096


def device_size(params: SyntheticParams, seed: int, k: int) -> int:
    if params.samples_per_device > 0:
        return params.samples_per_device
    n = int(seeding.rng(seed, 0, k, "synthetic-size").lognormal(4, 2)) + 50
    return min(n, params.max_samples_per_device) if params.max_samples_per_device > 0 else n


def device_data(params: SyntheticParams, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Device k's samples, from its own stream (FedProx's generator, one device)."""
    rng = seeding.rng(seed, 0, k, "synthetic-device")
    d, c = params.dimension, params.num_classes
    n = device_size(params, seed, k)
    std_x = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2) ** 0.5
    if params.iid:
        grng = seeding.rng(seed, 0, seeding.SERVER, "synthetic-iid-model")
        w, b = grng.normal(0.0, 1.0, (d, c)), grng.normal(0.0, 1.0, c)
        mean_x = np.zeros(d)
    else:
        u = rng.normal(0.0, params.alpha)
        big_b = rng.normal(0.0, params.beta)
        w, b = rng.normal(u, 1.0, (d, c)), rng.normal(u, 1.0, c)
        mean_x = rng.normal(big_b, 1.0, d)
    x = mean_x + rng.standard_normal((n, d)) * std_x
    return x.astype(np.float32), np.argmax(x @ w + b, axis=1).astype(np.int64)


class LazyFederatedData:
    """The `FederatedData` interface the engine uses, with clients built on demand."""

    def __init__(self, data: DataSection, seed: int) -> None:
        params = data.dataset.params
        if data.partitioner.name != "natural":
            raise ConfigError("data.partitioner.name", data.partitioner.name,
                              "a lazy synthetic federation needs \"natural\" (one device per client)")
        if data.sharing.enabled:
            raise ConfigError("data.sharing.beta", data.sharing.beta, "not available with a lazy federation")
        num_devices = params.num_devices or data.num_clients
        if num_devices != data.num_clients:
            raise ConfigError("data.dataset.num_devices", params.num_devices,
                              f"must equal data.num_clients ({data.num_clients}) in a lazy federation")
        self.name = "synthetic"
        self.params = params
        self.seed = seed
        self.data = data
        self.num_classes = params.num_classes
        self._num_clients = data.num_clients
        held = [self._split(k)[0] for k in range(min(params.server_devices, self._num_clients))]
        self.server_x = torch.from_numpy(np.concatenate([h[0] for h in held]))
        self.server_y = torch.from_numpy(np.concatenate([h[1] for h in held]))
        self._device = functools.lru_cache(maxsize=CACHE_DEVICES)(self._build)

    @property
    def num_clients(self) -> int:
        return self._num_clients

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.params.dimension,)

    def _split(self, k: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray],
                                       tuple[np.ndarray, np.ndarray]]:
        """(server part, client train, client test) of device k."""
        x, y = device_data(self.params, self.seed, k)
        order = seeding.rng(self.seed, 0, k, "client-split").permutation(len(y))
        n_server = min(int(round(self.data.server_test_fraction * len(y))), len(y) - 1)
        rest = len(y) - n_server
        n_test = min(int(round(self.data.client_test_fraction * rest)), max(rest - 1, 0))
        s, t, r = order[:n_server], order[n_server : n_server + n_test], order[n_server + n_test :]
        return (x[s], y[s]), (x[np.sort(r)], y[np.sort(r)]), (x[np.sort(t)], y[np.sort(t)])

    def _build(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        _, (xr, yr), (xt, yt) = self._split(k)
        return torch.from_numpy(xr), torch.from_numpy(yr), torch.from_numpy(xt), torch.from_numpy(yt)

    def client_train(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _, _ = self._device(cid)
        return x, y

    def client_test(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, x, y = self._device(cid)
        return x, y

    def client_size(self, cid: int) -> int:
        n = device_size(self.params, self.seed, cid)
        n_server = min(int(round(self.data.server_test_fraction * n)), n - 1)
        rest = n - n_server
        return rest - min(int(round(self.data.client_test_fraction * rest)), max(rest - 1, 0))

    def shared(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros((0, self.params.dimension)), torch.zeros(0, dtype=torch.long)

    def shared_bytes(self) -> int:
        return 0

    def label_counts(self, max_clients: int = 200) -> np.ndarray:
        """Label counts of (at most) the first ``max_clients`` clients: building all would
        materialise the federation."""
        n = min(self._num_clients, max_clients)
        return np.stack([np.bincount(self.client_train(c)[1].numpy(), minlength=self.num_classes)
                         for c in range(n)])
