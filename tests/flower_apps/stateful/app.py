"""A ClientApp that keeps a counter in ``Context.state`` across rounds and trains with it."""

from __future__ import annotations

from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from tests.flower_apps.common import NODES, ROUNDS, initial, plain, record, score, wait_for_nodes

RESULTS: dict[str, Any] = {}
client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    rec = context.state.config_records.get("counter", ConfigRecord({"calls": 0}))
    calls = int(rec["calls"]) + 1
    context.state["counter"] = ConfigRecord({"calls": calls})
    arrays = {k: v.numpy() + calls * (pid + 1) for k, v in msg.content["arrays"].items()}
    return Message(RecordDict({"arrays": record(arrays),
                               "metrics": MetricRecord({"num-examples": 1, "calls": calls})}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        values = {k: v.numpy() for k, v in arrays.items()}
        RESULTS.setdefault("arrays", {})[server_round] = plain(values)
        loss, acc = score(values)
        return MetricRecord({"loss": loss, "accuracy": acc})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=NODES)
    wait_for_nodes(grid)
    result = strategy.start(grid=grid, initial_arrays=record(initial()),
                            num_rounds=int(context.run_config.get("num-server-rounds", ROUNDS)), evaluate_fn=central)
    RESULTS["calls"] = {r: float(m["calls"]) for r, m in result.train_metrics_clientapp.items()}
