"""FedNova (Wang et al., NeurIPS 2020): normalized averaging for heterogeneous local steps.

Clients that run more local steps move further; FedAvg then over-weights them and drifts
towards their objectives. FedNova divides each client's update by its normalizer a_i
(its local step count for plain SGD; a momentum-corrected count otherwise, see
`fedsim.strategies.aggregation.fednova_normalizer`) and rescales the average by the effective
step count. It needs each reply's ``steps`` metric (fedsim's ClientApp reports it).
"""

from __future__ import annotations

from collections.abc import Iterable

from fedsim.strategies.aggregation import fednova
from fedsim.strategies.registry import register_strategy
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.core import keys


@register_strategy("fednova")
class FedNova(FedAvg):
    """FedAvg with FedNova's normalized aggregation; ``momentum`` is the clients' SGD momentum."""

    fedsim_arg_rules = {"momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)")}

    def __init__(self, *, momentum: float = 0.0, steps_key: str = keys.STEPS, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(**kwargs)
        self.momentum = momentum
        self.steps_key = steps_key
        self._current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self._current is None:
            return None, None
        contents = [m.content for m in valid]
        local, examples, steps = [], [], []
        for c in contents:
            metrics = next(iter(c.metric_records.values()))
            n, tau = metrics.get(self.weighted_by_key), metrics.get(self.steps_key)
            if not isinstance(tau, (int, float)) or tau <= 0:
                continue  # a client that took no step moved nothing
            local.append({k: a.numpy() for rec in c.array_records.values() for k, a in rec.items()})
            examples.append(float(n))  # type: ignore[arg-type]
            steps.append(float(tau))
        if not local:
            return None, None
        current = {k: a.numpy() for k, a in self._current.items()}
        new = fednova(current, local, examples, steps, self.momentum)
        return ArrayRecord({k: Array(v) for k, v in new.items()}), self.train_metrics_aggr_fn(contents,
                                                                                                self.weighted_by_key)
