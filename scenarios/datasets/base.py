"""What a dataset loader returns, and the dataset registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedsim.core.registry import NoParams, PluginRegistry


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An in-memory labelled dataset.

    ``x`` is float32 of shape (N, *input_shape); ``y`` int64 labels in [0, num_classes).
    ``groups`` (optional) gives each sample's natural owner (device, writer), used by the
    ``natural`` partitioner. ``test_x``/``test_y`` are the dataset's official test split
    if it has one.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if self.groups is not None and len(self.groups) != len(self.y):
            raise ValueError(f"{self.name}: groups do not match samples")


DATASETS = PluginRegistry("dataset")


def register_dataset(name: str, params: type = NoParams) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Register ``load(params, seed, num_clients) -> Dataset`` under ``name``."""
    return DATASETS.register_fn(name, params)


def resolve_dataset_params(name: str, raw: Mapping[str, Any], path: str) -> Any:
    return DATASETS.resolve_params(name, raw, path)


def load_dataset(name: str, params: Any, seed: int, num_clients: int) -> Dataset:
    return DATASETS.get(name, "data.dataset.name").fn(params, seed, num_clients)


