"""FedAvg over a vector of ``num-params`` float32 values, with or without Flower's SecAgg+.

Every client adds 1 to every value (so the aggregate is known: ``round``), weighs 1,
and the server keeps the mean. ``secagg = true`` runs the round through
``SecAggPlusWorkflow`` and the clients through ``secaggplus_mod``; ``false`` through
Flower's default fit workflow. Written against Flower only.
"""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

RESULT: dict[int, float] = {}


class Client(NumPyClient):
    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return [p + 1.0 for p in parameters], 1, {}


def client_fn(context: Context):  # type: ignore[no-untyped-def]
    return Client().to_client()


def secagg_if_configured(msg, context, call_next):  # type: ignore[no-untyped-def]
    """``secaggplus_mod`` when the run config says ``secagg = true``, else the plain client."""
    if context.run_config.get("secagg", True):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(client_fn=client_fn, mods=[secagg_if_configured])
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = len(list(grid.get_node_ids()))

    def evaluate(server_round, parameters, config):  # type: ignore[no-untyped-def]
        mean = float(np.mean(parameters[0]))
        RESULT[server_round] = mean
        return abs(mean - server_round), {"accuracy": 1.0 / (1.0 + abs(mean - server_round))}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=n,
                      initial_parameters=ndarrays_to_parameters([np.zeros(int(cfg["num-params"]), np.float32)]),
                      evaluate_fn=evaluate, accept_failures=True)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(cfg["num-server-rounds"])),
                           strategy=strategy)
    fit = None
    if cfg["secagg"]:
        fit = SecAggPlusWorkflow(num_shares=float(cfg["num-shares"]),
                                 reconstruction_threshold=float(cfg["reconstruction-threshold"]),
                                 max_weight=1.0, clipping_range=16.0)
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)
