"""Flower's SecAgg+ with clients that drop out at fixed protocol stages, the same on every
engine: the ClientApp raises (the node fails that message, as a crashed or unreachable
device does) at these (round, partition, stage) points:

- round 1: partition 1 drops at ``share_keys`` (before its shares went out: simply left out);
- round 2: partition 3 drops at ``collect_masked_vectors`` (its shares are out, its masked
  vector is not: the others' shares of its pairwise key remove its masks);
- round 3: partitions 0, 1 and 2 drop at ``unmask`` (2 answer, the threshold is 3: Flower's
  workflow cannot unmask and gives the round up; the model stays).

The mean of every value therefore moves by 3 in rounds 1 and 2 and stays in round 3.
"""

from __future__ import annotations

from typing import Any

from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Context, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from tests.flower_apps.common import NODES, ROUNDS, initial, plain, score
from tests.flower_apps.secaggplus.app import KEYS, client_fn

RESULTS: dict[str, Any] = {}
DROPS = {(1, 1, "share_keys"), (2, 3, "collect_masked_vectors"),
         (3, 0, "unmask"), (3, 1, "unmask"), (3, 2, "unmask")}


class DroppedOut(RuntimeError):
    pass


def drop_out(msg, context, call_next):  # type: ignore[no-untyped-def]
    """Raise at the scheduled (round, partition, stage) points; pass everything else on."""
    stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
    point = (int(msg.metadata.group_id or 0), int(context.node_config["partition-id"]), stage)
    if point in DROPS:
        raise DroppedOut(f"partition {point[1]} drops out at {stage} in round {point[0]}")
    return call_next(msg, context)


client_app = ClientApp(client_fn=client_fn, mods=[drop_out, secaggplus_mod])
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    def evaluate(server_round, parameters, config):  # type: ignore[no-untyped-def]
        arrays = dict(zip(KEYS, parameters))
        RESULTS.setdefault("arrays", {})[server_round] = plain(arrays)
        loss, acc = score(arrays)
        return loss, {"accuracy": acc}

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=3, min_available_clients=NODES,
                      initial_parameters=ndarrays_to_parameters(list(initial().values())), evaluate_fn=evaluate,
                      accept_failures=True)
    rounds = int(context.run_config.get("num-server-rounds", ROUNDS))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    secagg = SecAggPlusWorkflow(num_shares=NODES, reconstruction_threshold=3, max_weight=1.0, clipping_range=64.0)
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)
