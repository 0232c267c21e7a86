"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates against client drift.

The server keeps a control variate ``c`` (one array per model array) and sends it with the
model; clients correct every local gradient by ``c - c_i`` and reply with their new weights
``y_i`` and the change of their own variate ``dc_i`` (option II; see
`fedsim.clients.algorithms`). The server moves ``x += server_lr * mean_i(y_i - x)`` and
``c += (|S| / N) * mean_i(dc_i)`` (|S| clients aggregated, N in the federation), the
paper's plain means. Both variates travel and are charged as bytes with the model: a
SCAFFOLD round costs about twice FedAvg's in each direction.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from fedsim.strategies.registry import register_strategy
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.core import keys


@register_strategy("scaffold")
class Scaffold(FedAvg):
    """FedAvg's sampling with SCAFFOLD's client correction and server update."""

    fedsim_arg_rules = {"server_lr": (lambda v: v > 0, "must be > 0")}
    fedsim_model_replies = True

    def __init__(self, *, server_lr: float = 1.0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        super().__init__(**kwargs)
        self.server_lr = server_lr
        self.c: dict[str, np.ndarray] | None = None
        self.num_nodes = 0
        self._current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = arrays
        self.num_nodes = len(list(grid.get_node_ids()))
        if self.c is None:
            self.c = {k: np.zeros(a.shape, np.float32) for k, a in arrays.items() if a.numpy().dtype.kind == "f"}
        config = ConfigRecord({**dict(config), keys.ALGORITHM: "scaffold"})
        messages = list(super().configure_train(server_round, arrays, config, grid))
        c = ArrayRecord({k: Array(v) for k, v in self.c.items()})
        for m in messages:
            m.content[keys.SCAFFOLD_C] = c
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # Flower's check wants exactly one ArrayRecord per reply; SCAFFOLD's carry two.
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        valid = [m for m in valid if self.arrayrecord_key in m.content.array_records
                 and keys.SCAFFOLD_DC in m.content.array_records and len(m.content.metric_records) == 1]
        if not valid or self._current is None or self.c is None:
            return None, None
        x = {k: a.numpy() for k, a in self._current.items()}
        moved = {k: np.zeros(v.shape, np.float64) for k, v in x.items()}
        dc = {k: np.zeros(v.shape, np.float64) for k, v in self.c.items()}
        for m in valid:
            y = m.content.array_records[self.arrayrecord_key]
            for k in x:
                moved[k] += y[k].numpy().astype(np.float64) - x[k].astype(np.float64)
            delta = m.content.array_records.get(keys.SCAFFOLD_DC)
            if delta is not None:
                for k, a in delta.items():
                    if k in dc:
                        dc[k] += a.numpy().astype(np.float64)
        n = len(valid)
        new = {}
        for k, v in x.items():
            if v.dtype.kind == "f":
                new[k] = (v.astype(np.float64) + self.server_lr * moved[k] / n).astype(v.dtype)
            else:  # integer buffers (e.g. a batch-norm step counter): the first reply's
                new[k] = valid[0].content.array_records[self.arrayrecord_key][k].numpy()
        share = n / max(self.num_nodes, n)
        self.c = {k: (v.astype(np.float64) + share * dc[k] / n).astype(np.float32) for k, v in self.c.items()}
        contents = [m.content for m in valid]
        return ArrayRecord({k: Array(v) for k, v in new.items()}), self.train_metrics_aggr_fn(contents,
                                                                                                self.weighted_by_key)
