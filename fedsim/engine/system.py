"""The simulated system around each message: device, links, payload damage, arrival time.

For a message to client ``c`` sent at virtual time ``t``: is ``c`` online? does the
model arrive (downlink transfer, possibly lost)? does ``c`` drop out? After the
ClientApp ran: compute time = examples processed x seconds per sample (the reply's
``examples-seen`` metric, else ``num-examples``), then the uplink transfer (lost
packets, bit errors). Arrival = t + downlink + compute + uplink.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode

from fedsim.clients.settings import ClientSection
from fedsim.core import keys, seeding
from fedsim.core.records import configs_of, metrics_of, payload_bytes
from fedsim.engine.executors.base import error_reply
from fedsim.engine.payload import fill_missing, flip_bits, implausible, missing_values
from fedsim.engine.policies import RoundSection
from fedsim.scenarios.devices import DeviceModel, DevicesSection
from fedsim.scenarios.energy import EnergyModel, EnergySection, Use, sent_bytes
from fedsim.scenarios.network import LinkModel, NetworkSection, Transfer

# Outcome statuses
OK = "ok"
ERROR = "error"  # the reply carries an Error (raised, non-finite, corrupted, incomplete)
UNAVAILABLE = "unavailable"
DROPOUT = "dropout"
MODEL_LOST = "model_lost"  # downlink lost for good: the client never trained
REPLY_LOST = "reply_lost"  # uplink lost for good and on_loss = "drop"


@dataclasses.dataclass
class Dispatch:
    """The fate of one message before the ClientApp runs."""

    status: str  # OK (run it) or UNAVAILABLE / DROPOUT / MODEL_LOST
    down: Transfer | None
    seconds_per_sample: float
    budget: float | None = None  # partial_work: compute seconds the client may use
    down_bytes: float = 0.0  # bytes on the air for the download (retransmissions included)
    sent_at: float = 0.0  # virtual time the message left the server
    energy_j: float = 0.0  # a client that never trained: its download and the radio's tail


@dataclasses.dataclass
class Arrival:
    status: str
    reply: Message | None
    arrival: float  # seconds after the send; inf = never
    compute: float
    up: Transfer | None
    bit_flips: int = 0
    reason: str = ""
    energy_j: float = 0.0  # the client's, for this message (download, compute, upload, tails)
    partial: bool = False  # partial work: the client ran out of its time budget (see `ran_out_of_budget`)


class SystemModel:
    def __init__(self, devices: DevicesSection, network: NetworkSection, rounds: RoundSection, num_clients: int,
                 seed: int, local_epochs: int = 1, energy: EnergySection | None = None,
                 client: ClientSection | None = None) -> None:
        self.devices = DeviceModel(devices, num_clients, seed)
        self.energy = EnergyModel(energy, num_clients, seed) if energy is not None and energy.enabled else None
        self.links = LinkModel(network, num_clients, seed)
        self.rounds = rounds
        self.policy = rounds.make()
        self.net = network
        self.seed = seed
        self.client = client  # fedsim's ClientApp's settings: which replies are time-budget partial work
        max_epochs = devices.straggler_epochs or local_epochs - 1
        self.straggler_epochs = max(1, max_epochs)

    @classmethod
    def default(cls, num_clients: int, seed: int) -> SystemModel:
        return cls(DevicesSection(), NetworkSection(), RoundSection(), num_clients, seed)

    @property
    def active(self) -> bool:
        return self.devices.active or self.links.active or self.policy.active

    def stragglers(self, rnd: int, phase: str, candidates: list[int]) -> dict[int, int]:
        """FedProx's protocol: exactly round(fraction x K) of this round's K training clients
        straggle; each gets a number of local epochs drawn from U{1..straggler_epochs}."""
        fraction = self.devices.cfg.straggler_fraction
        if fraction <= 0 or not phase.startswith("train") or not candidates:
            return {}
        rng = seeding.rng(self.seed, rnd, seeding.SERVER, f"stragglers-{phase}")
        chosen = rng.choice(sorted(candidates), size=int(round(fraction * len(candidates))), replace=False)
        return {int(c): int(rng.integers(1, self.straggler_epochs + 1)) for c in sorted(chosen)}

    # ------------------------------------------------------------ before running
    def dispatch(self, cid: int, rnd: int, phase: str, now: float, down_bytes: int, purpose: str,
                 deadline: float | None) -> Dispatch:
        spp = self.devices.seconds_per_sample(cid, rnd, phase)
        if not self.devices.online(cid, rnd, now, purpose):
            return Dispatch(UNAVAILABLE, None, spp)
        down = self.links.transfer(cid, down_bytes, "down", rnd, purpose, now)
        air = sent_bytes(down_bytes, down.packets, down.sent)
        if not down.complete:
            return Dispatch(MODEL_LOST, down, spp, down_bytes=air, energy_j=self._joules(cid, Use(air, down.seconds)))
        if self.devices.drops_out(cid, rnd, purpose):
            return Dispatch(DROPOUT, down, spp, down_bytes=air, energy_j=self._joules(cid, Use(air, down.seconds)))
        budget = None
        if self.policy.gives_budget and deadline is not None and phase.startswith("train"):
            # The client is told how long it may compute: the deadline minus the model's
            # download and an estimate of the reply's upload (a reply the model's size).
            up_estimate = float(self.links.latency[cid]) + down_bytes / self.links.bps(cid, "up", now + down.seconds)
            budget = max(0.0, deadline - down.seconds - up_estimate)
        return Dispatch(OK, down, spp, budget, down_bytes=air, sent_at=now)

    def _joules(self, cid: int, use: Use) -> float:
        return self.energy.joules(cid, use) if self.energy is not None else 0.0

    def _spent(self, cid: int, d: Dispatch, compute: float, up: Transfer | None, up_bytes: int) -> float:
        """The client's energy for one message that ran: download, compute, upload, tails."""
        if self.energy is None:
            return 0.0
        use = Use(d.down_bytes, d.down.seconds if d.down is not None else 0.0, compute,
                  sent_bytes(up_bytes, up.packets, up.sent) if up is not None else 0.0,
                  up.seconds if up is not None else 0.0, uploaded=up is not None)
        return self.energy.joules(cid, use)

    # ------------------------------------------------------------- after running
    def arrive(self, cid: int, rnd: int, purpose: str, sent: Message, reply: Message, d: Dispatch) -> Arrival:
        down_s = d.down.seconds if d.down is not None else 0.0
        if reply.has_error():
            up = self.links.transfer(cid, 0, "up", rnd, purpose, d.sent_at + down_s)
            return Arrival(ERROR, reply, down_s + up.seconds, 0.0, up, energy_j=self._spent(cid, d, 0.0, up, 0))
        compute = examples_processed(reply.content) * d.seconds_per_sample
        content = reply.content
        up_bytes = payload_bytes(content)
        up = self.links.transfer(cid, up_bytes, "up", rnd, purpose, d.sent_at + down_s + compute)
        arrival = down_s + compute + up.seconds
        energy = self._spent(cid, d, compute, up, up_bytes)
        if not up.complete:
            if self.net.on_loss == "drop":
                return Arrival(REPLY_LOST, None, math.inf, compute, up, energy_j=energy)
            missing = missing_values(content, up.lost, self.net.packet_bytes)
            filled = fill_missing(content, missing, sent.content) if self.net.fill == "global" else None
            if filled is None:
                why = (f"reply excluded: {len(up.lost)} packet(s) lost for good"
                       + (" and no matching global array to fill from" if self.net.fill == "global" else ""))
                return Arrival(ERROR, error_reply(sent, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, why), arrival, compute,
                               up, reason=why, energy_j=energy)
            content = filled
        flips = 0
        if self.net.bit_error_rate > 0:
            content, flips = flip_bits(content, self.net.bit_error_rate,
                                       seeding.rng(self.seed, rnd, cid, f"bit-errors-{purpose}"))
            bad = implausible(content, sent.content, self.net.corruption_threshold) if flips else None
            if bad is not None:
                why = f"reply excluded: corrupted in transit ({flips} bit flips; implausible values in {bad})"
                return Arrival(ERROR, error_reply(sent, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, why), arrival, compute,
                               up, flips, reason=why, energy_j=energy)
        partial = self.ran_out_of_budget(sent, reply.content, d)
        if content is not reply.content:
            reply = Message(content=content, metadata=reply.metadata)
        return Arrival(OK, reply, arrival, compute, up, flips, energy_j=energy, partial=partial)

    def ran_out_of_budget(self, sent: Message, content: RecordDict, d: Dispatch) -> bool:
        """Whether a training reply is partial work under its time budget (``partial_work``):
        the client stopped at the steps that fit its budget, short of its full local work.
        The budget's step count and the full work are the ClientApp's own
        (`fedsim.clients.app.train_settings`: its settings and the message's train config);
        without fedsim's client settings (a user's ClientApp) nothing is counted."""
        if d.budget is None or self.client is None:
            return False
        from fedsim.clients.app import train_settings  # the client's own arithmetic

        config = next((dict(rec) for _, rec in configs_of(sent.content)), {})
        config.update({keys.TIME_BUDGET: d.budget, keys.SECONDS_PER_SAMPLE: d.seconds_per_sample})
        try:
            settings = train_settings(self.client, config)
        except (TypeError, ValueError):  # a config the client would reject: not ours to count
            return False
        metrics = next((rec for _, rec in metrics_of(content)), {})
        n, steps = metrics.get(keys.NUM_EXAMPLES), metrics.get(keys.STEPS)
        if settings.max_steps <= 0 or not isinstance(n, int) or not isinstance(steps, int):
            return False
        full = dataclasses.replace(settings, max_steps=0).total_steps(n)
        return steps == settings.max_steps < full


def examples_processed(content: RecordDict) -> float:
    """Training samples the client processed: ``examples-seen`` if reported, else ``num-examples``."""
    for _, rec in metrics_of(content):
        for key in (keys.EXAMPLES_SEEN, keys.NUM_EXAMPLES):
            value = rec.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return float(value)
    return 0.0


def overcommit_nodes(seed: int, exchange: int, chosen: list[int], all_nodes: list[int], extra: int) -> list[int]:
    """``extra`` more nodes, drawn from those not already chosen (seeded)."""
    pool = np.array(sorted(set(all_nodes) - set(chosen)), dtype=np.int64)
    if extra <= 0 or len(pool) == 0:
        return []
    rng = seeding.rng(seed, exchange, seeding.SERVER, "over-select")
    return [int(x) for x in rng.choice(pool, size=min(extra, len(pool)), replace=False)]
