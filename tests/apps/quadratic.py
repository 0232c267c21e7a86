"""Heterogeneous quadratics for SCAFFOLD (hand-checkable), written against Flower's API and
fedsim's public client helpers.

Client ``i`` of 2 minimizes ``f_i(w) = a_i / 2 * (w - b_i)^2`` with ``a = (1, 10)``,
``b = (0, 1)``: the federation's optimum is ``sum a_i b_i / sum a_i = 10 / 11``. Each client
runs ``K = 10`` steps of gradient descent with ``lr = 0.05``, corrected by SCAFFOLD's
``c - c_i`` when the strategy asks for it. ``Scalar`` is the model: one parameter ``w``.
"""

from __future__ import annotations

from typing import Any

import torch
from fedsim.clients.algorithms import Scaffold, algorithm_of
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

A = (1.0, 10.0)
B = (0.0, 1.0)
K = 10
LR = 0.05


class Scalar(nn.Module):
    """One parameter ``w`` (starting at 0); its output is shaped like a classifier's."""

    def __init__(self, input_shape: Any, num_classes: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], self.num_classes) * 1.0


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    a, b = A[pid], B[pid]
    config = next(iter(msg.content.config_records.values()))
    model = Scalar((1,), 2)
    model.load_state_dict({"w": torch.from_numpy(msg.content["arrays"]["w"].numpy().copy())})
    received = {"w": msg.content["arrays"]["w"].numpy().copy()}
    scaffold = Scaffold.start(msg.content, context.state, model) if algorithm_of(config) == "scaffold" else None
    correction = scaffold.correction()[0] if scaffold is not None else torch.zeros(1)
    with torch.no_grad():
        for _ in range(K):
            model.w -= LR * (a * (model.w - b) + correction)
    content = RecordDict({"arrays": ArrayRecord({"w": Array(model.w.detach().numpy().copy())}),
                          "metrics": MetricRecord({"num-examples": 1})})
    if scaffold is not None:
        content["scaffold-dc"] = scaffold.finish(context.state, received, dict(model.named_parameters()), K, LR)
    return Message(content, reply_to=msg)
