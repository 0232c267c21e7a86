"""Client selection: which clients a round trains, beyond Flower's uniform sampling.

A Flower strategy decides *how many* clients to train (``fraction_train``,
``min_train_nodes``) and samples them uniformly; with ``[selection] policy`` other than
``uniform`` the grid then re-addresses those training messages to the clients the policy
chooses (the same number, the same content), so every Flower strategy that sends one
training message to each sampled client gets it unchanged (FedAvg's family, FedProx,
SCAFFOLD, FedPer, Ditto...). Multi-stage protocols (SecAgg+) and asynchronous strategies
(FedBuff) are left to their own sampling, with a warning.

A policy sees only what a real server sees (`Observations`): each client's reported
``num-examples`` and training loss from its last reply, the virtual seconds its last reply
took to arrive (or, when it did not arrive in time, that it took at least as long as the
server waited), and the round it last trained. Never the simulator's device speeds.

- ``uniform`` (default): Flower's own sampling, today's numbers.
- ``data_size``: without replacement, with probability proportional to the reported
  ``num-examples`` (clients not heard from yet count as the mean of those heard from).
- ``power_of_choice`` (Cho et al. 2022, the variant using each client's last reported loss,
  "rpow-d"): ``d = ceil(candidates * K)`` candidates uniformly, then the K with the highest
  loss; a client never tried counts as the highest, one tried but never heard back from
  (late every time, or failing) as the lowest.
- ``oort`` (Lai et al., OSDI 2021): utility = statistical utility ``n_i * loss_i`` (+ a
  staleness bonus ``sqrt(0.1 ln R / L_i)``), times ``(T / t_i) ** alpha`` when the client's
  observed duration ``t_i`` exceeds the preferred round duration ``T`` (``round.deadline``
  when set, else the median observed duration, relaxed by the pacer); a fraction
  ``exploration`` (decaying by ``exploration_decay`` per round to ``exploration_min``) goes
  to clients never tried, the rest is drawn, in proportion to utility, among clients whose
  utility is at least ``cutoff`` times the K-th best.

Your own: a `SelectionPolicy` subclass by path (``policy = "my_pkg.sel:MyPolicy"``) or
registered with `register_selection`. Every draw comes from ``(seed, round, "selection")``;
the observations are checkpointed with the grid.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedsim.core.errors import ConfigError
from fedsim.core.registry import Registry
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class SelectionSection:
    policy: str = option("uniform", doc='uniform, data_size, power_of_choice, oort, or a SelectionPolicy subclass '
                                        'as "package.module:Class"')
    candidates: float = option(2.0, ge=1.0, le=100.0, doc="power_of_choice: d = ceil(candidates * K) candidates")
    alpha: float = option(2.0, ge=0.0, le=100.0, doc="oort: the penalty exponent of slow clients")
    exploration: float = option(0.9, ge=0.0, le=1.0, doc="oort: the initial share of K given to untried clients")
    exploration_decay: float = option(0.98, gt=0.0, le=1.0, doc="oort: exploration's factor per round")
    exploration_min: float = option(0.2, ge=0.0, le=1.0, doc="oort: exploration's floor")
    cutoff: float = option(0.95, gt=0.0, le=1.0, doc="oort: draw among utilities >= cutoff x the K-th best")
    pacer_step: float = option(0.1, ge=0.0, le=10.0,
                               doc="oort without a deadline: relax T by this fraction when utility stops rising")

    def check(self, path: str) -> None:
        SELECTIONS.get(self.policy, f"{path}.policy")

    def make(self, deadline: float | None) -> SelectionPolicy:
        return SELECTIONS.get(self.policy, "selection.policy")(self, deadline)


@dataclasses.dataclass
class Seen:
    """What the server learned of one client from its last training reply."""

    examples: float | None = None
    loss: float | None = None
    duration: float | None = None  # virtual seconds its last reply took (a lower bound if late)
    late: bool = False
    last_round: int = 0
    rounds: int = 0


class SelectionPolicy:
    """Uniform: Flower's own sampling (the base; subclass ``choose`` to select otherwise)."""

    name = "uniform"

    def __init__(self, section: SelectionSection, deadline: float | None = None) -> None:
        self.section = section
        self.deadline = deadline
        self.seen: dict[int, Seen] = {}

    @property
    def active(self) -> bool:
        return type(self) is not SelectionPolicy

    def choose(self, k: int, nodes: Sequence[int], rnd: int, rng: np.random.Generator) -> list[int]:
        """The ``k`` nodes to train in round ``rnd`` (distinct, from ``nodes``)."""
        return [int(n) for n in rng.choice(np.asarray(nodes), size=k, replace=False)]

    def observe(self, rnd: int, node: int, duration: float, arrived: bool, metrics: Mapping[str, Any]) -> None:
        s = self.seen.setdefault(node, Seen())
        s.duration, s.late, s.last_round, s.rounds = duration, not arrived, rnd, s.rounds + 1
        n, loss = metrics.get("num-examples"), metrics.get("train_loss")
        if arrived and isinstance(n, (int, float)) and not isinstance(n, bool):
            s.examples = float(n)
        if arrived and isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
            s.loss = float(loss)

    def state(self) -> dict[str, Any]:
        return {"seen": {str(k): dataclasses.asdict(v) for k, v in self.seen.items()}, "own": self.own_state()}

    def load(self, state: Mapping[str, Any]) -> None:
        self.seen = {int(k): Seen(**v) for k, v in dict(state.get("seen", {})).items()}
        self.load_own(state.get("own", {}))

    def own_state(self) -> dict[str, Any]:
        """A subclass's own JSON-able state (checkpointed)."""
        return {}

    def load_own(self, state: Mapping[str, Any]) -> None:
        """Restore what `own_state` returned."""


def _load(obj: Any, target: str, field: str) -> type[SelectionPolicy]:
    if not (inspect.isclass(obj) and issubclass(obj, SelectionPolicy)):
        raise ConfigError(field, target, "is not a subclass of fedsim.engine.selection.SelectionPolicy")
    return obj


SELECTIONS: Registry[type[SelectionPolicy]] = Registry("selection policy", load=_load)


def register_selection(name: str) -> Callable[[type[SelectionPolicy]], type[SelectionPolicy]]:
    """Register a `SelectionPolicy` subclass under ``name`` (``selection.policy = name``)."""
    return SELECTIONS.register(name)


register_selection("uniform")(SelectionPolicy)


@register_selection("data_size")
class DataSize(SelectionPolicy):
    name = "data_size"

    def choose(self, k: int, nodes: Sequence[int], rnd: int, rng: np.random.Generator) -> list[int]:
        known = [s.examples for s in self.seen.values() if s.examples is not None]
        default = float(np.mean(known)) if known else 1.0
        w = np.asarray([max(self.seen.get(n, Seen()).examples or default, 0.0) for n in nodes], dtype=np.float64)
        if w.sum() <= 0 or np.count_nonzero(w) < k:
            w = np.ones(len(nodes))
        return [int(n) for n in rng.choice(np.asarray(nodes), size=k, replace=False, p=w / w.sum())]


@register_selection("power_of_choice")
class PowerOfChoice(SelectionPolicy):
    name = "power_of_choice"

    def choose(self, k: int, nodes: Sequence[int], rnd: int, rng: np.random.Generator) -> list[int]:
        d = min(len(nodes), max(k, math.ceil(self.section.candidates * k)))
        candidates = [int(n) for n in rng.choice(np.asarray(nodes), size=d, replace=False)]
        order = sorted(range(d), key=lambda i: (-self._priority(candidates[i]), i))
        return [candidates[i] for i in order[:k]]

    def _priority(self, node: int) -> float:
        """Its last reported loss; never tried: first (+inf); tried but never heard back
        from (always late, or failing): last (-inf), else a straggler is picked forever."""
        s = self.seen.get(node)
        if s is None:
            return math.inf
        return s.loss if s.loss is not None else -math.inf


@register_selection("oort")
class Oort(SelectionPolicy):
    name = "oort"

    def __init__(self, section: SelectionSection, deadline: float | None = None) -> None:
        super().__init__(section, deadline)
        self.preferred: float | None = deadline
        self.last_utility = 0.0

    def own_state(self) -> dict[str, Any]:
        return {"preferred": self.preferred, "last_utility": self.last_utility}

    def load_own(self, state: Mapping[str, Any]) -> None:
        self.preferred = state.get("preferred", self.deadline)
        self.last_utility = float(state.get("last_utility", 0.0))

    def utility(self, node: int, rnd: int) -> float:
        s = self.seen[node]
        stat = (s.examples or 1.0) * (s.loss if s.loss is not None else 0.0)
        stat += math.sqrt(0.1 * math.log(max(rnd, 2)) / max(s.last_round, 1))
        t, pref = s.duration, self.preferred
        if t is not None and pref is not None and t > pref > 0:
            stat *= (pref / t) ** self.section.alpha
        return stat

    def _pace(self) -> None:
        """Without a deadline: T is the median observed duration at first; when the
        utility of the last round did not rise, T is relaxed by ``pacer_step``."""
        if self.deadline is not None:
            return
        durations = sorted(s.duration for s in self.seen.values() if s.duration is not None)
        if self.preferred is None and durations:
            self.preferred = float(np.median(durations))

    def choose(self, k: int, nodes: Sequence[int], rnd: int, rng: np.random.Generator) -> list[int]:
        sec = self.section
        self._pace()
        share = max(sec.exploration_min, sec.exploration * sec.exploration_decay ** max(rnd - 1, 0))
        untried = [n for n in nodes if n not in self.seen]
        tried = [n for n in nodes if n in self.seen]
        n_explore = min(len(untried), max(0, round(share * k))) if tried else min(len(untried), k)
        n_exploit = min(len(tried), k - n_explore)
        n_explore = min(len(untried), k - n_exploit)
        chosen: list[int] = []
        if n_exploit:
            utils = np.asarray([self.utility(n, rnd) for n in tried], dtype=np.float64)
            kth = np.sort(utils)[::-1][n_exploit - 1]
            pool = [i for i, u in enumerate(utils) if u >= sec.cutoff * kth]
            w = np.maximum(utils[pool], 1e-12)
            picked = rng.choice(np.asarray(pool), size=n_exploit, replace=False, p=w / w.sum())
            chosen += [tried[int(i)] for i in picked]
            total = float(utils[[int(i) for i in picked]].sum())
            if self.deadline is None and self.preferred is not None and total <= self.last_utility:
                self.preferred *= 1.0 + sec.pacer_step  # the pacer: admit slower clients
            self.last_utility = total
        if n_explore:
            chosen += [int(n) for n in rng.choice(np.asarray(untried), size=n_explore, replace=False)]
        return chosen
