"""FedProx's Synthetic(alpha, beta) federated dataset (Li et al., MLSys 2020).

Follows the generator in the FedProx repository: for device k,
``n_k = int(lognormal(4, 2)) + 50`` samples; ``u_k ~ N(0, alpha)`` is the mean of the
device's softmax model, ``W_k, b_k ~ N(u_k, 1)``; ``B_k ~ N(0, beta)`` and
``v_k ~ N(B_k, 1)`` give the feature mean; ``x ~ N(v_k, diag((j+1)^-1.2))`` and
``y = argmax(softmax(W_k x + b_k))``. (As in that code, N(m, s) takes a standard
deviation s.) The IID variant shares one ``W, b ~ N(0, 1)`` and feature mean 0 across
devices. Each device is one natural group.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from fedsim.scenarios.datasets.base import Dataset, register_dataset

from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    alpha: float = option(1.0, ge=0.0, le=1e6, doc="spread of the devices' models (0 with beta 0 is still non-IID in x)")
    beta: float = option(1.0, ge=0.0, le=1e6, doc="spread of the devices' feature means")
    iid: bool = option(False, doc="the paper's IID variant: one shared model, features N(0, cov)")
    num_devices: int = option(0, ge=0, le=1_000_000, doc="0 = data.num_clients (paper: 30)")
    dimension: int = option(60, ge=1, le=100_000)
    num_classes: int = option(10, ge=2, le=100_000)
    samples_per_device: int = option(0, ge=0, le=10_000_000,
                                     doc="0 = the paper's int(lognormal(4, 2)) + 50; >0 = this many each")
    max_samples_per_device: int = option(0, ge=0, doc="cap on the lognormal draw; 0 = no cap")
    lazy: bool = option(False, doc="build each device on first use, from its own stream (huge federations)")
    server_devices: int = option(100, ge=1, le=1_000_000, doc="lazy: devices whose held-out part is the server's test set")


def generate(params: SyntheticParams, seed: int, num_devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (x, y, device) as float32, int64, int64 arrays."""
    rng = seeding.rng(seed, 0, seeding.SERVER, "synthetic")
    d, c = params.dimension, params.num_classes
    if params.samples_per_device > 0:
        sizes = np.full(num_devices, params.samples_per_device, dtype=np.int64)
    else:
        sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
        if params.max_samples_per_device > 0:
            sizes = np.minimum(sizes, params.max_samples_per_device)
    mean_w = rng.normal(0.0, params.alpha, num_devices)
    mean_b = mean_w
    big_b = rng.normal(0.0, params.beta, num_devices)
    std_x = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2) ** 0.5
    if params.iid:
        mean_x = np.zeros((num_devices, d))
        w_global = rng.normal(0.0, 1.0, (d, c))
        b_global = rng.normal(0.0, 1.0, c)
    else:
        mean_x = rng.normal(big_b[:, None], 1.0, (num_devices, d))
    xs, ys = [], []
    for k in range(num_devices):
        if params.iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(mean_w[k], 1.0, (d, c))
            b = rng.normal(mean_b[k], 1.0, c)
        x = mean_x[k] + rng.standard_normal((int(sizes[k]), d)) * std_x
        logits = x @ w + b  # argmax(softmax(z)) == argmax(z)
        xs.append(x.astype(np.float32))
        ys.append(np.argmax(logits, axis=1).astype(np.int64))
    device = np.repeat(np.arange(num_devices, dtype=np.int64), sizes)
    return np.concatenate(xs), np.concatenate(ys), device


@register_dataset("synthetic", params=SyntheticParams)
def load_synthetic(params: SyntheticParams, seed: int, num_clients: int) -> Dataset:
    num_devices = params.num_devices or num_clients
    if params.samples_per_device == 0 and params.max_samples_per_device and params.max_samples_per_device < 50:
        raise ConfigError("data.dataset.max_samples_per_device", params.max_samples_per_device,
                          "must be 0 or >= 50 (the generator's minimum)")
    x, y, device = generate(params, seed, num_devices)
    return Dataset(name="synthetic", x=x, y=y, num_classes=params.num_classes, groups=device)
