"""Stopping a run on Ctrl-C or SIGTERM: at the next round's end, or at once after a grace.

While a run is going (`graceful` around it, in the main thread), the first SIGINT or SIGTERM
only *requests* a stop: the run finishes the round it is in, saves a checkpoint of that
round and ends with `RunInterrupted` (its summary marked interrupted). If the round has not
ended within ``GRACE_S`` seconds, or a second signal comes, the stop is forced: the round in
progress is abandoned and the run ends from its last checkpoint. Either way the resume
gives the same numbers as an uninterrupted run.

A signal whose handler is ``SIG_IGN`` stays ignored (a sweep's worker processes ignore the
terminal's Ctrl-C: the sweep tells them to stop with SIGTERM).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("fedsim")

#: Seconds a run may take to reach its round's end after a stop was requested.
GRACE_S = 2.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is: executors shut down (no Ray process left), what was
    written stays."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal; what it wrote is kept and ``out_dir`` resumes it."""

    def __init__(self, out_dir: Path | None, rounds_done: int, checkpoint_round: int | None, signum: int) -> None:
        super().__init__(f"interrupted after round {rounds_done}")
        self.out_dir = out_dir
        self.rounds_done = rounds_done
        self.checkpoint_round = checkpoint_round
        self.signum = signum


class StopRequest:
    """The stop asked for by a signal (which one), and the timer that forces it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._timer: threading.Timer | None = None
        self._main = threading.main_thread().ident

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            log.warning("stopping after this round (within %.0f s; %s again stops at once)", GRACE_S,
                        "Ctrl-C" if signum == signal.SIGINT else "the signal")
            self._timer = threading.Timer(GRACE_S, self._force)
            self._timer.daemon = True
            self._timer.start()
            return
        raise Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()

    def _force(self) -> None:
        """The grace is over: the same signal again, to the main thread, wherever it is."""
        if self._main is not None and self.signum is not None:
            signal.pthread_kill(self._main, self.signum)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def graceful() -> Iterator[StopRequest]:
    """Within: SIGINT and SIGTERM request a stop at the round's end (see the module doc).
    Outside the main thread nothing is installed (a signal then acts as before)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        if old[s] is not signal.SIG_IGN:
            signal.signal(s, request.handle)
    try:
        yield request
    finally:
        request.cancel()
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
