"""APFL's client (Deng, Kamani & Mahdavi 2020, "Adaptive Personalized Federated Learning").

Each client keeps a local model ``v_i`` and a mixing weight ``alpha_i`` in its Flower
``Context.state``; its personalized model is ``alpha_i v_i + (1 - alpha_i) w``. Every local
step draws one mini-batch and, from the same (pre-step) values (Algorithm 1 of the paper):

- ``w <- w - lr grad f(w)``                      (the global copy, sent back as FedAvg's),
- ``v <- v - lr alpha grad f(vbar)``              with ``vbar = alpha v + (1 - alpha) w``,
- ``alpha <- clip(alpha - lr <v - w, grad f(vbar)>, 0, 1)`` when ``adaptive``.

Gradients come from autograd through ``vbar`` (``w`` detached there), so any ``nn.Module``
works; buffers (batch-norm statistics) are the model's own, shared by both. ``v`` starts at
the first global model the client receives, ``alpha`` at the strategy's ``alpha``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from fedsim.clients.sgd import SGD
from fedsim.clients.state import load_arrays, save_arrays
from fedsim.clients.trainer import TrainOutcome, TrainSettings
from flwr.app import RecordDict
from torch import nn
from torch.func import functional_call

STATE = "apfl"
ALPHA = "apfl-alpha"


@dataclasses.dataclass
class Personal:
    """One client's APFL state: its local model ``v`` (trainable parameters) and ``alpha``."""

    v: dict[str, torch.Tensor]
    alpha: float

    @classmethod
    def load(cls, state: RecordDict, received: Mapping[str, torch.Tensor], names: list[str],
             alpha0: float) -> Personal:
        kept = load_arrays(state, STATE)
        v = ({n: torch.from_numpy(kept[n]) for n in names} if kept is not None
             else {n: received[n].detach().clone() for n in names})
        a = load_arrays(state, ALPHA)
        return cls(v, float(a["alpha"][0]) if a is not None else float(alpha0))

    def save(self, state: RecordDict) -> None:
        save_arrays(state, STATE, self.v)
        save_arrays(state, ALPHA, {"alpha": np.array([self.alpha], dtype=np.float64)})

    def mixed(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The personalized model's state: ``alpha v + (1 - alpha) w`` (buffers: ``w``'s)."""
        out = dict(global_state)
        for n, v in self.v.items():
            w = global_state[n]
            out[n] = (self.alpha * v.to(w.device, w.dtype) + (1 - self.alpha) * w).detach()
        return out


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings,
          generator: torch.Generator, personal: Personal, adaptive: bool) -> TrainOutcome:
    """APFL's local steps on ``model`` (the global copy ``w``) and ``personal`` together;
    the loss reported is the global copy's (as FedAvg's)."""
    n = len(x)
    total = settings.total_steps(n)
    if total == 0:
        return TrainOutcome(loss=float("nan"), steps=0, examples_seen=0)
    params = dict(model.named_parameters())
    names = [k for k, p in params.items() if p.requires_grad]
    v = {k: personal.v[k].to(params[k].device, params[k].dtype).clone().requires_grad_(True) for k in names}
    alpha = torch.tensor(personal.alpha, dtype=torch.float64, requires_grad=adaptive)
    opt_w = SGD([params[k] for k in names], lr=settings.lr, momentum=settings.momentum,
                weight_decay=settings.weight_decay)
    opt_v = SGD(list(v.values()), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    seen, pos = 0, n
    perm = torch.empty(0, dtype=torch.long)
    for _ in range(total):
        if pos >= n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        idx = perm[pos : pos + settings.batch_size].to(x.device)
        pos += settings.batch_size
        xb, yb = x[idx], y[idx]
        opt_w.zero_grad()
        opt_v.zero_grad()
        alpha.grad = None
        a = alpha.to(params[names[0]].dtype)
        vbar = {k: a * v[k] + (1 - a) * params[k].detach() for k in names}
        ce_w = F.cross_entropy(model(xb), yb)
        ce_v = F.cross_entropy(functional_call(model, vbar, (xb,), strict=False), yb)
        (ce_w + ce_v).backward()
        opt_w.step()
        opt_v.step()
        if adaptive and alpha.grad is not None:
            with torch.no_grad():
                alpha.sub_(settings.lr * alpha.grad).clamp_(0.0, 1.0)
        loss_sum += ce_w.detach().double() * len(idx)
        seen += len(idx)
    personal.v = {k: t.detach().cpu() for k, t in v.items()}
    personal.alpha = float(alpha.detach())
    return TrainOutcome(loss=float(loss_sum) / seen, steps=total, examples_seen=seen)
