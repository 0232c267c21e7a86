"""Guards around a ClientApp call in fedsim's own process (serial and vectorized executors).

- A client that calls ``sys.exit`` or ``os._exit`` while it runs is a failed client (an
  error reply naming the call), not the end of the run: ``os._exit`` is replaced for the
  duration of the call. (In a Ray actor there is no guard: the exit ends the actor, which
  the Ray executor replaces, retrying the client once, ``ray.max_retries``.)
- ``client.timeout_s`` (> 0): a client still running after that many wall seconds is
  interrupted with `ClientTimeout` and the run stops cleanly, with what it wrote so far.
  In-process code cannot be killed safely, so the run does not go on after it: the
  interruption is delivered by ``SIGALRM`` in the main thread at the next Python
  bytecode (a long C call finishes first). For isolation, use ``executor.name = "ray"``,
  where ``ray.client_timeout`` abandons the client and replaces its actor. Off the main
  thread (no signals) the guard can only report the overrun after the call returns.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any


class ClientTimeout(BaseException):
    """A client ran past ``client.timeout_s`` in-process: the run stops.

    A BaseException, so the client's own ``except Exception`` cannot swallow it."""


class ClientExited(Exception):
    """A client called ``os._exit`` (or ``sys.exit``) while it ran."""


def _exit_raiser(status: int = 0) -> Any:
    raise ClientExited(f"ClientApp called os._exit({status}); fedsim kept the run going without it")


@contextlib.contextmanager
def exit_guard() -> Iterator[None]:
    """``os._exit`` raises `ClientExited` inside the block (restored after)."""
    real = os._exit
    os._exit = _exit_raiser  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = real


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise `ClientTimeout` in the block after ``seconds`` wall seconds (0 = no limit)."""
    if seconds <= 0:
        yield
        return
    message = (f"{what} ran past client.timeout_s = {seconds:g} s; in-process code cannot be stopped safely, "
               "so the run stops here (use executor.name = \"ray\" with ray.client_timeout to drop such "
               "clients and go on)")
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        start = time.monotonic()
        yield
        if time.monotonic() - start > seconds:
            raise ClientTimeout(message)
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise ClientTimeout(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
