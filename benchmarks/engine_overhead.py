"""Engine overhead on workload W1, every engine in one invocation.

W1 = 100 clients, 10 per round, 20 rounds, MLP 60-200-10, 200 synthetic samples per
client, 1 local epoch, batch 20, SGD lr 0.05, torch threads 1. The workload is the
ordinary Flower app in ``benchmarks/w1app`` (ClientApp + ServerApp written only
against Flower's API), run by:

  (a) plain      a single-process torch loop with weight averaging (the baseline)
  (b) serial     fedsim's SimulationGrid, in-process executor (``fedsim run-app``)
  (c) ray        fedsim's SimulationGrid, Ray executor with 2 actors
  (d) flower     Flower's own ``flwr.simulation.run_simulation`` (Ray backend, 1 CPU per client)
  (e) native-*   the same workload as a fedsim scenario with fedsim's own ClientApp
  (f) *-warm     (c) and (d) joining an already running local Ray cluster (started once by
                 this script, not timed, its processes not counted in peak memory)

Each variant runs in a fresh process, ``--repeats`` times; the table shows medians.
``loop s`` is the round loop alone (from the centralized evaluation of the initial model
to that of the last round, timed by the ServerApp); ``run s`` is the simulation (after
imports, with engine start-up and shutdown such as ``ray.init``); ``process s`` is the
whole process. Peak memory is summed over the
process tree (Ray's raylet, GCS and workers included), sampled every 50 ms.

    python benchmarks/engine_overhead.py [--repeats 3] [--variants plain,serial,ray,flower]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
W1APP = HERE / "w1app"
VARIANTS = ("plain", "serial", "ray", "flower", "native-serial", "native-ray", "ray-warm", "flower-warm")
WARM_ENV = "FEDSIM_BENCH_RAY_ADDRESS"
ROUNDS, CLIENTS, PER_ROUND, SEED = 20, 100, 10, 0


ROUNDS = int(os.environ.get("W1_ROUNDS", ROUNDS))  # --rounds, passed to the child processes


def variant_plain() -> dict:
    sys.path.insert(0, str(W1APP))
    import torch
    from w1app import task

    torch.set_num_threads(1)
    start = time.perf_counter()
    cfg = task.settings({})
    torch.manual_seed(SEED)
    model = task.make_model()
    glob = {k: v.clone() for k, v in model.state_dict().items()}
    x_test, y_test = task.server_test_set(CLIENTS, SEED)
    sampler = random.Random(SEED)
    task.evaluate(model, x_test, y_test)
    loop_start = time.perf_counter()
    for rnd in range(1, ROUNDS + 1):
        chosen = sampler.sample(range(CLIENTS), PER_ROUND)
        total = {k: torch.zeros_like(v) for k, v in glob.items()}
        weight = 0
        for pid in chosen:
            local = task.make_model()
            local.load_state_dict(glob)
            x, y, _, _ = task.device_data(pid, SEED)
            task.train(local, x, y, cfg["local-epochs"], cfg["batch-size"], cfg["lr"],
                       task.batch_generator(SEED, rnd, pid))
            for k, v in local.state_dict().items():
                total[k] += v * len(x)
            weight += len(x)
        glob = {k: v / weight for k, v in total.items()}
        model.load_state_dict(glob)
        loss, acc = task.evaluate(model, x_test, y_test)  # every round, as the ServerApp does
    end = time.perf_counter()
    return {"run_s": end - start, "loop_s": end - loop_start, "accuracy": acc}


def variant_fedsim_app(executor: str, address: str = "") -> dict:
    import io
    from contextlib import redirect_stdout

    from fedsim.runapp import run_app

    if address:  # join the running cluster, as `ray.address` does in a scenario
        import ray

        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    start = time.perf_counter()
    buf = io.StringIO()
    with redirect_stdout(buf):
        res = run_app(W1APP, num_supernodes=CLIENTS, executor=executor, num_actors=2, seed=SEED, plots=False,
                      run_config=[f"num-server-rounds={ROUNDS}"],
                      out_dir=Path(os.environ.get("TMPDIR", "/tmp")) / f"w1-{executor}-{os.getpid()}")
    elapsed = time.perf_counter() - start
    return {"run_s": elapsed, **w1_result(buf.getvalue()), "rounds": len(res.history)}


def w1_result(stdout: str) -> dict:
    line = next(l for l in stdout.splitlines() if l.startswith("W1-RESULT "))
    out = json.loads(line.removeprefix("W1-RESULT "))
    return {"accuracy": out["accuracy"], "loop_s": out["loop_s"]}


def variant_flower(address: str = "") -> dict:
    import io
    import logging
    from contextlib import redirect_stdout

    sys.path.insert(0, str(W1APP))
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from flwr.simulation import run_simulation
    from w1app import task
    from w1app.client_app import app as client_app
    from w1app.server_app import app as server_app

    task.DEFAULTS["num-server-rounds"] = ROUNDS  # run_simulation passes no run config: set the default

    random.seed(SEED)
    start = time.perf_counter()
    buf = io.StringIO()
    with redirect_stdout(buf):
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=CLIENTS,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": ({"address": address} if address else
                                                     {"include_dashboard": False, "num_cpus": 2})})
    elapsed = time.perf_counter() - start
    return {"run_s": elapsed, **w1_result(buf.getvalue())}


def native_config(executor: str):  # type: ignore[no-untyped-def]
    from fedsim.config import from_dict

    return from_dict({
        "run": {"name": "w1-native", "seed": SEED, "rounds": ROUNDS},
        # 250 per device, 20% held out for the server per device -> 200 training samples each.
        "data": {"dataset": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "samples_per_device": 250},
                 "partitioner": "natural", "num_clients": CLIENTS, "client_test_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [200]},
        "client": {"local_epochs": 1, "batch_size": 20, "lr": 0.05, "threads": 1},
        "strategy": {"name": "fedavg", "fraction_train": PER_ROUND / CLIENTS, "fraction_evaluate": 0.0},
        "executor": {"name": executor},
        "ray": {"num_actors": 2},
        "report": {"progress": False, "plots": False},
    })


def variant_native(executor: str) -> dict:
    import fedsim

    cfg = native_config(executor)
    start = time.perf_counter()
    res = fedsim.run(cfg, write=False)
    loop = res.history[-1]["wall_total_s"] - res.history[0]["wall_total_s"]
    return {"run_s": time.perf_counter() - start, "loop_s": loop, "accuracy": res.summary["final_central_acc"]}


def child(name: str) -> dict:
    if name == "plain":
        return variant_plain()
    if name in ("serial", "ray"):
        return variant_fedsim_app(name)
    if name == "flower":
        return variant_flower()
    if name == "ray-warm":
        return variant_fedsim_app("ray", os.environ[WARM_ENV])
    if name == "flower-warm":
        return variant_flower(os.environ[WARM_ENV])
    if name.startswith("native-"):
        return variant_native(name.removeprefix("native-"))
    raise SystemExit(f"unknown variant {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=20, help="W1 has 20; more rounds show how start-up costs amortize")
    args = ap.parse_args()
    os.environ["W1_ROUNDS"] = str(args.rounds)
    if args.variant:
        Path(args.json_out).write_text(json.dumps(child(args.variant)))
        return

    sys.path.insert(0, str(HERE))

    names = [v for v in args.variants.split(",") if v]
    results: dict[str, list[dict]] = {n: [] for n in names}
    cold = [n for n in names if not n.endswith("-warm")]
    warm = [n for n in names if n.endswith("-warm")]
    run_all(cold, results, args.repeats)
    if warm:  # the warm cluster runs only while the warm variants do, so it cannot slow the others
        head = start_warm_cluster()
        try:
            run_all(warm, results, args.repeats)
        finally:
            head.stdin.close()
            head.wait(timeout=120)
    report(names, results, args.repeats)


def start_warm_cluster():  # type: ignore[no-untyped-def]
    import subprocess
    import textwrap

    head = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, ray
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        print(ray.get_runtime_context().gcs_address, flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(W1APP), str(HERE.parent)])})
    os.environ[WARM_ENV] = head.stdout.readline().strip()
    return head


def run_all(names: list[str], results: dict[str, list[dict]], repeats: int) -> None:
    from _measure import run_child

    for rep in range(repeats):  # interleave variants so machine noise hits all alike
        for name in names:
            r = run_child(Path(__file__), ["--variant", name])
            results[name].append(r)
            print(f"  [{rep + 1}/{repeats}] {name:14s} run {r['run_s']:6.2f} s  process {r['process_s']:6.2f} s"
                  f"  peak {r['peak_rss_mb']:7.0f} MB  acc {r['accuracy']:.4f}", file=sys.stderr)



def report(names: list[str], results: dict[str, list[dict]], repeats: int) -> None:
    from _measure import median_of

    base = ({k: median_of(results["plain"], k) for k in ("loop_s", "run_s", "process_s")}
            if "plain" in results else None)
    rounds = int(os.environ["W1_ROUNDS"])
    print(f"\nW1: {CLIENTS} clients, {PER_ROUND}/round, {rounds} rounds, MLP 60-200-10, 200 samples/client, "
          f"E=1, B=20, lr 0.05, 1 torch thread; median of {repeats} (peak memory: max)\n")
    header = f"{'variant':16s} {'loop s':>7s} {'x plain':>8s} {'run s':>7s} {'x plain':>8s} {'process s':>10s} " \
             f"{'x plain':>8s} {'peak RSS MB':>12s} {'peak PSS MB':>12s} {'final acc':>10s}"
    print(header)
    print("-" * len(header))
    for name in names:
        rs = results[name]
        loop_s, run_s, proc_s = median_of(rs, "loop_s"), median_of(rs, "run_s"), median_of(rs, "process_s")
        lx = f"{loop_s / base['loop_s']:.2f}" if base else "-"
        rx = f"{run_s / base['run_s']:.2f}" if base else "-"
        px = f"{proc_s / base['process_s']:.2f}" if base else "-"
        print(f"{name:16s} {loop_s:7.2f} {lx:>8s} {run_s:7.2f} {rx:>8s} {proc_s:10.2f} {px:>8s} "
              f"{max(r['peak_rss_mb'] for r in rs):12.0f} {max(r['peak_pss_mb'] for r in rs):12.0f} "
              f"{median_of(rs, 'accuracy'):10.4f}")
    print()
    for num, den, target in (("flower", "ray", "  [target >= 3x end to end]"), ("flower-warm", "ray-warm", ""),
                             ("serial", "plain", "  [target <= 1.3x]")):
        if {num, den} <= set(results):
            ratios = ", ".join(f"{median_of(results[num], k) / median_of(results[den], k):.2f}x ({label})"
                               for k, label in (("loop_s", "round loop"), ("run_s", "run"), ("process_s", "process")))
            print(f"{num} / {den}: {ratios}{target}")


if __name__ == "__main__":
    main()
