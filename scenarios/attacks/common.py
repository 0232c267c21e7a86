"""Shared pieces of the attacks: the observed update as a gradient, model plumbing, labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fedsim.scenarios.attacks.base import ProbeView
from torch import nn
from torch.func import functional_call


def trainable(view: ProbeView) -> list[str]:
    """Names of the float parameters the update carries."""
    return [k for k, v in view.received.items() if v.is_floating_point() and k in view.sent]


def observed_update(view: ProbeView) -> dict[str, torch.Tensor]:
    """What the client's training moved: sent - received (a pseudo-gradient times lr * steps)."""
    return {k: (view.sent[k] - view.received[k]).float() for k in trainable(view)}


def pseudo_gradient(view: ProbeView) -> dict[str, torch.Tensor]:
    """The update as one gradient: (w_global - w_client) / (lr * steps); exact for FedSGD."""
    scale = view.lr * max(view.steps, 1)
    return {k: v / scale for k, v in observed_update(view).items()}


def model_at_global(view: ProbeView) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The architecture with the global arrays loaded; and its parameters/buffers by name."""
    model = view.build_model()
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for k, v in view.sent.items():
            if k in state:
                state[k].copy_(v)
    model.eval()  # the client's dropout is random; the attack models the deterministic forward
    return model, {k: t.detach() for k, t in state.items()}


def gradients(model: nn.Module, params: dict[str, torch.Tensor], names: list[str], x: torch.Tensor,
              y: torch.Tensor, create_graph: bool = True) -> list[torch.Tensor]:
    """d CE(model(x), y) / d params[names]; ``y`` is class ids or soft labels (probabilities)."""
    live = {k: (v.clone().requires_grad_(True) if k in names else v) for k, v in params.items()}
    out = functional_call(model, live, (x,))
    loss = F.cross_entropy(out, y) if y.dtype == torch.long else torch.mean(torch.sum(-y * F.log_softmax(out, -1), -1))
    return list(torch.autograd.grad(loss, [live[k] for k in names], create_graph=create_graph))


def unrolled_update(model: nn.Module, params: dict[str, torch.Tensor], names: list[str], x: torch.Tensor,
                    y: torch.Tensor, view: ProbeView) -> list[torch.Tensor]:
    """The client's known local training replayed on (x, y): ``steps`` SGD steps (with its
    momentum) over the batches of x; returns the update w_0 - w_T per parameter."""
    theta = {k: (v.clone().requires_grad_(True) if k in names else v) for k, v in params.items()}
    start = [theta[k] for k in names]
    velocity = [torch.zeros_like(t) for t in start]
    n = len(x)
    b = max(1, min(view.batch_size, n))
    pos = 0
    for _ in range(max(view.steps, 1)):
        idx = torch.arange(pos, pos + b) % n
        pos = (pos + b) % n
        live = {k: v for k, v in theta.items()}
        out = functional_call(model, live, (x[idx],))
        loss = F.cross_entropy(out, y[idx])
        grads = torch.autograd.grad(loss, [live[k] for k in names], create_graph=True)
        for i, (k, g) in enumerate(zip(names, grads)):
            velocity[i] = view.momentum * velocity[i] + g if view.momentum else g
            theta[k] = theta[k] - view.lr * velocity[i]
    return [s - theta[k] for s, k in zip(start, names)]


def last_layer(view: ProbeView) -> str | None:
    """The name of the classifier's weight: the last 2-D float parameter with num_classes rows."""
    names = [k for k in trainable(view) if view.received[k].dim() == 2 and view.received[k].shape[0] == view.num_classes]
    return names[-1] if names else None


def infer_labels(view: ProbeView, count: int) -> torch.Tensor | None:
    """Labels from the classifier-weight gradient (iDLG's rule, Zhao et al. 2020, with a
    batch extension in the spirit of Wainakh et al.'s LLG): with softmax cross-entropy and
    non-negative features, row c of dL/dW sums negative when label c is present, in
    proportion to how often. Every negative row gets one label; the rest go, one at a
    time, to the row with the most negativity not yet accounted for."""
    name = last_layer(view)
    if name is None:
        return None
    row_sums = pseudo_gradient(view)[name].sum(dim=1).double()
    negative = torch.nonzero(row_sums < 0).flatten()
    if len(negative) == 0:
        return torch.argsort(row_sums)[:count].clone() if count <= len(row_sums) else \
            torch.argsort(row_sums)[torch.arange(count) % len(row_sums)]
    negative = negative[torch.argsort(row_sums[negative])]  # most negative first
    chosen = [int(c) for c in negative[:count]]
    if count > len(chosen):
        mass = -row_sums[negative]
        impact = float(mass.sum()) / count  # negativity one occurrence accounts for
        left = {int(c): float(m) - impact for c, m in zip(negative, mass)}
        while len(chosen) < count:
            c = max(left, key=lambda k: left[k])
            chosen.append(c)
            left[c] -= impact
    return torch.tensor(chosen[:count], dtype=torch.long)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 4:
        return torch.zeros((), dtype=x.dtype)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def cosine_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    dot = sum((x * y).sum() for x, y in zip(a, b))
    na = torch.sqrt(sum((x * x).sum() for x in a))
    nb = torch.sqrt(sum((y * y).sum() for y in b))
    return 1 - dot / (na * nb + 1e-12)
