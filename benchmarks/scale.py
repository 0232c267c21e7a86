"""Scale: the same FedAvg workloads by a plain torch loop, fedsim's executors and Flower.

Workloads (fedsim's own ClientApp and data; every engine trains the same clients):

  w1      MLP 60-200-10, Synthetic(1,1) 100 devices x 200 training samples, 10 per round,
          20 rounds, E = 1, B = 20, lr 0.05 (the foundation issue's W1, fedsim-native)
  s1000   logistic regression, lazy Synthetic(1,1) 10,000 devices x 48 training samples,
          1,000 per round, 5 rounds, E = 1, B = 10, lr 0.01
  m1000   as s1000 with the MLP 60-200-10, 3 rounds
  100k    s1000's clients in a federation of 100,000, 1,000 per round, 3 rounds (vectorized)

Variants: plain (a single-process loop: per sampled client, load the global weights, SGD,
weighted average), serial, vectorized, ray (2 actors), flower (``flwr.simulation.run_simulation``
with the same ClientApp, Ray backend, 1 CPU per client). Each runs in a fresh process;
``loop s`` is the round loop (first round's start to the last evaluation), ``run s`` the
simulation including engine start-up, ``process s`` the whole process; peak memory is
summed over the process tree. Ratios are against ``plain`` (and Flower against ray).

    python benchmarks/scale.py [--workloads w1,s1000,m1000,100k] [--variants plain,serial,vectorized,ray,flower]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import _measure  # noqa: E402  (benchmarks/_measure.py)

SEED = 0
WORKLOADS = ("w1", "s1000", "m1000", "100k")
VARIANTS = ("plain", "serial", "vectorized", "ray", "flower")


def workload(name: str, executor: str = "serial") -> Any:
    from fedsim.config import from_dict

    if name == "w1":
        data = {"dataset": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "samples_per_device": 250},
                "partitioner": "natural", "num_clients": 100, "client_test_fraction": 0.0}
        model, client, rounds, per_round = {"name": "mlp", "hidden": [200]}, {"batch_size": 20, "lr": 0.05}, 20, 10
    else:
        n = 100_000 if name == "100k" else 10_000
        data = {"dataset": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "samples_per_device": 60, "lazy": True},
                "partitioner": "natural", "num_clients": n, "client_test_fraction": 0.0}
        model = {"name": "mlp", "hidden": [200]} if name == "m1000" else {"name": "logreg"}
        client = {"batch_size": 10, "lr": 0.01}
        rounds, per_round = (3 if name in ("m1000", "100k") else 5), 1000
    return from_dict({
        "run": {"name": f"scale-{name}", "seed": SEED, "rounds": rounds},
        "data": data, "model": model,
        "client": {"local_epochs": 1, "threads": 1, **client},
        "strategy": {"name": "fedavg", "fraction_train": per_round / data["num_clients"], "fraction_evaluate": 0.0},
        "executor": {"name": executor}, "ray": {"num_actors": 2},
        "report": {"progress": False, "plots": False},
    })


def variant_plain(name: str) -> dict:
    """The baseline: what one would write by hand, with the same data and sampling."""
    import torch
    import torch.nn.functional as F
    from fedsim.clients.models import init_model
    from fedsim.clients.trainer import evaluate
    from fedsim.scenarios.federation import federated_data

    from fedsim.core import seeding

    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = workload(name)
    data = federated_data(cfg.data, SEED)
    model = init_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes, SEED)
    glob = {k: v.clone() for k, v in model.state_dict().items()}
    per_round = round(cfg.strategy.params.args["fraction_train"] * cfg.data.num_clients)
    sampler = random.Random(SEED)
    loop_start = time.perf_counter()
    acc = 0.0
    for rnd in range(1, cfg.run.rounds + 1):
        total = {k: torch.zeros_like(v) for k, v in glob.items()}
        weight = 0
        for cid in sampler.sample(range(cfg.data.num_clients), per_round):
            model.load_state_dict(glob)
            x, y = data.client_train(cid)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.client.lr)
            gen = seeding.torch_generator(SEED, rnd, cid, "batches")
            for _ in range(cfg.client.local_epochs):
                perm = torch.randperm(len(x), generator=gen)
                for i in range(0, len(x), cfg.client.batch_size):
                    idx = perm[i : i + cfg.client.batch_size]
                    opt.zero_grad()
                    F.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
            for k, v in model.state_dict().items():
                total[k] += v * len(x)
            weight += len(x)
        glob = {k: v / weight for k, v in total.items()}
        model.load_state_dict(glob)
        acc = evaluate(model, data.server_x, data.server_y)[1]
    end = time.perf_counter()
    return {"run_s": end - start, "loop_s": end - loop_start, "accuracy": acc}


def variant_fedsim(name: str, executor: str) -> dict:
    import fedsim

    start = time.perf_counter()
    res = fedsim.run(workload(name, executor), write=False)
    first = next(r for r in res.history if r["round"] == 1)
    loop = res.history[-1]["wall_total_s"] - first["wall_total_s"] + first["wall_round_s"]
    return {"run_s": time.perf_counter() - start, "loop_s": loop, "accuracy": res.summary["final_central_acc"]}


def variant_flower(name: str) -> dict:
    """Flower's run_simulation with fedsim's ClientApp (the scenario travels in its run config)."""
    import logging

    from fedsim.clients import app as fedsim_app
    from fedsim.clients.models import init_model
    from fedsim.clients.spec import to_run_config
    from fedsim.clients.trainer import evaluate
    from fedsim.scenarios.federation import federated_data
    from flwr.app import ArrayRecord, Context, MetricRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = workload(name)
    run_config = to_run_config(cfg.client_spec())
    client = ClientApp()

    def with_config(ctx: Context) -> Context:
        return Context(run_id=ctx.run_id, node_id=ctx.node_id, node_config=ctx.node_config, state=ctx.state,
                       run_config=run_config)

    @client.train()
    def train(msg, ctx):  # type: ignore[no-untyped-def]
        return fedsim_app.train(msg, with_config(ctx))

    server = ServerApp()
    out: dict[str, Any] = {}

    @server.main()
    def main(grid, context):  # type: ignore[no-untyped-def]
        data = federated_data(cfg.data, SEED)
        model = init_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes, SEED)

        def central(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            if rnd == 1:
                out["loop_start"] = out.get("first_train")
            model.load_state_dict(arrays.to_torch_state_dict())
            out["accuracy"] = evaluate(model, data.server_x, data.server_y)[1]
            out["loop_end"] = time.perf_counter()
            return MetricRecord({"accuracy": out["accuracy"]})

        out["first_train"] = time.perf_counter()
        FedAvg(fraction_train=cfg.strategy.params.args["fraction_train"], fraction_evaluate=0.0,
               min_available_nodes=cfg.data.num_clients).start(
            grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=cfg.run.rounds, evaluate_fn=central)

    random.seed(SEED)
    start = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=cfg.data.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"include_dashboard": False, "num_cpus": 2}})
    return {"run_s": time.perf_counter() - start, "loop_s": out["loop_end"] - out["first_train"],
            "accuracy": out["accuracy"]}


def child(name: str, variant: str) -> dict:
    if variant == "plain":
        return variant_plain(name)
    if variant in ("serial", "vectorized", "ray"):
        return variant_fedsim(name, variant)
    if variant == "flower":
        return variant_flower(name)
    raise SystemExit(f"unknown variant {variant}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default="w1,s1000,m1000,100k")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    if args.child:
        Path(args.json_out).write_text(json.dumps(child(*args.child)))
        return
    rows = []
    for name in args.workloads.split(","):
        variants = ["vectorized", "serial"] if name == "100k" else args.variants.split(",")
        results: dict[str, dict] = {}
        for variant in variants:
            results[variant] = _measure.run_child(Path(__file__), ["--child", name, variant], timeout=3600)
            r = results[variant]
            print(f"  {name} {variant}: loop {r['loop_s']:.2f} s, run {r['run_s']:.2f} s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, accuracy {r['accuracy']:.4f}", file=sys.stderr)
        rows.append((name, results))
    print(f"\n{'workload':<9s} {'variant':<11s} {'loop s':>8s} {'x plain':>8s} {'run s':>8s} {'x plain':>8s} "
          f"{'process s':>10s} {'peak RSS MB':>12s} {'final acc':>10s}")
    for name, results in rows:
        base = results.get("plain")
        for variant, r in results.items():
            lx = f"{base['loop_s'] / r['loop_s']:.2f}" if base else "-"
            rx = f"{base['run_s'] / r['run_s']:.2f}" if base else "-"
            print(f"{name:<9s} {variant:<11s} {r['loop_s']:>8.2f} {lx:>8s} {r['run_s']:>8.2f} {rx:>8s} "
                  f"{r['process_s']:>10.2f} {r['peak_rss_mb']:>12.0f} {r['accuracy']:>10.4f}")
    print("\nx plain = plain time / variant time (higher is faster).")
    for name, results in rows:
        if "vectorized" in results and "plain" in results:
            v, p = results["vectorized"], results["plain"]
            print(f"{name}: vectorized {p['loop_s'] / v['loop_s']:.1f}x faster than the plain loop (round loop), "
                  f"{p['run_s'] / v['run_s']:.1f}x (run)  [target >= 3x]")
        if "flower" in results and "ray" in results:
            f, r = results["flower"], results["ray"]
            print(f"{name}: fedsim ray {f['process_s'] / r['process_s']:.1f}x faster than Flower end to end "
                  f"(process), {f['loop_s'] / r['loop_s']:.1f}x (round loop)  [target >= 4x]")
        if name == "100k":
            print(f"100k: peak RSS {results['vectorized']['peak_rss_mb']:.0f} MB vectorized, "
                  f"{results['serial']['peak_rss_mb']:.0f} MB serial  [target < 3072 MB]")


if __name__ == "__main__":
    main()
