"""Zhao et al. 2018, "Federated Learning with Non-IID Data": sharing a little global data.

digits, 10 clients, all of them every round, FedAvg (E = 1, B = 10). Clients hold IID
data, 2 classes each, or 1 class each (shards). With sharing, the server holds a
class-balanced set G of beta = 5 % of the training data, sends a random alpha-portion of
G to every client once (mixed into its training data), and optionally warms the initial
model up on G. Also the baseline of a model trained on G alone. Mean +- std over seeds.

Expected direction (the paper): 1-class non-IID loses >= 5 points against IID; sharing
with alpha >= 0.5 recovers at least half of that gap.

    python benchmarks/zhao_sharing.py [--rounds 50] [--seeds 3]
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
import numpy as np
import torch
from fedsim.clients import trainer
from fedsim.clients.models import init_model
from fedsim.scenarios.federation import federated_data

import fedsim
from fedsim.config import Config, from_dict
from fedsim.core import seeding

BETA = 0.05
ALPHAS = (0.1, 0.5, 1.0)
WARMUP_EPOCHS = 10
PARTITIONS = {"IID": {"name": "iid"}, "2-class non-IID": {"name": "shards", "shards_per_client": 2},
              "1-class non-IID": {"name": "shards", "shards_per_client": 1}}


def config(partition: dict, rounds: int, seed: int, sharing: dict) -> Config:
    return from_dict({
        "run": {"name": "zhao", "seed": seed, "rounds": rounds},
        "data": {"dataset": "digits", "num_clients": 10, "partitioner": partition, "client_test_fraction": 0.0,
                 "sharing": sharing},
        "model": {"name": "mlp", "hidden": [64]},
        "client": {"local_epochs": 1, "batch_size": 10, "lr": 0.05},
        "strategy": {"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0},
        "report": {"progress": False, "plots": False},
    })


def g_alone(seed: int, epochs: int = 100) -> float:
    """Centralized training on the shared set G only, evaluated on the server's test set."""
    cfg = config(PARTITIONS["IID"], 1, seed, {"beta": BETA})
    data = federated_data(cfg.data, seed)
    model = init_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes, seed)
    x, y = data.shared()
    trainer.train(model, x, y, trainer.TrainSettings(epochs=epochs, batch_size=10, lr=0.05),
                  seeding.torch_generator(seed, 0, seeding.SERVER, "g-alone"))
    return trainer.evaluate(model, data.server_x, data.server_y)[1]


def variants() -> list[tuple[str, dict]]:
    out = [("no sharing", {})]
    for warm in (0, WARMUP_EPOCHS):
        for alpha in ALPHAS:
            label = f"beta 5%, alpha {alpha:g}" + (f", warm-up {warm} ep" if warm else "")
            out.append((label, {"beta": BETA, "alpha": alpha, "warmup_epochs": warm}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="results/zhao-sharing")
    args = ap.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    acc: dict[tuple[str, str], list[float]] = {}
    for pname, partition in PARTITIONS.items():
        for label, sharing in (variants() if pname != "IID" else variants()[:1]):
            for seed in seeds:
                res = fedsim.run(config(partition, args.rounds, seed, sharing), write=False)
                acc.setdefault((pname, label), []).append(res.summary["final_central_acc"])
            print(f"  {pname} / {label}: {statistics.mean(acc[(pname, label)]):.4f}", file=sys.stderr)
    g = [g_alone(s) for s in seeds]

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.4f} +- {statistics.pstdev(v):.4f}"

    print(f"\nZhao et al.: digits, 10 clients, FedAvg E=1 B=10 lr 0.05, {args.rounds} rounds, seeds {seeds}")
    print(f"{'data':<16s} {'sharing':<36s} {'final accuracy':>18s}")
    for (pname, label), v in acc.items():
        print(f"{pname:<16s} {label:<36s} {ms(v):>18s}")
    print(f"{'G alone':<16s} {'beta 5%, 100 epochs centralized':<36s} {ms(g):>18s}")

    iid = statistics.mean(acc[("IID", "no sharing")])
    print()
    for pname in ("1-class non-IID", "2-class non-IID"):
        base = statistics.mean(acc[(pname, "no sharing")])
        gap = iid - base
        print(f"{pname}: gap to IID {100 * gap:.1f} points")
        for label, _ in variants()[1:]:
            rec = (statistics.mean(acc[(pname, label)]) - base) / gap if gap > 0 else float("nan")
            print(f"    {label:<36s} recovers {100 * rec:6.1f} % of the gap")
    one = "1-class non-IID"
    gap = iid - statistics.mean(acc[(one, "no sharing")])
    recov = [(statistics.mean(acc[(one, lab)]) - statistics.mean(acc[(one, "no sharing")])) / gap
             for lab, sh in variants()[1:] if sh["alpha"] >= 0.5]
    holds = gap >= 0.05 and min(recov) >= 0.5
    print(f"\npaper's direction: 1-class gap >= 5 points ({100 * gap:.1f}) and alpha >= 0.5 recovers >= half "
          f"(worst {100 * min(recov):.0f} %): {'holds' if holds else 'does not hold'}")
    print(f"plot: {plot(acc, g, out)}")


def plot(acc: dict[tuple[str, str], list[float]], g: list[float], out: Path) -> Path:
    plt = _plot.pyplot()

    labels = [label for label, _ in variants()]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(labels)
    for i, pname in enumerate(PARTITIONS):
        for j, label in enumerate(labels):
            if (pname, label) not in acc:
                continue
            v = acc[(pname, label)]
            ax.bar(i + (j - len(labels) / 2) * width, np.mean(v), width, yerr=np.std(v),
                   color=plt.get_cmap("tab10")(j), label=label if i == 1 else None)
    ax.axhline(np.mean(g), color="k", ls="--", lw=1, label="G alone")
    ax.set_xticks(range(len(PARTITIONS)), list(PARTITIONS))
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.set_title("Shared data (beta = 5 %) vs non-IID degree")
    return _plot.save(fig, out / "zhao_sharing.png")


if __name__ == "__main__":
    main()
