"""Simulated devices: compute speed, availability and mid-round dropout, per client.

Speeds are drawn once per run from the scenario's distribution (1 = the reference
device); a device needs ``seconds_per_sample / speed`` virtual seconds per training
sample, times an optional per-round lognormal jitter. A client is online when sampled
with probability ``availability``, or according to a CSV trace of online intervals
(``client,start,end`` in virtual seconds; client ``i`` follows trace client
``i mod n``, and the trace repeats with period ``availability_period``, default the
last end). An online client drops out mid-round with probability ``dropout``.
All draws come from ``(seed, round, client, purpose)`` streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from fedsim.scenarios.distributions import ConstantParams, parse_client, parse_float, read_csv, sample

from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.core.schema import Named, named, option


@dataclasses.dataclass(frozen=True)
class DevicesSection:
    speed: Named = named("distribution", "fedsim.scenarios.distributions:positive", Named("constant", ConstantParams(1.0)))
    seconds_per_sample: float = option(0.0, ge=0.0, le=1e6,
                                       doc="virtual compute seconds per training sample at speed 1 (0 = free)")
    eval_seconds_per_sample: float = option(-1.0, doc="per evaluation sample; -1 = a third of seconds_per_sample")
    jitter: float = option(0.0, ge=0.0, le=10.0, doc="sigma of a per-round lognormal factor on compute time")
    availability: float = option(1.0, gt=0.0, le=1.0, doc="probability a sampled client is online")
    availability_trace: str = option("", doc="CSV of online intervals: client,start,end (virtual seconds)")
    availability_period: float = option(0.0, ge=0.0, doc="trace period; 0 = the trace's last end")
    dropout: float = option(0.0, ge=0.0, lt=1.0, doc="probability an online client drops out mid-round")
    straggler_fraction: float = option(0.0, ge=0.0, le=1.0,
                                       doc="FedProx's protocol: this fraction of each round's training clients "
                                           "straggle (dropped under deadline, partial epochs otherwise)")
    straggler_epochs: int = option(0, ge=0, le=100_000,
                                   doc="stragglers do U{1..this} local epochs; 0 = client.local_epochs - 1")

    def check(self, path: str) -> None:
        if self.eval_seconds_per_sample != -1.0 and self.eval_seconds_per_sample < 0:
            raise ConfigError(f"{path}.eval_seconds_per_sample", self.eval_seconds_per_sample, "must be >= 0 (or -1)")
        if self.availability_trace:
            read_intervals(self.availability_trace, f"{path}.availability_trace")  # fail at load time

    @property
    def eval_cost(self) -> float:
        return self.seconds_per_sample / 3 if self.eval_seconds_per_sample == -1.0 else self.eval_seconds_per_sample


def read_intervals(path: str, field: str) -> dict[int, np.ndarray]:
    """Per trace client, its sorted, non-overlapping (start, end) online intervals."""
    rows = read_csv(path, field, required=("client", "start", "end"))
    out: dict[int, list[tuple[float, float]]] = {}
    for line, row in enumerate(rows, start=2):
        client = parse_client(row["client"], field, path, line)
        start = parse_float(row["start"], field, path, line, "start")
        end = parse_float(row["end"], field, path, line, "end")
        if start < 0 or end <= start:
            raise ConfigError(field, path, f"malformed trace: line {line}, interval [{start:g}, {end:g}) must have 0 <= start < end")
        spans = out.setdefault(client, [])
        if spans and start < spans[-1][1]:
            raise ConfigError(field, path, f"trace not sorted: line {line}, client {client} starts at {start:g} "
                                           f"before its previous interval ends ({spans[-1][1]:g})")
        spans.append((start, end))
    return {c: np.asarray(v, dtype=np.float64) for c, v in sorted(out.items())}


class DeviceModel:
    """Per-client speeds and availability for one run."""

    def __init__(self, cfg: DevicesSection, num_clients: int, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.speeds = sample(cfg.speed, seeding.rng(seed, 0, seeding.SERVER, "device-speed"), num_clients,
                             "devices.speed", "positive")
        self._intervals: list[np.ndarray] | None = None
        self._period = 0.0
        if cfg.availability_trace:
            trace = read_intervals(cfg.availability_trace, "devices.availability_trace")
            ids = sorted(trace)
            self._intervals = [trace[ids[i % len(ids)]] for i in range(num_clients)]
            self._period = cfg.availability_period or max(float(v[-1, 1]) for v in trace.values())

    @property
    def active(self) -> bool:
        """Whether devices change anything (compute time, availability or dropout)."""
        c = self.cfg
        return c.seconds_per_sample > 0 or c.availability < 1 or bool(c.availability_trace) or c.dropout > 0

    def online(self, cid: int, rnd: int, now: float, phase: str) -> bool:
        if self._intervals is not None:
            t = now % self._period if self._period > 0 else now
            spans = self._intervals[cid]
            i = int(np.searchsorted(spans[:, 0], t, side="right")) - 1
            if i < 0 or t >= spans[i, 1]:
                return False
        if self.cfg.availability < 1.0:
            return bool(seeding.rng(self.seed, rnd, cid, f"online-{phase}").random() < self.cfg.availability)
        return True

    def drops_out(self, cid: int, rnd: int, phase: str) -> bool:
        if self.cfg.dropout <= 0:
            return False
        return bool(seeding.rng(self.seed, rnd, cid, f"dropout-{phase}").random() < self.cfg.dropout)

    def seconds_per_sample(self, cid: int, rnd: int, phase: str) -> float:
        base = self.cfg.seconds_per_sample if phase.startswith("train") else self.cfg.eval_cost
        if base <= 0:
            return 0.0
        factor = 1.0
        if self.cfg.jitter > 0:
            factor = float(seeding.rng(self.seed, rnd, cid, f"jitter-{phase}").lognormal(0.0, self.cfg.jitter))
        return base / float(self.speeds[cid]) * factor


def describe(model: DeviceModel) -> Mapping[str, Any]:
    s = model.speeds
    return {"speed_min": float(s.min()), "speed_median": float(np.median(s)), "speed_max": float(s.max())}
