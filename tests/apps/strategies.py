"""A user's custom Flower strategy (subclass of FedAvg), used by the tests."""

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class HalfStepFedAvg(FedAvg):
    """Moves the global model only ``step`` of the way towards the FedAvg average."""

    def __init__(self, *, step: float = 0.5, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.step = step
        self._current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        avg, metrics = super().aggregate_train(server_round, replies)
        if avg is None or self._current is None:
            return avg, metrics
        mixed = {k: Array(self._current[k].numpy() + self.step * (avg[k].numpy() - self._current[k].numpy()))
                 for k in avg}
        return ArrayRecord(mixed), metrics
