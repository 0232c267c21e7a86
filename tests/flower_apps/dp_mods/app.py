"""Flower's client-side DP: ``DifferentialPrivacyClientSideFixedClipping`` around FedAvg on the
server, ``fixedclipping_mod`` on the ClientApp (noise multiplier 0, so the clipping is exact)."""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

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
client_app = ClientApp(mods=[fixedclipping_mod])
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    return Message(RecordDict({"arrays": record(local_update(arrays, pid)),
                               "metrics": MetricRecord({"num-examples": pid + 1})}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        values = {k: v.numpy() for k, v in arrays.items()}
        RESULTS.setdefault("arrays", {})[server_round] = plain(values)
        loss, acc = score(values)
        return MetricRecord({"loss": loss, "accuracy": acc})

    inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=NODES)
    strategy = DifferentialPrivacyClientSideFixedClipping(inner, noise_multiplier=0.0, clipping_norm=2.0,
                                                          num_sampled_clients=NODES)
    wait_for_nodes(grid)
    strategy.start(grid=grid, initial_arrays=record(initial()),
                   num_rounds=int(context.run_config.get("num-server-rounds", ROUNDS)), evaluate_fn=central)
