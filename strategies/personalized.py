"""Personalized federated learning: FedPer (personal layers), Ditto and APFL (personal models).

Both are FedAvg on the server; what differs happens on the clients
(`fedsim.clients.algorithms`), asked for through the train and evaluate configs, and is
kept in each client's Flower ``Context.state``. Their federated evaluation evaluates each
client's personal model on its own test split (fedsim reports the mean, the 10th
percentile and the worst client).

- ``fedper``: ``personal_layers`` names parameter prefixes (``["3"]`` for the classifier of
  fedsim's one-hidden-layer ``mlp``, whose layers are ``1`` and ``3``; ``["head"]`` for a
  model with a ``head`` module). Those arrays are never sent: training and evaluation
  messages carry the shared body only, and only the body is charged. The server's copy of
  the personal layers stays at the initial model's (its centralized evaluation is the
  global body with the initial head: reported as such, it is not a personalized figure).
- ``ditto``: ``lam`` is the proximal weight of each personal model toward the global one
  (Li et al. 2021: lam = 0 trains personal models alone; large lam follows the global).
- ``apfl``: each client mixes its local model with the global one,
  ``alpha v_i + (1 - alpha) w`` (Deng et al. 2020); ``alpha`` is where every client's
  mixing weight starts, ``adaptive`` lets each client learn its own by gradient descent.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedsim.strategies.registry import register_strategy
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.core import keys
from fedsim.core.errors import ConfigError
from fedsim.core.keys import is_personal


@register_strategy("fedper")
class FedPer(FedAvg):
    """FedAvg over the shared body; the layers named by ``personal_layers`` stay on clients."""

    fedsim_model_replies = True

    def __init__(self, *, personal_layers: tuple[str, ...], **kwargs) -> None:  # type: ignore[no-untyped-def]
        prefixes = tuple(personal_layers)
        if not prefixes or any(not isinstance(p, str) or not p or "," in p for p in prefixes):
            raise ValueError("personal_layers must name at least one parameter prefix (no commas), e.g. ['3']")
        super().__init__(**kwargs)
        self.personal_layers = prefixes
        self._full: ArrayRecord | None = None

    def fedsim_check_model(self, arrays: ArrayRecord) -> None:
        """Before anything runs: the prefixes name some, not all, of the model's arrays."""
        personal = [k for k in arrays.keys() if is_personal(k, self.personal_layers)]
        if not personal or len(personal) == len(arrays):
            names = ", ".join(list(arrays.keys())[:8])
            raise ConfigError("strategy.personal_layers", list(self.personal_layers),
                              f"must name some but not all of the model's arrays (by prefix: {names})")

    def _shared(self, arrays: ArrayRecord) -> ArrayRecord:
        self.fedsim_check_model(arrays)
        self._full = arrays
        return ArrayRecord({k: a for k, a in arrays.items() if not is_personal(k, self.personal_layers)})

    def _config(self, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**dict(config), keys.ALGORITHM: "fedper",
                             keys.PERSONAL_LAYERS: ",".join(self.personal_layers)})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, self._shared(arrays), self._config(config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, self._shared(arrays), self._config(config), grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        body, metrics = super().aggregate_train(server_round, replies)
        if body is None or self._full is None:
            return body, metrics
        full = {k: a for k, a in self._full.items()}
        full.update({k: Array(a.numpy()) for k, a in body.items()})
        return ArrayRecord(full), metrics


@register_strategy("ditto")
class Ditto(FedAvg):
    """FedAvg for the global model; each client also trains its personal model with
    the proximal weight ``lam`` toward the global one."""

    fedsim_arg_rules = {"lam": (lambda v: v >= 0, "must be >= 0")}
    fedsim_model_replies = True

    def __init__(self, *, lam: float = 1.0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        super().__init__(**kwargs)
        self.lam = lam

    def _config(self, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**dict(config), keys.ALGORITHM: "ditto", keys.DITTO_LAMBDA: float(self.lam)})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, self._config(config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays, self._config(config), grid)


@register_strategy("apfl")
class Apfl(FedAvg):
    """FedAvg for the global model; each client also trains its local model, mixed with
    the global one by ``alpha`` (learned per client when ``adaptive``)."""

    fedsim_arg_rules = {"alpha": (lambda v: 0 <= v <= 1, "must be in [0, 1]")}
    fedsim_model_replies = True

    def __init__(self, *, alpha: float = 0.25, adaptive: bool = True, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        self.adaptive = bool(adaptive)

    def _config(self, config: ConfigRecord) -> ConfigRecord:
        return ConfigRecord({**dict(config), keys.ALGORITHM: "apfl", keys.APFL_ALPHA: self.alpha,
                             keys.APFL_ADAPTIVE: self.adaptive})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, self._config(config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays, self._config(config), grid)
