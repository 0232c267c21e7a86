"""How much a reconstruction leaks: MSE, PSNR, SSIM, label accuracy, best-match pairing.

PSNR is computed on the reconstruction clamped to the valid pixel range [0, 1] (data
range 1) and capped at 100 dB. SSIM is pytorch-msssim's, with a Gaussian window no larger
than the image. With several reconstructions and several true inputs, each reconstruction
is paired with a distinct input by the Hungarian method on MSE.

Scoring is honest (`score_all`): every input the client trained on counts. An input no
reconstruction was paired with (an attack that rebuilds one batch of a multi-step update,
say) is a failure: 0 dB, SSIM 0, its label wrong. The headline PSNR is the mean over all
inputs; the mean over the reconstructed ones and the coverage are reported beside it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

PSNR_CAP = 100.0


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


def psnr(reconstruction: torch.Tensor, truth: torch.Tensor) -> float:
    """10 log10(1 / MSE) of the reconstruction clamped to [0, 1]; capped at 100 dB."""
    err = mse(reconstruction.clamp(0, 1), truth)
    return PSNR_CAP if err <= 10 ** (-PSNR_CAP / 10) else min(PSNR_CAP, 10 * math.log10(1.0 / err))


def as_images(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W): flat inputs become a 1 x 1 x D row (SSIM then compares rows)."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x[:, None]
    return x.reshape(len(x), 1, 1, -1)


def ssim(reconstruction: torch.Tensor, truth: torch.Tensor) -> float:
    from pytorch_msssim import ssim as ms_ssim

    a = as_images(reconstruction.clamp(0, 1).float()[None])
    b = as_images(truth.float()[None])
    h, w = a.shape[-2:]
    win = min(11, h, w)
    win = win if win % 2 == 1 else win - 1
    if win < 3 or h < win or w < win:
        return float("nan")
    return float(ms_ssim(a, b, data_range=1.0, size_average=True, win_size=win))


def match(reconstructions: torch.Tensor, truths: torch.Tensor) -> list[tuple[int, int]]:
    """(reconstruction index, truth index) pairs minimizing the total MSE."""
    from scipy.optimize import linear_sum_assignment

    cost = np.array([[mse(r.clamp(0, 1), t) for t in truths] for r in reconstructions])
    rows, cols = linear_sum_assignment(cost)
    return list(zip(rows.tolist(), cols.tolist()))


def score(reconstructions: torch.Tensor, labels: torch.Tensor, truths: torch.Tensor,
          true_labels: torch.Tensor) -> list[dict[str, float]]:
    """One record per matched reconstruction: mse, psnr, ssim, label_ok."""
    out = []
    for r, t in match(reconstructions, truths):
        out.append({"mse": mse(reconstructions[r].clamp(0, 1), truths[t]),
                    "psnr": psnr(reconstructions[r], truths[t]),
                    "ssim": ssim(reconstructions[r], truths[t]),
                    "label_ok": float(int(labels[r]) == int(true_labels[t])) if r < len(labels) else 0.0})
    return out


FAILED_PSNR = 0.0


def score_all(reconstructions: torch.Tensor, labels: torch.Tensor, truths: torch.Tensor,
              true_labels: torch.Tensor) -> list[dict[str, Any]]:
    """One record per true input, in order: its pairing, mse, psnr, ssim, label_ok; an input
    without a reconstruction scores as a failure (``reconstruction`` None, 0 dB, SSIM 0)."""
    paired = {t: r for r, t in match(reconstructions, truths)} if len(reconstructions) else {}
    out = []
    for t in range(len(truths)):
        r = paired.get(t)
        if r is None:
            out.append({"truth": t, "reconstruction": None, "mse": mse(torch.zeros_like(truths[t]) + 0.5, truths[t]),
                        "psnr": FAILED_PSNR, "ssim": 0.0, "label_ok": 0.0})
            continue
        out.append({"truth": t, "reconstruction": r, "mse": mse(reconstructions[r].clamp(0, 1), truths[t]),
                    "psnr": psnr(reconstructions[r], truths[t]), "ssim": ssim(reconstructions[r], truths[t]),
                    "label_ok": float(r < len(labels) and int(labels[r]) == int(true_labels[t]))})
    return out


def label_accuracy(labels: torch.Tensor, true_labels: torch.Tensor) -> float:
    """Multiset overlap of recovered and true labels (order-free), as a fraction."""
    from collections import Counter

    got, want = Counter(labels.tolist()), Counter(true_labels.tolist())
    return sum((got & want).values()) / max(1, sum(want.values()))
