"""W1 ClientApp: local SGD on the node's own device data."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from w1app import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = task.settings(context.run_config)
    pid = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    model = task.make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y, _, _ = task.device_data(pid, int(cfg["seed"]))
    loss = task.train(model, x, y, int(cfg["local-epochs"]), int(cfg["batch-size"]), float(cfg["lr"]),
                      task.batch_generator(int(cfg["seed"]), server_round, pid))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": loss, "num-examples": len(x)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = task.settings(context.run_config)
    pid = int(context.node_config["partition-id"])
    model = task.make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, _, x, y = task.device_data(pid, int(cfg["seed"]))
    loss, acc = task.evaluate(model, x, y)
    return Message(content=RecordDict({"metrics": MetricRecord({"eval_loss": loss, "eval_acc": acc,
                                                                "num-examples": len(x)})}), reply_to=msg)


torch.set_num_threads(1)
