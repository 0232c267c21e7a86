"""DLG (Zhu et al. 2019) and iDLG (Zhao et al. 2020): match gradients in Euclidean distance.

DLG optimizes dummy inputs and soft labels with L-BFGS. iDLG first reads the label from
the sign of the classifier-weight gradient, then optimizes the inputs only.
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
    gradients,
    infer_labels,
    last_layer,
    model_at_global,
    pseudo_gradient,
    trainable,
)

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class DlgParams:
    iterations: int = option(300, ge=1, le=1_000_000, doc="L-BFGS steps")
    restarts: int = option(1, ge=1, le=1000)
    lr: float = option(1.0, gt=0.0)


class _GradientMatching(Attack):
    learn_labels = True

    def run(self, view: ProbeView, generator: torch.Generator) -> Reconstruction:
        self.check(view)
        model, params = model_at_global(view)
        names = trainable(view)
        target = [pseudo_gradient(view)[k] for k in names]
        b = view.images if view.steps == 1 else min(view.images, view.batch_size)
        known = None if self.learn_labels else infer_labels(view, b)
        best = (float("inf"), None, None)
        for _ in range(self.params.restarts):
            x = torch.rand((b, *view.input_shape), generator=generator).requires_grad_(True)
            logits = torch.randn((b, view.num_classes), generator=generator).requires_grad_(True)
            variables = [x, logits] if known is None else [x]
            opt = torch.optim.LBFGS(variables, lr=self.params.lr, max_iter=1, history_size=100,
                                    line_search_fn="strong_wolfe")

            def closure(opt=opt, x=x, logits=logits) -> torch.Tensor:  # type: ignore[no-untyped-def]
                opt.zero_grad()
                y = known if known is not None else torch.softmax(logits, -1)
                grads = gradients(model, params, names, x, y)
                loss = sum(((g - t) ** 2).sum() for g, t in zip(grads, target))
                loss.backward()
                return loss

            loss = None
            for _ in range(self.params.iterations):
                loss = opt.step(closure)
                if not torch.isfinite(loss):
                    break
            final = float(loss.detach()) if loss is not None and torch.isfinite(loss) else float("inf")
            if final < best[0] or best[1] is None:
                labels = known if known is not None else logits.detach().argmax(-1)
                best = (final, x.detach().clone(), labels)
        return Reconstruction(best[1], best[2])


@register_attack("dlg", DlgParams)
class Dlg(_GradientMatching):
    name = "dlg"


@register_attack("idlg", DlgParams)
class Idlg(_GradientMatching):
    name = "idlg"
    learn_labels = False

    def check(self, view: ProbeView) -> None:
        if last_layer(view) is None:
            raise ConfigError("probe.attack.name", "idlg",
                              "needs a linear classifier layer whose weight gradient the update carries")
