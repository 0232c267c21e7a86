"""What a user's Flower app computes on the server, recorded as it happens (``fedsim run-app``).

A Flower ServerApp evaluates the global model itself (a strategy's ``evaluate_fn``, a legacy
strategy's ``evaluate``) and aggregates its clients' metrics; none of it crosses the grid.
`ResultTap` listens where Flower keeps those results, for the duration of a run:

- Message-API strategies: ``Strategy.start`` — the ``evaluate_fn`` results (round 0
  included) and the ``MetricRecord``s returned by ``aggregate_train`` / ``aggregate_evaluate``;
- legacy ``ServerApp(server_fn=...)`` apps and workflows: ``flwr.server.History`` —
  centralized losses and metrics, and the distributed fit / evaluate metrics.

Each value goes into the round's record: the centralized loss and accuracy as
``central_loss`` / ``central_acc`` (so reports and ``compare`` work on any app), every
centralized metric as ``central_<key>``, the strategy's aggregated metrics as
``strategy_train_<key>`` / ``strategy_eval_<key>``. The app's code is not changed: the
original methods run and return exactly what they would.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fedsim.core import keys
from fedsim.engine.metrics import Recorder

LOSS_KEYS = ("loss", "central_loss", "test_loss", "val_loss", "eval_loss")
ACC_KEYS = ("accuracy", "acc", "central_acc", "test_accuracy", "test_acc", "val_accuracy", *keys.EVAL_ACC_ALIASES)


def _numbers(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        return {}
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class ResultTap:
    """Routes a Flower app's server-side results into a `Recorder` (see the module docstring)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    # ------------------------------------------------------------ into the records
    def central(self, rnd: int, metrics: Any, loss: float | None = None) -> None:
        values = _numbers(metrics)
        if loss is None:
            loss = next((values[k] for k in LOSS_KEYS if k in values), None)
        acc = next((values[k] for k in ACC_KEYS if k in values), None)
        fields: dict[str, Any] = {f"central_{k}": v for k, v in values.items()
                                  if f"central_{k}" not in ("central_loss", "central_acc")}
        if loss is not None:
            fields["central_loss"] = float(loss)
        if acc is not None:
            fields["central_acc"] = acc
        self._put(rnd, fields)

    def aggregated(self, kind: str, rnd: int, metrics: Any) -> None:
        self._put(rnd, {f"strategy_{kind}_{k}": v for k, v in _numbers(metrics).items()})

    def _put(self, rnd: int, fields: dict[str, Any]) -> None:
        if not fields:
            return
        rec = self.recorder
        if rnd == 0 and not rec.records:
            rec.initial(fields)  # the initial model's evaluation, before any exchange
            return
        rec.pending.update(fields)

    # ------------------------------------------------------------ where Flower keeps them
    @contextlib.contextmanager
    def installed(self) -> Iterator["ResultTap"]:
        """Listen for the duration of the block; the originals are restored afterwards."""
        from flwr.server.history import History
        from flwr.serverapp.strategy import Strategy

        patches: list[tuple[Any, str, Any]] = []

        def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
            original = getattr(owner, name)
            patches.append((owner, name, original))
            setattr(owner, name, make(original))

        tap = self

        def start(original: Any) -> Any:
            @functools.wraps(original)
            def wrapped(strategy: Any, *args: Any, **kwargs: Any) -> Any:
                evaluate_fn = kwargs.get("evaluate_fn")
                if evaluate_fn is not None:
                    def recorded(server_round: int, arrays: Any) -> Any:
                        res = evaluate_fn(server_round, arrays)
                        tap.central(server_round, res)
                        return res

                    kwargs["evaluate_fn"] = recorded
                own = {name: strategy.__dict__.get(name) for name in ("aggregate_train", "aggregate_evaluate")}
                train, evaluate = strategy.aggregate_train, strategy.aggregate_evaluate

                def aggregate_train(server_round: int, replies: Any) -> Any:
                    arrays, metrics = train(server_round, replies)
                    tap.aggregated("train", server_round, metrics)
                    return arrays, metrics

                def aggregate_evaluate(server_round: int, replies: Any) -> Any:
                    metrics = evaluate(server_round, replies)
                    tap.aggregated("eval", server_round, metrics)
                    return metrics

                strategy.aggregate_train, strategy.aggregate_evaluate = aggregate_train, aggregate_evaluate
                try:
                    return original(strategy, *args, **kwargs)
                finally:
                    for name, value in own.items():
                        if value is None:
                            strategy.__dict__.pop(name, None)
                        else:
                            setattr(strategy, name, value)

            return wrapped

        def history(kind: str) -> Callable[[Any], Any]:
            def make(original: Any) -> Any:
                @functools.wraps(original)
                def wrapped(hist: Any, server_round: int, *args: Any, **kwargs: Any) -> Any:
                    value = kwargs.get("loss", kwargs.get("metrics", args[0] if args else None))
                    if kind == "central_loss":
                        tap.central(server_round, {}, loss=value)
                    elif kind == "central":
                        tap.central(server_round, value)
                    else:
                        tap.aggregated(kind, server_round, {"loss": value} if kind == "eval_loss" else value)
                    return original(hist, server_round, *args, **kwargs)

                return wrapped

            return make

        patch(Strategy, "start", start)
        patch(History, "add_loss_centralized", history("central_loss"))
        patch(History, "add_metrics_centralized", history("central"))
        patch(History, "add_metrics_distributed_fit", history("train"))
        patch(History, "add_loss_distributed", history("eval_loss"))
        patch(History, "add_metrics_distributed", history("eval"))
        try:
            yield self
        finally:
            for owner, name, original in reversed(patches):
                setattr(owner, name, original)
