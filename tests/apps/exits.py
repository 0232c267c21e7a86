"""A ClientApp that leaves the process in controlled ways (Flower's API only).

Partition 0 calls ``os._exit(1)``; partition 1 calls ``sys.exit(3)``; partition 2 sleeps
for an hour when ``context.run_config["hang"]`` is true; the others move every weight by 0.01.
"""

import os
import sys
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    if pid == 0:
        os._exit(1)
    if pid == 1:
        sys.exit(3)
    if pid == 2 and context.run_config.get("hang"):
        time.sleep(3600)
    arrays = {k: Array(v.numpy() + np.float32(0.01)) for k, v in msg.content["arrays"].items()}
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 10})}),
                   reply_to=msg)
