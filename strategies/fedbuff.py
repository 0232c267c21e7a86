"""FedBuff (Nguyen et al., AISTATS 2022): buffered asynchronous aggregation.

The server keeps ``concurrency`` clients training at once. Each finished client's update
``delta = x_start - x_end`` goes into a buffer; when the buffer holds ``buffer_size``
updates, the server steps ``x <- x - server_lr * (1/K) * sum s(tau_k) delta_k``, where
``tau_k`` is the update's staleness (server steps since the client fetched the model) and
``s`` a staleness function (polynomial ``(1+tau)^-a``, hinge, constant). A finished
client is replaced at once by a newly sampled idle one, which gets the current model.

It is a Flower Message-API `Strategy` whose ``start`` drives the grid with
``push_messages`` / ``pull_messages``: on a real SuperLink it polls in wall time; on
fedsim's `SimulationGrid` each pull advances the virtual clock to the next arrival, so
devices and links shape it exactly as they shape synchronous strategies. ``num_rounds``
counts server steps; ``timeout`` is each message's TTL (a client that has not replied by
then is given up and replaced).
"""

from __future__ import annotations

import dataclasses
import io
import random
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from fedsim.strategies.aggregation import buffered_step, staleness_weight
from fedsim.strategies.registry import register_strategy
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from fedsim.core import keys
from fedsim.core.records import arrays_of, metrics_of

MODEL_VERSION = "model-version"


@dataclasses.dataclass
class _Loop:
    """FedBuff's server state between two pulls (what a checkpoint must hold)."""

    current: dict[str, np.ndarray]
    version: int = 0
    failures: int = 0
    inflight: dict[str, tuple[int, int, dict[str, np.ndarray]]] = dataclasses.field(default_factory=dict)
    buffer: list[tuple[dict[str, np.ndarray], int, RecordDict]] = dataclasses.field(default_factory=list)


@register_strategy("fedbuff")
class FedBuff(Strategy):
    fedsim_model_replies = True  # its training replies carry the model (see fedsim.engine.grid.malformed)
    fedsim_arg_rules = {
        "concurrency": (lambda v: v >= 1, "must be >= 1"),
        "buffer_size": (lambda v: v >= 1, "must be >= 1 (K)"),
        "server_lr": (lambda v: v > 0, "must be > 0"),
        "staleness": (lambda v: v in ("constant", "polynomial", "hinge"), "must be one of constant, polynomial, hinge"),
        "staleness_a": (lambda v: v >= 0, "must be >= 0"),
        "staleness_b": (lambda v: v >= 0, "must be >= 0"),
        "fraction_evaluate": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        "min_evaluate_nodes": (lambda v: v >= 0, "must be >= 0"),
    }

    def __init__(
        self,
        *,
        concurrency: int = 10,
        buffer_size: int = 5,
        server_lr: float = 1.0,
        staleness: str = "polynomial",
        staleness_a: float = 0.5,
        staleness_b: float = 4.0,
        fraction_evaluate: float = 0.0,
        min_evaluate_nodes: int = 2,
        weighted_by_key: str = keys.NUM_EXAMPLES,
        arrayrecord_key: str = keys.ARRAYS,
        configrecord_key: str = keys.CONFIG,
        poll_interval: float = 0.1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        staleness_weight(staleness, 0.0, staleness_a, staleness_b)  # validates the name
        self.concurrency = concurrency
        self.buffer_size = buffer_size
        self.server_lr = server_lr
        self.staleness = staleness
        self.staleness_a = staleness_a
        self.staleness_b = staleness_b
        self.fraction_evaluate = fraction_evaluate
        self.min_evaluate_nodes = min_evaluate_nodes
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.poll_interval = poll_interval
        #: Metrics of the latest server step (staleness, buffer, clients), for observers.
        self.round_metrics: dict[str, float] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> FedBuff: concurrency %d, buffer %d, server lr %g, staleness %s(a=%g, b=%g)",
            self.concurrency, self.buffer_size, self.server_lr, self.staleness, self.staleness_a, self.staleness_b)

    # The synchronous hooks, for completeness: one "round" = one buffer of replies.
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = list(grid.get_node_ids())
        chosen = random.sample(nodes, min(self.concurrency, len(nodes)))
        return [self._message(arrays, config, server_round, node, MessageType.TRAIN) for node in chosen]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        raise NotImplementedError("FedBuff aggregates as replies arrive: use FedBuff.start")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0:
            return []
        nodes = list(grid.get_node_ids())
        k = min(len(nodes), max(self.min_evaluate_nodes, int(len(nodes) * self.fraction_evaluate)))
        return [self._message(arrays, config, server_round, node, MessageType.EVALUATE)
                for node in random.sample(nodes, k)]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ok = [m.content for m in replies if not m.has_error()]
        return aggregate_metricrecords(ok, self.weighted_by_key) if ok else None

    def _message(self, arrays: ArrayRecord, config: ConfigRecord, version: int, node: int, kind: str,
                 ttl: float | None = None) -> Message:
        cfg = ConfigRecord({**dict(config), keys.SERVER_ROUND: version, MODEL_VERSION: version})
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
        return Message(content, node, kind, ttl=ttl)

    # ------------------------------------------------------------------ the loop
    # -------------------------------------------------------------- checkpoints
    def fedsim_state(self) -> dict[str, object]:
        """The loop's state for fedsim's checkpoints: arrays and JSON-able values."""
        loop: _Loop | None = getattr(self, "_loop", None)
        if loop is None:
            return {}
        models: dict[int, dict[str, np.ndarray]] = {}
        for _, fetched, model in loop.inflight.values():
            models.setdefault(fetched, model)
        state: dict[str, object] = {
            "version": loop.version, "failures": loop.failures, "current": loop.current,
            "inflight": {mid: [node, fetched] for mid, (node, fetched, _) in loop.inflight.items()},
            "models": sorted(models),
            "buffer": [[fetched, {k: v for k, v in next(iter(rec.values())).items()}] for _, fetched, rec in loop.buffer],
            "round_metrics": dict(getattr(self, "round_metrics", {}) or {}),
        }
        for v, model in models.items():
            state[f"model_{v}"] = model
        for i, (delta, _, _) in enumerate(loop.buffer):
            state[f"delta_{i}"] = delta
        return state

    def fedsim_load_state(self, values: dict[str, object]) -> None:
        """Continue from a checkpoint: the next ``start`` resumes this loop."""
        if not values:
            return
        models = {int(v): values[f"model_{v}"] for v in values["models"]}  # type: ignore[union-attr]
        loop = _Loop(current=dict(values["current"]), version=int(values["version"]),  # type: ignore[arg-type]
                     failures=int(values["failures"]))  # type: ignore[arg-type]
        for mid, (node, fetched) in values["inflight"].items():  # type: ignore[union-attr]
            loop.inflight[mid] = (int(node), int(fetched), models[int(fetched)])
        for i, (fetched, metrics) in enumerate(values["buffer"]):  # type: ignore[arg-type]
            loop.buffer.append((dict(values[f"delta_{i}"]), int(fetched),  # type: ignore[arg-type]
                                RecordDict({"metrics": MetricRecord(metrics)})))
        self.round_metrics = dict(values["round_metrics"])  # type: ignore[arg-type]
        self._resume = loop

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        log(INFO, "Starting FedBuff strategy:")
        self.summary()
        result = Result()
        if evaluate_fn is not None:
            res = evaluate_fn(0, initial_arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res
        resume, self._resume = getattr(self, "_resume", None), None
        loop = resume if resume is not None else _Loop(current={k: a.numpy() for k, a in initial_arrays.items()})
        self._loop = loop  # the checkpointable state (fedsim.checkpoint reads it via fedsim_state)
        arrays = ArrayRecord({k: Array(v) for k, v in loop.current.items()}) if resume else initial_arrays
        if resume is not None:
            result.arrays = arrays
        inflight = loop.inflight  # message id -> (node, version fetched, model fetched)
        buffer = loop.buffer  # (delta, version fetched, reply content with its metrics)

        def launch(n: int) -> None:
            busy = {node for node, _, _ in inflight.values()}
            idle = [node for node in grid.get_node_ids() if node not in busy]
            if not idle or n <= 0:
                return
            chosen = random.sample(sorted(idle), min(n, len(idle)))
            msgs = [self._message(arrays, train_config, loop.version, node, MessageType.TRAIN, ttl=timeout)
                    for node in chosen]
            for mid, node in zip(grid.push_messages(msgs), chosen):
                inflight[mid] = (node, loop.version, loop.current)

        def drain() -> None:
            """Server steps while the buffer holds enough updates."""
            nonlocal arrays
            while len(buffer) >= self.buffer_size and loop.version < num_rounds:
                taken = buffer[: self.buffer_size]
                del buffer[: self.buffer_size]
                version = loop.version
                stale = [version - fetched for _, fetched, _ in taken]
                weights = [staleness_weight(self.staleness, t, self.staleness_a, self.staleness_b) for t in stale]
                loop.current = buffered_step(loop.current, [d for d, _, _ in taken], weights, self.server_lr)
                arrays = ArrayRecord({k: Array(v) for k, v in loop.current.items()})
                loop.version = version = version + 1
                metrics = aggregate_metricrecords([m for _, _, m in taken], self.weighted_by_key)
                self.round_metrics = {"staleness_mean": float(np.mean(stale)), "staleness_max": float(max(stale)),
                                      "staleness_weight_mean": float(np.mean(weights)), "failures": loop.failures}
                for k, v in self.round_metrics.items():
                    metrics[k] = v
                result.train_metrics_clientapp[version] = metrics
                result.arrays = arrays
                self._evaluate(grid, version, arrays, evaluate_config, timeout, result)
                if evaluate_fn is not None:  # (a checkpoint may be taken here)
                    res = evaluate_fn(version, arrays)
                    if res is not None:
                        result.evaluate_metrics_serverapp[version] = res
                loop.failures = 0

        if resume is None:
            launch(self.concurrency)
        else:  # a checkpoint is taken inside drain(): finish that iteration first
            drain()
            launch(self.concurrency - len(inflight))
        while loop.version < num_rounds:
            if not inflight:
                log(WARNING, "FedBuff: no client is training (fewer nodes than needed?); stopping")
                break
            replies = list(grid.pull_messages(list(inflight)))
            if not replies:
                time.sleep(self.poll_interval)  # a real deployment: wait for the next reply
                continue
            for reply in replies:
                node, fetched, start_model = inflight.pop(reply.metadata.reply_to_message_id)
                if reply.has_error():
                    loop.failures += 1
                    log(INFO, "FedBuff: node %d failed: %s", node, reply.error.reason)
                    continue
                local = {k: a.numpy() for _, rec in arrays_of(reply.content) for k, a in rec.items()}
                delta = {k: start_model[k] - local[k] for k in start_model}
                buffer.append((delta, fetched, RecordDict({"metrics": next(
                    (r for _, r in metrics_of(reply.content)), MetricRecord())})))
            drain()
            launch(self.concurrency - len(inflight))
        log(INFO, "FedBuff finished after %d server steps", loop.version)
        for line in io.StringIO(str(result)):
            log(INFO, "\t%s", line.strip("\n"))
        return result

    def _evaluate(self, grid: Grid, version: int, arrays: ArrayRecord, config: ConfigRecord, timeout: float,
                  result: Result) -> None:
        msgs = list(self.configure_evaluate(version, arrays, config, grid))
        if not msgs:
            return
        replies = grid.send_and_receive(msgs, timeout=timeout)
        agg = self.aggregate_evaluate(version, replies)
        if agg is not None:
            result.evaluate_metrics_clientapp[version] = agg
