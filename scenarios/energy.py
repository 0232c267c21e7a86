"""Device energy: compute power x compute time, plus the radio's cost of each transfer.

Per client and message, in joules:

- compute: ``compute_w`` (drawn per device, like speeds) x the virtual compute seconds;
- radio, per transfer of ``b`` bytes taking ``t`` seconds (retransmissions included):
  ``alpha x Mbit + beta x t`` (Huang et al.'s linear power model: power = alpha x
  throughput + beta while the radio transfers, so energy = alpha x bits + beta x time);
- tail: after a transfer the radio stays in its high-power state for ``tail_s`` seconds
  at ``tail_mw``, unless the next transfer starts first. A client's download is followed
  by its compute (the tail runs ``min(tail_s, compute)``), its upload by a full tail.

Defaults are LTE's, from J. Huang, F. Qian, A. Gerber, Z. M. Mao, S. Sen, O. Spatscheck,
"A Close Examination of Performance and Power Characteristics of 4G LTE Networks",
MobiSys 2012 (their power model): uplink alpha 438.39 mW/Mbps, downlink alpha
51.97 mW/Mbps, beta 1288.04 mW, tail 1060 mW for 11.576 s. ``compute_w = 2.0`` W is an
assumption, not a published figure: a phone SoC under sustained load draws roughly
1-3 W; set it from your own devices' measurements.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from fedsim.scenarios.distributions import ConstantParams, sample

from fedsim.core import seeding
from fedsim.core.schema import Named, named, option


@dataclasses.dataclass(frozen=True)
class EnergySection:
    enabled: bool = option(False, doc="account energy per client and round (energy_j, energy_total_j)")
    compute_w: Named = named("distribution", "fedsim.scenarios.distributions:nonnegative",
                             Named("constant", ConstantParams(2.0)))
    up_mw_per_mbps: float = option(438.39, ge=0.0, le=1e9, doc="uplink radio power per Mbit/s (alpha_u)")
    down_mw_per_mbps: float = option(51.97, ge=0.0, le=1e9, doc="downlink radio power per Mbit/s (alpha_d)")
    radio_mw: float = option(1288.04, ge=0.0, le=1e9, doc="radio power while transferring (beta)")
    tail_mw: float = option(1060.0, ge=0.0, le=1e9, doc="radio power in the tail after a transfer")
    tail_s: float = option(11.576, ge=0.0, le=1e6, doc="tail length; cut short by the next transfer")


@dataclasses.dataclass(frozen=True)
class Use:
    """What a client did for one message: seconds and bytes on each side of its compute."""

    down_bytes: float = 0.0
    down_s: float = 0.0
    compute_s: float = 0.0
    up_bytes: float = 0.0
    up_s: float = 0.0
    uploaded: bool = False  # the reply left (its tail follows)


class EnergyModel:
    """Per-device compute power for one run, and the energy of one message's use."""

    def __init__(self, cfg: EnergySection, num_clients: int, seed: int) -> None:
        self.cfg = cfg
        self.compute_w = sample(cfg.compute_w, seeding.rng(seed, 0, seeding.SERVER, "device-power"), num_clients,
                                "energy.compute_w", "nonnegative")

    def radio_j(self, nbytes: float, seconds: float, direction: str) -> float:
        alpha = self.cfg.up_mw_per_mbps if direction == "up" else self.cfg.down_mw_per_mbps
        return (alpha * nbytes * 8 / 1e6 + self.cfg.radio_mw * seconds) / 1000.0

    def joules(self, cid: int, use: Use) -> float:
        c = self.cfg
        total = float(self.compute_w[cid]) * use.compute_s
        if use.down_s > 0 or use.down_bytes > 0:
            total += self.radio_j(use.down_bytes, use.down_s, "down")
            total += c.tail_mw / 1000.0 * min(c.tail_s, use.compute_s if use.uploaded else c.tail_s)
        if use.uploaded:
            total += self.radio_j(use.up_bytes, use.up_s, "up") + c.tail_mw / 1000.0 * c.tail_s
        return total


def sent_bytes(nbytes: int, packets: int, sent: int) -> float:
    """Bytes on the air for a transfer: retransmitted packets count again."""
    return float(nbytes) * (sent / packets) if packets > 0 else float(nbytes)


def describe(model: EnergyModel) -> dict[str, float]:
    w = np.asarray(model.compute_w)
    return {"compute_w_min": float(w.min()), "compute_w_median": float(np.median(w)), "compute_w_max": float(w.max())}
