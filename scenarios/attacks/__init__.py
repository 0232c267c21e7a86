"""Gradient-inversion attack probes (registered by name) and leakage metrics."""

from fedsim.scenarios.attacks import analytic, dlg, inverting  # noqa: F401  (registration)
from fedsim.scenarios.attacks.base import (
    ATTACKS,
    Attack,
    ProbeView,
    Reconstruction,
    register_attack,
    resolve_attack,
)

__all__ = ["ATTACKS", "Attack", "ProbeView", "Reconstruction", "register_attack", "resolve_attack"]
