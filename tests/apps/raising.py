"""A user's plug-ins that raise, each in its own way (used by the hostile-input fuzz).

``tests.apps.raising:Boom`` (a strategy whose constructor raises), ``:boom_data`` (a
dataset loader), ``:boom_split`` (a partitioner), ``:BoomNet`` (a model); importing
``tests.apps.raising_import`` raises.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAvg


def _deep(n: int) -> None:
    if n == 0:
        raise RuntimeError("user plug-in failed on purpose")
    _deep(n - 1)


class Boom(FedAvg):
    def __init__(self, **kwargs: Any) -> None:
        _deep(2)


def boom_data(**kwargs: Any) -> dict[str, Any]:
    raise KeyError("user dataset missing a column")


def boom_split(labels: Any, num_clients: int, **kwargs: Any) -> list[Any]:
    return [1 / 0]


class BoomNet:
    def __init__(self, input_shape: Any, num_classes: int) -> None:
        _deep(1)
