"""A pool of persistent Ray actors running ClientApp calls. The only module importing Ray.

Each actor loads the ClientApp once (and, for fedsim's ClientApp, the data partitions
and the model once) and serves many virtual clients over many rounds. A message
content shared by several clients (a strategy's global arrays) is put in the object
store once per exchange and deserialized once per actor. An actor that dies is
replaced and its clients retried (``ray.max_retries``); a client that runs past
``ray.client_timeout`` wall seconds is abandoned with an error reply, its actor replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray
from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode

from fedsim.core.errors import ConfigError
from fedsim.core.keys import PARTITION_ID
from fedsim.engine.executors.base import (
    AppRef,
    Task,
    TaskResult,
    copy_content,
    error_reply,
    execute,
)

_IN_FLIGHT_PER_ACTOR = 2
_READY_TIMEOUT_S = 120.0  # default of ray.start_timeout_s

#: Live actors of finished runs, by what they were started with, kept while a Ray that this
#: process did not start (a notebook's or a test session's ``ray.init``, a cluster) stays up:
#: the next run with the same actor settings reuses them (no new processes, imports and
#: per-process data caches kept). Actors that do not match are killed before new ones start.
_PARKED: dict[tuple[Any, ...], list[Any]] = {}
_PING_S = 2.0  # a parked actor must answer within this


def _probe_address(address: str, timeout: float) -> None:
    """A ``host:port`` (or ``ray://host:port``) with nothing listening fails at once, in
    one line, instead of after Ray's ~20 s of retries and C++ warnings ("auto" is Ray's)."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        why = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise ConfigError("ray.address", address, f"nothing answers there ({why}); start the "
                                                  "cluster first (`ray start --head`), or leave ray.address empty "
                                                  "for a local Ray") from None


#: ``ray.host`` values that keep a local Ray on this machine only.
LOOPBACK = ("", "127.0.0.1", "localhost")
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only(enabled: bool) -> Iterator[None]:
    """A local Ray whose every process listens on 127.0.0.1 only.

    Ray has no authentication, and on Linux a local Ray advertises the host's address and
    its gRPC servers listen on every interface. Ray's single-machine mode (the one it uses
    on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) uses the loopback address
    for the node, and every server binds to it: GCS, raylet, object manager, workers,
    agents (``tests/test_ray.py`` lists the sockets). The variable is read by the processes
    Ray starts (they inherit it) and, in this process, through Ray's constant, which is
    set for the start and put back after."""
    if not enabled:
        yield
        return
    from ray._private import ray_constants

    previous_env, previous = os.environ.get(_LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous
        if previous_env is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = previous_env


def _ray_processes() -> set[int]:
    """Ray's processes in this process group (Linux /proc; empty elsewhere)."""
    found: set[int] = set()
    group = os.getpgrp()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as fh:
                    pgrp = int(fh.read().rsplit(")", 1)[1].split()[2])
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmd = fh.read()
                if pgrp == group and (cmd.startswith(b"ray::") or b"/ray/" in cmd):
                    found.add(int(entry))
    return found


def _reap(before: set[int]) -> None:
    """Kill what a half-started local Ray left behind (Ray's agents outlive a raylet killed
    during start-up): Ray processes of this process group that were not there before."""
    for pid in _ray_processes() - before:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _keep_python_signal_handlers() -> Iterator[None]:
    """``ray.init`` installs its own SIGTERM handlers (a stack dump and ``sys.exit(15)``);
    the driver's Python handlers (fedsim's CLI turns SIGTERM into a clean stop) are put
    back once it returns, and an init interrupted half-way shuts down what it started."""
    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    before = _ray_processes()
    try:
        yield
    except BaseException:  # interrupted or failed half-way: stop what it had started (no process left)
        with contextlib.suppress(Exception):
            ray.shutdown()
        _reap(before)
        raise
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def limit_address_space(memory_mb: int) -> None:
    """Cap this process's address space at its current size + ``memory_mb``: a client that
    allocates beyond it gets MemoryError (reported, excluded) instead of taking the machine."""
    import resource

    with open("/proc/self/status") as fh:
        vm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    limit = (vm_kb * 1024) + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


class _Worker:
    """Actor body (wrapped with ``ray.remote`` at start, with the configured resources)."""

    def __init__(self, app: AppRef, run_id: int, run_config: dict[str, Any], threads: int,
                 extra_paths: list[str], memory_mb: int = 0) -> None:
        for p in extra_paths:
            if p not in sys.path:
                sys.path.append(p)
        import torch

        torch.set_num_threads(threads)
        self._app = app.load()
        if memory_mb:
            limit_address_space(memory_mb)
        self._run_id = run_id
        self._run_config = run_config
        self._cache: dict[str, RecordDict] = {}

    def reset(self, app: AppRef, run_id: int, run_config: dict[str, Any], threads: int,
              extra_paths: list[str], memory_mb: int = 0) -> tuple[int, str]:
        """Serve a new run (a parked actor, reused: its imports and per-process caches stay)."""
        for p in extra_paths:
            if p not in sys.path:
                sys.path.append(p)
        import torch

        torch.set_num_threads(threads)
        self._app = app.load()
        self._run_id = run_id
        self._run_config = run_config
        self._cache = {}
        return self.ready()

    def ready(self) -> tuple[int, str]:
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def call(self, fn: Any, payload: Any) -> Any:
        return fn(payload)

    def _content(self, ref: Any) -> RecordDict:
        key = ref.hex()
        content = self._cache.get(key)
        if content is None:
            content = ray.get(ref)
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = content
        return content

    def run(self, refs: list[Any], items: list[tuple[Any, ...]]) -> list[TaskResult]:
        """Run a chunk of calls; ``refs`` (a list, so Ray does not resolve them) holds the
        distinct contents, each item ``(ref index, node id, node_config, state, metadata, extra config)``."""
        out = []
        for ref_i, node_id, node_config, state, metadata, extra in items:
            message = Message(content=copy_content(self._content(refs[ref_i]), extra), metadata=metadata)
            out.append(execute(self._app, Task(node_id, node_config, state, message), self._run_id, self._run_config))
        return out


@dataclasses.dataclass(frozen=True)
class Tier:
    """A pool of actors with its own resource request, serving clients [first, end)."""

    name: str
    first: int
    end: int
    num_actors: int
    cpus: float
    gpus: float = 0.0
    memory_mb: int = 0

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus, "max_restarts": 0}
        if self.memory_mb:
            opts["memory"] = self.memory_mb * 2**20
        return opts


class RayExecutor:
    def __init__(self, address: str = "", num_actors: int = 0, cpus_per_actor: float = 1.0,
                 client_timeout: float = 0.0, max_retries: int = 1, threads: int = 1,
                 client_memory_mb: int = 0, gpus_per_actor: float = 0.0, memory_mb_per_actor: int = 0,
                 tiers: Sequence[Tier] = (), num_clients: int = 0, host: str = "",
                 start_timeout_s: float = _READY_TIMEOUT_S) -> None:
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.client_memory_mb = client_memory_mb
        self.gpus_per_actor = gpus_per_actor
        self.memory_mb_per_actor = memory_mb_per_actor
        self.tiers = list(tiers)
        self.num_clients = num_clients
        self.address = address
        self.num_actors = num_actors or (os.cpu_count() or 1)
        self.cpus_per_actor = cpus_per_actor
        self.client_timeout = client_timeout
        self.max_retries = max_retries
        self.threads = threads
        self._owns_ray = False
        self._actors: list[Any] = []
        self._slot_tier: list[int] = []  # tier index of each actor slot
        self._actor_cls: list[Any] = []
        self._init_args: tuple[Any, ...] = ()
        self._ready: list[Any] = []
        self._reused: set[int] = set()  # ids of parked actors this run took over
        self.actor_nodes: list[str] = []  # the Ray node of each actor (known once they started)
        self.actors_replaced = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, app: AppRef, run_id: int, run_config: Mapping[str, Any]) -> None:
        app.load()  # fail here, with a clear error, rather than inside every actor
        if not self.tiers:
            self.tiers = [Tier("all", 0, max(1, self.num_clients or 2**62), self.num_actors, self.cpus_per_actor,
                               self.gpus_per_actor, self.memory_mb_per_actor)]
        needed = sum(t.num_actors * t.cpus for t in self.tiers)
        paths = [p for p in dict.fromkeys([os.getcwd(), *app.paths, *sys.path]) if p and os.path.isdir(p)]
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence a Ray FutureWarning
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                          log_to_driver=True, configure_logging=True)
            if self.address:
                _probe_address(self.address, min(self.start_timeout_s, 10.0))
                try:
                    with _keep_python_signal_handlers():
                        ray.init(address=self.address, **kwargs)
                except Exception as exc:  # noqa: BLE001 - no cluster there: one line, not Ray's traceback
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    raise ConfigError("ray.address", self.address,
                                      f"cannot attach to a Ray cluster there ({type(exc).__name__}: {first})") from None
            else:
                # "local" never attaches to a stale cluster left in Ray's temp folder. Workers
                # inherit PYTHONPATH from the raylet this starts (cheaper than a runtime_env).
                cpus = max(os.cpu_count() or 1, int(-(-needed // 1)))
                old = os.environ.get("PYTHONPATH")
                os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
                try:
                    if self.host:
                        kwargs["_node_ip_address"] = self.host
                    self._start_local(dict(kwargs, num_cpus=cpus))
                finally:
                    if old is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = old
            self._owns_ray = True
        resources = ray.cluster_resources()
        for kind, field, per in (("CPU", "cpus", "cpus"), ("GPU", "gpus", "gpus")):
            want = sum(t.num_actors * getattr(t, per) for t in self.tiers)
            have = resources.get(kind, 0.0)
            if want > have:
                self.shutdown()
                label = "ray.num_actors" if len(self.tiers) == 1 and kind == "CPU" else f"ray.tiers.{field}"
                raise ConfigError(label, self.tiers[0].num_actors if label == "ray.num_actors" else want,
                                  f"the actors ask for {want:g} {kind}s in all; the cluster has {have:g}")
        self._actor_cls = [ray.remote(**t.options())(_Worker) for t in self.tiers]
        self._init_args = (app, run_id, dict(run_config), self.threads, paths, self.client_memory_mb)
        self._slot_tier = [i for i, t in enumerate(self.tiers) for _ in range(t.num_actors)]
        reused = self._unpark()
        self._actors = [reused[slot].pop() if reused.get(slot) else self._new_actor(slot)
                        for slot in range(len(self._slot_tier))]
        # Actors boot (or parked ones take the new run) while the server does its own set-up;
        # the first run() waits for them.
        self._ready = [a.reset.remote(*self._init_args) if id(a) in self._reused else a.ready.remote()
                       for a in self._actors]

    def _key(self, slot: int) -> tuple[Any, ...]:
        t = self.tiers[self._slot_tier[slot]]
        return (ray.get_runtime_context().get_job_id(), tuple(sorted(t.options().items())), self.threads,
                tuple(self._init_args[4]), self.client_memory_mb)

    def _unpark(self) -> dict[int, list[Any]]:
        """Parked actors for this run's slots (by key); every other parked actor is killed."""
        self._reused = set()
        wanted: dict[tuple[Any, ...], list[int]] = {}
        for slot in range(len(self._slot_tier)):
            wanted.setdefault(self._key(slot), []).append(slot)
        out: dict[int, list[Any]] = {}
        for key, actors in list(_PARKED.items()):
            slots = wanted.get(key, [])
            for actor in actors:
                if slots:
                    out.setdefault(slots.pop(), []).append(actor)
                    self._reused.add(id(actor))
                else:
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)
            del _PARKED[key]
        return out

    def _park(self) -> list[Any]:
        """Keep the actors that still answer for the next run in this process (a Ray this
        executor did not start only); the others are returned to be killed."""
        if self._owns_ray or not ray.is_initialized() or len(self._slot_tier) != len(self._actors):
            return list(self._actors)
        pings = {a.ready.remote(): (slot, a) for slot, a in enumerate(self._actors)}
        with contextlib.suppress(Exception):
            done, _ = ray.wait(list(pings), num_returns=len(pings), timeout=_PING_S)
            for ref in done:
                slot, actor = pings[ref]
                with contextlib.suppress(Exception):
                    ray.get(ref, timeout=0)
                    _PARKED.setdefault(self._key(slot), []).append(actor)
                    pings[ref] = (slot, None)
        return [a for _, a in pings.values() if a is not None]

    def _start_local(self, kwargs: dict[str, Any]) -> None:
        """Start a local Ray. Ray gives its own node a fixed 30 s to come up; on a loaded
        machine a try that times out is cleaned up and retried while ``start_timeout_s``
        lasts, then the run stops with one line naming the setting."""
        deadline = time.monotonic() + self.start_timeout_s
        tries = 0
        while True:
            tries += 1
            try:
                with _keep_python_signal_handlers(), _loopback_only(self.host in LOOPBACK):
                    ray.init(address="local", **kwargs)
                return
            except Exception as exc:  # noqa: BLE001 - Ray's start-up failure: retry, then one line
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                if time.monotonic() >= deadline:
                    raise ConfigError("ray.start_timeout_s", self.start_timeout_s,
                                      f"the local Ray node did not start in {tries} tries ({type(exc).__name__}: "
                                      f"{first}); on a loaded machine raise ray.start_timeout_s") from None
                logging.getLogger("fedsim").warning("the local Ray node did not start (%s); trying again", first)

    def _wait_ready(self) -> None:
        if not self._ready:
            return
        refs, self._ready = self._ready, []
        try:
            self.actor_nodes = [node for _, node in ray.get(refs, timeout=self.start_timeout_s)]
        except Exception as exc:  # noqa: BLE001 - a slow or broken start: one line naming the setting
            self.shutdown()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ConfigError("ray.start_timeout_s", self.start_timeout_s,
                              f"the Ray actors did not start ({type(exc).__name__}: {first}); on a loaded machine "
                              "raise ray.start_timeout_s") from None

    def _new_actor(self, slot: int) -> Any:
        return self._actor_cls[self._slot_tier[slot]].remote(*self._init_args)

    def tier_of(self, partition_id: int) -> int:
        for i, t in enumerate(self.tiers):
            if t.first <= partition_id < t.end:
                return i
        return 0

    def shutdown(self) -> None:
        self._ready = []
        for actor in self._park():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    # ---------------------------------------------------------------------- work
    def call(self, fn: Any, payloads: Sequence[Any]) -> list[Any]:
        """Run ``fn(payload)`` on the actors, one call per payload, in parallel; results in order."""
        self._wait_ready()
        refs = [self._actors[i % len(self._actors)].call.remote(fn, p) for i, p in enumerate(payloads)]
        return ray.get(refs)

    def run(self, tasks: Sequence[Task]) -> list[TaskResult]:
        if not self._actors:
            raise RuntimeError("RayExecutor.start() first")
        self._wait_ready()
        # One object-store put per distinct content (the global model is shared by all).
        ref_index: dict[int, int] = {}
        refs: list[Any] = []
        for t in tasks:
            if id(t.message.content) not in ref_index:
                ref_index[id(t.message.content)] = len(refs)
                refs.append(ray.put(t.message.content))
        results: list[TaskResult | None] = [None] * len(tasks)
        attempts = [0] * len(tasks)
        # Calls go in chunks (fewer Ray round trips for small clients), about two per actor
        # so the pool stays balanced; retried calls and timed calls go alone, so a failure
        # is charged to its own client only.
        by_tier: dict[int, list[int]] = {}
        for i, t in enumerate(tasks):
            by_tier.setdefault(self.tier_of(int(t.node_config.get(PARTITION_ID, 0))), []).append(i)
        queues: dict[int, deque[list[int]]] = {k: deque() for k in range(len(self.tiers))}
        for k, idx in by_tier.items():
            pool = max(1, self.tiers[k].num_actors)
            size = 1 if self.client_timeout > 0 else max(1, -(-len(idx) // (2 * pool)))
            queues[k].extend(idx[j : j + size] for j in range(0, len(idx), size))
        inflight: dict[Any, tuple[list[int], int, float]] = {}  # ref -> (task indices, actor slot, start)
        load = [0] * len(self._actors)

        def submit(chunk: list[int], slot: int) -> None:
            items = [(ref_index[id(tasks[i].message.content)], tasks[i].node_id, tasks[i].node_config,
                      tasks[i].state, tasks[i].message.metadata, tasks[i].extra_config) for i in chunk]
            ref = self._actors[slot].run.remote(refs, items)
            inflight[ref] = (chunk, slot, time.monotonic())
            load[slot] += 1

        def fail(i: int, code: int, reason: str) -> None:
            results[i] = TaskResult(reply=error_reply(tasks[i].message, code, reason), state=tasks[i].state,
                                    seconds=0.0)

        def replace(slot: int) -> None:
            try:
                ray.kill(self._actors[slot], no_restart=True)
            except Exception:  # noqa: BLE001
                pass
            self._actors[slot] = self._new_actor(slot)
            self.actors_replaced += 1
            # Other calls queued on the dead actor were not at fault: run them again.
            for ref, (chunk, s, _) in list(inflight.items()):
                if s == slot:
                    del inflight[ref]
                    load[slot] -= 1
                    queues[self._slot_tier[slot]].appendleft(chunk)

        while any(queues.values()) or inflight:
            for slot in sorted(range(len(self._actors)), key=lambda s: load[s]):
                queue = queues[self._slot_tier[slot]]
                while queue and load[slot] < _IN_FLIGHT_PER_ACTOR:
                    submit(queue.popleft(), slot)
            wait_s = None
            if self.client_timeout > 0:
                oldest = min(start for _, _, start in inflight.values())
                wait_s = max(0.0, oldest + self.client_timeout - time.monotonic())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_s)
            if not ready:  # the oldest call ran out of time (timed calls run alone)
                ref, (chunk, slot, _) = min(inflight.items(), key=lambda kv: kv[1][2])
                del inflight[ref]
                load[slot] -= 1
                fail(chunk[0], ErrorCode.CLIENT_APP_CRASHED,
                     f"ClientApp exceeded ray.client_timeout ({self.client_timeout:g} s)")
                replace(slot)
                continue
            ref = ready[0]
            chunk, slot, _ = inflight.pop(ref)
            load[slot] -= 1
            try:
                for i, res in zip(chunk, ray.get(ref)):
                    results[i] = res
            except ray.exceptions.RayActorError as exc:
                replace(slot)
                for i in reversed(chunk):
                    attempts[i] += 1
                    if attempts[i] <= self.max_retries:
                        queues[self._slot_tier[slot]].appendleft([i])
                    else:
                        fail(i, ErrorCode.CLIENT_APP_CRASHED,
                             f"Ray actor died running this client {attempts[i]} time(s): {type(exc).__name__}")
            except ray.exceptions.RayError as exc:
                first = str(exc).splitlines()[0] if str(exc) else ""
                for i in chunk:
                    fail(i, ErrorCode.CLIENT_APP_CRASHED, f"{type(exc).__name__}: {first}")
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]
