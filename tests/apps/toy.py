"""A toy Flower ClientApp whose replies can be computed by hand (written against Flower's API only).

Train: replies ``w + 1`` for every array except "value", which becomes the partition id,
``num-examples = partition-id + 1``, and a per-node call counter kept in
``context.state``. Behaviour switches come from the run config:
``fail-partition`` raises, ``nan-partition`` returns NaN, ``exit-partition`` kills its
process once (a marker file under ``marker-dir`` remembers), ``sleep-partition`` sleeps
``sleep-seconds``.
"""

import math
import os
import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

app = ClientApp()


def _behave(context: Context) -> None:
    pid = int(context.node_config["partition-id"])
    cfg = context.run_config
    if int(cfg.get("fail-partition", -1)) == pid:
        raise RuntimeError(f"client {pid} was told to fail")
    if int(cfg.get("exit-partition", -1)) == pid:
        marker = os.path.join(str(cfg["marker-dir"]), f"exited-{pid}")
        if cfg.get("exit-always", False) or not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
    if int(cfg.get("sleep-partition", -1)) == pid:
        time.sleep(float(cfg.get("sleep-seconds", 30)))


def _count(context: Context) -> int:
    rec = context.state.config_records.get("toy", ConfigRecord({"calls": 0}))
    rec["calls"] = int(rec["calls"]) + 1
    context.state["toy"] = rec
    return int(rec["calls"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    _behave(context)
    pid = int(context.node_config["partition-id"])
    calls = _count(context)
    arrays = msg.content["arrays"]
    out = {k: (np.full_like(v.numpy(), float(pid)) if k == "value" else v.numpy() + 1.0)
           for k, v in arrays.items()}
    if int(context.run_config.get("nan-partition", -1)) == pid:
        out = {k: np.full_like(v, math.nan) for k, v in out.items()}
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in out.items()}),
        "metrics": MetricRecord({"num-examples": pid + 1, "train_loss": float(pid), "calls": calls,
                                 "num-partitions": int(context.node_config["num-partitions"]),
                                 "local-epochs": int(msg.content["config"].get("local-epochs", 0))}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _behave(context)
    pid = int(context.node_config["partition-id"])
    metrics = MetricRecord({"num-examples": 1, "eval_loss": float(pid), "eval_acc": pid / 10})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
