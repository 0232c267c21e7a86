"""The client side of the stateful algorithms: SCAFFOLD, FedPer, Ditto (and APFL, in `apfl`).

A strategy asks for one through its train/evaluate ``ConfigRecord`` (``fedsim-algorithm``),
as any Flower strategy talks to its clients; what a client keeps between rounds lives in
Flower's ``Context.state`` (`fedsim.clients.state`), so it is checkpointed with the node.

- **SCAFFOLD** (Karimireddy et al. 2020, option II): the message also carries the server's
  control variate ``c`` (ArrayRecord ``scaffold-c``); every local gradient is corrected by
  ``c - c_i``; after K steps of rate lr, ``c_i+ = c_i - c + (x - y_i) / (K lr)``; the reply
  carries the new weights ``y_i`` and ``scaffold-dc`` = ``c_i+ - c_i``. Both travel, and are
  charged, with the model.
- **FedPer** (Arivazhagan et al. 2019): the parameters whose names start with one of
  ``personal-layers`` never leave the client; the message carries the shared body only, the
  client completes it with its own layers (at first the seeded initial model's), trains the
  whole model, keeps its layers and replies with the body.
- **Ditto** (Li et al. 2021): the client trains the global model as FedAvg does (the reply),
  then its personal model ``v_i`` (at first the global one) for as many steps, with the
  proximal pull ``(lambda / 2) ||v_i - w||^2`` toward the global model ``w`` it received.

Evaluation messages of FedPer, Ditto and APFL evaluate the client's personal model on its own
test split (a client that never trained evaluates what it would start from).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from fedsim.clients.state import load_arrays, save_arrays
from flwr.app import Array, ArrayRecord, RecordDict
from torch import nn

from fedsim.core import keys
from fedsim.core.keys import is_personal

ALGORITHMS = ("scaffold", "fedper", "ditto", "apfl")  # APFL's steps: `fedsim.clients.apfl`


def algorithm_of(config: Mapping[str, Any]) -> str:
    value = config.get(keys.ALGORITHM, "")
    return value if isinstance(value, str) else ""


def personal_prefixes(config: Mapping[str, Any]) -> tuple[str, ...]:
    value = config.get(keys.PERSONAL_LAYERS, "")
    return tuple(p for p in str(value).split(",") if p)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _tensors(arrays: Mapping[str, np.ndarray], names: list[str]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(arrays[n], dtype=np.float32)) for n in names]


# ------------------------------------------------------------------ SCAFFOLD
@dataclasses.dataclass
class Scaffold:
    """One client's SCAFFOLD step: the correction before training, the variates after."""

    names: list[str]
    c: dict[str, np.ndarray]
    ci: dict[str, np.ndarray]

    @classmethod
    def start(cls, content: RecordDict, state: RecordDict, model: nn.Module) -> Scaffold:
        names = trainable_names(model)
        rec = content.array_records.get(keys.SCAFFOLD_C)
        if rec is None:
            raise ValueError(f"a SCAFFOLD message carries no {keys.SCAFFOLD_C!r} ArrayRecord")
        c = {k: a.numpy().astype(np.float32) for k, a in rec.items()}
        missing = [n for n in names if n not in c]
        if missing:
            raise ValueError(f"the server control variate lacks {missing[:3]}")
        ci = load_arrays(state, "scaffold-ci") or {n: np.zeros_like(c[n]) for n in names}
        return cls(names, c, ci)

    def correction(self) -> list[torch.Tensor]:
        return [torch.from_numpy(self.c[n] - self.ci[n]) for n in self.names]

    def finish(self, state: RecordDict, received: Mapping[str, np.ndarray], trained: Mapping[str, torch.Tensor],
               steps: int, lr: float) -> ArrayRecord:
        """Option II: the new ``c_i`` kept, ``c_i+ - c_i`` returned (zeros after no step)."""
        delta: dict[str, Array] = {}
        new_ci = {}
        for n in self.names:
            if steps > 0:
                moved = np.asarray(received[n], np.float64) - trained[n].detach().cpu().double().numpy()
                new_ci[n] = (self.ci[n] - self.c[n] + moved / (steps * lr)).astype(np.float32)
            else:
                new_ci[n] = self.ci[n]
            delta[n] = Array(np.ascontiguousarray(new_ci[n] - self.ci[n]))
        save_arrays(state, "scaffold-ci", new_ci)
        return ArrayRecord(delta)


# ------------------------------------------------------------------ FedPer
def personal_layers(state: RecordDict, initial: Mapping[str, torch.Tensor],
                    prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """This client's personal layers: kept ones, else the initial model's."""
    kept = load_arrays(state, "fedper")
    if kept is not None:
        return {k: torch.from_numpy(v) for k, v in kept.items()}
    return {k: v.clone() for k, v in initial.items() if is_personal(k, prefixes)}


def complete(shared: ArrayRecord, personal: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole model's state: the shared body received plus the personal layers."""
    state = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in shared.items()}
    state.update(personal)
    return state


def split_personal(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(shared, personal) parts of a model state."""
    shared = {k: v for k, v in state.items() if not is_personal(k, prefixes)}
    personal = {k: v for k, v in state.items() if is_personal(k, prefixes)}
    return shared, personal


# ------------------------------------------------------------------ Ditto
def ditto_personal(state: RecordDict, received: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This client's personal model: kept, else the global model it received."""
    kept = load_arrays(state, "ditto")
    if kept is not None:
        return {k: torch.from_numpy(v) for k, v in kept.items()}
    return {k: v.clone() for k, v in received.items()}
