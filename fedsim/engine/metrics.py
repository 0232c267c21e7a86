"""Per-round records built from the grid's exchanges (one line of metrics.jsonl each).

A round's record is a typed `RoundRecord`; its field names are the metrics.jsonl keys.
Fields that only some runs have (a probe's, a strategy's ``round_metrics``, LoRA's
aggregation error, round 0's ``bytes_shared``) go in ``extra`` and are merged flat.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fedsim.core import keys
from fedsim.core.records import metrics_of
from fedsim.engine.clock import VirtualClock
from fedsim.engine.grid import Exchange, weighted_metric

#: Record fields that hold wall-clock measurements (everything else is deterministic).
WALL_FIELDS = ("wall_round_s", "wall_total_s", "wall_client_s", "wall_train_s", "wall_encode_s", "wall_decode_s",
               "wall_probe_s")

#: Per-round sums of the simulated system's events (see `fedsim.grid.Exchange`): what
#: happened to the clients sampled for training, and to all traffic (training and evaluation).
PARTICIPATION_COUNTS = ("stragglers", "partial", "dropouts", "unavailable", "model_lost", "reply_lost",
                        "corrupted", "over_selected")
TRAFFIC_COUNTS = ("retransmissions", "packets_lost", "packets_lost_for_good", "bit_flips")
SYSTEM_COUNTS = PARTICIPATION_COUNTS + TRAFFIC_COUNTS


def client_spread(replies: list[Any]) -> dict[str, float | None]:
    """Mean, 10th percentile and worst of the clients' own accuracies (clients with a test
    split only; each client counts once, whatever its size)."""
    accs = []
    for reply in replies:
        if reply.has_error():
            continue
        for _, rec in metrics_of(reply.content):
            acc = next((rec[n] for n in keys.EVAL_ACC_ALIASES if n in rec), None)
            n = rec.get(keys.NUM_EXAMPLES, 1)
            if isinstance(acc, (int, float)) and not isinstance(acc, bool) and math.isfinite(acc) and n:
                accs.append(float(acc))
            break
    if not accs:
        return {"client_acc_mean": None, "client_acc_p10": None, "client_acc_worst": None}
    values = np.asarray(accs, dtype=np.float64)
    return {"client_acc_mean": float(values.mean()), "client_acc_p10": float(np.percentile(values, 10)),
            "client_acc_worst": float(values.min())}


@dataclasses.dataclass
class RoundRecord:
    """One round: accuracy and losses, participation, bytes, failures, virtual and wall time."""

    round: int
    central_loss: float | None
    central_acc: float | None
    fed_loss: float | None  # federated evaluation, weighted by num-examples
    fed_acc: float | None
    # Per-client view of federated evaluation (each client's accuracy on its own test split,
    # unweighted; personalized strategies evaluate the client's personal model):
    client_acc_mean: float | None
    client_acc_p10: float | None  # 10th percentile (numpy's linear interpolation)
    client_acc_worst: float | None
    train_loss: float | None
    clients_sampled: int
    clients_replied: int
    clients_failed: int
    eval_clients_sampled: int
    eval_clients_replied: int
    eval_clients_failed: int
    bytes_down: int
    bytes_up: int
    bytes_shared: int
    failures: list[dict[str, Any]]  # each: partition_id, node_id, phase, reason
    virtual_round_s: float
    virtual_time_s: float
    stragglers: int
    partial: int
    dropouts: int
    unavailable: int
    model_lost: int
    reply_lost: int
    corrupted: int
    over_selected: int
    retransmissions: int
    packets_lost: int
    packets_lost_for_good: int
    bit_flips: int
    wall_round_s: float
    wall_total_s: float
    wall_client_s: float
    wall_train_s: float
    wall_encode_s: float
    wall_decode_s: float
    wall_probe_s: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The metrics.jsonl line: every field by name, ``extra`` merged flat."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        return out


assert set(SYSTEM_COUNTS) <= {f.name for f in dataclasses.fields(RoundRecord)}
assert set(WALL_FIELDS) <= {f.name for f in dataclasses.fields(RoundRecord)}


class Recorder:
    """Collects exchanges and closes them into one record per round.

    ``close_round`` is called by the run loop at the end of each round (with the
    centralized evaluation, if any). With ``auto_close`` (used when a user's own
    ServerApp drives the grid), a round is closed when exchanges of a later round start.
    """

    def __init__(self, auto_close: bool = False, on_record: Callable[[dict[str, Any]], None] | None = None,
                 client_metrics: bool = False) -> None:
        self.records: list[dict[str, Any]] = []
        self.auto_close = auto_close
        #: Also record every numeric metric the ClientApps reply with, as the num-examples
        #: weighted mean (Flower's default aggregation): ``client_train_<key>``, ``client_eval_<key>``.
        self.client_metrics = client_metrics
        self.on_record = on_record
        self._open: list[Exchange] = []
        self._t0 = time.perf_counter()
        self._t_last = self._t0
        self.clock: VirtualClock | None = None  # the grid's, for the cumulative virtual time
        self._v_last = 0.0
        self.pending: dict[str, Any] = {}  # merged into the next record only (e.g. round 0's bytes_shared)
        self._initial: dict[str, Any] | None = None
        #: Extra per-round fields computed from the round's training replies.
        self.train_metrics: list[Callable[[list[Any]], dict[str, Any]]] = []

    def resume_at(self, virtual_now: float) -> None:
        """Continue after a checkpoint: the next round's virtual duration counts from here."""
        self._v_last = virtual_now

    def open_releases(self) -> tuple[int, list[int]]:
        """For privacy accounting: the open round's training replies kept, and every client whose
        training reply reached the server (kept or late)."""
        train = [e for e in self._open if e.phase.startswith("train")]
        return sum(e.replied for e in train), [c for e in train for c in e.released]

    def has_open(self) -> bool:
        """Whether exchanges (or round 0's initial evaluation) wait to be closed into a round."""
        return bool(self._open) or self._initial is not None

    def initial(self, fields: dict[str, Any]) -> None:
        """Round 0 (the initial model's evaluation, before any exchange): closed when the
        first exchange arrives (auto_close), or at `flush`."""
        self._initial = {**(self._initial or {}), **fields}

    def _close_initial(self) -> None:
        if self._initial is not None:
            fields, self._initial = self._initial, None
            self.pending = {**fields, **self.pending}
            self.close_round(0)

    def on_exchange(self, exchange: Exchange) -> None:
        self._close_initial()
        if self.auto_close and self._open and exchange.round > self._open[-1].round:
            self.close_round(self._open[-1].round)
        self._open.append(exchange)

    def close_round(self, rnd: int, central: tuple[float, float] | None = None) -> dict[str, Any]:
        exs, self._open = self._open, []
        train = [e for e in exs if e.phase.startswith("train")]
        evals = [e for e in exs if e.phase.startswith("evaluate")]
        now = time.perf_counter()
        # The round ends now; with auto_close the clock may already have moved on into the
        # next round's first exchange, so the round ends when its last exchange did.
        if self.clock is not None and not self.auto_close:
            vnow = self.clock.now
        elif exs:
            vnow = max(e.virtual_start + e.virtual_seconds for e in exs)
        else:
            vnow = self._v_last
        train_replies = [r for e in train for r in e.replies]
        eval_replies = [r for e in evals for r in e.replies]
        rec = RoundRecord(
            round=rnd,
            central_loss=central[0] if central else None,
            central_acc=central[1] if central else None,
            fed_loss=weighted_metric(eval_replies, keys.EVAL_LOSS_ALIASES),
            fed_acc=weighted_metric(eval_replies, keys.EVAL_ACC_ALIASES),
            **client_spread(eval_replies),
            train_loss=weighted_metric(train_replies, keys.LOSS_ALIASES),
            clients_sampled=sum(e.sampled for e in train),
            clients_replied=sum(e.replied for e in train),
            clients_failed=sum(len(e.failures) for e in train),
            eval_clients_sampled=sum(e.sampled for e in evals),
            eval_clients_replied=sum(e.replied for e in evals),
            eval_clients_failed=sum(len(e.failures) for e in evals),
            bytes_down=sum(e.bytes_down for e in exs),
            bytes_up=sum(e.bytes_up for e in exs),
            bytes_shared=0,
            failures=[{"partition_id": f.partition_id, "node_id": f.node_id, "phase": f.phase, "reason": f.reason}
                      for e in exs for f in e.failures],
            virtual_round_s=vnow - self._v_last,
            virtual_time_s=vnow,
            **{key: sum(getattr(e, key) for e in train) for key in PARTICIPATION_COUNTS},
            **{key: sum(getattr(e, key) for e in exs) for key in TRAFFIC_COUNTS},
            wall_round_s=now - self._t_last,
            wall_total_s=now - self._t0,
            wall_client_s=sum(e.client_seconds for e in exs),
            wall_train_s=metric_sum(train_replies, keys.TRAIN_SECONDS),
            wall_encode_s=metric_sum(train_replies, keys.ENCODE_SECONDS),
            wall_decode_s=sum(e.decode_seconds for e in exs),
            wall_probe_s=0.0,
        )
        energies = [e.energy_j for e in exs if e.energy_j is not None]
        if energies:  # an [energy] model: this round's joules and the run's so far (resumed runs included)
            before = self.records[-1].get("energy_total_j", 0.0) if self.records else 0.0
            rec.extra["energy_j"] = float(sum(energies))
            rec.extra["energy_total_j"] = float(before + sum(energies))
        for fn in self.train_metrics:
            rec.extra.update(fn(train_replies))
        if self.client_metrics:
            rec.extra.update(client_means(train_replies, "client_train_"))
            rec.extra.update(client_means(eval_replies, "client_eval_"))
        fields = {f.name for f in dataclasses.fields(RoundRecord)}
        for key, value in self.pending.items():
            if key in fields and key != "extra":
                setattr(rec, key, value)
            else:
                rec.extra[key] = value
        record = rec.as_dict()
        self.pending = {}
        self._t_last = now
        self._v_last = vnow
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def flush(self) -> None:
        """Close whatever is still open (the last round of an auto-closed run)."""
        self._close_initial()
        if self._open:
            self.close_round(self._open[-1].round)


#: Client metrics that are wall-clock measurements or weights, not results.
NOT_CLIENT_RESULTS = (keys.NUM_EXAMPLES, keys.TRAIN_SECONDS, keys.ENCODE_SECONDS)


def client_means(replies: Any, prefix: str) -> dict[str, float]:
    """Every numeric metric of the replies, weighted by ``num-examples`` (1 when absent)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for reply in replies:
        if reply.has_error():
            continue
        for _, rec in metrics_of(reply.content):
            w = rec.get(keys.NUM_EXAMPLES, 1)
            w = float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else 1.0
            for key, value in rec.items():
                if key in NOT_CLIENT_RESULTS or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                sums[key] = sums.get(key, 0.0) + float(value) * w
                weights[key] = weights.get(key, 0.0) + w
    return {f"{prefix}{k}": sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}


def metric_sum(replies: Any, name: str) -> float:
    total = 0.0
    for reply in replies:
        if reply.has_error():
            continue
        for _, rec in metrics_of(reply.content):
            value = rec.get(name)
            if isinstance(value, (int, float)):
                total += float(value)
    return total


def without_wall(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in WALL_FIELDS}
