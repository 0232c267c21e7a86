"""Model, data and training loop of W1 (shared by the ClientApp, ServerApp and plain loop).

Each device k draws its own Synthetic(1,1)-style distribution (FedProx's recipe) from a
generator seeded by (seed, k), so any process can build any device's data alone:
200 training samples per device, and 20 test samples per device for the server.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIM, CLASSES, TRAIN_PER_DEVICE, TEST_PER_DEVICE = 60, 10, 200, 20

DEFAULTS = {"num-server-rounds": 20, "num-devices": 100, "fraction-train": 0.1, "local-epochs": 1, "batch-size": 20,
            "lr": 0.05, "seed": 0}


def settings(run_config: dict) -> dict:
    """The app's defaults overlaid with the run config (empty under run_simulation)."""
    return {**DEFAULTS, **run_config}


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 200), nn.ReLU(), nn.Linear(200, CLASSES))


@functools.lru_cache(maxsize=None)
def device_data(device: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) of one device."""
    rng = np.random.default_rng([seed, device, 7])
    u = rng.normal(0, 1.0)  # alpha = 1
    w = rng.normal(u, 1, (DIM, CLASSES))
    b = rng.normal(u, 1, CLASSES)
    v = rng.normal(rng.normal(0, 1.0), 1, DIM)  # beta = 1
    std = np.arange(1, DIM + 1, dtype=np.float64) ** -0.6
    x = (v + rng.standard_normal((TRAIN_PER_DEVICE + TEST_PER_DEVICE, DIM)) * std).astype(np.float32)
    y = np.argmax(x @ w + b, axis=1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return xt[:TRAIN_PER_DEVICE], yt[:TRAIN_PER_DEVICE], xt[TRAIN_PER_DEVICE:], yt[TRAIN_PER_DEVICE:]


@functools.lru_cache(maxsize=4)
def server_test_set(num_devices: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [device_data(k, seed) for k in range(num_devices)]
    return torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float,
          generator: torch.Generator) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    out = model(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def batch_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + server_round * 10_007 + partition_id)
    return g
