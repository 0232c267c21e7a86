"""Pre-reduced training replies for FedAvg-family strategies.

Flower's FedAvg (and FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, which call
``FedAvg.aggregate_train``) averages the replies' arrays and metrics weighted by
``num-examples``. When the strategy is one of these exact classes with Flower's default
metric aggregation, the grid hands it a single reply that already holds the weighted
average — computed with the same operations in the same order as Flower's
``aggregate_arrayrecords`` / ``aggregate_metricrecords`` (weight factors ``w_i / sum(w)``,
products in the arrays' dtype), and carrying ``num-examples = sum(w)``, so the strategy's
result is bit-identical while it skips Flower's per-reply record handling (the costliest
part of a round with a thousand small clients). Error replies pass through unchanged.
``[server] reduce_replies = false`` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedsim.core.arrays import array_view
from fedsim.core.records import arrays_of, metrics_of

REDUCIBLE = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")


def reducible(strategy: Any) -> bool:
    """Whether the strategy aggregates training replies exactly as FedAvg's default does."""
    import flwr.serverapp.strategy as flower
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    classes = tuple(getattr(flower, name) for name in REDUCIBLE)
    return (type(strategy) in classes and getattr(strategy, "train_metrics_aggr_fn", None) is aggregate_metricrecords
            and isinstance(getattr(strategy, "weighted_by_key", None), str))


def reduce_replies(replies: Sequence[Message], weighted_by_key: str, sent: Mapping[str, Message]) -> list[Message]:
    """Error replies as they are, plus one reply holding the weighted average of the others
    (it answers the message the first valid reply answered; ``sent``: message id -> message)."""
    errors = [r for r in replies if r.has_error()]
    valid = [r for r in replies if not r.has_error()]
    if len(valid) < 2:
        return list(replies)
    parts = []
    for r in valid:
        arrays, metrics = arrays_of(r.content), metrics_of(r.content)
        if len(arrays) != 1 or len(metrics) != 1 or weighted_by_key not in metrics[0][1]:
            return list(replies)  # not the shape FedAvg expects: let the strategy report it
        parts.append((arrays[0], metrics[0]))
    weights = [float(m[1][weighted_by_key]) for _, m in parts]  # type: ignore[arg-type]
    total = sum(weights)
    if total <= 0:
        return list(replies)
    factors = [w / total for w in weights]
    akey = parts[0][0][0]
    names = list(parts[0][0][1].keys())
    acc: dict[str, np.ndarray] = {}
    for ((_, rec), _), f in zip(parts, factors):
        if list(rec.keys()) != names:
            return list(replies)
        for name in names:
            if name not in acc:
                acc[name] = array_view(rec[name]) * f
            else:
                acc[name] += array_view(rec[name]) * f
    metrics: dict[str, Any] = {}
    for (_, (_, rec)), f in zip(parts, factors):
        for key, value in rec.items():
            if key == weighted_by_key:
                continue
            if key not in metrics:
                metrics[key] = [v * f for v in value] if isinstance(value, list) else value * f
            elif isinstance(value, list):
                metrics[key] = [c + v * f for c, v in zip(metrics[key], value)]
            else:
                metrics[key] = metrics[key] + value * f
    # The strategy multiplies by sum(w) / sum(w) = 1.0 and adds nothing: values unchanged.
    weight: int | float = int(total) if all(float(w).is_integer() for w in weights) else total
    content = RecordDict({akey: ArrayRecord({k: Array(np.asarray(v)) for k, v in acc.items()}),
                          parts[0][1][0]: MetricRecord({**metrics, weighted_by_key: weight})})
    request = sent.get(valid[0].metadata.reply_to_message_id)
    if request is None:
        return list(replies)
    return [*errors, Message(content, reply_to=request)]
