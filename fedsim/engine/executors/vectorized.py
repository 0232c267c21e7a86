"""The vectorized executor: fedsim's own clients' training, many clients in one computation.

Training messages for fedsim's ClientApp are grouped (up to ``chunk`` clients) and
trained together by `fedsim.clients.vectorized.train_many`; the replies are the ones the
ClientApp would have sent (same weights up to floating-point summation order, same
metrics keys). Everything else — evaluation, other ClientApps, codecs, local DP, LoRA,
models with dropout or batch norm, quantized gradients — runs client by client exactly
as in the serial executor, and the first time that happens the run's log says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedsim.core import keys, seeding
from fedsim.core.arrays import array_view, fast_array
from fedsim.engine.executors.base import (
    AppRef,
    Task,
    TaskResult,
    copy_content,
    execute,
    with_content,
)
from fedsim.engine.executors.serial import SerialExecutor

log = logging.getLogger("fedsim")
FEDSIM_APP = "fedsim.clients.app:app"


class VectorizedExecutor(SerialExecutor):
    def __init__(self, threads: int = 1, chunk: int = 1024, timeout_s: float = 0.0) -> None:
        super().__init__(threads=threads, timeout_s=timeout_s)
        self.chunk = chunk
        self._why_not: str | None = None  # a reason that holds for the whole run
        self._said: set[str] = set()
        self.batched_calls = 0  # train calls served batched (for tests and benchmarks)
        self._globals: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}  # received arrays, as tensors
        self._expected: dict[str, tuple[int, ...]] | None = None  # the model's array shapes
        self.serial_calls = 0

    def start(self, app: AppRef, run_id: int, run_config: Mapping[str, Any]) -> None:
        super().start(app, run_id, run_config)
        self._why_not = self._static_reason(app)
        if self._why_not:
            self._say(self._why_not)

    def _static_reason(self, app: AppRef) -> str | None:
        if app.target != FEDSIM_APP:
            return f"the ClientApp is {app.target}, not fedsim's"
        if app.faults is not None and app.faults.enabled:
            return "fault injection is on"
        if app.malicious:
            return "Byzantine clients rewrite their updates"
        from fedsim.clients import app as fedsim_app
        from fedsim.clients.vectorized import unsupported

        rt = fedsim_app.runtime_for(self._run_config)
        cfg = rt.spec
        if cfg.codec:
            return "a codec chain encodes the updates"
        if cfg.client.local_dp.enabled:
            return "client.local_dp is enabled"
        if rt.lora:
            return "LoRA-only updates"
        if cfg.client.grad_bits:
            return "client.grad_bits (quantized gradients) is set"
        if cfg.client.autocast != "none":
            return "client.autocast is set"
        return unsupported(rt.model)

    def _say(self, reason: str) -> None:
        if reason not in self._said:
            self._said.add(reason)
            log.info("vectorized executor: running clients one by one: %s", reason)

    def run(self, tasks: Sequence[Task]) -> list[TaskResult]:
        assert self._app is not None, "start() first"
        torch.set_num_threads(self.threads)
        results: list[TaskResult | None] = [None] * len(tasks)
        batchable: list[int] = []
        for i, task in enumerate(tasks):
            reason = self._why_not or self._task_reason(task)
            if reason is None:
                batchable.append(i)  # read in place: no per-client copy of the message
                continue
            if task.message.metadata.message_type == "train":
                self._say(reason)
                self.serial_calls += 1
            own = Task(task.node_id, task.node_config, task.state,
                       with_content(task.message, copy_content(task.message.content, task.extra_config)))
            results[i] = execute(self._app, own, self._run_id, self._run_config, self.timeout_s, in_process=True)
        self._globals = {}
        for start in range(0, len(batchable), self.chunk):
            group = batchable[start : start + self.chunk]
            for i, res in zip(group, self._train_batched([tasks[i] for i in group])):
                results[i] = res
        self._globals = {}
        return [r for r in results if r is not None]

    def _weights(self, arrays: ArrayRecord) -> dict[str, torch.Tensor]:
        """The received arrays as tensors, converted once per distinct content (usually the
        one global model every sampled client receives)."""
        key = tuple(id(a) for a in arrays.values())
        found = self._globals.get(key)
        if found is None:
            found = {k: torch.from_numpy(np.array(array_view(a))) for k, a in arrays.items()}
            self._globals[key] = found
        return found

    def _task_reason(self, task: Task) -> str | None:
        """Why this one message goes to the ClientApp itself (None: batch it)."""
        msg = task.message
        if msg.metadata.message_type != "train":
            return "not a training message"
        from fedsim.clients import app as fedsim_app

        try:
            _, arrays, _, config = fedsim_app.records(msg)
        except ValueError as exc:
            return str(exc)
        algo = config.get(keys.ALGORITHM)
        if algo:
            return f"{algo} keeps per-client state (the ClientApp trains each client)"
        expected = self._expected
        if expected is None:
            model = fedsim_app.runtime_for(self._run_config).model
            expected = self._expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if {k: tuple(a.shape) for k, a in arrays.items()} != expected:
            return "the arrays do not match the model (the ClientApp reports the error)"
        return None

    def _train_batched(self, tasks: list[Task]) -> list[TaskResult]:
        from fedsim.clients import app as fedsim_app
        from fedsim.clients.vectorized import Job, train_many

        rt = fedsim_app.runtime_for(self._run_config)
        seed = rt.spec.seed
        jobs, meta = [], []
        for task in tasks:
            akey, arrays, _, record = fedsim_app.records(task.message)
            config = {**dict(record), **(task.extra_config or {})}
            cid = int(task.node_config[keys.PARTITION_ID])
            rnd = fedsim_app.round_of(task.message, config)
            x, y = rt.data.client_train(cid)
            state = self._weights(arrays)
            jobs.append(Job(params=state, x=x, y=y, settings=fedsim_app.train_settings(rt.spec.client, config),
                            generator=seeding.torch_generator(seed, rnd, cid, "batches")))
            meta.append((akey, list(state)))
        start = time.perf_counter()
        trained = train_many(rt.model, jobs)
        seconds = (time.perf_counter() - start) / max(1, len(tasks))
        self.batched_calls += len(tasks)
        out = []
        for task, job, (akey, order), (weights, outcome) in zip(tasks, jobs, meta, trained):
            metrics = MetricRecord({
                keys.NUM_EXAMPLES: len(job.x),
                keys.TRAIN_LOSS: outcome.loss,
                keys.STEPS: outcome.steps,
                keys.EXAMPLES_SEEN: outcome.examples_seen,
                keys.TRAIN_SECONDS: seconds,
            })
            record = ArrayRecord({k: fast_array(weights[k].numpy()) for k in order})
            reply = Message(RecordDict({akey: record, keys.METRICS: metrics}), reply_to=task.message)
            out.append(TaskResult(reply=reply, state=task.state, seconds=seconds))
        return out
