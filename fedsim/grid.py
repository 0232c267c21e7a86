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
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsim import keys, seeding
from fedsim.executors.base import Executor, Task, TaskResult, error_reply

#: Node ids are ``NODE_ID_OFFSET + partition id``.
NODE_ID_OFFSET = 1_000_000

# How long a strategy may poll get_node_ids() without sending anything before the grid
# concludes it waits for nodes that will never join (Flower's samplers sleep 1 s per poll).
_STALL_POLLS = 3
_STALL_SECONDS = 2.5


@dataclasses.dataclass(frozen=True)
class Failure:
    round: int
    phase: str
    partition_id: int
    node_id: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Exchange:
    """What one batch of messages did: counts, bytes, failures and reply metrics."""

    phase: str  # message type: "train", "evaluate", ...
    round: int
    sampled: int
    replied: int
    failures: tuple[Failure, ...]
    bytes_down: int
    bytes_up: int
    client_seconds: float
    replies: tuple[Message, ...] = dataclasses.field(repr=False)


def array_bytes(content: RecordDict) -> int:
    """Bytes of the serialized arrays in a message's records."""
    return sum(len(arr.data) for rec in content.array_records.values() for arr in rec.values())


def non_finite(content: RecordDict) -> str | None:
    """The first array/metric holding NaN or Inf, or None."""
    for rkey, rec in content.array_records.items():
        for akey, arr in rec.items():
            values = arr.numpy()
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"array {rkey}/{akey}"
    for rkey, rec in content.metric_records.items():
        for mkey, value in rec.items():
            vals = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in vals):
                return f"metric {rkey}/{mkey}"
    return None


def message_round(message: Message) -> int | None:
    """The ``server-round`` a strategy put in the message's config, if any."""
    if not message.has_content():
        return None
    for rec in message.content.config_records.values():
        value = rec.get(keys.SERVER_ROUND)
        if isinstance(value, int):
            return value
    return None


class SimulationGrid(Grid):
    """A Flower Grid over ``num_nodes`` simulated clients run by ``executor``."""

    def __init__(self, num_nodes: int, executor: Executor, *, seed: int = 0, run_id: int | None = None,
                 observer: Callable[[Exchange], None] | None = None) -> None:
        if num_nodes < 1:
            raise ValueError("a grid needs at least one node")
        self.seed = seed
        self.executor = executor
        self.observer = observer
        self.num_nodes = num_nodes
        self._node_ids = [NODE_ID_OFFSET + i for i in range(num_nodes)]
        self._states: dict[int, RecordDict] = {}
        run_id = run_id if run_id is not None else seeding.int_seed(seed, 0, seeding.SERVER, "run-id") % 2**63
        self._run = Run.create_empty(run_id=run_id)
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self._seq = 0
        self._exchanges = 0
        self._seeded_for = -1
        self._polls = 0
        self._poll_start = 0.0
        self._last_round = 0

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
        self._polls += 1
        if self._polls == 1:
            self._poll_start = time.monotonic()
        elif self._polls > _STALL_POLLS and time.monotonic() - self._poll_start > _STALL_SECONDS:
            raise RuntimeError(
                f"the strategy keeps waiting for more nodes, but this simulation has {self.num_nodes}; "
                "lower its min_available_nodes / min_train_nodes / min_evaluate_nodes")
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._exchanges += 1  # the next sampling draw gets a fresh seed
        self._polls = 0
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
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        todo = [i for i in ids if i in self._pending]
        if todo:
            self._deliver(todo)
        out = []
        for i in ids:
            reply = self._replies.pop(i, None)
            if reply is not None:
                out.append(reply)
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return list(self.pull_messages(ids))

    # ----------------------------------------------------------------- internals
    def partition_id(self, node_id: int) -> int:
        return node_id - NODE_ID_OFFSET

    def node_state(self, node_id: int) -> RecordDict:
        return self._states.setdefault(node_id, RecordDict())

    def _deliver(self, ids: Sequence[str]) -> None:
        messages = [self._pending.pop(i) for i in ids]
        # Group by message type so each exchange is one phase (train / evaluate / ...).
        by_phase: dict[str, list[tuple[str, Message]]] = {}
        for mid, msg in zip(ids, messages):
            by_phase.setdefault(msg.metadata.message_type, []).append((mid, msg))
        for phase, items in by_phase.items():
            self._deliver_phase(phase, items)

    def _deliver_phase(self, phase: str, items: list[tuple[str, Message]]) -> None:
        rnd = next((r for _, m in items if (r := message_round(m)) is not None), None)
        if rnd is None:
            rnd = self._last_round + (1 if phase.startswith("train") else 0)
        self._last_round = rnd
        tasks: list[Task] = []
        task_ids: list[str] = []
        failures: list[Failure] = []
        bytes_down = 0
        for mid, msg in items:
            dst = msg.metadata.dst_node_id
            if not (NODE_ID_OFFSET <= dst < NODE_ID_OFFSET + self.num_nodes):
                self._replies[mid] = error_reply(msg, ErrorCode.NODE_UNAVAILABLE, f"no node with id {dst}")
                failures.append(Failure(rnd, phase, -1, dst, f"no node with id {dst}"))
                continue
            bytes_down += array_bytes(msg.content)
            pid = self.partition_id(dst)
            node_config = {keys.PARTITION_ID: pid, keys.NUM_PARTITIONS: self.num_nodes}
            tasks.append(Task(node_id=dst, node_config=node_config, state=self.node_state(dst), message=msg))
            task_ids.append(mid)
        results = self._run_in_waves(tasks)
        bytes_up = 0
        seconds = 0.0
        replies = []
        for mid, task, res in zip(task_ids, tasks, results):
            reply = res.reply
            seconds += res.seconds
            pid = self.partition_id(task.node_id)
            if reply.has_content():
                bytes_up += array_bytes(reply.content)
                bad = non_finite(reply.content)
                if bad is not None:
                    reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                        f"reply excluded: non-finite values in {bad}")
            if reply.has_error():
                failures.append(Failure(rnd, phase, pid, task.node_id, reply.error.reason or f"code {reply.error.code}"))
            self._replies[mid] = reply
            replies.append(reply)
        if self.observer is not None:
            self.observer(Exchange(phase=phase, round=rnd, sampled=len(items),
                                   replied=sum(1 for r in replies if not r.has_error()),
                                   failures=tuple(failures), bytes_down=bytes_down, bytes_up=bytes_up,
                                   client_seconds=seconds, replies=tuple(replies)))


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


def weighted_metric(replies: Sequence[Message], names: Sequence[str]) -> float | None:
    """The ``num-examples``-weighted mean of the first metric found under ``names``."""
    total = 0.0
    weight = 0.0
    for reply in replies:
        if reply.has_error():
            continue
        for rec in reply.content.metric_records.values():
            value = next((rec[n] for n in names if n in rec), None)
            if isinstance(value, (int, float)):
                w = rec.get(keys.NUM_EXAMPLES, 1)
                w = float(w) if isinstance(w, (int, float)) else 1.0
                total += float(value) * w
                weight += w
                break
    return total / weight if weight > 0 else None

