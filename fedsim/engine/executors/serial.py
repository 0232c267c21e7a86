"""The reference executor: every ClientApp call in this process, one after another."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.clientapp import ClientApp

from fedsim.engine.executors.base import (
    AppRef,
    Task,
    TaskResult,
    copy_content,
    execute,
    with_content,
)


class SerialExecutor:
    def __init__(self, threads: int = 1, timeout_s: float = 0.0) -> None:
        self.threads = threads
        self.timeout_s = timeout_s  # client.timeout_s: see fedsim.engine.executors.guard
        self._app: ClientApp | None = None
        self._run_id = 0
        self._run_config: dict[str, Any] = {}

    def start(self, app: AppRef, run_id: int, run_config: Mapping[str, Any]) -> None:
        self._app = app.load()
        self._run_id = run_id
        self._run_config = dict(run_config)

    def run(self, tasks: Sequence[Task]) -> list[TaskResult]:
        assert self._app is not None, "start() first"
        out = []
        for task in tasks:
            task = Task(task.node_id, task.node_config, task.state,
                        with_content(task.message, copy_content(task.message.content, task.extra_config)))
            out.append(execute(self._app, task, self._run_id, self._run_config, self.timeout_s, in_process=True))
        return out

    def call(self, fn: Any, payloads: Sequence[Any]) -> list[Any]:
        return [fn(p) for p in payloads]

    def shutdown(self) -> None:
        self._app = None
