"""The scenario's ``[client]`` section: local training settings of fedsim's ClientApp."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class LocalDpSection:
    """Flower's LocalDpMod on fedsim's ClientApp: clip the update, add Gaussian noise with
    std = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon (per release)."""

    epsilon: float = option(0.0, ge=0.0, doc="per-release epsilon; 0 = off")
    delta: float = option(1e-5, gt=0.0, lt=1.0)
    clipping_norm: float = option(1.0, gt=0.0)
    sensitivity: float = option(1.0, ge=0.0, doc="usually the clipping norm")

    @property
    def enabled(self) -> bool:
        return self.epsilon > 0

    @property
    def noise_std(self) -> float:
        import math

        return self.sensitivity * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon if self.enabled else 0.0


@dataclasses.dataclass(frozen=True)
class ClientSection:
    app: str = option("fedsim", doc='"fedsim" or a Flower ClientApp as "module:attribute"')
    local_epochs: int = option(1, ge=0, le=100_000)
    local_steps: int = option(0, ge=0, le=100_000_000, doc="if > 0, a fixed number of SGD steps instead of epochs")
    batch_size: int = option(32, ge=1, le=10_000_000)
    lr: float = option(0.05, gt=0.0, le=1e6)
    momentum: float = option(0.0, ge=0.0, lt=1.0)
    weight_decay: float = option(0.0, ge=0.0, le=1e6)
    threads: int = option(1, ge=1, le=1024, doc="torch threads per client process")
    grad_bits: int = option(0, ge=0, le=16, doc="quantized local training: k-bit stochastic gradients (0 = off)")
    autocast: str = option("none", choices=("none", "bf16"), doc="bf16 autocast for local training")
    device: str = option("auto", doc='"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"')
    timeout_s: float = option(0.0, ge=0.0, le=1e7,
                              doc="wall seconds a client call may take (0 = no limit). serial/vectorized: the run "
                                  "stops cleanly past it (in-process code cannot be killed safely); ray: the "
                                  "client is dropped and its actor replaced (when ray.client_timeout is 0)")
    local_dp: LocalDpSection = LocalDpSection()
    app_config: Mapping[str, Any] = dataclasses.field(default_factory=dict,
                                                     metadata={"doc": "run_config for a user ClientApp"})

    def check(self, path: str) -> None:
        if self.local_epochs == 0 and self.local_steps == 0:
            raise ConfigError(f"{path}.local_epochs", 0, "must be >= 1 unless local_steps > 0")
        from fedsim.clients.device import resolve

        resolve(self.device, f"{path}.device")  # "cuda" on a machine without CUDA fails here
        if self.app != "fedsim" and (":" not in self.app or self.app.startswith(":") or self.app.endswith(":")):
            raise ConfigError(f"{path}.app", self.app, 'must be "fedsim" or a ClientApp as "module:attribute"')
        for key, value in self.app_config.items():
            if not isinstance(value, (bool, int, float, str)):
                raise ConfigError(f"{path}.app_config.{key}", value, "must be a bool, number or string")
