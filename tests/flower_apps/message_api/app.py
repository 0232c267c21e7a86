"""Message API: ``flwr.serverapp.strategy.FedAvg.start`` with an ``evaluate_fn``, and a ClientApp
with ``@train`` / ``@evaluate`` handlers."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from tests.flower_apps.common import (
    NODES,
    ROUNDS,
    initial,
    local_update,
    plain,
    record,
    score,
    wait_for_nodes,
)

RESULTS: dict[str, Any] = {}
client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    metrics = MetricRecord({"num-examples": pid + 1, "train_loss": float(pid)})
    return Message(RecordDict({"arrays": record(local_update(arrays, pid)), "metrics": metrics}), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    loss, acc = score({k: v.numpy() for k, v in msg.content["arrays"].items()})
    metrics = MetricRecord({"num-examples": pid + 1, "eval_loss": loss + pid, "eval_acc": acc})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        values = {k: v.numpy() for k, v in arrays.items()}
        loss, acc = score(values)
        RESULTS.setdefault("arrays", {})[server_round] = plain(values)
        return MetricRecord({"loss": loss, "accuracy": acc})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=NODES)
    wait_for_nodes(grid)
    result = strategy.start(grid=grid, initial_arrays=record(initial()),
                            num_rounds=int(context.run_config.get("num-server-rounds", ROUNDS)), evaluate_fn=central)
    RESULTS["central"] = {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()}
    RESULTS["train"] = {r: dict(m) for r, m in result.train_metrics_clientapp.items()}
    RESULTS["evaluate"] = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
