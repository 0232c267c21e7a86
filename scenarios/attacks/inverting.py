"""Inverting Gradients (Geiping et al. 2020): cosine gradient matching with a TV prior.

Adam on the dummy inputs with signed gradients, step decay (x0.1 at 3/8, 5/8, 7/8 of the
iterations), inputs kept in the valid pixel box, several restarts (the best match wins).
Labels come from iDLG's rule. For a multi-step FedAvg update (``unroll``), the client's
known local training (steps, lr, batch size, momentum) is replayed on the dummy inputs
and the simulated update is matched to the observed one.
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
from fedsim.scenarios.attacks.common import (
    cosine_distance,
    gradients,
    infer_labels,
    last_layer,
    model_at_global,
    observed_update,
    pseudo_gradient,
    total_variation,
    trainable,
    unrolled_update,
)

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class InvertingParams:
    iterations: int = option(2000, ge=1, le=10_000_000)
    restarts: int = option(2, ge=1, le=1000)
    lr: float = option(0.1, gt=0.0)
    tv: float = option(1e-4, ge=0.0, doc="total-variation weight (small for 8x8 images)")
    unroll: str = option("auto", choices=("auto", "always", "never"),
                         doc="replay the client's local steps (auto: when it took more than one)")
    box: tuple[float, ...] = option((0.0, 1.0), doc="valid input range")
    init: str = option("normal", choices=("normal", "uniform"), doc="the dummy inputs' first draw (the paper: normal)")


@register_attack("inverting_gradients", InvertingParams)
class InvertingGradients(Attack):
    name = "inverting_gradients"

    def check(self, view: ProbeView) -> None:
        if last_layer(view) is None:
            raise ConfigError("probe.attack.name", "inverting_gradients",
                              "needs a linear classifier layer (for the labels) in the update")

    def run(self, view: ProbeView, generator: torch.Generator) -> Reconstruction:
        self.check(view)
        p = self.params
        model, params = model_at_global(view)
        names = trainable(view)
        unroll = p.unroll == "always" or (p.unroll == "auto" and view.steps > 1)
        b = view.images if not unroll else min(view.images, max(view.num_examples, 1))
        if not unroll:
            b = min(b, view.batch_size)
        labels = infer_labels(view, b)
        observed = observed_update(view) if unroll else pseudo_gradient(view)
        target = [observed[k] for k in names]
        lo, hi = p.box
        best: tuple[float, torch.Tensor | None, list[float]] = (float("inf"), None, [])
        for _ in range(p.restarts):
            shape = (b, *view.input_shape)
            start = (torch.randn(shape, generator=generator) if p.init == "normal"
                     else lo + (hi - lo) * torch.rand(shape, generator=generator))
            x = start.clamp(lo, hi).requires_grad_(True)
            trace: list[float] = []
            opt = torch.optim.Adam([x], lr=p.lr)
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=[int(p.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
            for _ in range(p.iterations):
                opt.zero_grad()
                if unroll:
                    sim = unrolled_update(model, params, names, x, labels, view)
                else:
                    sim = gradients(model, params, names, x, labels)
                loss = cosine_distance(sim, target) + p.tv * total_variation(x)
                trace.append(float(loss.detach()))
                loss.backward()
                x.grad.sign_()
                opt.step()
                sched.step()
                with torch.no_grad():
                    x.clamp_(lo, hi)
            if unroll:
                final = float(cosine_distance([s.detach() for s in unrolled_update(model, params, names, x, labels, view)],
                                              target))
            else:
                final = float(cosine_distance(gradients(model, params, names, x, labels, create_graph=False), target))
            if final < best[0] or best[1] is None:
                best = (final, x.detach().clone(), trace)
        return Reconstruction(best[1], labels, loss_trace=tuple(best[2]), final_loss=best[0])
