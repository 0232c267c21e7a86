"""W1 ServerApp: Flower's FedAvg with centralized evaluation on every device's test samples."""

import json
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from w1app import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = task.settings(context.run_config)
    seed = int(cfg["seed"])
    num_nodes = int(cfg["num-devices"])  # FedAvg waits until this many SuperNodes are connected
    torch.manual_seed(seed)
    model = task.make_model()
    x_test, y_test = task.server_test_set(num_nodes, seed)

    marks: dict[int, float] = {}

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, x_test, y_test)
        marks[server_round] = time.perf_counter()  # round 0 = before the first round
        return MetricRecord({"loss": loss, "accuracy": acc})

    strategy = FedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
                      min_available_nodes=num_nodes)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=int(cfg["num-server-rounds"]), train_config=ConfigRecord({}),
                            evaluate_fn=central)
    final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    loop_s = marks[max(marks)] - marks[0]  # the round loop alone, without engine start/stop
    print("W1-RESULT " + json.dumps({"accuracy": float(final["accuracy"]), "loss": float(final["loss"]),
                                     "loop_s": loop_s}), flush=True)
