"""Plain SGD (momentum, weight decay) without ``torch.optim``.

The first ``torch.optim`` optimizer built in a process imports ``torch._dynamo`` (~1.7-2.7 s,
paid by the driver and by every Ray actor); fedsim's trainers need only SGD. `SGD` takes
the same steps as ``torch.optim.SGD(params, lr, momentum, weight_decay)`` (dampening 0, no
Nesterov), operation for operation, so the numbers are identical (tests/test_trainer.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SGD:
    """``torch.optim.SGD``'s single-tensor update: ``g = grad + wd * p``; with momentum
    ``buf = g`` (first step) else ``buf = momentum * buf + g``, ``g = buf``; ``p -= lr * g``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if self.weight_decay != 0:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = torch.clone(g).detach()
                else:
                    buf.mul_(self.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-self.lr)
