"""Aggregation maths as pure functions on dicts of numpy arrays (hand-checked in tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Arrays = Mapping[str, np.ndarray]


def weighted_mean(arrays: Sequence[Arrays], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """sum_i w_i x_i / sum_i w_i, key by key."""
    if not arrays:
        raise ValueError("nothing to average")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    w = w / w.sum()
    return {k: sum(wi * np.asarray(a[k], dtype=np.float64) for wi, a in zip(w, arrays)).astype(arrays[0][k].dtype)
            for k in arrays[0]}


def fednova_normalizer(steps: float, momentum: float = 0.0) -> float:
    """a_i for local SGD with ``steps`` steps and momentum rho (Wang et al. 2020, eq. for FedNova).

    Plain SGD: a = tau. With momentum rho: a = (tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho).
    """
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    return float((steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho))


def fednova(global_arrays: Arrays, local: Sequence[Arrays], num_examples: Sequence[float], steps: Sequence[float],
            momentum: float = 0.0) -> dict[str, np.ndarray]:
    """Normalized averaging: d_i = (x - x_i) / a_i, tau_eff = sum p_i a_i, x' = x - tau_eff sum p_i d_i."""
    p = np.asarray(num_examples, dtype=np.float64)
    p = p / p.sum()
    a = np.array([fednova_normalizer(s, momentum) for s in steps])
    tau_eff = float((p * a).sum())
    out = {}
    for k, g in global_arrays.items():
        g64 = np.asarray(g, dtype=np.float64)
        d = sum(pi / ai * (g64 - np.asarray(x[k], dtype=np.float64)) for pi, ai, x in zip(p, a, local))
        out[k] = (g64 - tau_eff * d).astype(np.asarray(g).dtype)
    return out


def staleness_weight(kind: str, staleness: float, a: float = 0.5, b: float = 4.0) -> float:
    """FedBuff / FedAsync staleness functions s(tau).

    constant: 1;  polynomial: (1 + tau)^-a;  hinge: 1 if tau <= b else 1 / (a (tau - b) + 1).
    """
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1.0 + staleness) ** (-a))
    if kind == "hinge":
        return 1.0 if staleness <= b else float(1.0 / (a * (staleness - b) + 1.0))
    raise ValueError(f"unknown staleness function {kind!r}; known: constant, hinge, polynomial")


def buffered_step(global_arrays: Arrays, deltas: Sequence[Arrays], weights: Sequence[float],
                  server_lr: float) -> dict[str, np.ndarray]:
    """FedBuff's server step: x' = x - eta_g * (1/K) sum_k s_k delta_k, delta_k = x_start_k - x_end_k."""
    if not deltas:
        raise ValueError("the buffer is empty")
    k = len(deltas)
    out = {}
    for key, g in global_arrays.items():
        g64 = np.asarray(g, dtype=np.float64)
        step = sum(w * np.asarray(d[key], dtype=np.float64) for w, d in zip(weights, deltas)) / k
        out[key] = (g64 - server_lr * step).astype(np.asarray(g).dtype)
    return out
