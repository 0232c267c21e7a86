"""A ClientApp whose replies are absurd in controlled ways (written against Flower's API only).

Partition 0 reports ``num-examples = -1000``; partition 1 moves every weight by 1000;
partition 2 reports ``num-examples = 2.5``; the others move every weight by 0.01.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    step = 1000.0 if pid == 1 else 0.01
    arrays = {k: Array(v.numpy() + np.float32(step)) for k, v in msg.content["arrays"].items()}
    n = {0: -1000, 2: 2.5}.get(pid, 10)
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": n})}),
                   reply_to=msg)
