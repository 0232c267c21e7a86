"""The executor interface and the one code path that calls a ClientApp."""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsim.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AppRef:
    """Where a ClientApp lives: ``module:attribute`` plus folders to put on ``sys.path``."""

    target: str = "fedsim.clients.app:app"
    paths: tuple[str, ...] = ()
    faults: Any = None  # a FaultsSection: the app is wrapped to misbehave as drawn
    seed: int = 0
    byzantine: Any = None  # a ByzantineSection, with the malicious client ids
    malicious: frozenset[int] = frozenset()
    #: ``(registry, name, entry)`` registered by a script's or notebook's ``__main__``: a
    #: process that cannot import ``__main__`` (a Ray actor) registers them before loading.
    registrations: tuple[tuple[Any, str, Any], ...] = ()

    def load(self) -> Any:
        for p in reversed(self.paths):
            if p not in sys.path:
                sys.path.insert(0, p)
        for registry, name, entry in self.registrations:
            registry.add(name, entry)
        app = load_object(self.target, ClientApp, "client.app")
        if self.byzantine is not None and self.malicious:
            from fedsim.scenarios.byzantine import ByzantineApp

            app = ByzantineApp(app, self.byzantine, self.malicious, self.seed)
        if self.faults is not None and self.faults.enabled:
            from fedsim.scenarios.faults import FaultyApp

            return FaultyApp(app, self.faults, self.seed)
        return app


def load_object(target: str, kind: type, field: str) -> Any:
    """Import ``module:attribute`` (resolved from the working directory too) and check its type."""
    from fedsim.core.plugins import load_attr

    obj = load_attr(target, field)
    if not isinstance(obj, kind):
        raise ConfigError(field, target, f"is a {type(obj).__name__}, not a Flower {kind.__name__}")
    return obj


@dataclasses.dataclass
class Task:
    """One ClientApp call: a message for a node, with the node's context parts."""

    node_id: int
    node_config: dict[str, Any]
    state: RecordDict
    message: Message
    extra_config: dict[str, Any] | None = None  # merged into this client's copy of the train config


@dataclasses.dataclass
class TaskResult:
    reply: Message  # carries content, or an Error
    state: RecordDict  # the node's persistent state after the call
    seconds: float  # wall time inside the ClientApp
    traceback: str = ""  # the ClientApp's traceback when it raised (its own frames, not fedsim's)


class Executor(Protocol):
    def start(self, app: AppRef, run_id: int, run_config: Mapping[str, Any]) -> None: ...

    def run(self, tasks: Sequence[Task]) -> list[TaskResult]: ...

    def call(self, fn: Any, payloads: Sequence[Any]) -> list[Any]:
        """``[fn(p) for p in payloads]``, spread over the executor's workers (e.g. attack probes)."""
        ...

    def shutdown(self) -> None: ...


def copy_content(content: RecordDict, extra_config: Mapping[str, Any] | None = None) -> RecordDict:
    """A per-client copy of a message's records (arrays' bytes are shared, read-only);
    ``extra_config`` is added to the first ConfigRecord (one is made if there is none)."""
    out = RecordDict()
    extra = dict(extra_config or {})
    for key, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[key] = ArrayRecord(dict(rec.items()), keep_input=True)
        elif isinstance(rec, ConfigRecord):
            out[key] = ConfigRecord({**dict(rec), **extra})
            extra = {}
        elif isinstance(rec, MetricRecord):
            out[key] = MetricRecord(dict(rec))
        else:
            out[key] = rec
    if extra:
        out["config" if "config" not in out else "fedsim-config"] = ConfigRecord(extra)
    return out


def with_content(message: Message, content: RecordDict) -> Message:
    """The same message (metadata) carrying ``content``."""
    return Message(content=content, metadata=message.metadata)


def error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


def execute(app: ClientApp, task: Task, run_id: int, run_config: Mapping[str, Any],
            timeout_s: float = 0.0, in_process: bool = False) -> TaskResult:
    """Call the ClientApp; a raise or a malformed return becomes a Flower error reply.
    ``in_process`` (serial, vectorized): an exit is a failed client too, and ``timeout_s``
    > 0 stops the run past it (see `fedsim.engine.executors.guard`). In a Ray actor an exit
    ends the actor, which the Ray executor replaces and retries."""
    import contextlib

    from fedsim.engine.executors.guard import exit_guard, time_limit

    context = Context(run_id=run_id, node_id=task.node_id, node_config=dict(task.node_config),
                      state=task.state, run_config=dict(run_config))
    start = time.perf_counter()
    trace = ""
    try:
        pid = task.node_config.get("partition-id", task.node_id)
        guard = exit_guard() if in_process else contextlib.nullcontext()
        with guard, time_limit(timeout_s if in_process else 0.0, f"client {pid}"):
            reply = app(task.message, context)
        if not isinstance(reply, Message):
            reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                f"ClientApp returned {type(reply).__name__}, not a Message")
        elif reply.metadata.reply_to_message_id != task.message.metadata.message_id:
            reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                "ClientApp returned a Message that does not reply to the one it received")
    except SystemExit as exc:  # sys.exit() in a client ends that client, not the run
        reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                            f"ClientExited: ClientApp called sys.exit({exc.code!r}); fedsim kept the run going "
                            "without it")
    except Exception as exc:  # noqa: BLE001 - a client's failure must not stop the run
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
        reply = error_reply(task.message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                            f"{type(exc).__name__}: {exc}{where}")
        inner = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # not this frame
        trace = "".join(traceback.format_exception(type(exc), exc, inner))
    return TaskResult(reply=reply, state=context.state, seconds=time.perf_counter() - start, traceback=trace)


def make_executor(name: str, **kwargs: Any) -> Executor:
    if name == "serial":
        from fedsim.engine.executors.serial import SerialExecutor

        return SerialExecutor(threads=kwargs.get("threads", 1), timeout_s=kwargs.get("timeout_s", 0.0))
    if name == "ray":
        from fedsim.engine.executors.ray import RayExecutor

        return RayExecutor(**kwargs)
    if name == "vectorized":
        from fedsim.engine.executors.vectorized import VectorizedExecutor

        return VectorizedExecutor(threads=kwargs.get("threads", 1), chunk=kwargs.get("chunk", 1024),
                                  timeout_s=kwargs.get("timeout_s", 0.0))
    raise ConfigError("executor.name", name, "unknown executor; known: ray, serial, vectorized")
