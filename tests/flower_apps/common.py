"""Shared pieces of the compatibility apps (plain numpy and Flower)."""

from __future__ import annotations

from typing import Any

import numpy as np

NODES = 5
ROUNDS = 3
SHAPES = {"w": (2, 3), "b": (3,)}


def wait_for_nodes(grid: Any, timeout: float = 120.0) -> None:
    """Every node connected before the first round: Flower's run_simulation registers its
    nodes while the ServerApp starts, and a strategy sampling earlier samples fewer nodes
    than its fraction says (seen under load: 'Waiting for nodes to connect: 0 connected',
    then 'Sampled 2 nodes (out of 5)'). fedsim's grid has every node from the start."""
    import time

    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < NODES and time.monotonic() < deadline:
        time.sleep(0.2)


def initial() -> dict[str, np.ndarray]:
    return {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}


def local_update(arrays: dict[str, np.ndarray], pid: int) -> dict[str, np.ndarray]:
    """Client ``pid`` moves every value by ``pid + 1`` (hand-checkable aggregates)."""
    return {k: v + np.float32(pid + 1) for k, v in arrays.items()}


def score(arrays: dict[str, np.ndarray]) -> tuple[float, float]:
    """A "centralized evaluation": loss = mean value, accuracy = 1 / (1 + loss) (both exact)."""
    loss = float(np.mean([v.mean() for v in arrays.values()]))
    return loss, 1.0 / (1.0 + loss)


def plain(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: plain(v) for k, v in values.items()}
    if isinstance(values, np.ndarray):
        return values.tolist()
    if isinstance(values, (list, tuple)):
        return [plain(v) for v in values]
    if isinstance(values, (np.floating, np.integer)):
        return values.item()
    return values


def record(arrays: dict[str, np.ndarray]) -> Any:
    """A Flower ArrayRecord of named numpy arrays."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
