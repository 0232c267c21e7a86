"""Round policies: which replies the server keeps and how long it waits (virtual seconds).

"Where are stragglers decided" has this one-file answer. Each policy is one `RoundPolicy`
object, registered by name (``round.policy = "deadline"``) or given by path
(``round.policy = "my_pkg.policies:FastestHalf"``, a `RoundPolicy` subclass). The grid
applies it in ``send_and_receive``, so every Flower strategy gets it:

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

The hooks a policy answers: ``uses_deadline`` (Flower's timeout is a virtual deadline),
``gives_budget`` (clients learn their compute budget), ``drops_protocol_stragglers``
(FedProx's designated stragglers are dropped rather than given fewer epochs),
``extra_clients(k)`` (more clients to sample) and ``select(arrivals, deadline, keep)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from fedsim.core.errors import ConfigError
from fedsim.core.registry import Registry
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class Selection:
    kept: list[int]  # indices into the arrivals, in send order
    wait: float  # virtual seconds the server waited
    late: list[int]  # replies that arrived but were not kept (stragglers)


class RoundPolicy:
    """Wait for every reply (the base behaviour). Subclass and register to add a policy."""

    name = "wait_all"
    uses_deadline = False
    gives_budget = False
    drops_protocol_stragglers = False

    def __init__(self, section: RoundSection) -> None:
        self.section = section

    @property
    def active(self) -> bool:
        """Whether the policy changes anything compared with waiting for everyone."""
        return type(self) is not WaitAll

    def extra_clients(self, k: int) -> int:
        """How many clients to sample on top of the ``k`` a strategy sent messages to."""
        return 0

    def select(self, arrivals: Sequence[float], deadline: float | None, keep: int | None = None) -> Selection:
        """The replies kept (arrival times are seconds after the send; ``inf`` = never)."""
        real = [i for i, a in enumerate(arrivals) if math.isfinite(a)]
        return Selection(real, max((arrivals[i] for i in real), default=0.0), [])


def _load(obj: Any, target: str, field: str) -> type[RoundPolicy]:
    if not (inspect.isclass(obj) and issubclass(obj, RoundPolicy)):
        raise ConfigError(field, target, "is not a subclass of fedsim.engine.policies.RoundPolicy")
    return obj


POLICIES: Registry[type[RoundPolicy]] = Registry("round policy", load=_load)


def register_policy(name: str) -> Callable[[type[RoundPolicy]], type[RoundPolicy]]:
    """Register a `RoundPolicy` subclass under ``name`` (``round.policy = name``)."""
    return POLICIES.register(name)


@register_policy("wait_all")
class WaitAll(RoundPolicy):
    name = "wait_all"


@register_policy("deadline")
class Deadline(RoundPolicy):
    name = "deadline"
    uses_deadline = True
    drops_protocol_stragglers = True

    def select(self, arrivals: Sequence[float], deadline: float | None, keep: int | None = None) -> Selection:
        if deadline is None:
            return super().select(arrivals, deadline, keep)
        real = [i for i, a in enumerate(arrivals) if math.isfinite(a)]
        kept = [i for i in real if arrivals[i] <= deadline]
        late = [i for i in real if arrivals[i] > deadline]
        missing = len(real) < len(arrivals)  # the server cannot tell "offline" from "slow"
        wait = deadline if late or missing else max((arrivals[i] for i in kept), default=0.0)
        return Selection(kept, wait, late)


@register_policy("partial_work")
class PartialWork(Deadline):
    name = "partial_work"
    gives_budget = True
    drops_protocol_stragglers = False


@register_policy("over_select")
class OverSelect(RoundPolicy):
    name = "over_select"

    def extra_clients(self, k: int) -> int:
        return math.ceil(k * self.section.over_select)

    def select(self, arrivals: Sequence[float], deadline: float | None, keep: int | None = None) -> Selection:
        if keep is None:
            return super().select(arrivals, deadline, keep)
        real = [i for i, a in enumerate(arrivals) if math.isfinite(a)]
        order = sorted(real, key=lambda i: (arrivals[i], i))
        kept = sorted(order[:keep])
        return Selection(kept, max((arrivals[i] for i in kept), default=0.0), sorted(order[keep:]))


@dataclasses.dataclass(frozen=True)
class RoundSection:
    policy: str = option("wait_all", doc="wait_all, deadline, partial_work, over_select, or a RoundPolicy "
                                         'subclass as "package.module:Class"')
    deadline: float | None = option(None, gt=0.0, doc="virtual seconds; required by deadline and partial_work; "
                                                          "fedsim passes it to Strategy.start as the timeout")
    over_select: float = option(0.25, gt=0.0, le=10.0, doc="over_select: extra clients as a fraction of K")

    def check(self, path: str) -> None:
        cls = POLICIES.get(self.policy, f"{path}.policy")
        if cls.uses_deadline and self.deadline is None:
            raise ConfigError(f"{path}.deadline", None, f"required (virtual seconds > 0) by policy {self.policy!r}")

    def make(self) -> RoundPolicy:
        """The policy object this section describes."""
        return POLICIES.get(self.policy, "round.policy")(self)

    @property
    def uses_deadline(self) -> bool:
        return POLICIES.get(self.policy, "round.policy").uses_deadline
