"""The virtual clock: simulated seconds, advanced by how long the server waits. Nothing sleeps."""

from __future__ import annotations


class VirtualClock:
    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"the clock cannot go back ({seconds} s)")
        self._now += seconds

    def advance_to(self, t: float) -> None:
        if t > self._now:
            self._now = t
