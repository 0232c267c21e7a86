"""Gradient-inversion attacks: the threat model as code.

An attack sees only a `ProbeView`: what an honest-but-curious server has — the global
arrays it sent, the (decoded) reply it received, the public training configuration (lr,
local steps, batch size, momentum) and the model architecture. Ground truth never enters
a view; only the metrics code (`fedsim.scenarios.attacks.metrics`) gets it, after the attack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedsim.core.registry import PathContract, PluginRegistry, subclass_of


def _adapt(obj: Any, target: str, field: str) -> Any:
    return subclass_of(Attack, "an attack is built as cls(params)")(obj, target, field)


#: A user's attack by path is an `Attack` subclass; its ``Params`` dataclass (if it
#: declares one) checks the scenario's keys, else they reach it as ``self.params``.
ATTACKS = PluginRegistry("attack", PathContract(adapt=_adapt, params="class"))


def register_attack(name: str, params: type | None = None) -> Callable[[type], type]:
    """Register an `Attack` subclass, built as ``cls(params)``: ``params`` (or, without it, the
    class's own ``Params`` dataclass, as by path) checks the scenario's keys."""
    return ATTACKS.register_fn(name, params)


def resolve_attack(name: str, raw: Mapping[str, Any], path: str) -> Any:
    import fedsim.scenarios.attacks  # noqa: F401  (registers the attacks)

    return ATTACKS.resolve_params(name, raw, path)


resolve_attack.registry = ATTACKS  # type: ignore[attr-defined]  (see fedsim.core.schema.iter_named)


@dataclasses.dataclass
class ProbeView:
    """Everything the server sees about one client's update, and nothing else."""

    build_model: Callable[[], nn.Module]  # the architecture (adapters included in LoRA mode)
    sent: dict[str, torch.Tensor]  # the global arrays the server sent
    received: dict[str, torch.Tensor]  # the reply's arrays, after link loss and decoding
    lr: float
    steps: int  # local steps the client reported
    batch_size: int
    num_examples: int
    momentum: float
    input_shape: tuple[int, ...]
    num_classes: int
    round: int
    client: int
    lora: bool = False

    @property
    def images(self) -> int:
        """How many distinct inputs produced the update (a batch, or the client's data)."""
        return max(1, min(self.num_examples, self.batch_size * self.steps))


@dataclasses.dataclass
class Reconstruction:
    x: torch.Tensor  # (B, *input_shape)
    labels: torch.Tensor  # (B,)
    loss_trace: tuple[float, ...] = ()  # the attack's objective after each step (its lowest is final_loss)
    final_loss: float = float("nan")  # the objective of the reconstruction returned


class Attack:
    name = "attack"

    def __init__(self, params: Any) -> None:
        self.params = params

    def run(self, view: ProbeView, generator: torch.Generator) -> Reconstruction:
        raise NotImplementedError

    def check(self, view: ProbeView) -> None:
        """Raise `ConfigError` if this attack cannot work on this model at all."""
