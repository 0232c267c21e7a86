"""Model registry: torch modules built from (input shape, number of classes, params).

A user's model by path (``model.name = "my_pkg.nets:Net"``) is an ``nn.Module`` class or a
factory function; the other keys of ``[model]`` are its keyword arguments (checked
against its signature), and fedsim passes ``input_shape`` (a tuple, e.g. ``(1, 8, 8)``)
and ``num_classes`` when it takes them. Its weights are drawn from the run seed
(`init_model`), the same in every process.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedsim.core.errors import ConfigError
from fedsim.core.plugins import call_with
from fedsim.core.registry import PathContract, PluginRegistry
from fedsim.core.schema import option

ModelFn = Callable[[tuple[int, ...], int, Any], nn.Module]

def _adapt(obj: Any, target: str, field: str) -> ModelFn:
    if not callable(obj):
        raise ConfigError(field, target, "must be an nn.Module class or a function returning one")

    def build(input_shape: tuple[int, ...], num_classes: int, params: Any) -> nn.Module:
        model = call_with(obj, params, field, target, input_shape=tuple(input_shape), num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise ConfigError(field, target, f"built a {type(model).__name__}, not a torch.nn.Module")
        return model

    return build


MODELS = PluginRegistry("model", PathContract(adapt=_adapt, field="model.name", provided=("input_shape", "num_classes")))


def register_model(name: str, params: type | None = None) -> Callable[[Any], Any]:
    """Register a model under ``name``: an ``nn.Module`` class or factory, as by path (its
    keywords from ``[model]``; ``input_shape`` and ``num_classes`` if it takes them). fedsim's
    built-ins pass a ``params`` dataclass and take ``build(input_shape, num_classes, params)``."""
    return MODELS.register_fn(name, params)


def resolve_model_params(name: str, raw: Mapping[str, Any], path: str) -> Any:
    return MODELS.resolve_params(name, raw, path)


resolve_model_params.registry = MODELS  # type: ignore[attr-defined]  (see fedsim.core.schema.iter_named)


def build_model(name: str, params: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MODELS.get(name, "model.name").fn(tuple(input_shape), num_classes, params)


@dataclasses.dataclass(frozen=True)
class LogRegParams:
    pass


@register_model("logreg", params=LogRegParams)
def logreg(input_shape: tuple[int, ...], num_classes: int, params: LogRegParams) -> nn.Module:
    """Multinomial logistic regression (softmax over a linear map)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@dataclasses.dataclass(frozen=True)
class MLPParams:
    hidden: tuple[int, ...] = option((200,), ge=1, le=1_000_000, doc="widths of the hidden layers")


@register_model("mlp", params=MLPParams)
def mlp(input_shape: tuple[int, ...], num_classes: int, params: MLPParams) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in params.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@dataclasses.dataclass(frozen=True)
class CNNParams:
    channels: tuple[int, ...] = option((16, 32), ge=1, le=4096, doc="conv3x3 widths, each followed by 2x2 max-pool")
    hidden: int = option(128, ge=1, le=1_000_000)


@register_model("cnn", params=CNNParams)
def cnn(input_shape: tuple[int, ...], num_classes: int, params: CNNParams) -> nn.Module:
    """A small CNN for 8x8 (digits), 28x28 (MNIST/FEMNIST) or 32x32 (CIFAR) images."""
    if len(input_shape) != 3:
        raise ConfigError("model.name", "cnn", f"needs image inputs (C, H, W); this dataset gives {input_shape}")
    c, h, w = input_shape
    if min(h, w) < 2 ** len(params.channels):
        raise ConfigError("model.channels", list(params.channels),
                          f"{len(params.channels)} pooling stages need images >= {2 ** len(params.channels)} px")
    layers: list[nn.Module] = []
    for out in params.channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, params.hidden), nn.ReLU(), nn.Linear(params.hidden, num_classes)]
    return nn.Sequential(*layers)


def init_model(name: str, params: Any, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The initial global model, its weights drawn from ``seed``."""
    from fedsim.core import seeding

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.int_seed(seed, 0, seeding.SERVER, "model-init"))
        return build_model(name, params, input_shape, num_classes)


from fedsim.clients import textmodels  # noqa: E402,F401  (registers the text models)
