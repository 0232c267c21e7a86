"""Many clients' local SGD as one batched computation (``torch.func`` + ``vmap``).

Every client keeps its own parameters (stacked along a leading client dimension), its
own data, batch order, learning rate, proximal coefficient and number of steps. At step
``t`` each client takes the same mini-batch the serial trainer would (the indices are
drawn from the client's own generator in the same order), padded to the batch size and
masked; a client that has finished its steps is frozen by a mask. One ``vmap`` of
``grad`` over ``functional_call`` gives every client's gradient at once (for plain Flatten/Linear/ReLU stacks — logistic
regression, MLPs — the same gradients are computed by hand with batched matrix products,
which avoids autograd's per-call overhead); the SGD update
(weight decay, momentum, the FedProx term ``mu * (w - w_global)``) is applied
elementwise. The numbers equal `fedsim.clients.trainer.train`'s up to floating-point summation
order.

Applies to models without buffers, dropout or batch norm, and to plain SGD (no gradient
quantization, no autocast): `unsupported` says why not otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fedsim.clients.trainer import TrainOutcome, TrainSettings
from torch import nn
from torch.func import functional_call, grad, vmap

STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def unsupported(model: nn.Module, settings: TrainSettings | None = None) -> str | None:
    """Why this model / these settings cannot be trained batched (None: they can)."""
    if any(True for _ in model.buffers()):
        return f"{type(model).__name__} has buffers (e.g. batch norm statistics)"
    if any(isinstance(m, STOCHASTIC) and getattr(m, "p", 0.0) > 0 for m in model.modules()):
        return f"{type(model).__name__} uses dropout (its masks come from the per-client torch seed)"
    rnn = next((m for m in model.modules() if isinstance(m, nn.RNNBase)), None)
    if rnn is not None:
        return (f"{type(rnn).__name__} has no torch.func batching rule (vmap would run the clients one by one "
                "inside, slower than the serial loop)")
    if any(not p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters"
    named = {name for name, _ in model.named_parameters()}
    tied = next((k for k in model.state_dict() if k not in named), None)
    if tied is not None:
        return f"{type(model).__name__} ties weights ({tied} is another parameter under a second name)"
    if settings is not None:
        if settings.grad_bits:
            return "client.grad_bits (quantized gradients) is set"
        if settings.autocast != "none":
            return "client.autocast is set"
    return None


@dataclasses.dataclass
class Job:
    """One client's local training."""

    params: dict[str, torch.Tensor]  # its starting weights (the global model it received)
    x: torch.Tensor
    y: torch.Tensor
    settings: TrainSettings
    generator: torch.Generator


@functools.lru_cache(maxsize=1024)
def _plan(n: int, settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The serial trainer's batch positions for a client of ``n`` samples, as positions in
    the concatenation of its epoch permutations: ``(positions [steps, B] (-1 = padding),
    valid mask [steps, B], permutations drawn)``: the same draws in the same order as the
    serial trainer's loop (a new permutation whenever an epoch starts)."""
    total, b = settings.total_steps(n), settings.batch_size
    positions = torch.full((total, b), -1, dtype=torch.long)
    pos, perms = n, 0
    for t in range(total):
        if pos >= n:
            perms += 1
            pos = 0
        take = min(b, n - pos)
        positions[t, :take] = torch.arange((perms - 1) * n + pos, (perms - 1) * n + pos + take)
        pos += b
    return positions, (positions >= 0).long(), perms


def dense_layers(model: nn.Module) -> list[tuple[str, str | None]] | None:
    """The model as ``[("flatten", None) | ("linear", prefix) | ("relu", None)]`` when it is a
    plain ``nn.Sequential`` of Flatten / Linear / ReLU (logistic regression, MLPs), else None."""
    if not isinstance(model, nn.Sequential):
        return None
    out: list[tuple[str, str | None]] = []
    for name, layer in model.named_children():
        if isinstance(layer, nn.Flatten):
            out.append(("flatten", None))
        elif isinstance(layer, nn.Linear) and layer.bias is not None:
            out.append(("linear", name))
        elif isinstance(layer, nn.ReLU):
            out.append(("relu", None))
        else:
            return None
    return out if any(kind == "linear" for kind, _ in out) else None


def dense_grads(layers: list[tuple[str, str | None]], p: dict[str, torch.Tensor], xb: torch.Tensor,
                yb: torch.Tensor, mb: torch.Tensor, nb: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every client's gradient of its mean masked cross-entropy, for Flatten/Linear/ReLU stacks,
    by hand with batched matrix products (what autograd computes, without its overhead).
    Shapes: xb [C, B, ...], yb [C, B], mb [C, B], nb [C]."""
    h = xb.reshape(xb.shape[0], xb.shape[1], -1)
    saved: list[tuple[str, str | None, torch.Tensor]] = []
    for kind, name in layers:
        if kind == "linear":
            saved.append((kind, name, h))
            h = torch.baddbmm(p[f"{name}.bias"].unsqueeze(1), h, p[f"{name}.weight"].transpose(1, 2))
        elif kind == "relu":
            saved.append((kind, name, h))
            h = torch.relu(h)
    logp = torch.log_softmax(h, dim=2)
    nll = -logp.gather(2, yb.unsqueeze(2)).squeeze(2)  # [C, B]
    scale = mb / nb.clamp(min=1.0).unsqueeze(1)
    loss = (nll * scale).sum(dim=1)
    grad_h = logp.exp()
    grad_h.scatter_add_(2, yb.unsqueeze(2), -torch.ones_like(nll).unsqueeze(2))
    grad_h = grad_h * scale.unsqueeze(2)
    grads: dict[str, torch.Tensor] = {}
    for i in range(len(saved) - 1, -1, -1):
        kind, name, inp = saved[i]
        if kind == "linear":
            grads[f"{name}.weight"] = torch.bmm(grad_h.transpose(1, 2), inp)
            grads[f"{name}.bias"] = grad_h.sum(dim=1)
            if i > 0:  # the input's gradient is not needed below the first layer
                grad_h = torch.bmm(grad_h, p[f"{name}.weight"])
        else:  # relu
            grad_h = grad_h * (inp > 0)
    return grads, loss


def train_many(model: nn.Module, jobs: Sequence[Job]) -> list[tuple[dict[str, torch.Tensor], TrainOutcome]]:
    """Train every job's copy of ``model``; returns each client's weights and outcome."""
    if not jobs:
        return []
    plans = [_plan(len(j.x), j.settings) for j in jobs]
    # Longest first: at step t the clients still training are a prefix, so each step works
    # on views [:k] and finished clients cost nothing.
    order = sorted(range(len(jobs)), key=lambda i: -len(plans[i][0]))
    jobs = [jobs[i] for i in order]
    plans = [plans[i] for i in order]
    c = len(jobs)
    batch = max(j.settings.batch_size for j in jobs)
    steps = len(plans[0][0])
    names = [name for name, _ in model.named_parameters()]

    # Data of all clients in one tensor; each client's batches as global indices + mask.
    offsets = [0]
    for j in jobs:
        offsets.append(offsets[-1] + len(j.x))
    device = next(model.parameters()).device  # client.device: the batched computation runs there
    x_all = torch.cat([j.x.to(device) for j in jobs])
    y_all = torch.cat([j.y.to(device) for j in jobs])
    dtype = x_all.dtype if x_all.is_floating_point() else torch.float32
    index = torch.zeros((steps, c, batch), dtype=torch.long)
    mask = torch.zeros((steps, c, batch), dtype=dtype)
    # Clients with the same plan (size, steps, batch size) are filled together: their draws
    # (one permutation per epoch started, from each client's own generator) are stacked and
    # gathered through the plan's positions.
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, (pattern, _valid, _perms) in enumerate(plans):
        groups.setdefault((len(jobs[i].x), pattern.shape[0], jobs[i].settings.batch_size), []).append(i)
    for (n, t_steps, b), members in groups.items():
        if t_steps == 0:
            continue
        pattern, valid, n_perms = plans[members[0]]
        flats = torch.stack([torch.cat([torch.randperm(n, generator=jobs[i].generator) for _ in range(n_perms)])
                             for i in members])  # [g, n_perms * n]
        gathered = flats[:, pattern.clamp(min=0)] + torch.tensor([offsets[i] for i in members]).view(-1, 1, 1)
        rows = torch.tensor(members)
        index[:t_steps, rows, :b] = (gathered * valid).transpose(0, 1)
        mask[:t_steps, rows, :b] = valid.to(dtype).unsqueeze(0).expand(len(members), -1, -1).transpose(0, 1)
    index, mask = index.to(device), mask.to(device)
    counts = mask.sum(dim=2)  # [steps, c]: each client's batch size at each step
    schedules = [p[0] for p in plans]
    active = [sum(1 for s in schedules if len(s) > t) for t in range(steps)]

    params = {}
    for n in names:
        first = jobs[0].params[n]
        if all(j.params[n] is first for j in jobs):  # the usual case: everyone got the same global model
            params[n] = first.detach().to(device, dtype).unsqueeze(0).expand(c, *first.shape).clone()
        else:
            params[n] = torch.stack([j.params[n].detach().to(device, dtype) for j in jobs])

    def per_client(values: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device).reshape((-1,) + (1,) * (like.dim() - 1))

    lr = {n: per_client([j.settings.lr for j in jobs], p) for n, p in params.items()}
    mus = [j.settings.proximal_mu for j in jobs]
    decays = [j.settings.weight_decay for j in jobs]
    moms = [j.settings.momentum for j in jobs]
    mu = {n: per_client(mus, p) for n, p in params.items()} if any(mus) else {}
    decay = {n: per_client(decays, p) for n, p in params.items()} if any(decays) else {}
    mom = {n: per_client(moms, p) for n, p in params.items()} if any(moms) else {}
    anchor = {n: p.clone() for n, p in params.items()} if mu else {}
    buffers: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros(c, dtype=torch.float64, device=device)

    def loss_fn(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor,
                nb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ce = F.cross_entropy(functional_call(model, p, (xb,)), yb, reduction="none")
        mean = (ce * mb).sum() / nb
        return mean, mean.detach()

    layers = dense_layers(model)
    if layers is not None:
        def step_grads(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor,
                       nb: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            return dense_grads(layers, p, xb, yb, mb, nb)
    else:
        step_grads = vmap(grad(loss_fn, has_aux=True))
    with torch.no_grad():
        for t in range(steps):
            k = active[t]
            rows = index[t, :k]
            live = {n: p[:k] for n, p in params.items()}
            grads, ce = step_grads(live, x_all[rows], y_all[rows], mask[t, :k], counts[t, :k])
            for n in names:
                p, g = live[n], grads[n]
                if decay:
                    g = g + decay[n][:k] * p
                if anchor:
                    g = g + mu[n][:k] * (p - anchor[n][:k])
                if mom:
                    buf = buffers.get(n)
                    if buf is None:  # torch.optim.SGD: the first step's buffer is the gradient
                        buf = buffers[n] = g.clone()
                    else:
                        buf[:k].mul_(mom[n][:k]).add_(g)
                    g = torch.where(mom[n][:k] > 0, buf[:k], g)
                p.addcmul_(lr[n][:k], g, value=-1.0)
            loss_sum[:k] += ce.double() * counts[t, :k].double()
    losses = loss_sum.cpu()
    out: list[tuple[dict[str, torch.Tensor], TrainOutcome]] = [None] * c  # type: ignore[list-item]
    for i, sched in enumerate(schedules):
        seen = int(plans[i][1].sum())
        outcome = TrainOutcome(loss=float(losses[i]) / seen if seen else math.nan, steps=len(sched),
                               examples_seen=seen)
        out[order[i]] = ({n: params[n][i].detach().cpu() for n in names}, outcome)  # views: replies copy them
    return out
