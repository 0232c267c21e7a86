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

from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

# The SecAgg+ app's own ServerApp (Flower's FedAvg accepts failures by default), its
# results and its client; only the ClientApp's mods differ.
from tests.flower_apps.secaggplus.app import RESULTS, client_fn, server_app  # noqa: F401

DROPS = {(1, 1, "share_keys"), (2, 3, "collect_masked_vectors"),
         (3, 0, "unmask"), (3, 1, "unmask"), (3, 2, "unmask")}


class DroppedOut(RuntimeError):
    """The scheduled dropout: the node fails this message, as a crashed device would."""


def drop_out(msg, context, call_next):  # type: ignore[no-untyped-def]
    """Raise at the scheduled (round, partition, stage) points; pass everything else on."""
    stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
    point = (int(msg.metadata.group_id or 0), int(context.node_config["partition-id"]), stage)
    if point in DROPS:
        raise DroppedOut(f"partition {point[1]} drops out at {stage} in round {point[0]}")
    return call_next(msg, context)


client_app = ClientApp(client_fn=client_fn, mods=[drop_out, secaggplus_mod])
