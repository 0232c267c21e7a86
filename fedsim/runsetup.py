"""One run set-up, shared by ``fedsim run``, ``fedsim check`` and the Deployment Engine's
ServerApp: the data, the initial global model, the server's evaluation model, the
strategy, and the ClientApp with the run config its Context carries."""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.clients import lora
from fedsim.clients.models import build_model, init_model
from fedsim.clients.spec import ClientSpec, to_run_config
from fedsim.clients.trainer import evaluate
from fedsim.config import Config
from fedsim.core.errors import ConfigError
from fedsim.engine.executors import AppRef
from fedsim.scenarios.federation import FederatedData, federated_data
from fedsim.strategies.registry import build_strategy

FEDSIM_APP = "fedsim.clients.app:app"


@dataclasses.dataclass
class RunSetup:
    """What a run starts from (built by `prepare`)."""

    cfg: Config
    spec: ClientSpec
    data: FederatedData
    initial: ArrayRecord  # the initial global arrays (the adapters in LoRA mode)
    server_model: torch.nn.Module  # evaluates global arrays on the server's test set
    adapters: lora.LoraParams | None
    strategy: Strategy | None

    @property
    def own_loop(self) -> bool:
        """Whether the strategy drives its own rounds (overrides ``Strategy.start``, e.g. FedBuff)."""
        return self.strategy is not None and type(self.strategy).start is not Strategy.start

    def load_global(self, arrays: ArrayRecord) -> torch.nn.Module:
        """The server's model holding ``arrays``."""
        if self.adapters is not None:
            lora.load_trainable(self.server_model, arrays)
        else:
            self.server_model.load_state_dict(arrays.to_torch_state_dict())
        return self.server_model

    def evaluate(self, arrays: ArrayRecord) -> tuple[float, float]:
        """Centralized (loss, accuracy) of ``arrays`` on the server's test set."""
        return evaluate(self.load_global(arrays), self.data.server_x, self.data.server_y)

    def model_builder(self) -> ModelBuilder:
        """Builds the architecture (adapters included in LoRA mode) and nothing else: what an
        honest-but-curious server knows, safe to ship to attack probes."""
        template = copy.deepcopy(self.server_model) if self.adapters is not None else None
        return ModelBuilder(self.cfg.model.name, self.cfg.model.params, tuple(self.data.input_shape),
                            self.data.num_classes, template)


@dataclasses.dataclass(frozen=True)
class ModelBuilder:
    """The model's name, parameters, input shape and class count (or a LoRA-wrapped template)."""

    name: str
    params: Any
    input_shape: tuple[int, ...]
    num_classes: int
    template: torch.nn.Module | None = None

    def __call__(self) -> torch.nn.Module:
        if self.template is not None:
            return copy.deepcopy(self.template)
        return build_model(self.name, self.params, self.input_shape, self.num_classes)


def prepare(cfg: Config, *, with_strategy: bool = True) -> RunSetup:
    """Data and partitions (validated), the initial model (seeded; warmed up on the shared
    set or wrapped with LoRA adapters as the scenario says) and the strategy."""
    spec = cfg.client_spec()
    data = federated_data(cfg.data, cfg.data_seed)
    adapters = lora.lora_params(cfg.codec)
    if adapters is not None:  # LoRA-only: the global arrays are the adapters
        server_model = lora.wrap(lora.build_base(spec, data, adapters), adapters, cfg.run.seed)
        initial = ArrayRecord(lora.trainable_state(server_model))
    else:
        model = init_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes, cfg.run.seed)
        if cfg.data.sharing.enabled and cfg.data.sharing.warmup_epochs > 0:
            warm_up(model, data, cfg)
        initial = ArrayRecord(model.state_dict())
        server_model = build_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes)
    check_model(server_model, data, cfg.model.name)
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params) if with_strategy else None
    check = getattr(strategy, "fedsim_check_model", None)
    if callable(check):  # e.g. FedPer's personal layers must name some of the model's arrays
        check(initial)
    if (strategy is not None and cfg.selection.policy != "uniform"
            and type(strategy).start is not Strategy.start):
        raise ConfigError("selection.policy", cfg.selection.policy,
                          f"{type(strategy).__name__} runs its own loop (e.g. FedBuff's asynchronous dispatch) and "
                          "samples its clients itself; selection policies apply to round-based strategies")
    return RunSetup(cfg=cfg, spec=spec, data=data, initial=initial, server_model=server_model, adapters=adapters,
                    strategy=strategy)


def check_model(model: torch.nn.Module, data: FederatedData, name: str) -> None:
    """One forward pass on two inputs before anything runs: the model must have trainable
    parameters, accept the dataset's inputs and give one logit per class."""
    field = "model.name"
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(field, name, "has no trainable parameters")
    x = data.server_x[:2] if len(data.server_x) else data.client_train(0)[0][:2]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's model: one line naming the shapes
        raise ConfigError(field, name, f"fails on inputs of shape {tuple(x.shape)} ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())[:300]})") from None
    finally:
        model.train(training)
    want = (len(x), data.num_classes)
    shape = tuple(getattr(out, "shape", ()))
    if shape != want:
        raise ConfigError(field, name, f"gives outputs of shape {shape} for inputs of shape {tuple(x.shape)}; "
                                       f"expected {want}: one logit per class ({data.num_classes} classes)")


def checkpointable(strategy: Strategy) -> bool:
    """A strategy that runs Flower's own round loop, or says how to save its state."""
    return type(strategy).start is Strategy.start or callable(getattr(strategy, "fedsim_state", None))


def check_checkpointable(cfg: Config, strategy: Strategy) -> None:
    """Asked-for checkpoints (``run.checkpoint_every`` = N) need a checkpointable strategy;
    the automatic default just does without."""
    if cfg.run.checkpoint_every and not checkpointable(strategy):
        raise ConfigError("run.checkpoint_every", cfg.run.checkpoint_every,
                          f"strategy {cfg.strategy.name!r} drives its own rounds (start() overridden) and does "
                          "not expose fedsim_state() / fedsim_load_state(); set 0")


def warm_up(model: torch.nn.Module, data: Any, cfg: Config) -> None:
    """Zhao et al.'s server warm-up: train the initial global model on the shared set G
    (the same function builds LoRA's base, so both start from one model)."""
    from fedsim.clients.warmup import warm_up as warm

    warm(model, data, cfg.data.sharing, cfg.client, cfg.run.seed, cfg.data.sharing.warmup_epochs)


def make_app_ref(cfg: Config) -> tuple[AppRef, dict[str, Any]]:
    """The ClientApp to run and the run_config its Context carries (the client contract
    for fedsim's ClientApp; ``client.app_config`` for a user's)."""
    extra: dict[str, Any] = {"seed": cfg.run.seed}
    if cfg.faults.enabled:
        extra["faults"] = cfg.faults
    if cfg.byzantine.enabled:
        from fedsim.scenarios.byzantine import malicious_clients

        extra.update(byzantine=cfg.byzantine,
                     malicious=malicious_clients(cfg.byzantine, cfg.data.num_clients, cfg.run.seed))
    if cfg.client.app == "fedsim":
        from fedsim.strategies.wrappers import CLIENT_MODS

        spec = cfg.client_spec()
        mod = CLIENT_MODS.get(getattr(cfg.strategy.params, "wrapper", ""), "")
        target = f"{FEDSIM_APP}_{mod}" if mod else FEDSIM_APP
        return (AppRef(target, registrations=cfg.main_registrations([spec]), **extra),
                to_run_config(spec))
    return AppRef(cfg.client.app, paths=(os.getcwd(),), **extra), dict(cfg.client.app_config)
