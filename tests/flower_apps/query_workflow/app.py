"""A custom workflow with its own message types: each round a ``query`` asks every node for a
number, a hand-written training step uses their sum, and an ``evaluate`` collects accuracies.
No Flower strategy is involved: the ServerApp drives the grid itself."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from tests.flower_apps.common import NODES, ROUNDS, initial, plain, record, score

RESULTS: dict[str, Any] = {}
client_app = ClientApp()
server_app = ServerApp()


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"answer": MetricRecord({"value": 10 * pid + 1})}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    total = float(msg.content["config"]["total"])
    arrays = {k: v.numpy() + np.float32(total / (pid + 1)) for k, v in msg.content["arrays"].items()}
    return Message(RecordDict({"arrays": record(arrays), "metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    loss, acc = score({k: v.numpy() for k, v in msg.content["arrays"].items()})
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "accuracy": acc / (pid + 1),
                                                        "loss": loss})}), reply_to=msg)


def nodes(grid: Grid) -> list[int]:
    """All nodes, once they have connected (Flower's simulation registers them as it starts)."""
    while len(found := sorted(grid.get_node_ids())) < NODES:
        time.sleep(0.5)
    return found


def send(grid: Grid, content: RecordDict, kind: str, rnd: int) -> list[Message]:
    nodes_ = nodes(grid)
    msgs = [Message(content, dst_node_id=n, message_type=kind, group_id=str(rnd)) for n in nodes_]
    replies = list(grid.send_and_receive(msgs))
    assert all(not r.has_error() for r in replies), [r.error for r in replies if r.has_error()]
    return replies


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    arrays = initial()
    for rnd in range(1, int(context.run_config.get("num-server-rounds", ROUNDS)) + 1):
        answers = send(grid, RecordDict({"question": ConfigRecord({"what": "value"})}), MessageType.QUERY, rnd)
        total = sum(int(r.content["answer"]["value"]) for r in answers)
        content = RecordDict({"arrays": record(arrays), "config": ConfigRecord({"total": float(total)})})
        replies = send(grid, content, MessageType.TRAIN, rnd)
        arrays = {k: np.mean([r.content["arrays"][k].numpy() for r in replies], axis=0) for k in arrays}
        evals = send(grid, RecordDict({"arrays": record(arrays)}), MessageType.EVALUATE, rnd)
        RESULTS.setdefault("total", {})[rnd] = total
        RESULTS.setdefault("arrays", {})[rnd] = plain(arrays)
        RESULTS.setdefault("accuracy", {})[rnd] = sorted(float(r.content["metrics"]["accuracy"]) for r in evals)
        RESULTS.setdefault("central", {})[rnd] = list(score(arrays))
