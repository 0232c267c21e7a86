"""Local training and evaluation of a torch classifier on in-memory tensors."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.clients.sgd import SGD


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    epochs: int = 1
    steps: int = 0  # > 0: exactly this many SGD steps (reshuffling each pass)
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx: adds (mu/2)*||w - w_global||^2
    max_steps: int = 0  # > 0: stop after this many steps (partial work within a time budget)
    grad_bits: int = 0  # > 0: DoReFa-style stochastic k-bit quantization of every gradient
    autocast: str = "none"  # "bf16": forward passes under torch.autocast(bfloat16)

    def total_steps(self, n: int) -> int:
        if n == 0:
            return 0
        total = self.steps if self.steps > 0 else self.epochs * math.ceil(n / self.batch_size)
        return min(total, self.max_steps) if self.max_steps > 0 else total


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    loss: float  # mean cross-entropy over the examples processed (without the proximal term)
    steps: int
    examples_seen: int


def proximal_term(model: nn.Module, global_params: list[torch.Tensor]) -> torch.Tensor:
    """``||w - w_global||^2`` over the trainable parameters (squared L2 norm)."""
    total = torch.zeros((), device=global_params[0].device if global_params else None)
    for p, g in zip((p for p in model.parameters() if p.requires_grad), global_params):
        total = total + (p - g).pow(2).sum()
    return total


def quantize_gradient(g: torch.Tensor, bits: int, generator: torch.Generator) -> torch.Tensor:
    """DoReFa-Net's gradient quantizer (Zhou et al. 2016), unbiased stochastic rounding:
    2m * (Q_k(g / 2m + 1/2 + noise) - 1/2), m = max|g|, noise ~ U(-1/2, 1/2) / (2^k - 1)."""
    m = g.abs().max()
    if m == 0:
        return g
    levels = 2**bits - 1
    x = g / (2 * m) + 0.5
    noise = (torch.rand(g.shape, generator=generator, dtype=g.dtype).to(g.device) - 0.5) / levels
    q = torch.round((x + noise).clamp(0, 1) * levels) / levels
    return 2 * m * (q - 0.5)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings,
          generator: torch.Generator, correction: list[torch.Tensor] | None = None,
          anchor: list[torch.Tensor] | None = None) -> TrainOutcome:
    """Mini-batch SGD; batches (and gradient quantization noise) are drawn with ``generator``.

    ``correction`` (one tensor per trainable parameter) is added to every gradient before the
    step (SCAFFOLD's ``c - c_i``). The proximal term (``settings.proximal_mu`` > 0) pulls
    towards ``anchor`` (one tensor per trainable parameter; Ditto's global model), by default
    towards the weights training started from (FedProx)."""
    n = len(x)
    total = settings.total_steps(n)
    if total == 0:
        return TrainOutcome(loss=float("nan"), steps=0, examples_seen=0)
    opt = SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if anchor is not None and settings.proximal_mu > 0:
        global_params = [a.to(p.device, p.dtype) for a, p in zip(anchor, trainable, strict=True)]
    else:
        global_params = [p.detach().clone() for p in trainable] if settings.proximal_mu > 0 else []
    if correction is not None:
        correction = [c.to(p.device, p.dtype) for c, p in zip(correction, trainable, strict=True)]
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    seen = 0
    perm = torch.empty(0, dtype=torch.long)
    pos = n
    for _ in range(total):
        if pos >= n:
            perm = torch.randperm(n, generator=generator)
            pos = 0
        idx = perm[pos : pos + settings.batch_size].to(x.device)
        pos += settings.batch_size
        xb, yb = x[idx], y[idx]
        opt.zero_grad()
        if settings.autocast == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                logits = model(xb)
            ce = F.cross_entropy(logits.float(), yb)
        else:
            ce = F.cross_entropy(model(xb), yb)
        loss = ce + (settings.proximal_mu / 2) * proximal_term(model, global_params) if global_params else ce
        loss.backward()
        if settings.grad_bits:
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.copy_(quantize_gradient(p.grad, settings.grad_bits, generator))
        if correction is not None:
            with torch.no_grad():
                for p, c in zip(trainable, correction, strict=True):
                    if p.grad is not None:
                        p.grad.add_(c)
        opt.step()
        loss_sum += ce.detach().double() * len(idx)
        seen += len(idx)
    return TrainOutcome(loss=float(loss_sum) / seen, steps=total, examples_seen=seen)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy); (nan, nan) on an empty set."""
    if len(x) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_sum = 0.0
    correct = 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model(xb)
        loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    return loss_sum / len(x), correct / len(x)
