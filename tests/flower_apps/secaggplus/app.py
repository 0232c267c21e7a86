"""Flower's SecAgg+ protocol: ``SecAggPlusWorkflow`` in a ``DefaultWorkflow`` on the server,
``secaggplus_mod`` on a NumPyClient's ClientApp."""

from __future__ import annotations

from typing import Any

from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from tests.flower_apps.common import NODES, ROUNDS, initial, plain, score

RESULTS: dict[str, Any] = {}
KEYS = ("w", "b")


class Client(NumPyClient):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return [p + 3.0 for p in parameters], 1, {}  # every client adds 3: the mean moves by 3 a round


def client_fn(context: Context):  # type: ignore[no-untyped-def]
    return Client(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    def evaluate(server_round, parameters, config):  # type: ignore[no-untyped-def]
        arrays = dict(zip(KEYS, parameters))
        RESULTS.setdefault("arrays", {})[server_round] = plain(arrays)
        loss, acc = score(arrays)
        return loss, {"accuracy": acc}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=3, min_available_clients=NODES,
                      initial_parameters=ndarrays_to_parameters(list(initial().values())), evaluate_fn=evaluate)
    rounds = int(context.run_config.get("num-server-rounds", ROUNDS))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    # Every client weighs 1 (max_weight = 1); values stay within +-64: quantization steps of 3e-5.
    secagg = SecAggPlusWorkflow(num_shares=NODES, reconstruction_threshold=3, max_weight=1.0, clipping_range=64.0)
    workflow = DefaultWorkflow(fit_workflow=secagg)
    workflow(grid, legacy)
