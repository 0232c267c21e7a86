"""Sparsifiers: top-k (largest magnitudes) and random-k, with error feedback.

Error feedback keeps what was not sent in the client's persistent state (Flower's
``context.state``, so it survives rounds in which the client is not sampled):

- ``classic`` (Seide et al. 2014; Stich et al. 2018): e <- e + u; send c = C(e); e <- e - c.
- ``ef21`` (Richtarik et al. 2021): the client keeps g, sends c = C(u - g) and sets
  g <- g + c; the server keeps its own copy of g per client and uses it as the update.
- ``none``.

Deep Gradient Compression's warm-up (Lin et al. 2018) is ``warmup_rounds``: the kept
fraction falls exponentially from dense to ``k`` over those rounds. The payload holds
the kept values (float32) and, for top-k, their indices (uint16/uint32, as small as the
tensor allows); random-k sends only values, the server regenerates the indices from the
seed. ``scale`` makes random-k unbiased (values x n/k).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from fedsim.clients.codecs.base import (
    Arrays,
    Codec,
    CodecContext,
    is_float,
    register_codec,
)

from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class SparseParams:
    k: float = option(0.01, gt=0.0, le=1.0, doc="fraction of each tensor's values sent")
    error_feedback: str = option("classic", choices=("classic", "ef21", "none"))
    warmup_rounds: int = option(0, ge=0, le=1_000_000, doc="DGC: dense-to-k exponential warm-up")


@dataclasses.dataclass(frozen=True)
class RandomKParams:
    k: float = option(0.01, gt=0.0, le=1.0, doc="fraction of each tensor's values sent")
    error_feedback: str = option("none", choices=("classic", "ef21", "none"))
    warmup_rounds: int = option(0, ge=0, le=1_000_000)
    scale: bool = option(False, doc="multiply values by n/k (unbiased)")


def density(k: float, warmup_rounds: int, rnd: int) -> float:
    """DGC's schedule: k^(t/W) for t < W, then k (t = the round, from 1)."""
    if warmup_rounds <= 0 or rnd >= warmup_rounds:
        return k
    return float(k ** (max(rnd, 0) / warmup_rounds))


def index_dtype(n: int) -> type:
    return np.uint16 if n <= 65536 else np.uint32


class Sparsifier(Codec):
    def select(self, flat: np.ndarray, count: int, ctx: CodecContext, key: str) -> np.ndarray:
        raise NotImplementedError

    def keep(self, n: int, rnd: int) -> int:
        return max(1, min(n, math.ceil(density(self.params.k, self.params.warmup_rounds, rnd) * n))) if n else 0

    def encode(self, arrays: Arrays, ctx: CodecContext) -> Arrays:
        ef = self.params.error_feedback
        out: Arrays = {}
        for key, v in arrays.items():
            if not is_float(v):
                out[key] = v
                continue
            flat = v.astype(np.float32).reshape(-1)
            state = self.state_key(key, "memory")
            memory = ctx.state.get(state)
            if memory is None or memory.shape != flat.shape:
                memory = np.zeros_like(flat)
            target = flat + memory if ef == "classic" else flat - memory if ef == "ef21" else flat
            idx = np.sort(self.select(target, self.keep(len(flat), ctx.round), ctx, key))
            values = target[idx].astype(np.float32)
            if ef == "classic":
                residual = target.copy()
                residual[idx] = 0.0
                ctx.state[state] = residual
            elif ef == "ef21":
                memory = memory.copy()
                memory[idx] += values
                ctx.state[state] = memory
            self.emit(out, key, v.shape, idx, values)
        return out

    def emit(self, out: Arrays, key: str, shape: tuple[int, ...], idx: np.ndarray, values: np.ndarray) -> None:
        raise NotImplementedError

    def dense(self, key: str, parts: dict[str, np.ndarray], ctx: CodecContext) -> np.ndarray:
        raise NotImplementedError

    def decode(self, payload: Arrays, ctx: CodecContext) -> Arrays:
        out = {k: v for k, v in payload.items() if f"#{self.name}." not in k}
        for key, parts in self.parts(payload).items():
            dense = self.dense(key, parts, ctx)
            if self.params.error_feedback == "ef21":  # the server's copy of this client's g
                state = self.state_key(key, "server-g")
                g = ctx.state.get(state)
                g = (np.zeros_like(dense) if g is None or g.shape != dense.shape else g) + dense
                ctx.state[state] = g
                dense = g.copy()
            out[key] = dense.reshape(tuple(int(s) for s in parts["shape"]))
        return out


@register_codec("topk", SparseParams)
class TopK(Sparsifier):
    name = "topk"

    def select(self, flat: np.ndarray, count: int, ctx: CodecContext, key: str) -> np.ndarray:
        if count >= len(flat):
            return np.arange(len(flat))
        return np.argpartition(np.abs(flat), len(flat) - count)[len(flat) - count :]

    def emit(self, out: Arrays, key: str, shape: tuple[int, ...], idx: np.ndarray, values: np.ndarray) -> None:
        n = int(np.prod(shape)) if shape else 1
        out[self.part(key, "idx")] = idx.astype(index_dtype(n))
        out[self.part(key, "val")] = values
        out[self.part(key, "shape")] = np.asarray(shape, dtype=np.int32)

    def dense(self, key: str, parts: dict[str, np.ndarray], ctx: CodecContext) -> np.ndarray:
        n = int(np.prod(parts["shape"])) if len(parts["shape"]) else 1
        dense = np.zeros(n, dtype=np.float32)
        dense[parts["idx"].astype(np.int64)] = parts["val"]
        return dense


@register_codec("randk", RandomKParams)
class RandomK(Sparsifier):
    name = "randk"

    def select(self, flat: np.ndarray, count: int, ctx: CodecContext, key: str) -> np.ndarray:
        return ctx.rng(f"randk-{self.index}-{key}").choice(len(flat), size=count, replace=False)

    def emit(self, out: Arrays, key: str, shape: tuple[int, ...], idx: np.ndarray, values: np.ndarray) -> None:
        n = int(np.prod(shape)) if shape else 1
        out[self.part(key, "val")] = values * (n / len(values)) if self.params.scale else values
        out[self.part(key, "shape")] = np.asarray(shape, dtype=np.int32)

    def dense(self, key: str, parts: dict[str, np.ndarray], ctx: CodecContext) -> np.ndarray:
        n = int(np.prod(parts["shape"])) if len(parts["shape"]) else 1
        idx = np.sort(self.select(np.zeros(n), self.keep(n, ctx.round), ctx, key))
        dense = np.zeros(n, dtype=np.float32)
        dense[idx] = parts["val"]
        return dense
