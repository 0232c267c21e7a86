"""A user's own plug-ins, written against fedsim's public contracts only (used by the tests).

Each is usable by path (``tests.apps.plugins:blobs``) and, once this module is imported,
by the names it registers (``plugin_blobs``, ``plugin_tinynet``, ``plugin_blocks``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from fedsim.clients.codecs import Codec, CodecContext
from fedsim.clients.models import register_model
from fedsim.scenarios.attacks import Attack, ProbeView, Reconstruction
from fedsim.scenarios.datasets import register_dataset
from fedsim.scenarios.partitioners import register_partitioner
from torch import nn

from fedsim.engine.policies import RoundPolicy, Selection


def blobs(n: int = 300, dim: int = 6, classes: int = 3, seed: int = 0) -> dict[str, Any]:
    """Gaussian blobs, one per class; drawn from fedsim's data seed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    return {"x": centres[y] + rng.normal(size=(n, dim)), "y": y}


class TinyNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def blocks(labels: np.ndarray, num_clients: int, rng: np.random.Generator, shuffle: bool = False) -> list[np.ndarray]:
    """Contiguous blocks of sample indices: client i gets block i (hand-checkable)."""
    order = rng.permutation(len(labels)) if shuffle else np.arange(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def overlapping(labels: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Garbage: every client gets every sample."""
    return [np.arange(len(labels)) for _ in range(num_clients)]


class HalfPrecision(Codec):
    """A codec by path: send the delta as float16 (what ``fp16`` does), with a ``Params`` dataclass."""

    name = "user_half"

    @dataclasses.dataclass(frozen=True)
    class Params:
        scale: float = 1.0

    def encode(self, arrays: dict[str, np.ndarray], ctx: CodecContext) -> dict[str, np.ndarray]:
        return {k: (v * self.params.scale).astype(np.float16) if v.dtype.kind == "f" else v
                for k, v in arrays.items()}

    def decode(self, payload: dict[str, np.ndarray], ctx: CodecContext) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) / self.params.scale if v.dtype == np.float16 else v
                for k, v in payload.items()}


class ZeroAttack(Attack):
    """An attack by path that reconstructs zeros (a floor for the scores)."""

    name = "zeros"

    def run(self, view: ProbeView, generator: torch.Generator) -> Reconstruction:
        n = view.images
        return Reconstruction(x=torch.zeros((n, *view.input_shape)), labels=torch.zeros(n, dtype=torch.long))


class FastestHalf(RoundPolicy):
    """A round policy by path: keep the faster half of the replies, wait for them only."""

    name = "fastest_half"

    def select(self, arrivals: list[float], deadline: float | None, keep: int | None = None) -> Selection:
        real = sorted((a, i) for i, a in enumerate(arrivals) if math.isfinite(a))
        half = real[: max(1, len(real) // 2)]
        kept = sorted(i for _, i in half)
        return Selection(kept, max((a for a, _ in half), default=0.0), sorted(i for _, i in real[len(half):]))


# The same plug-ins under registered names, with the same contract as by path (defined in this
# importable module, so other processes import it to know them).
register_dataset("plugin_blobs")(blobs)
register_model("plugin_tinynet")(TinyNet)
register_partitioner("plugin_blocks")(blocks)


def halves(rng: np.random.Generator, n: int, fast: float = 4.0) -> np.ndarray:
    """A device-speed distribution by path: the first half of the clients are ``fast`` times faster."""
    return np.where(np.arange(n) < n // 2, fast, 1.0)


def negative(rng: np.random.Generator, n: int) -> np.ndarray:
    return -np.ones(n)


def every_other(rng: np.random.Generator, m: int, state: list[bool], start: bool = True) -> np.ndarray:
    """A packet-loss model by path: every other transmission is lost (the first if ``start``)."""
    lost = (np.arange(m) % 2 == 0) if start else (np.arange(m) % 2 == 1)
    return lost


class WrongOutput(nn.Module):
    """Seven logits whatever the number of classes."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class WrongInput(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(99, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class NoParameters(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 3)


def from_file(path: str = "missing.csv") -> dict[str, Any]:
    return {"x": np.loadtxt(path), "y": np.zeros(1)}


def first_gets_nothing(labels: np.ndarray, num_clients: int) -> list[np.ndarray]:
    return [np.zeros(0, dtype=np.int64), *np.array_split(np.arange(len(labels)), num_clients - 1)]


def y_not_labels(y: np.ndarray, num_clients: int) -> list[np.ndarray]:
    return np.array_split(np.arange(len(y)), num_clients)


from fedsim.engine.selection import SelectionPolicy  # noqa: E402


class LowestIds(SelectionPolicy):
    """A user's selection policy: always the k lowest node ids (deterministic, hand-checkable)."""

    name = "lowest_ids"

    def choose(self, k, nodes, rnd, rng):  # type: ignore[no-untyped-def]
        return sorted(nodes)[:k]
