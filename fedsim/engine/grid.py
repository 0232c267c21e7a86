"""`SimulationGrid`: a Flower `Grid` whose nodes are simulated clients.

Any Flower strategy (``Strategy.start(grid=...)``) or ServerApp (``main(grid, context)``)
talks to it as to a real SuperLink. Messages go to an executor that calls the
ClientApp of each virtual node with that node's ``Context`` (``partition-id``,
``num-partitions`` and a persistent ``state``); replies come back in the order the
messages were sent, so aggregation is reproducible. Every exchange is measured
(bytes of serialized arrays each way, failures with the client id and reason) and
handed to an observer. Replies with NaN/Inf values are turned into error replies so
they never reach aggregation.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsim.clients.codecs import CodecContext, Pipeline
from fedsim.clients.codecs.transport import decode_reply, is_encoded, reference_arrays
from fedsim.core import keys, seeding
from fedsim.core.errors import ConfigError
from fedsim.core.arrays import array_view
from fedsim.core.records import arrays_of, configs_of, metrics_of, payload_bytes
from fedsim.engine.clock import VirtualClock
from fedsim.engine.executors.base import Executor, Task, TaskResult, error_reply
from fedsim.engine.payload import implausible
from fedsim.engine.system import (
    DROPOUT,
    MODEL_LOST,
    OK,
    REPLY_LOST,
    UNAVAILABLE,
    Dispatch,
    SystemModel,
    overcommit_nodes,
)

#: Node ids are ``NODE_ID_OFFSET + partition id``.
NODE_ID_OFFSET = 1_000_000

# A poll that follows the previous one by at least this many seconds looks like a sampler's
# sleep; this many such gaps in a row, with nothing sent, means it waits for nodes that will
# never come. (Polls in quick succession, e.g. a legacy client manager refreshing its node
# list before every call, or long computations between messages, do not count.)
_STALL_POLLS = 3
_STALL_GAP_S = 0.8


class NodesNeverCome(ConfigError, RuntimeError):
    """The strategy waits for more nodes than the simulation has (one line)."""

    @classmethod
    def of(cls, nodes: int) -> NodesNeverCome:
        return cls("simulated nodes", nodes, "the strategy keeps waiting for more; lower its min_available_nodes / "
                   "min_train_nodes / min_evaluate_nodes (legacy strategies: min_available_clients / "
                   "min_fit_clients / min_evaluate_clients), or simulate more nodes")


def _thread_waits(ident: int) -> bool:
    """Whether thread ``ident`` is blocked in a legacy ``ClientManager.wait_for`` (waiting
    for nodes), rather than computing or waiting on anything else (SecAgg+'s thread pool)."""
    frame = sys._current_frames().get(ident)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "wait_for" and code.co_filename.endswith("client_manager.py"):
            return True
        frame = frame.f_back
    return False


@dataclasses.dataclass(frozen=True)
class Failure:
    round: int
    phase: str
    partition_id: int
    node_id: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Exchange:
    """What one batch of messages did: counts, bytes, failures, virtual time and reply metrics."""

    phase: str  # message type: "train", "evaluate", ...
    round: int
    sampled: int  # messages the strategy sent
    replied: int  # replies returned to the strategy without an error
    failures: tuple[Failure, ...]
    bytes_down: int
    bytes_up: int
    client_seconds: float  # wall seconds inside ClientApps
    replies: tuple[Message, ...] = dataclasses.field(repr=False)
    virtual_start: float = 0.0
    virtual_seconds: float = 0.0  # how long the server waited
    stragglers: int = 0  # replies that arrived after the deadline / past the first K
    dropouts: int = 0
    unavailable: int = 0
    model_lost: int = 0  # clients whose model download was lost for good (they did not train)
    reply_lost: int = 0  # replies lost for good on the uplink
    corrupted: int = 0  # replies excluded for damage in transit (lost spans, bit errors)
    retransmissions: int = 0
    packets_lost: int = 0  # packet transmissions lost (recovered by retransmission or not)
    packets_lost_for_good: int = 0
    bit_flips: int = 0
    over_selected: int = 0  # extra clients sampled by the over_select policy
    partial: int = 0  # partial work: stragglers told to do fewer local epochs, clients out of their time budget
    decode_seconds: float = 0.0  # wall seconds decoding codec payloads
    released: tuple[int, ...] = ()  # partition ids whose reply reached the server (kept or late)
    energy_j: float | None = None  # the clients' energy, joules (None: no [energy] model)


def non_finite(content: RecordDict) -> str | None:
    """The first array/metric holding NaN or Inf, or None."""
    for rkey, rec in arrays_of(content):
        for akey, arr in rec.items():
            values = array_view(arr)
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"array {rkey}/{akey}"
    for rkey, rec in metrics_of(content):
        for mkey, value in rec.items():
            vals = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in vals):
                return f"metric {rkey}/{mkey}"
    return None


def expects_model_replies(strategy: Any) -> bool:
    """Whether a strategy's training replies carry the model it sent (so `malformed` applies):
    Flower's FedAvg family (every ``FedAvg`` subclass, also inside a DP wrapper), or any
    strategy declaring ``fedsim_model_replies = True``. Multi-stage protocols (SecAgg+'s
    stages reply with keys, shares and masked vectors) never get the check."""
    from flwr.serverapp.strategy import FedAvg

    inner = getattr(strategy, "strategy", None)  # Flower's DP wrappers hold the wrapped strategy
    declared = getattr(strategy, "fedsim_model_replies", None)
    if declared is not None:
        return bool(declared)
    return isinstance(strategy, FedAvg) or (inner is not None and expects_model_replies(inner))


def malformed(reply: Message, sent: Message) -> str | None:
    """Why a reply cannot be aggregated by a strategy that expects the model back (None:
    it can): a training reply must carry the arrays it was sent, same names and shapes; an
    evaluation reply, metrics. See `expects_model_replies` for where it applies."""
    if not reply.has_content() or len(reply.content) == 0:
        return "empty reply (no records)"
    sent_arrays = arrays_of(sent.content) if sent.has_content() else []
    if sent.metadata.message_type == "train" and sent_arrays:
        got = arrays_of(reply.content)
        if not got:
            return "training reply carries no ArrayRecord"
        want = sent_arrays[0][1]
        have = got[0][1]
        if list(have.keys()) != list(want.keys()):
            return f"arrays {sorted(have.keys())[:4]} do not match the model's {sorted(want.keys())[:4]}"
        for name in want.keys():
            w, h = want[name], have[name]
            if tuple(h.shape) != tuple(w.shape):  # dtypes may differ (FedOpt sends float64 to float32 models)
                return f"array {name!r} has shape {tuple(h.shape)}, expected {tuple(w.shape)}"
        for _, rec in metrics_of(reply.content):
            n = rec.get(keys.NUM_EXAMPLES)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
                return f"{keys.NUM_EXAMPLES} = {n!r}: must be an integer >= 0"
    if sent.metadata.message_type == "evaluate" and not metrics_of(reply.content):
        return "evaluation reply carries no MetricRecord"
    return None


def update_norm(reply: Message, sent: Message) -> float:
    """The L2 norm of a training reply's update: its arrays minus the ones it was sent."""
    sent_arrays = dict(arrays_of(sent.content)[0][1].items())
    total = 0.0
    for name, arr in arrays_of(reply.content)[0][1].items():
        ref = sent_arrays.get(name)
        if ref is None:
            continue
        delta = array_view(arr).astype(np.float64) - array_view(ref).astype(np.float64)
        total += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(total)


def message_round(message: Message) -> int | None:
    """The round a message belongs to: the ``server-round`` a strategy put in its config,
    else its group id when that is a number (Flower's strategies and workflows, SecAgg+'s
    stages included, set it to the round), else None."""
    if message.has_content():
        for _, rec in configs_of(message.content):
            value = rec.get(keys.SERVER_ROUND)
            if isinstance(value, int):
                return value
    group = message.metadata.group_id
    return int(group) if group.isdigit() else None


class SimulationGrid(Grid):
    """A Flower Grid over ``num_nodes`` simulated clients run by ``executor``."""

    def __init__(self, num_nodes: int, executor: Executor, *, seed: int = 0, run_id: int | None = None,
                 observer: Callable[[Exchange], None] | None = None, system: SystemModel | None = None,
                 codec: Pipeline | None = None) -> None:
        if num_nodes < 1:
            raise ValueError("a grid needs at least one node")
        self.seed = seed
        self.system = system if system is not None else SystemModel.default(num_nodes, seed)
        self.codec = codec if codec else None  # decodes replies that carry an encoded payload
        self._codec_state: dict[int, dict[str, np.ndarray]] = {}  # per client (e.g. EF21's g)
        #: Called with (round, partition id, sent message, decoded reply) for training replies.
        self.probe: Callable[[int, int, Message, Message], None] | None = None
        #: Called with (round, partition id, phase, traceback) when a ClientApp raised.
        self.on_client_error: Callable[[int, int, str, str], None] | None = None
        self.clock = VirtualClock()
        self.executor = executor
        self.observer = observer
        self.num_nodes = num_nodes
        self._node_ids = [NODE_ID_OFFSET + i for i in range(num_nodes)]
        self._states: dict[int, RecordDict] = {}
        #: The weighting key when training replies are pre-reduced for a FedAvg-family strategy.
        self.reduce_by: str | None = None
        #: Whether replies must carry the model sent (names and shapes; `expects_model_replies`).
        #: Off for a user's ServerApp (Flower passes replies through as they are).
        self.model_replies = False
        #: With model replies: exclude training updates whose L2 norm exceeds this (0 = off).
        self.max_update_norm = 0.0
        #: Which clients train (`fedsim.engine.selection`); None or uniform: the strategy's own sample.
        self.selection: Any = None
        self._selection_warned = False
        run_id = run_id if run_id is not None else seeding.int_seed(seed, 0, seeding.SERVER, "run-id") % 2**63
        self._run = Run.create_empty(run_id=run_id)
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._lock = threading.RLock()  # a ServerApp may call the grid from several threads
        self._stages: dict[tuple[int, str], int] = {}  # synchronous exchanges so far, per (round, phase)
        self._pending: dict[str, Message] = {}
        self._sent_at: dict[str, float] = {}  # virtual push time of each pending message
        self._inflight: dict[str, tuple[float, Message]] = {}  # pushed and run: (arrival time, reply)
        self._seq = 0
        self._exchanges = 0
        self._seeded_for = -1
        self._polls: list[float] = []  # wall times of get_node_ids() calls since the last push
        self._owner = threading.get_ident()  # the ServerApp's thread
        self.stalled = False  # set once a helper thread saw the ServerApp wait for nodes forever
        self._last_round = 0

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[int, RecordDict], dict[int, dict[str, np.ndarray]],
                                        dict[str, bytes]]:
        """Counters (and Python's random state), per-node Flower state, per-client codec
        state, and replies still in flight (asynchronous strategies) as protobuf bytes."""
        import random

        from flwr.common.serde import message_to_proto

        if self._pending:
            raise RuntimeError("a checkpoint needs a grid with no message waiting to be delivered")
        version, internal, gauss = random.getstate()
        counters = {"exchanges": self._exchanges, "seq": self._seq, "last_round": self._last_round,
                    "seeded_for": self._seeded_for, "clock": self.clock.now,
                    "random": [version, list(internal), gauss],
                    "inflight": {mid: at for mid, (at, _) in self._inflight.items()},
                    "sent_at": dict(self._sent_at)}
        if self.selection is not None and self.selection.active:
            counters["selection"] = self.selection.state()
        messages = {mid: message_to_proto(reply).SerializeToString() for mid, (_, reply) in self._inflight.items()}
        return counters, dict(self._states), {k: dict(v) for k, v in self._codec_state.items()}, messages

    def restore(self, counters: dict[str, Any], nodes: dict[int, RecordDict],
                codec_state: dict[int, dict[str, np.ndarray]], messages: dict[str, bytes] | None = None) -> None:
        import random

        from flwr.common.serde import message_from_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined]

        self._exchanges = int(counters["exchanges"])
        self._seq = int(counters["seq"])
        self._last_round = int(counters["last_round"])
        self._seeded_for = int(counters.get("seeded_for", -1))
        self.clock.advance_to(float(counters["clock"]))
        self._states = dict(nodes)
        self._codec_state = {k: dict(v) for k, v in codec_state.items()}
        if "random" in counters:
            version, internal, gauss = counters["random"]
            random.setstate((version, tuple(internal), gauss))
        self._sent_at = {k: float(v) for k, v in counters.get("sent_at", {}).items()}
        if self.selection is not None and "selection" in counters:
            self.selection.load(counters["selection"])
        for mid, at in counters.get("inflight", {}).items():
            proto = ProtoMessage()
            proto.ParseFromString((messages or {})[mid])
            self._inflight[mid] = (float(at), message_from_proto(proto))

    # ----------------------------------------------------------------- Grid API
    def set_run(self, run: Run) -> None:
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        self._run = run
        TaskIdentity.run_id = run.run_id

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        # Flower's strategies sample with the global `random` module right after
        # asking for node ids: seed it once per exchange, from the run seed.
        if self._seeded_for != self._exchanges:
            self._seeded_for = self._exchanges
            seeding.seed_python_random(self.seed, self._exchanges, "sampling")
        self._watch_for_a_stall()
        return list(self._node_ids)

    def _watch_for_a_stall(self) -> None:
        """Polls spaced like a sampler's sleep, with nothing sent, mean the strategy waits for
        nodes that never come: the ServerApp's own thread gets a one-line error. Polls from a
        helper thread (Flower's legacy client manager refreshes its node list every 5 s) count
        only while the ServerApp's thread is blocked waiting, not while it computes; then that
        thread is interrupted (SIGINT, when it is the main thread) and ``stalled`` says why."""
        helper = threading.get_ident() != self._owner
        if helper and not _thread_waits(self._owner):
            self._polls = []
            return
        self._polls = [*self._polls[-_STALL_POLLS:], time.monotonic()]
        gaps = [b - a for a, b in zip(self._polls, self._polls[1:])]
        if len(gaps) < _STALL_POLLS or not all(g >= _STALL_GAP_S for g in gaps[-_STALL_POLLS:]):
            return
        if not helper:
            raise NodesNeverCome.of(self.num_nodes)
        if not self.stalled and self._owner == threading.main_thread().ident:
            self.stalled = True
            signal.pthread_kill(self._owner, signal.SIGINT)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        with self._lock:
            return self._push(messages)

    def _push(self, messages: Iterable[Message]) -> list[str]:
        self._exchanges += 1  # the next sampling draw gets a fresh seed
        self._polls = []
        ids = []
        for msg in messages:
            if not isinstance(msg, Message):
                raise TypeError(f"push_messages expects Message objects, got {type(msg).__name__}")
            if not msg.has_content() or msg.metadata.reply_to_message_id:
                raise ValueError("only instruction messages with content can be pushed")
            self._seq += 1
            msg_id = f"{self._run.run_id:x}-{self._seq:08d}"
            msg.metadata.__dict__["_message_id"] = msg_id
            self._pending[msg_id] = msg
            self._sent_at[msg_id] = self.clock.now
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            return self._pull(message_ids)

    def _pull(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to ``message_ids`` that have arrived by now, in arrival order.

        Pending messages are delivered first, each from the virtual time it was pushed.
        If none of the requested replies has arrived yet, the clock moves on to the
        earliest arrival, so a pull returns at least one reply while any is on its way
        (an asynchronous strategy's polling loop never spins).
        """
        ids = list(message_ids)
        todo = [i for i in ids if i in self._pending]
        if todo:
            for phase, items in self._by_phase(todo).items():
                self._launch(phase, items)
        waiting = [i for i in ids if i in self._inflight]
        if waiting and not any(self._inflight[i][0] <= self.clock.now for i in waiting):
            self.clock.advance_to(min(self._inflight[i][0] for i in waiting))
        order = {mid: k for k, mid in enumerate(ids)}
        ready = sorted((i for i in waiting if self._inflight[i][0] <= self.clock.now),
                       key=lambda i: (self._inflight[i][0], order[i]))
        self._reseed("pulled")
        return [self._inflight.pop(i)[1] for i in ready]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        with self._lock:
            return self._send_and_receive(messages, timeout)

    def _send_and_receive(self, messages: Iterable[Message], timeout: float | None) -> list[Message]:
        """Send, then return the replies the round policy keeps, in send order.

        ``timeout`` is a deadline in virtual seconds under the ``deadline`` and
        ``partial_work`` policies; the clock advances by how long the server waits.
        """
        ids = self._push(messages)
        out: list[Message] = []
        for phase, items in self._by_phase([i for i in ids if i in self._pending]).items():
            out.extend(reply for _, reply in self._exchange(phase, items, timeout=timeout))
        order = {mid: k for k, mid in enumerate(ids)}
        out.sort(key=lambda r: order.get(r.metadata.reply_to_message_id, len(order)))
        self._reseed("received")
        return out

    # ----------------------------------------------------------------- internals
    def _reseed(self, purpose: str) -> None:
        """Whatever ClientApps did to the global RNGs in this process (serial executor),
        the strategy's aggregation (e.g. DP noise) draws from the run seed."""
        seeding.seed_python_random(self.seed, self._exchanges, purpose)

    def partition_id(self, node_id: int) -> int:
        return node_id - NODE_ID_OFFSET

    def node_state(self, node_id: int) -> RecordDict:
        return self._states.setdefault(node_id, RecordDict())

    def _by_phase(self, ids: Sequence[str]) -> dict[str, list[tuple[str, Message]]]:
        """Pending messages grouped by message type, so each exchange is one phase."""
        by_phase: dict[str, list[tuple[str, Message]]] = {}
        for mid in ids:
            msg = self._pending.pop(mid)
            by_phase.setdefault(msg.metadata.message_type, []).append((mid, msg))
        return by_phase

    def _round_of(self, phase: str, items: list[tuple[str, Message]]) -> int:
        """The round these messages belong to (their ``server-round``, else counted)."""
        rnd = next((r for _, m in items if (r := message_round(m)) is not None), None)
        if rnd is None:
            rnd = self._last_round + (1 if phase.startswith("train") else 0)
        self._last_round = rnd
        return rnd

    def _exchange(self, phase: str, items: list[tuple[str, Message]], timeout: float | None
                  ) -> list[tuple[str, Message]]:
        """Synchronous delivery of one phase's messages under the round policy; the kept replies."""
        rnd = self._round_of(phase, items)
        policy = self.system.policy
        deadline = timeout if policy.uses_deadline else None
        start = self.clock.now
        for mid, _ in items:
            self._sent_at.pop(mid, None)
        items = self._reselect(phase, rnd, list(items))
        n_asked = len(items)
        extra = self._over_select(phase, items, policy.extra_clients(len(items))) if phase.startswith("train") else 0
        stream = self._stream(rnd, phase)
        sim = self._simulate(phase, rnd, items, [start] * len(items), deadline, policy.drops_protocol_stragglers,
                             stream)
        sel = policy.select(sim.arrivals, deadline, keep=n_asked if extra else None)
        self._observe(phase, rnd, items, sim, sel)
        self.clock.advance(sel.wait)
        kept = [(items[i][0], sim.replies[i]) for i in sel.kept if sim.replies[i] is not None]
        self._emit(phase, rnd, items, sim, kept_slots=sel.kept, sampled=n_asked, start=start, waited=sel.wait,
                   late=len(sel.late), extra=extra)
        if self.reduce_by is not None and phase.startswith("train") and len(kept) > 1:
            from fedsim.engine.streaming import reduce_replies

            reduced = reduce_replies([r for _, r in kept], self.reduce_by, dict(items))
            kept = [(r.metadata.reply_to_message_id, r) for r in reduced]
        return kept

    def _stream(self, rnd: int, phase: str) -> str:
        """The name of an exchange's random draws: the phase, and for a protocol's later
        stages in the same round (SecAgg+ sends four training exchanges a round) the phase
        numbered, so each stage draws its own availability, dropouts and losses."""
        self._stages = {k: v for k, v in self._stages.items() if k[0] == rnd}
        n = self._stages[(rnd, phase)] = self._stages.get((rnd, phase), 0) + 1
        return phase if n == 1 else f"{phase}@{n}"

    def _reselect(self, phase: str, rnd: int, items: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
        """The selection policy's clients instead of the strategy's uniform sample: the same
        number, the same message (see `fedsim.engine.selection`)."""
        sel = self.selection
        if sel is None or not sel.active or not phase.startswith("train") or not items:
            return items
        first = items[0][1]
        if (rnd, phase) in self._stages or any(m.content is not first.content for _, m in items):
            if not self._selection_warned:
                self._selection_warned = True
                import logging

                logging.getLogger("fedsim").warning(
                    "selection.policy = %r applies to strategies that send one training message to every sampled "
                    "client; this strategy's messages differ (or it runs several stages), so its own sampling "
                    "is kept", sel.name)
            return items
        rng = seeding.rng(self.seed, rnd, seeding.SERVER, "selection")
        chosen = sel.choose(len(items), list(self._node_ids), rnd, rng)
        if len(set(chosen)) != len(items) or not set(chosen) <= set(self._node_ids):
            raise RuntimeError(f"selection policy {sel.name!r} chose {len(set(chosen))} distinct known clients; "
                               f"the round trains {len(items)}")
        out = []
        for (mid, msg), node in zip(items, chosen, strict=True):
            new = Message(msg.content, int(node), msg.metadata.message_type, group_id=msg.metadata.group_id or None)
            new.metadata.__dict__["_message_id"] = mid
            out.append((mid, new))
        return out

    def _observe(self, phase: str, rnd: int, items: list[tuple[str, Message]], sim: Any, sel: Any) -> None:
        """What the server saw of each training client, for the selection policy."""
        if self.selection is None or not self.selection.active or not phase.startswith("train"):
            return
        kept = set(sel.kept)
        for i, (_, msg) in enumerate(items):
            reply = sim.replies[i]
            arrived = i in kept and reply is not None and not reply.has_error()
            metrics: dict[str, Any] = {}
            if arrived:
                for _, rec in metrics_of(reply.content):
                    metrics.update({k: v for k, v in rec.items() if isinstance(v, (int, float))})
            duration = sim.arrivals[i] if arrived else sel.wait
            self.selection.observe(rnd, msg.metadata.dst_node_id, float(duration), arrived, metrics)

    def _over_select(self, phase: str, items: list[tuple[str, Message]], count: int) -> int:
        """Add ``count`` more clients (seeded, not already chosen) with the same message; how many were added."""
        if count <= 0 or not items:
            return 0
        chosen = [m.metadata.dst_node_id for _, m in items]
        more = overcommit_nodes(self.seed, self._exchanges, chosen, self._node_ids, count)
        template = items[0][1]
        for node in more:
            msg = Message(template.content, node, template.metadata.message_type,
                          group_id=template.metadata.group_id or None)
            self._seq += 1
            mid = f"{self._run.run_id:x}-{self._seq:08d}"
            msg.metadata.__dict__["_message_id"] = mid
            items.append((mid, msg))
        return len(more)

    def _launch(self, phase: str, items: list[tuple[str, Message]]) -> None:
        """Asynchronous delivery (push/pull): run the messages now, each from its push time;
        replies become pullable at their arrival time. A message that never gets a reply
        (offline, dropped out, lost) yields an error reply when its TTL expires."""
        rnd = self._round_of(phase, items)
        starts = [self._sent_at.pop(mid, self.clock.now) for mid, _ in items]
        sim = self._simulate(phase, rnd, items, starts, None, drop_stragglers=False)
        for i, (mid, msg) in enumerate(items):
            reply = sim.replies[i]
            if reply is None or not math.isfinite(sim.arrivals[i]):
                reply = error_reply(msg, ErrorCode.MESSAGE_UNAVAILABLE,
                                    f"no reply within the message's TTL ({msg.metadata.ttl:g} virtual s)")
                self._inflight[mid] = (starts[i] + msg.metadata.ttl, reply)
            else:
                self._inflight[mid] = (starts[i] + sim.arrivals[i], reply)
        self._emit(phase, rnd, items, sim, kept_slots=list(range(len(items))), sampled=len(items),
                   start=min(starts, default=self.clock.now), waited=0.0, late=0, extra=0)

    def _emit(self, phase: str, rnd: int, items: list[tuple[str, Message]], sim: _Simulated, kept_slots: list[int],
              sampled: int, start: float, waited: float, late: int, extra: int) -> None:
        if self.observer is None:
            return
        failures = []
        kept_replies = []
        for i in kept_slots:
            reply = sim.replies[i]
            if reply is None:
                continue
            kept_replies.append(reply)
            if reply.has_error():
                dst = items[i][1].metadata.dst_node_id
                failures.append(Failure(rnd, phase, self.partition_id(dst) if dst >= NODE_ID_OFFSET else -1, dst,
                                        reply.error.reason or f"code {reply.error.code}"))
        c = sim.counts
        released = tuple(self.partition_id(items[i][1].metadata.dst_node_id) for i, r in enumerate(sim.replies)
                         if r is not None and not r.has_error() and math.isfinite(sim.arrivals[i])
                         and items[i][1].metadata.dst_node_id >= NODE_ID_OFFSET)
        self.observer(Exchange(
            phase=phase, round=rnd, sampled=sampled, replied=sum(1 for r in kept_replies if not r.has_error()),
            failures=tuple(failures), bytes_down=sim.bytes_down, bytes_up=sim.bytes_up, client_seconds=sim.seconds,
            replies=tuple(kept_replies), virtual_start=start, virtual_seconds=waited,
            stragglers=late + c.get("protocol_stragglers", 0), dropouts=c.get(DROPOUT, 0),
            unavailable=c.get(UNAVAILABLE, 0), model_lost=c.get(MODEL_LOST, 0), reply_lost=c.get(REPLY_LOST, 0),
            corrupted=c.get("corrupted", 0), retransmissions=c.get("retransmissions", 0),
            packets_lost=c.get("packets_lost", 0), packets_lost_for_good=c.get("packets_lost_for_good", 0),
            bit_flips=c.get("bit_flips", 0), over_selected=extra, partial=c.get("partial", 0),
            decode_seconds=sim.decode_seconds, released=released,
            energy_j=sim.energy_j if self.system.energy is not None else None))

    def _simulate(self, phase: str, rnd: int, items: list[tuple[str, Message]], starts: list[float],
                  deadline: float | None, drop_stragglers: bool, stream: str = "") -> _Simulated:
        """Dispatch, run and deliver one phase's messages; arrivals are relative to each start.
        ``stream`` names the exchange's random draws (default: the phase)."""
        sim = _Simulated([math.inf] * len(items), [None] * len(items), {}, 0, 0, 0.0)
        jobs = self._dispatch(phase, rnd, items, starts, deadline, sim, stream or phase)
        jobs = self._protocol_stragglers(phase, rnd, jobs, drop_stragglers, sim.counts)
        results = self._run_in_waves([job.task for job in jobs])
        references: dict[int, dict[str, np.ndarray]] = {}  # the global model, decoded once per content
        for job, res in zip(jobs, results):
            if res.traceback and self.on_client_error is not None:
                self.on_client_error(rnd, job.cid, phase, res.traceback)
            sim.seconds += res.seconds
            sim.bytes_up += _payload_bytes(res.reply)
            reply, arrival = self._receive(phase, rnd, job, res.reply, sim, references)
            sim.replies[job.slot] = reply
            sim.arrivals[job.slot] = arrival
        return sim

    def _dispatch(self, phase: str, rnd: int, items: list[tuple[str, Message]], starts: list[float],
                  deadline: float | None, sim: _Simulated, stream: str) -> list[_Job]:
        """Each message's fate before its ClientApp runs (node known? online? model arrived?
        dropout? compute budget?); the messages that reach a ClientApp, as jobs."""
        system = self.system
        jobs: list[_Job] = []
        occurrence: dict[int, int] = {}
        down_cache: dict[int, int] = {}
        for slot, (_, msg) in enumerate(items):
            dst = msg.metadata.dst_node_id
            if not (NODE_ID_OFFSET <= dst < NODE_ID_OFFSET + self.num_nodes):
                sim.replies[slot] = error_reply(msg, ErrorCode.NODE_UNAVAILABLE, f"no node with id {dst}")
                sim.arrivals[slot] = 0.0
                continue
            cid = self.partition_id(dst)
            k = occurrence[dst] = occurrence.get(dst, -1) + 1
            purpose = f"{stream}-{k}" if k else stream
            down_bytes = down_cache.get(id(msg.content))
            if down_bytes is None:  # usually one content (the global model) for every message
                down_bytes = down_cache[id(msg.content)] = payload_bytes(msg.content)
            d = system.dispatch(cid, rnd, phase, starts[slot], down_bytes, purpose, deadline)
            if d.down is not None:
                sim.bytes_down += down_bytes
                _count_transfer(sim.counts, d.down)
            sim.energy_j += d.energy_j
            if d.status != OK:
                _add(sim.counts, d.status, 1)
                continue
            extra_config = None
            if d.budget is not None:
                extra_config = {keys.TIME_BUDGET: d.budget, keys.SECONDS_PER_SAMPLE: d.seconds_per_sample}
            node_config = {keys.PARTITION_ID: cid, keys.NUM_PARTITIONS: self.num_nodes}
            task = Task(node_id=dst, node_config=node_config, state=self.node_state(dst), message=msg,
                        extra_config=extra_config)
            jobs.append(_Job(slot, cid, task, d, purpose))
        return jobs

    def _protocol_stragglers(self, phase: str, rnd: int, jobs: list[_Job], drop: bool,
                             counts: dict[str, int]) -> list[_Job]:
        """FedProx's straggler protocol: designated stragglers are dropped (``drop``) or told
        to run fewer local epochs."""
        slow = self.system.stragglers(rnd, phase, [job.cid for job in jobs])
        if not slow:
            return jobs
        kept = []
        for job in jobs:
            epochs = slow.get(job.cid)
            if epochs is None:
                kept.append(job)
            elif drop:
                _add(counts, "protocol_stragglers", 1)  # it would not finish: FedAvg drops it
            else:
                job.task.extra_config = {**(job.task.extra_config or {}), keys.LOCAL_EPOCHS: epochs}
                _add(counts, "partial", 1)
                kept.append(job)
        return kept

    def _receive(self, phase: str, rnd: int, job: _Job, reply: Message, sim: _Simulated,
                 references: dict[int, dict[str, np.ndarray]]) -> tuple[Message | None, float]:
        """One reply on its way back: finite? uplink (loss, damage), codec decoding,
        plausibility, shape checks, probes. Returns (the reply the server gets or None
        if lost for good, its arrival time)."""
        system, task, counts = self.system, job.task, sim.counts
        if reply.has_content():
            bad = non_finite(reply.content)
            if bad is not None:
                reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                    f"reply excluded: non-finite values in {bad}")
        a = system.arrive(job.cid, rnd, job.purpose, task.message, reply, job.dispatch)
        sim.energy_j += a.energy_j
        if a.partial and keys.LOCAL_EPOCHS not in (task.extra_config or {}):
            _add(counts, "partial", 1)  # ran out of its time budget (a FedProx straggler was counted at dispatch)
        if a.up is not None:
            _count_transfer(counts, a.up)
        _add(counts, "bit_flips", a.bit_flips)
        if a.status == REPLY_LOST:
            _add(counts, REPLY_LOST, 1)
            return None, a.arrival
        reply = a.reply
        ok = a.status == OK and reply is not None
        if ok and self.codec and is_encoded(reply):
            t0 = time.perf_counter()
            reply = self._decode(rnd, job, reply, a, references)
            sim.decode_seconds += time.perf_counter() - t0
        if ok and reply.has_content() and (a.bit_flips or self.codec):
            bad = non_finite(reply.content)
            if bad is None and a.bit_flips:  # e.g. a flipped exponent in an encoded scale
                bad = implausible(reply.content, task.message.content, system.net.corruption_threshold)
            if bad is not None:
                a.reason = f"reply excluded: corrupted in transit ({a.bit_flips} bit flips; implausible {bad})"
                reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, a.reason)
        if a.reason:
            _add(counts, "corrupted", 1)
        if ok and self.model_replies and not reply.has_error() and not a.reason:
            bad = malformed(reply, task.message)
            if bad is None and self.max_update_norm and phase.startswith("train") and arrays_of(task.message.content):
                norm = update_norm(reply, task.message)
                if not norm <= self.max_update_norm:
                    bad = f"update norm {norm:.6g} > server.max_update_norm ({self.max_update_norm:g})"
            if bad is not None:
                reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"reply excluded: {bad}")
        if (self.probe is not None and phase.startswith("train") and reply is not None
                and reply.has_content() and not a.reason):
            self.probe(rnd, job.cid, task.message, reply)  # what the server received, decoded
        return reply, a.arrival

    def _decode(self, rnd: int, job: _Job, reply: Message, a: Any,
                references: dict[int, dict[str, np.ndarray]]) -> Message:
        """Undo the codec chain (the global model sent is the reference); a damaged payload
        becomes an error reply."""
        try:
            ctx = CodecContext(self.seed, rnd, job.cid, self._codec_state.setdefault(job.cid, {}))
            ref_key = id(job.task.message.content)
            if ref_key not in references:
                references[ref_key] = reference_arrays(job.task.message)
            assert self.codec is not None
            return decode_reply(self.codec, reply, job.task.message, ctx, references[ref_key])
        except Exception as exc:  # noqa: BLE001 - a damaged payload must not stop the run
            a.reason = f"reply excluded: payload could not be decoded ({type(exc).__name__}: {exc})"
            return error_reply(job.task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, a.reason)

    def _run_in_waves(self, tasks: list[Task]) -> list[TaskResult]:
        """Run tasks; several messages for one node run one after another, as on a SuperNode.

        Each wave holds at most one task per node, and a node's state from one wave is
        the state of its next task, so every executor sees the same state sequence.
        """
        seen: dict[int, int] = {}
        waves: list[list[int]] = []
        for i, task in enumerate(tasks):
            w = seen.get(task.node_id, 0)
            seen[task.node_id] = w + 1
            if w == len(waves):
                waves.append([])
            waves[w].append(i)
        results: list[TaskResult | None] = [None] * len(tasks)
        for wave in waves:
            batch = [tasks[i] for i in wave]
            for task in batch:
                task.state = self.node_state(task.node_id)
            for i, res in zip(wave, self.executor.run(batch)):
                self._states[tasks[i].node_id] = res.state
                results[i] = res
        return results  # type: ignore[return-value]


@dataclasses.dataclass
class _Job:
    """A message that reaches its ClientApp: its slot in the exchange, client, task and fate so far."""

    slot: int
    cid: int
    task: Task
    dispatch: Dispatch
    purpose: str  # the stream name of this message's random draws (phase, or phase-k for repeats)


@dataclasses.dataclass
class _Simulated:
    arrivals: list[float]  # seconds after each message's start; inf = never
    replies: list[Message | None]
    counts: dict[str, int]
    bytes_down: int
    bytes_up: int
    seconds: float  # wall seconds inside ClientApps
    decode_seconds: float = 0.0  # wall seconds decoding payloads on the server side
    energy_j: float = 0.0  # the clients' energy (with an [energy] model)


def _count_transfer(counts: dict[str, int], transfer: Any) -> None:
    _add(counts, "retransmissions", transfer.retransmissions)
    _add(counts, "packets_lost", transfer.lost_events)
    _add(counts, "packets_lost_for_good", len(transfer.lost))


def _add(counts: dict[str, int], key: str, n: int) -> None:
    if n:
        counts[key] = counts.get(key, 0) + n


def _payload_bytes(reply: Message) -> int:
    return payload_bytes(reply.content) if reply.has_content() else 0


def weighted_metric(replies: Sequence[Message], names: Sequence[str]) -> float | None:
    """The ``num-examples``-weighted mean of the first metric found under ``names``."""
    total = 0.0
    weight = 0.0
    for reply in replies:
        if reply.has_error():
            continue
        for _, rec in metrics_of(reply.content):
            value = next((rec[n] for n in names if n in rec), None)
            if isinstance(value, (int, float)):
                w = rec.get(keys.NUM_EXAMPLES, 1)
                w = float(w) if isinstance(w, (int, float)) else 1.0
                total += float(value) * w
                weight += w
                break
    return total / weight if weight > 0 else None

