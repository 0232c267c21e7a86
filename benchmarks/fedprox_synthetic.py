"""FedProx (Li et al., MLSys 2020), Figure 1's protocol on Synthetic(1,1).

30 devices, 10 per round, multinomial logistic regression, lr 0.01, batch 10, E = 20
local epochs. In each round, 0 / 50 / 90 % of the selected devices are stragglers that
only manage a random number of epochs in [1, E-1]: FedAvg drops them (deadline policy),
FedProx keeps their partial work (partial_work policy) with mu = 0 and mu = 1.
Prints final accuracy, the mean and spread over the last rounds (stability), and saves
accuracy and training-loss curves.

    python benchmarks/fedprox_synthetic.py [--rounds 200] [--seed 0] [--executor serial|ray]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import argparse
import sys
import time
from pathlib import Path

import _plot  # noqa: E402  (benchmarks/_plot.py)
import numpy as np

import fedsim
from fedsim.config import load_config

PRESET = Path(__file__).resolve().parents[1] / "scenarios" / "presets" / "synthetic.toml"
METHODS = (
    ("FedAvg (drop stragglers)", ['strategy.name="fedavg"', 'round.policy="deadline"']),
    ("FedProx mu=0 (partial work)", ['strategy.name="fedprox"', "strategy.proximal_mu=0.0",
                                     'round.policy="partial_work"']),
    ("FedProx mu=1 (partial work)", ['strategy.name="fedprox"', "strategy.proximal_mu=1.0",
                                     'round.policy="partial_work"']),
)


def run_all(rounds: int, seed: int, executor: str, out: Path) -> dict[tuple[float, str], list[dict]]:
    base = load_config(PRESET).replace([f"run.rounds={rounds}", f"run.seed={seed}", "report.progress=false",
                                        "report.plots=false", "round.deadline=1e12", f'executor.name="{executor}"'])
    results = {}
    for frac in (0.0, 0.5, 0.9):
        for label, edits in METHODS:
            cfg = base.replace([*edits, f"devices.straggler_fraction={frac}",
                                f'run.name="fedprox-{int(frac * 100)}-{label.split()[0].lower()}{edits[1][-4:-1] if "mu" in label else ""}"'])
            t = time.perf_counter()
            res = fedsim.run(cfg, out_dir=out / f"{int(frac * 100)}pct-{len(results)}")
            results[(frac, label)] = res.history
            print(f"  {frac:.0%} {label}: final {res.summary['final_central_acc']:.4f} "
                  f"({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    return results


def summarize(history: list[dict], tail: int) -> dict[str, float]:
    acc = np.array([r["central_acc"] for r in history if r["round"] > 0])
    last = acc[-tail:]
    return {"final": float(acc[-1]), "mean_last": float(last.mean()), "std_last": float(last.std()),
            "min_last": float(last.min()), "loss_final": float(history[-1]["train_loss"] or np.nan)}


def plot(results: dict[tuple[float, str], list[dict]], out: Path) -> Path:
    plt = _plot.pyplot()

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    for col, frac in enumerate((0.0, 0.5, 0.9)):
        for label, _ in METHODS:
            h = [r for r in results[(frac, label)] if r["round"] > 0]
            axes[0, col].plot([r["round"] for r in h], [r["train_loss"] for r in h], label=label)
            axes[1, col].plot([r["round"] for r in h], [r["central_acc"] for r in h], label=label)
        axes[0, col].set_title(f"{frac:.0%} stragglers")
        axes[1, col].set_xlabel("round")
        axes[0, col].grid(alpha=0.3)
        axes[1, col].grid(alpha=0.3)
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("test accuracy")
    axes[1, 2].legend(fontsize=8)
    fig.suptitle("Synthetic(1,1): FedAvg vs FedProx under stragglers")
    return _plot.save(fig, out / "fedprox_synthetic.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200, help="the paper's 200; fewer for a quick look")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--executor", default="serial", choices=("serial", "ray"))
    ap.add_argument("--out", default="results/fedprox-synthetic")
    args = ap.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results = run_all(args.rounds, args.seed, args.executor, out)
    tail = max(5, args.rounds // 4)
    print(f"\nSynthetic(1,1), 30 devices, 10/round, logreg, lr 0.01, B 10, E 20, {args.rounds} rounds, seed {args.seed}")
    print(f"(last = the last {tail} rounds)\n")
    print(f"{'stragglers':>10s}  {'method':<28s} {'final acc':>9s} {'mean last':>9s} {'std last':>8s} "
          f"{'min last':>8s} {'train loss':>10s}")
    for frac in (0.0, 0.5, 0.9):
        for label, _ in METHODS:
            s = summarize(results[(frac, label)], tail)
            print(f"{frac:>10.0%}  {label:<28s} {s['final']:>9.4f} {s['mean_last']:>9.4f} {s['std_last']:>8.4f} "
                  f"{s['min_last']:>8.4f} {s['loss_final']:>10.4f}")
    avg = summarize(results[(0.9, METHODS[0][0])], tail)
    prox = summarize(results[(0.9, METHODS[2][0])], tail)
    holds = prox["mean_last"] > avg["mean_last"] and prox["std_last"] < avg["std_last"]
    print(f"\npaper's direction at 90 % stragglers (FedProx mu=1 above FedAvg and more stable): "
          f"{'holds' if holds else 'does not hold'} - mean over the last rounds {prox['mean_last']:.4f} vs "
          f"{avg['mean_last']:.4f} ({100 * (prox['mean_last'] - avg['mean_last']):+.1f} points), std "
          f"{prox['std_last']:.4f} vs {avg['std_last']:.4f}")
    print(f"plot: {plot(results, out)}")


if __name__ == "__main__":
    main()
