"""Legacy style: ``ServerApp(server_fn=...)`` with ``ServerConfig``, a legacy ``FedAvg`` with a
centralized ``evaluate_fn``, and a ``NumPyClient`` built by ``client_fn``."""

from __future__ import annotations

from typing import Any

from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from tests.flower_apps.common import NODES, ROUNDS, initial, local_update, plain, score

RESULTS: dict[str, Any] = {}
KEYS = ("w", "b")


class Client(NumPyClient):
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        new = local_update(dict(zip(KEYS, parameters)), self.pid)
        return [new[k] for k in KEYS], self.pid + 1, {"pid": float(self.pid)}

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        loss, acc = score(dict(zip(KEYS, parameters)))
        return loss + self.pid, self.pid + 1, {"accuracy": acc}


def client_fn(context: Context):  # type: ignore[no-untyped-def]
    return Client(int(context.node_config["partition-id"])).to_client()


client_app = ClientApp(client_fn=client_fn)


def weighted(metrics):  # type: ignore[no-untyped-def]
    total = sum(n for n, _ in metrics)
    return {k: sum(n * m[k] for n, m in metrics) / total for k in metrics[0][1]}


def server_fn(context: Context) -> ServerAppComponents:
    rounds = int(context.run_config.get("num-server-rounds", ROUNDS))

    def evaluate(server_round, parameters, config):  # type: ignore[no-untyped-def]
        arrays = dict(zip(KEYS, parameters))
        loss, acc = score(arrays)
        RESULTS.setdefault("central", {})[server_round] = [loss, acc]
        RESULTS.setdefault("arrays", {})[server_round] = plain(arrays)
        return loss, {"accuracy": acc}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=NODES, min_evaluate_clients=NODES,
                      min_available_clients=NODES, initial_parameters=ndarrays_to_parameters(list(initial().values())),
                      evaluate_fn=evaluate, fit_metrics_aggregation_fn=weighted,
                      evaluate_metrics_aggregation_fn=weighted)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))


server_app = ServerApp(server_fn=server_fn)
