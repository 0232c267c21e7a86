"""Where clients compute: ``client.device = "auto" | "cpu" | "cuda" | "cuda:N"``.

``auto`` picks the first CUDA device when PyTorch sees one, else the CPU. Weights travel
between server and clients as CPU arrays either way; only local training (and the
vectorized executor's batched training) runs on the chosen device.
"""

from __future__ import annotations

import re

import torch

from fedsim.core.errors import ConfigError

PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check(name: str, field: str = "client.device") -> None:
    if not PATTERN.match(name):
        raise ConfigError(field, name, 'must be "auto", "cpu", "cuda" or "cuda:N"')


def resolve(name: str, field: str = "client.device") -> torch.device:
    check(name, field)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(field, name, 'CUDA is not available here (torch.cuda.is_available() is False); '
                                           'use "auto" or "cpu"')
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(field, name, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)
