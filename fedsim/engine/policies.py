"""Round policies: which replies the server keeps and how long it waits (virtual seconds).

Applied by the grid in ``send_and_receive``, so every Flower strategy gets them:

- ``wait_all``: every reply; the server waits for the last one (a client that never
  replies, e.g. offline, is known at once, like a refused connection).
- ``deadline``: replies arriving after the deadline (Flower's ``timeout``, in virtual
  seconds) are stragglers and are dropped; the server waits until the last kept reply,
  or the whole deadline if any reply is late or missing (FedAvg in the FedProx paper).
- ``partial_work``: as ``deadline``, and each training client is told its compute budget
  (``time-budget``, ``seconds-per-sample`` in its train config) and does only the steps
  that fit (FedProx).
- ``over_select``: the grid samples ``ceil(K * over_select)`` extra clients on top of the
  K a strategy trains, and keeps the first K arrivals (FedScale's over-commitment).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option

POLICIES = ("wait_all", "deadline", "partial_work", "over_select")


@dataclasses.dataclass(frozen=True)
class RoundSection:
    policy: str = option("wait_all", choices=POLICIES)
    deadline: float | None = option(None, gt=0.0, doc="virtual seconds; required by deadline and partial_work; "
                                                          "fedsim passes it to Strategy.start as the timeout")
    over_select: float = option(0.25, gt=0.0, le=10.0, doc="over_select: extra clients as a fraction of K")

    def check(self, path: str) -> None:
        if self.policy in ("deadline", "partial_work") and self.deadline is None:
            raise ConfigError(f"{path}.deadline", None, f"required (virtual seconds > 0) by policy {self.policy!r}")

    @property
    def uses_deadline(self) -> bool:
        return self.policy in ("deadline", "partial_work")


@dataclasses.dataclass(frozen=True)
class Selection:
    kept: list[int]  # indices into the arrivals, in send order
    wait: float  # virtual seconds the server waited
    late: list[int]  # replies that arrived but were not kept (stragglers)


def select(policy: str, arrivals: Sequence[float], deadline: float | None, keep: int | None = None) -> Selection:
    """Apply a policy to arrival times (seconds after the send; ``inf`` = never arrives)."""
    real = [i for i, a in enumerate(arrivals) if math.isfinite(a)]
    if policy in ("deadline", "partial_work") and deadline is not None:
        kept = [i for i in real if arrivals[i] <= deadline]
        late = [i for i in real if arrivals[i] > deadline]
        missing = len(real) < len(arrivals)  # the server cannot tell "offline" from "slow"
        wait = deadline if late or missing else max((arrivals[i] for i in kept), default=0.0)
        return Selection(kept, wait, late)
    if policy == "over_select" and keep is not None:
        order = sorted(real, key=lambda i: (arrivals[i], i))
        kept = sorted(order[:keep])
        late = sorted(order[keep:])
        return Selection(kept, max((arrivals[i] for i in kept), default=0.0), late)
    return Selection(real, max((arrivals[i] for i in real), default=0.0), [])
