"""Simulated links: per-client bandwidth and latency, packets, loss and retransmission.

A payload of ``b`` bytes travels as ``ceil(b / packet_bytes)`` packets. Each
transmission of a packet is lost independently with probability ``p`` (``iid``), or
as governed by a two-state Gilbert–Elliott chain over successive transmissions
(``gilbert_elliott``: Good -> Bad with ``p_gb``, Bad -> Good with ``p_bg``, loss
probability ``loss_good`` / ``loss_bad`` in each state; mean burst length
``1 / p_bg``). With ``retransmit``, lost packets are resent in later rounds
(selective repeat), up to ``max_retries`` times; what is still missing is lost for
good. Transfer time = latency + bytes sent / bandwidth + one round trip
(2 x latency) per retransmission round. Bandwidths are in Mbit/s (``inf`` = no limit).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from fedsim.scenarios.distributions import ConstantParams, parse_client, parse_float, read_csv, sample

from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.core.plugins import call_with
from fedsim.core.registry import PathContract, PluginRegistry
from fedsim.core.schema import Named, named, option


def _adapt(obj: Any, target: str, field: str) -> Callable[..., np.ndarray]:
    if not callable(obj):
        raise ConfigError(field, target, "must be a function draw(rng, m, state, **params) -> m booleans")

    def draw_user(params: Any, rng: np.random.Generator, m: int, state: list[bool]) -> np.ndarray:
        lost = np.asarray(call_with(obj, params, field, target, rng=rng, m=m, state=state), dtype=bool).reshape(-1)
        if lost.shape != (m,):
            raise ConfigError(field, target, f"must return {m} booleans (one per transmission), got {lost.shape}")
        return lost

    return draw_user


#: A user's loss model by path: ``fn(rng, m, state, **params)`` -> a lost mask for ``m``
#: transmissions in order (``state`` is a one-element list the model may keep, e.g. Good/Bad).
LOSS_MODELS = PluginRegistry("loss model", PathContract(adapt=_adapt, field="network.loss.name", provided=("rng", "m", "state")))


@dataclasses.dataclass(frozen=True)
class NoLossParams:
    pass


@dataclasses.dataclass(frozen=True)
class IidLossParams:
    p: float = option(0.0, ge=0.0, lt=1.0, doc="probability each packet transmission is lost")


@dataclasses.dataclass(frozen=True)
class GilbertElliottParams:
    p_gb: float = option(0.01, ge=0.0, le=1.0, doc="P(Good -> Bad) per packet")
    p_bg: float = option(0.3, gt=0.0, le=1.0, doc="P(Bad -> Good) per packet; mean burst length is 1 / p_bg")
    loss_good: float = option(0.0, ge=0.0, lt=1.0)
    loss_bad: float = option(1.0, ge=0.0, le=1.0)

    @property
    def stationary_bad(self) -> float:
        return self.p_gb / (self.p_gb + self.p_bg)

    @property
    def mean_loss(self) -> float:
        pb = self.stationary_bad
        return (1 - pb) * self.loss_good + pb * self.loss_bad

    def check(self, path: str) -> None:
        if self.mean_loss >= 1.0:
            raise ConfigError(f"{path}.loss_bad", self.loss_bad, "with these transitions every packet is lost; must be < 1")


LossDraw = Callable[[Any, np.random.Generator, int, list[bool]], np.ndarray]


def register_loss_model(name: str, params: type | None = None) -> Callable[[Any], Any]:
    """Register a packet-loss model under ``name``, as by path: ``fn(rng, m, state, **args) -> m
    lost flags`` for ``m`` transmissions in order. fedsim's built-ins pass a ``params``
    dataclass and take ``draw(params, rng, m, state)``."""
    return LOSS_MODELS.register_fn(name, params)


def resolve_loss(name: str, raw: Mapping[str, Any], path: str) -> Any:
    return LOSS_MODELS.resolve_params(name, raw, path)


resolve_loss.registry = LOSS_MODELS  # type: ignore[attr-defined]  (see fedsim.core.schema.iter_named)


@register_loss_model("none", NoLossParams)
def no_loss(p: NoLossParams, rng: np.random.Generator, m: int, state: list[bool]) -> np.ndarray:
    return np.zeros(m, dtype=bool)


@register_loss_model("iid", IidLossParams)
def iid_loss(p: IidLossParams, rng: np.random.Generator, m: int, state: list[bool]) -> np.ndarray:
    return rng.random(m) < p.p if p.p > 0 else np.zeros(m, dtype=bool)


def ge_states(p: GilbertElliottParams, rng: np.random.Generator, m: int, state: list[bool]) -> np.ndarray:
    """Bad-state flags of ``m`` successive transmissions.

    ``state[0]`` is the state of the first one; on return it holds the state of the
    transmission after the last (one Markov step on), so calls chain seamlessly.
    """
    out = np.empty(m, dtype=bool)
    bad = state[0]
    pos = 0
    while pos < m:
        leave = p.p_bg if bad else p.p_gb
        run = m - pos if leave <= 0 else int(rng.geometric(leave))  # sojourn length, >= 1
        out[pos : pos + run] = bad
        pos += run
        bad = not bad
    if m:
        last = bool(out[-1])
        state[0] = bool(rng.random() >= p.p_bg) if last else bool(rng.random() < p.p_gb)
    return out


@register_loss_model("gilbert_elliott", GilbertElliottParams)
def gilbert_elliott(p: GilbertElliottParams, rng: np.random.Generator, m: int, state: list[bool]) -> np.ndarray:
    bad = ge_states(p, rng, m, state)
    prob = np.where(bad, p.loss_bad, p.loss_good)
    return rng.random(m) < prob


@dataclasses.dataclass(frozen=True)
class NetworkSection:
    down_mbps: Named = named("distribution", "fedsim.scenarios.distributions:positive", Named("constant", ConstantParams(math.inf)))
    up_mbps: Named = named("distribution", "fedsim.scenarios.distributions:positive", Named("constant", ConstantParams(math.inf)))
    latency_s: Named = named("distribution", "fedsim.scenarios.distributions:nonnegative", Named("constant", ConstantParams(0.0)))
    packet_bytes: int = option(1500, ge=16, le=1 << 30)
    loss: Named = named("loss model", "fedsim.scenarios.network:resolve_loss", Named("none", NoLossParams()))
    lossy_downlink: bool = option(True, doc="apply the loss model to model downloads too")
    retransmit: bool = option(True, doc="resend lost packets (each round costs a round trip)")
    max_retries: int = option(8, ge=0, le=1000, doc="retransmission rounds before a packet is lost for good")
    on_loss: str = option("drop", choices=("drop", "mark"),
                          doc="a reply with packets lost for good: dropped whole, or delivered with spans marked missing")
    fill: str = option("exclude", choices=("exclude", "global"),
                       doc="server handling of missing spans: exclude the reply, or fill from the global model")
    bit_error_rate: float = option(0.0, ge=0.0, lt=1.0, doc="bit flips in delivered uplink float payloads")
    corruption_threshold: float = option(1e3, gt=0.0,
                                         doc="a value above this x max(1, max|global|) marks a reply corrupted")
    bandwidth_trace: str = option("", doc="CSV client,start,up_mbps,down_mbps: each client's bandwidth from start "
                                          "(virtual s) on, in place of up_mbps / down_mbps")
    bandwidth_period: float = option(0.0, ge=0.0, doc="the bandwidth trace repeats with this period; 0 = the last "
                                                      "rate holds")

    def check(self, path: str) -> None:
        if self.bandwidth_trace:
            read_bandwidth(self.bandwidth_trace, f"{path}.bandwidth_trace")  # fail at load time


def read_bandwidth(path: str, field: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per trace client (sorted by id): rate start times and the up / down rates (bytes/s)."""
    rows = read_csv(path, field, required=("client", "start", "up_mbps", "down_mbps"))
    out: dict[int, list[tuple[float, float, float]]] = {}
    for line, row in enumerate(rows, start=2):
        client = parse_client(row["client"], field, path, line)
        start = parse_float(row["start"], field, path, line, "start")
        up = parse_float(row["up_mbps"], field, path, line, "up_mbps")
        down = parse_float(row["down_mbps"], field, path, line, "down_mbps")
        if start < 0 or not up > 0 or not down > 0:
            raise ConfigError(field, path, f"malformed trace: line {line}, start must be >= 0 and rates > 0")
        steps = out.setdefault(client, [])
        if steps and start <= steps[-1][0]:
            raise ConfigError(field, path, f"trace not sorted: line {line}, client {client} starts at {start:g}, "
                                           f"not after its previous rate ({steps[-1][0]:g})")
        steps.append((start, up, down))
    result = []
    for _, steps in sorted(out.items()):
        arr = np.asarray(steps, dtype=np.float64)
        if arr[0, 0] > 0:
            raise ConfigError(field, path, "malformed trace: every client's first rate must start at 0")
        result.append((arr[:, 0], arr[:, 1] * 1e6 / 8, arr[:, 2] * 1e6 / 8))
    return result


@dataclasses.dataclass(frozen=True)
class Transfer:
    """What happened to one payload on one link."""

    seconds: float
    packets: int
    sent: int  # transmissions, retransmissions included
    retransmissions: int
    lost_events: int  # transmissions lost (recovered or not)
    lost: np.ndarray  # indices of packets lost for good

    @property
    def complete(self) -> bool:
        return len(self.lost) == 0


class LinkModel:
    """Per-client links for one run; ``transfer`` is deterministic in (seed, round, client, purpose)."""

    def __init__(self, cfg: NetworkSection, num_clients: int, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        rng = seeding.rng(seed, 0, seeding.SERVER, "links")
        self.down_bps = sample(cfg.down_mbps, rng, num_clients, "network.down_mbps", "positive") * 1e6 / 8
        self.up_bps = sample(cfg.up_mbps, rng, num_clients, "network.up_mbps", "positive") * 1e6 / 8
        self.latency = sample(cfg.latency_s, rng, num_clients, "network.latency_s", "nonnegative")
        self._draw = LOSS_MODELS.get(cfg.loss.name, "network.loss.name").fn
        self._rates = None  # time-varying: client i follows trace client i mod n
        if cfg.bandwidth_trace:
            trace = read_bandwidth(cfg.bandwidth_trace, "network.bandwidth_trace")
            self._rates = [trace[i % len(trace)] for i in range(num_clients)]

    def bps(self, cid: int, direction: str, now: float = 0.0) -> float:
        """The client's rate (bytes/s) in ``direction`` for a transfer starting at virtual ``now``."""
        if self._rates is None:
            return float(self.up_bps[cid] if direction == "up" else self.down_bps[cid])
        starts, up, down = self._rates[cid]
        t = now % self.cfg.bandwidth_period if self.cfg.bandwidth_period > 0 else now
        i = max(0, int(np.searchsorted(starts, t, side="right")) - 1)
        return float(up[i] if direction == "up" else down[i])

    @property
    def active(self) -> bool:
        c = self.cfg
        return (c.loss.name != "none" or c.bit_error_rate > 0 or self._rates is not None
                or bool(np.isfinite(self.down_bps).any())
                or bool(np.isfinite(self.up_bps).any()) or bool((self.latency > 0).any()))

    def transfer(self, cid: int, nbytes: int, direction: str, rnd: int, purpose: str, now: float = 0.0) -> Transfer:
        """One payload over the client's link, starting at virtual time ``now`` (a time-varying
        bandwidth applies the rate in force when the transfer starts, for the whole transfer)."""
        bps = self.bps(cid, direction, now)
        latency = float(self.latency[cid])
        n = -(-nbytes // self.cfg.packet_bytes) if nbytes > 0 else 0
        if self.cfg.loss.name == "none" or n == 0 or (direction == "down" and not self.cfg.lossy_downlink):
            return Transfer(seconds=latency + nbytes / bps, packets=n, sent=n, retransmissions=0, lost_events=0,
                            lost=np.zeros(0, dtype=np.int64))
        rng = seeding.rng(self.seed, rnd, cid, f"link-{direction}-{purpose}")
        params = self.cfg.loss.params
        state = [bool(rng.random() < params.stationary_bad)] if isinstance(params, GilbertElliottParams) else [False]
        pending = np.arange(n)
        sent = lost_events = rounds = 0
        limit = self.cfg.max_retries if self.cfg.retransmit else 0
        while len(pending) and rounds <= limit:
            lost = self._draw(params, rng, len(pending), state)
            sent += len(pending)
            lost_events += int(lost.sum())
            pending = pending[lost]
            rounds += 1
        sent_bytes = nbytes + (sent - n) * self.cfg.packet_bytes
        seconds = latency + sent_bytes / bps + max(0, rounds - 1) * 2 * latency
        return Transfer(seconds=seconds, packets=n, sent=sent, retransmissions=sent - n, lost_events=lost_events,
                        lost=pending)
