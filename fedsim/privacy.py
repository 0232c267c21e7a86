"""Differential-privacy accounting inside every run: epsilon per round, and a budget.

What is accounted, with Flower's RDP accountant (``flwr.serverapp.RdpAccountant``, Google's
``dp-accounting`` underneath), at ``privacy.delta``:

- Flower's fixed-clipping DP wrappers (``[strategy.wrapper] name = "dp_server_fixed"`` or
  ``"dp_client_fixed"``): each round in which the strategy aggregates is one Gaussian
  release of noise multiplier ``z`` (client-level: sensitivity = the clipping norm). The
  adaptive-clipping wrappers spend part of their noise on the clipped-count estimate; their
  effective multiplier is ``(z^-2 - (2 sigma_b)^-2)^-1/2`` (Andrew et al. 2021), ``sigma_b``
  = ``clipped_count_stddev`` (Flower's default: ``num_sampled_clients / 20``).
  ``privacy.sampling``: ``"none"`` (default; what Flower's own accounting assumes) composes
  the releases without amplification; ``"without_replacement"`` amplifies them by the run's
  sampling of K of N clients (Flower's strategies sample uniformly without replacement).
- Flower's ``LocalDpMod`` (``[client.local_dp]``): every training reply of a client is a
  Gaussian release of multiplier ``std / clipping_norm`` (std from its per-release epsilon
  and delta); a client's releases compose over the rounds it took part in. The run's
  ``privacy_epsilon`` is the largest over clients (``privacy_epsilon_mean`` the mean over
  clients that released anything).

A wrapper with no noise (``noise_multiplier = 0``: clipping only) gives no differential
privacy: its epsilon is infinite from the first aggregated round (``null`` in JSON files,
with a warning at the start); a budget cannot be combined with it.

``privacy.max_epsilon`` (> 0) stops the run before a round whose releases would take epsilon
beyond it, with one line; ``privacy_epsilon`` and ``privacy_delta`` go to every round of
metrics.jsonl, to summary.json, reports and ``fedsim compare``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option

FIXED = {"dp_server_fixed", "dp_client_fixed"}
ADAPTIVE = {"dp_server_adaptive", "dp_client_adaptive"}


@dataclasses.dataclass(frozen=True)
class PrivacySection:
    delta: float = option(1e-5, gt=0.0, lt=1.0, doc="the delta epsilon is reported at")
    max_epsilon: float = option(0.0, ge=0.0, doc="stop before a round that would exceed this epsilon; 0 = no budget")
    sampling: str = option("none", choices=("none", "without_replacement"),
                           doc="amplification by the run's client sampling (none: Flower's own assumption)")


@dataclasses.dataclass(frozen=True)
class Release:
    """One Gaussian release: noise multiplier, clients sampled, population."""

    noise_multiplier: float
    sample_size: int
    population: int


def _accountant(population: int, delta: float, sampling: str) -> Any:
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    amplified = sampling == "without_replacement"
    return RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=population,
        neighboring_relation=NeighboringRelation.REPLACE_ONE if amplified else NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.WITHOUT_REPLACEMENT if amplified else SamplingMethod.NO_AMPLIFICATION))


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float, sample_size: int = 1, population: int = 1,
                     sampling: str = "none") -> float:
    """Epsilon of ``releases`` identical Gaussian releases (Flower's RDP accountant)."""
    from flwr.serverapp import GaussianPrivacyEvent

    if releases == 0:
        return 0.0
    acc = _accountant(population, delta, sampling)
    acc.compose(GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=sample_size,
                                     population_size=population), count=releases)
    return acc.get_epsilon(delta)


def effective_multiplier(wrapper: str, args: dict[str, Any]) -> float:
    """The noise multiplier of a wrapper's model release (see the module docstring)."""
    z = float(args.get("noise_multiplier", 0.0))
    if wrapper in ADAPTIVE:
        sigma_b = float(args.get("clipped_count_stddev") or args.get("num_sampled_clients", 1) / 20)
        inner = z ** -2 - (2 * sigma_b) ** -2 if z > 0 else -1.0
        return inner ** -0.5 if inner > 0 else 0.0
    return z


class Ledger:
    """Releases so far and their epsilon, for one run."""

    def __init__(self, cfg: Any) -> None:
        self.section: PrivacySection = cfg.privacy
        self.population = cfg.data.num_clients
        params = cfg.strategy.params
        self.wrapper = getattr(params, "wrapper", "")
        self.wrapper_args = dict(getattr(params, "wrapper_args", {}) or {})
        dp = cfg.client.local_dp
        self.local = dp.enabled
        self.local_multiplier = dp.noise_std / dp.clipping_norm if dp.enabled else 0.0
        self.central_multiplier = effective_multiplier(self.wrapper, self.wrapper_args) if self.wrapper else 0.0
        self.central_rounds = 0
        self.sample_size = int(self.wrapper_args.get("num_sampled_clients", 1) or 1)
        self.per_client: dict[int, int] = {}

    @property
    def unbounded(self) -> bool:
        """A wrapper that clips but adds no noise: no differential privacy at all."""
        return bool(self.wrapper) and self.central_multiplier <= 0

    @property
    def active(self) -> bool:
        return bool(self.wrapper) or self.local

    def record(self, train_replies: int, clients: list[int]) -> None:
        """A round: its aggregated training replies (the release) and the clients that sent them."""
        if self.wrapper and train_replies > 0:
            self.central_rounds += 1
        if self.local:
            for cid in clients:
                self.per_client[cid] = self.per_client.get(cid, 0) + 1

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON)."""
        return {"central_rounds": self.central_rounds, "per_client": {str(k): v for k, v in self.per_client.items()}}

    def load(self, state: Any) -> None:
        """A checkpoint's state; validated (a damaged one is refused)."""
        try:
            rounds = int(state["central_rounds"])
            per = {int(k): int(v) for k, v in dict(state["per_client"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("--resume", "checkpoint", f"privacy state unreadable ({exc})") from None
        if rounds < 0 or any(v < 0 or not 0 <= k < self.population for k, v in per.items()):
            raise ConfigError("--resume", "checkpoint", "privacy state out of range")
        self.central_rounds, self.per_client = rounds, per

    def epsilon(self, extra_round: bool = False) -> dict[str, float]:
        """``privacy_epsilon`` (and for local DP ``privacy_epsilon_mean``) so far, or after one
        more round like the last (``extra_round``, for the budget)."""
        s = self.section
        out: dict[str, float] = {"privacy_delta": s.delta}
        eps = 0.0
        if self.unbounded:
            rounds = self.central_rounds + (1 if extra_round else 0)
            eps = math.inf if rounds else 0.0
        elif self.wrapper:
            rounds = self.central_rounds + (1 if extra_round else 0)
            eps = gaussian_epsilon(self.central_multiplier, rounds, s.delta,
                                   min(self.sample_size, self.population), self.population, s.sampling)
        if self.local:
            counts = [c + (1 if extra_round else 0) for c in self.per_client.values()] or ([1] if extra_round else [])
            per = {c: gaussian_epsilon(self.local_multiplier, c, s.delta) for c in set(counts)}
            values = [per[c] for c in counts]
            local = max(values, default=0.0)
            out["privacy_epsilon_mean"] = sum(values) / len(values) if values else 0.0
            eps = max(eps, local) if self.wrapper else local
        out["privacy_epsilon"] = eps
        return out

    def over_budget(self) -> str | None:
        """Why the next round must not run (it would exceed ``max_epsilon``), or None."""
        limit = self.section.max_epsilon
        if not limit or not self.active:
            return None
        now = self.epsilon()["privacy_epsilon"]
        then = self.epsilon(extra_round=True)["privacy_epsilon"]
        if then > limit:
            return (f"privacy budget: the next round would take epsilon from {now:.4g} to {then:.4g} "
                    f"(delta {self.section.delta:g}), beyond privacy.max_epsilon = {limit:g}")
        return None


def check_wrapper(cfg: Any) -> None:
    """A scenario whose accounting cannot work says so before it runs."""
    if cfg.privacy.max_epsilon and not (getattr(cfg.strategy.params, "wrapper", "") or cfg.client.local_dp.enabled):
        raise ConfigError("privacy.max_epsilon", cfg.privacy.max_epsilon,
                          "needs a DP mechanism to account for: [strategy.wrapper] dp_* or [client.local_dp]")
    wrapper = getattr(cfg.strategy.params, "wrapper", "")
    args = dict(getattr(cfg.strategy.params, "wrapper_args", {}) or {})
    if cfg.privacy.max_epsilon and wrapper and effective_multiplier(wrapper, args) <= 0:
        raise ConfigError("strategy.wrapper.noise_multiplier", args.get("noise_multiplier", 0.0),
                          "adds no noise, so no epsilon can stay within privacy.max_epsilon; "
                          "set it > 0 or remove the budget")
    if math.isnan(cfg.privacy.delta):
        raise ConfigError("privacy.delta", cfg.privacy.delta, "must be a number")
