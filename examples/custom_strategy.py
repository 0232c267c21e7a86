"""A custom strategy: FedAvg that drops updates with an outlying norm, run by fedsim.

It is a plain Flower Message-API strategy (a `flwr.serverapp.strategy.FedAvg`
subclass), so it runs unchanged in a real Flower deployment too. fedsim can find it by
``module:Class`` path or, once this module is imported, by its registered name:

    python examples/custom_strategy.py            # runs both ways on the quickstart scenario
    fedsim run examples/custom_strategy.toml      # by module:Class path, from the command line
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from fedsim.strategies import register_strategy
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log


@register_strategy("norm_filtered_fedavg")
class NormFilteredFedAvg(FedAvg):
    """FedAvg over the replies whose update norm is at most ``max_ratio`` x the median norm."""

    def __init__(self, *, max_ratio: float = 3.0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if max_ratio <= 0:
            raise ValueError(f"max_ratio must be > 0, got {max_ratio}")
        super().__init__(**kwargs)
        self.max_ratio = max_ratio
        self._current: dict[str, np.ndarray] = {}
        self.dropped = 0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = {k: a.numpy() for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [r for r in replies if not r.has_error()]
        norms = [self._update_norm(r) for r in replies]
        if norms:
            limit = self.max_ratio * float(np.median(norms))
            kept = [r for r, n in zip(replies, norms) if n <= limit]
            self.dropped += len(replies) - len(kept)
            if len(kept) < len(replies):
                log(INFO, "round %d: dropped %d update(s) above norm %.4g", server_round, len(replies) - len(kept), limit)
            replies = kept
        return super().aggregate_train(server_round, replies)

    def _update_norm(self, reply: Message) -> float:
        arrays = next(iter(reply.content.array_records.values()))
        return float(np.sqrt(sum(float(((arrays[k].numpy() - v) ** 2).sum()) for k, v in self._current.items())))


def main() -> None:
    import fedsim

    base = fedsim.load_config("quickstart", ["run.rounds=5", "report.progress=false", "report.plots=false"])
    for name in ("examples.custom_strategy:NormFilteredFedAvg", "norm_filtered_fedavg"):
        cfg = base.replace([f'strategy.name="{name}"', "strategy.max_ratio=2.0"])
        result = fedsim.run(cfg, write=False)
        print(f"{name}: final centralized accuracy {result.summary['final_central_acc']:.4f}")


if __name__ == "__main__":
    main()
