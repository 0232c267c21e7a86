"""Phong et al. 2017: a fully connected first layer with a bias leaks its input exactly.

For y = W x + b, dL/dW_i = (dL/dy_i) x and dL/db_i = dL/dy_i, so every unit gives
dL/dW_i = (dL/db_i) x. x is their least-squares solution over the units,
x = (gb . gW) / (gb . gb): exact for one input (FedSGD, batch 1), and robust under noise,
where units whose bias gradient is zero (a dead ReLU) contribute only noise and get no
weight. The baseline every other attack is compared with.
"""

from __future__ import annotations

import dataclasses

import torch
from fedsim.scenarios.attacks.base import (
    Attack,
    ProbeView,
    Reconstruction,
    register_attack,
)
from fedsim.scenarios.attacks.common import infer_labels, pseudo_gradient, trainable

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class AnalyticParams:
    min_bias_grad: float = option(1e-12, gt=0.0, doc="no reconstruction when ||dL/db|| is below this")


def first_linear(view: ProbeView) -> tuple[str, str] | None:
    names = trainable(view)
    width = 1
    for s in view.input_shape:
        width *= s
    for k in names:
        w = view.received[k]
        if k.endswith("weight") and w.dim() == 2 and w.shape[1] == width:
            bias = k[: -len("weight")] + "bias"
            if bias in names:
                return k, bias
    return None


@register_attack("analytic", AnalyticParams)
class Analytic(Attack):
    name = "analytic"

    def check(self, view: ProbeView) -> None:
        if first_linear(view) is None:
            raise ConfigError("probe.attack.name", "analytic",
                              "needs a model whose first layer is fully connected with a bias (e.g. mlp, logreg)")

    def run(self, view: ProbeView, generator: torch.Generator) -> Reconstruction:
        self.check(view)
        w_name, b_name = first_linear(view)  # type: ignore[misc]
        g = pseudo_gradient(view)
        gw, gb = g[w_name].double(), g[b_name].double()
        norm = float(gb @ gb)
        x = (gb @ gw) / norm if norm > self.params.min_bias_grad ** 2 else torch.zeros(gw.shape[1], dtype=torch.float64)
        labels = infer_labels(view, 1)
        residual = float(((gw - gb[:, None] * x[None]) ** 2).sum())
        return Reconstruction(x.float().reshape(1, *view.input_shape),
                              labels if labels is not None else torch.zeros(1, dtype=torch.long),
                              loss_trace=(residual,), final_loss=residual)
