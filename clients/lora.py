"""LoRA-only updates (Hu et al. 2021) via the ``peft`` library.

Named as the first element of the codec chain: ``[[codec]] name = "lora"``. The base
model is frozen and known to every client: the seeded initial model (``base = "init"``),
that model trained on the server's shared set G (``base = "warmup"``, needs
``[data.sharing]``; every process recomputes it, identically), or a checkpoint
(``.safetensors``, or a torch state dict loaded with ``weights_only=True``). Only the
adapters are global arrays; clients train and send only them (and the rest of the codec
chain compresses their deltas). Two aggregation modes:

- ``fedit`` (Zhang et al. 2024): A and B are averaged separately, so the aggregate
  ``mean(B) mean(A)`` differs from ``mean(B A)``; `aggregation_error` measures
  ``sum over layers ||mean(B_k A_k) - mean(B_k) mean(A_k)||_F`` each round.
- ``ffa`` (FFA-LoRA, Sun et al. 2024): A is frozen at a shared random init and only B is
  trained and sent, so averaging B is exact.

Evaluation runs the adapted model (base + scaling * B A, what ``merge_and_unload`` gives).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from fedsim.clients.codecs.base import Codec, register_codec
from flwr.app import Message
from torch import nn

from fedsim.core import keys, seeding
from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


@dataclasses.dataclass(frozen=True)
class LoraParams:
    rank: int = option(4, ge=1, le=65536)
    alpha: float = option(8.0, gt=0.0, doc="scaling = alpha / rank")
    dropout: float = option(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = option(("all",), doc='layer names (full, or last parts such as "c_attn"), or "all": every Linear, Conv2d and Conv1D')
    full_modules: tuple[str, ...] = option((), doc="modules trained and sent in full (e.g. the classifier head)")
    mode: str = option("fedit", choices=("fedit", "ffa"))
    base: str = option("warmup", doc='"warmup", "init", or a checkpoint path')
    base_epochs: int = option(20, ge=1, le=100_000, doc="warm-up epochs on G for base = warmup when "
                                                       "data.sharing.warmup_epochs is 0 (else those)")


@register_codec("lora", LoraParams)
class LoraEntry(Codec):
    """Registered so the chain validates; LoRA changes the model, not the payload."""

    name = "lora"


def lora_params(chain: Sequence[Any]) -> LoraParams | None:
    return chain[0].params if chain and chain[0].name == "lora" else None


FIELD = "codec[0]"


def build_base(spec: Any, data: Any, params: LoraParams) -> nn.Module:
    """The frozen base model, identical in every process (``spec``: a ClientSpec)."""
    from fedsim.clients.models import init_model
    from fedsim.clients.warmup import warm_up

    seed = spec.seed
    model = init_model(spec.model.name, spec.model.params, data.input_shape, data.num_classes, seed)
    if params.base == "init":
        return model
    if params.base == "warmup":
        if not spec.data.sharing.enabled:
            raise ConfigError(f"{FIELD}.base", "warmup", "needs [data.sharing] (the server's shared set G)")
        # The same warm-up as full fine-tuning's initial model (data.sharing.warmup_epochs),
        # so both arms of a LoRA-vs-full study start from one base.
        sharing = spec.data.sharing
        return warm_up(model, data, sharing, spec.client, seed, sharing.warmup_epochs or params.base_epochs)
    model.load_state_dict(load_checkpoint(params.base, model), strict=True)
    return model


def load_checkpoint(path: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict read without running pickled code; checked against ``model``."""
    if not os.path.isfile(path):
        raise ConfigError(f"{FIELD}.base", path, 'checkpoint not found (or use "init" / "warmup")')
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
        raise ConfigError(f"{FIELD}.base", path, f"unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{FIELD}.base", path, "is not a state dict")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if want != got:
        diff = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got.get(k)]
        raise ConfigError(f"{FIELD}.base", path, f"does not match the model (first difference: {diff[:2]})")
    return state


def _adaptable(m: nn.Module) -> bool:
    """Layers LoRA adapts: Linear, Conv2d, and transformers' GPT-2-style Conv1D."""
    return isinstance(m, (nn.Linear, nn.Conv2d)) or type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def _width(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return min(m.in_features, m.out_features)
    if isinstance(m, nn.Conv2d):  # a conv's A maps in_channels x kernel to the rank
        return min(m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels)
    return min(m.weight.shape)  # Conv1D: weight (in, out)


def _targets(model: nn.Module, params: LoraParams) -> list[str]:
    """Full names of the adapted layers. A target names a layer by its full name or by its
    last components (``c_attn`` matches every ``...attn.c_attn``), as peft matches them."""
    layers = {name: m for name, m in model.named_modules() if _adaptable(m)}
    if params.target_modules == ("all",):
        names = list(layers)
    else:
        names = []
        for target in params.target_modules:
            hits = [n for n in layers if n == target or n.endswith("." + target)]
            if not hits:
                shown = ", ".join(layers) if len(layers) <= 12 else ", ".join(list(layers)[:12]) + ", ..."
                raise ConfigError(f"{FIELD}.target_modules", list(params.target_modules),
                                  f"{target!r} matches no Linear/Conv2d/Conv1D layer; the model has: {shown}")
            names += [n for n in hits if n not in names]
    for name in names:
        width = _width(layers[name])
        if params.rank >= width:
            raise ConfigError(f"{FIELD}.rank", params.rank, f"must be < the width of layer {name!r} ({width})")
    return names


def wrap(model: nn.Module, params: LoraParams, seed: int) -> nn.Module:
    """The base frozen, adapters injected with a seeded (shared) initialization."""
    from peft import LoraConfig, get_peft_model

    names = dict(model.named_modules())
    for name in params.full_modules:
        if name not in names or name == "":
            raise ConfigError(f"{FIELD}.full_modules", list(params.full_modules), f"{name!r} is not a module of the model")
    targets = _targets(model, params)
    conv1d = any(not isinstance(names[t], (nn.Linear, nn.Conv2d)) for t in targets)  # GPT-2 style, weight (in, out)
    config = LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout, target_modules=targets,
                        fan_in_fan_out=conv1d, modules_to_save=list(params.full_modules) or None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.int_seed(seed, 0, seeding.SERVER, "lora-init"))
        peft_model = get_peft_model(model, config)
    if params.mode == "ffa":
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return peft_model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The global arrays in LoRA mode: the trainable adapter parameters."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, arrays: Any) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, arr in arrays.items():
            if key not in params:
                raise ValueError(f"{key!r} is not a parameter of the adapted model")
            params[key].copy_(torch.from_numpy(np.asarray(arr.numpy())))


def aggregation_error(replies: Sequence[Message]) -> float | None:
    """FedIT's error: sum over layers of ||mean(B_k A_k) - mean(B_k) mean(A_k)||_F, weighted by num-examples."""
    layers: dict[str, list[tuple[float, np.ndarray, np.ndarray]]] = {}
    for reply in replies:
        if reply.has_error():
            continue
        arrays = {k: a.numpy() for rec in reply.content.array_records.values() for k, a in rec.items()}
        metrics = next(iter(reply.content.metric_records.values()), {})
        w = float(metrics.get(keys.NUM_EXAMPLES, 1.0))
        for key, a in arrays.items():
            if ".lora_A." in key:
                b = arrays.get(key.replace(".lora_A.", ".lora_B."))
                if b is not None:
                    layers.setdefault(key, []).append((w, a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)))
    if not layers:
        return None
    total = 0.0
    for items in layers.values():
        weights = np.array([w for w, _, _ in items])
        p = weights / weights.sum()
        mean_ba = sum(pk * (b @ a) for pk, (_, a, b) in zip(p, items))
        mean_a = sum(pk * a for pk, (_, a, _) in zip(p, items))
        mean_b = sum(pk * b for pk, (_, _, b) in zip(p, items))
        total += float(np.linalg.norm(mean_ba - mean_b @ mean_a))
    return total
