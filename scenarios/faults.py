"""Fault injection: clients that raise, return NaN, the wrong shapes, nothing, or hog memory.

``[faults]`` gives, per kind, the fraction of training calls that fail that way; which
calls fail is drawn from ``(seed, round, client)``, so every executor injects the same
faults. The faulty behaviour wraps the real ClientApp (fedsim's or a user's), and the
engine must catch each one: the grid and executors report the client id and reason and
exclude the reply; no fault reaches the model or stops the run.

    [faults]
    raise_fraction = 0.1      # the ClientApp raises
    nan_fraction = 0.1        # its reply's arrays are NaN
    shape_fraction = 0.05     # its reply's first array has the wrong shape
    empty_fraction = 0.05     # it replies with no records
    hog_fraction = 0.05       # it allocates hog_mb MB (beyond ray.client_memory_mb -> MemoryError)
    hog_mb = 4096
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fedsim.core import keys, seeding
from fedsim.core.errors import ConfigError
from fedsim.core.records import configs_of
from fedsim.core.schema import option

KINDS = ("raise", "nan", "shape", "empty", "hog")


@dataclasses.dataclass(frozen=True)
class FaultsSection:
    raise_fraction: float = option(0.0, ge=0.0, le=1.0, doc="training calls whose ClientApp raises")
    nan_fraction: float = option(0.0, ge=0.0, le=1.0, doc="training replies whose arrays become NaN")
    shape_fraction: float = option(0.0, ge=0.0, le=1.0, doc="training replies whose first array loses a row")
    empty_fraction: float = option(0.0, ge=0.0, le=1.0, doc="training replies with no records")
    hog_fraction: float = option(0.0, ge=0.0, le=1.0, doc="training calls that allocate hog_mb MB")
    hog_mb: int = option(1024, ge=1, le=1_000_000, doc="memory a hogging client allocates")

    def check(self, path: str) -> None:
        total = sum(self.fractions())
        if total > 1.0:
            raise ConfigError(f"{path}.raise_fraction", round(total, 6), "the fault fractions must sum to <= 1")

    def fractions(self) -> tuple[float, ...]:
        return (self.raise_fraction, self.nan_fraction, self.shape_fraction, self.empty_fraction, self.hog_fraction)

    @property
    def enabled(self) -> bool:
        return any(f > 0 for f in self.fractions())


class InjectedFault(RuntimeError):
    pass


def draw(faults: FaultsSection, seed: int, rnd: int, cid: int) -> str | None:
    """The fault of this client's training call in this round (None: behaves)."""
    u = float(seeding.rng(seed, rnd, cid, "fault").random())
    edge = 0.0
    for kind, fraction in zip(KINDS, faults.fractions()):
        edge += fraction
        if u < edge:
            return kind
    return None


def _round(message: Message) -> int:
    for _, rec in configs_of(message.content):
        value = rec.get(keys.SERVER_ROUND)
        if isinstance(value, int):
            return value
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0


class FaultyApp:
    """A ClientApp wrapper that misbehaves as drawn. Picklable (it holds the app's AppRef)."""

    def __init__(self, app: Any, faults: FaultsSection, seed: int) -> None:
        self.app, self.faults, self.seed = app, faults, seed

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type != "train":
            return self.app(message, context)
        cid = int(context.node_config.get(keys.PARTITION_ID, 0))
        kind = draw(self.faults, self.seed, _round(message), cid)
        if kind == "raise":
            raise InjectedFault(f"injected fault: client {cid} raises (faults.raise_fraction)")
        if kind == "hog":
            block = np.ones(self.faults.hog_mb * 2**20 // 8)  # really allocated and touched
            del block
        reply = self.app(message, context)
        if kind in (None, "hog") or reply.has_error():
            return reply
        if kind == "empty":
            return Message(RecordDict(), reply_to=message)
        content = RecordDict()
        done = False
        for key, rec in reply.content.items():
            if isinstance(rec, ArrayRecord) and not done:
                arrays = {}
                for i, (name, arr) in enumerate(rec.items()):
                    values = arr.numpy()
                    if kind == "nan":
                        values = np.full_like(values, np.nan)
                    elif kind == "shape" and i == 0:
                        values = values[:-1] if values.ndim and values.shape[0] > 1 else np.zeros((2, 2), values.dtype)
                    arrays[name] = Array(np.ascontiguousarray(values))
                rec = ArrayRecord(arrays)
                done = True
            content[key] = rec
        return Message(content, reply_to=message)
