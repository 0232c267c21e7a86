"""FedBuff (buffered asynchronous aggregation) vs synchronous FedAvg under lognormal stragglers.

digits, 50 clients (Dirichlet 0.5), MLP; device speeds lognormal(0, 1), 10 ms per
training sample at speed 1, 20/5 Mbit/s links with 50 ms latency. Synchronous FedAvg
samples 10 clients per round and waits for all of them (or drops those past a deadline);
FedBuff keeps 10 clients training and steps the server every K = 5 updates, weighting
stale updates by (1 + staleness)^-0.5 (or not at all). Accuracy at fixed virtual-time
budgets, and a plot of accuracy vs virtual time.

    python benchmarks/fedbuff_async.py [--rounds 40] [--seeds 2]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import argparse
import statistics
import sys
import time
from pathlib import Path

import _plot  # noqa: E402  (benchmarks/_plot.py)

import fedsim
from fedsim.config import Config, from_dict


def base(seed: int, rounds: int) -> dict:
    return {
        "run": {"name": "async", "seed": seed, "rounds": rounds},
        "data": {"dataset": "digits", "num_clients": 50, "partitioner": {"name": "dirichlet", "alpha": 0.5},
                 "client_test_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [64]},
        "client": {"local_epochs": 2, "batch_size": 16, "lr": 0.1},
        "devices": {"speed": {"name": "lognormal", "mu": 0.0, "sigma": 1.0}, "seconds_per_sample": 0.01},
        "network": {"down_mbps": {"value": 20.0}, "up_mbps": {"value": 5.0}, "latency_s": {"value": 0.05}},
        "report": {"progress": False, "plots": False},
    }


def methods(rounds: int) -> list[tuple[str, dict]]:
    sync = {"name": "fedavg", "fraction_train": 0.2, "fraction_evaluate": 0.0}
    return [
        ("FedAvg, wait for all", {"strategy": sync}),
        ("FedAvg, 2 s deadline", {"strategy": sync, "round": {"policy": "deadline", "deadline": 2.0},
                                  "run": {"rounds": 3 * rounds}}),
        ("FedBuff K=5, polynomial", {"strategy": {"name": "fedbuff", "concurrency": 10, "buffer_size": 5,
                                                  "staleness": "polynomial", "staleness_a": 0.5},
                                     "run": {"rounds": 12 * rounds}}),
        ("FedBuff K=5, constant", {"strategy": {"name": "fedbuff", "concurrency": 10, "buffer_size": 5,
                                                "staleness": "constant"}, "run": {"rounds": 12 * rounds}}),
    ]


def config(seed: int, rounds: int, edits: dict) -> Config:
    raw = base(seed, rounds)
    for key, value in edits.items():
        raw[key] = {**raw.get(key, {}), **value} if key == "run" else value
    return from_dict(raw)


def acc_at(history: list[dict], t: float) -> float:
    best = history[0]["central_acc"]
    for r in history:
        if r["virtual_time_s"] <= t and r.get("central_acc") is not None:
            best = r["central_acc"]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40,
                    help="synchronous rounds; the budget is what they take (the others run until past it)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default="results/fedbuff-async")
    args = ap.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[list[dict]]] = {}
    for label, edits in methods(args.rounds):
        for seed in range(args.seeds):
            res = fedsim.run(config(seed, args.rounds, edits), write=False)
            runs.setdefault(label, []).append(res.history)
        print(f"  {label}: {statistics.mean(h[-1]['virtual_time_s'] for h in runs[label]):.0f} virtual s", file=sys.stderr)
    # Budgets: a quarter, half and all of what synchronous FedAvg (wait for all) needs (its fastest seed).
    full = min(h[-1]["virtual_time_s"] for h in runs["FedAvg, wait for all"])
    budgets = [full / 4, full / 2, full]
    print(f"\ndigits, 50 clients, lognormal(0,1) speeds; sync FedAvg 10/round x {args.rounds} rounds = {full:.0f} "
          f"virtual s; mean of {args.seeds} seeds")
    print(f"{'method':<26s}" + "".join(f"{f'acc@{b:.0f}s':>12s}" for b in budgets) + f"{'updates':>9s}"
          + f"{'staleness':>10s}")
    for label, hs in runs.items():
        accs = [statistics.mean(acc_at(h, b) for h in hs) for b in budgets]
        ups = statistics.mean(sum(r["clients_replied"] for r in h if r["virtual_time_s"] <= full) for h in hs)
        stale = [r.get("strategy_staleness_mean") for h in hs for r in h[1:] if r.get("strategy_staleness_mean") is not None]
        st = f"{statistics.mean(stale):.2f}" if stale else "-"
        print(f"{label:<26s}" + "".join(f"{a:>12.4f}" for a in accs) + f"{ups:>9.0f}{st:>10s}")
    short = [label for label, hs in runs.items() if min(h[-1]["virtual_time_s"] for h in hs) < full]
    if short:
        print(f"note: stopped before the full budget: {', '.join(short)}")
    print(f"plot: {plot(runs, full, out)}")


def plot(runs: dict[str, list[list[dict]]], full: float, out: Path) -> Path:
    plt = _plot.pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, hs) in enumerate(runs.items()):
        for j, h in enumerate(hs):
            pts = [(r["virtual_time_s"], r["central_acc"]) for r in h if r.get("central_acc") is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], drawstyle="steps-post", color=plt.get_cmap("tab10")(i),
                    alpha=0.9 if j == 0 else 0.4, label=label if j == 0 else None)
    ax.set_xlim(0, full)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("centralized accuracy")
    ax.set_title("Asynchronous FedBuff vs synchronous FedAvg, lognormal stragglers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _plot.save(fig, out / "fedbuff_vs_fedavg.png")


if __name__ == "__main__":
    main()
