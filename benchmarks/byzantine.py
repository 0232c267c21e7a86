"""Byzantine clients against Flower's robust aggregators: accuracy with 0 / 10 / 30 % attackers.

digits, 30 clients (IID), all of them every round, MLP 64-64-10, E = 1, B = 16, lr 0.1,
20 rounds. A fixed share of the clients (drawn from the seed) is malicious and sends
``sign_flip`` (w - 4 (w' - w)) or ``random`` (N(0, 1) weights) updates. Each robust strategy
is told the true number of attackers f (Krum, MultiKrum selecting n - f, Bulyan) or trims
30 % per side (FedTrimmedAvg). Bulyan needs n >= 4f + 3; where it does not hold, the cell
says so instead of running.

    python benchmarks/byzantine.py [--rounds 20] [--seeds 2] [--attacks sign_flip,random]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import fedsim
from fedsim.config import from_dict

CLIENTS = 30
FRACTIONS = (0.0, 0.1, 0.3)
STRATEGIES = ("fedavg", "krum", "multikrum", "bulyan", "fedmedian", "fedtrimmedavg")


def strategy(name: str, f: int) -> dict | None:
    base = {"name": name, "fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": CLIENTS,
            "min_available_nodes": CLIENTS}
    if name in ("krum", "bulyan"):
        if name == "bulyan" and CLIENTS < 4 * f + 3:
            return None
        base["num_malicious_nodes"] = f
    elif name == "multikrum":
        base.update(num_malicious_nodes=f, num_nodes_to_select=CLIENTS - f)
    elif name == "fedtrimmedavg":
        base["beta"] = 0.3
    return base


def config(name: str, fraction: float, attack: str, rounds: int, seed: int):  # type: ignore[no-untyped-def]
    f = int(round(fraction * CLIENTS))
    strat = strategy(name, f)
    if strat is None:
        return None
    return from_dict({
        "run": {"name": f"byz-{name}-{attack}-{f}", "seed": seed, "rounds": rounds},
        "data": {"dataset": "digits", "num_clients": CLIENTS, "partitioner": "iid", "client_test_fraction": 0.0},
        "model": {"name": "mlp", "hidden": [64]},
        "client": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "strategy": strat,
        "byzantine": {"fraction": fraction, "attack": attack},
        "report": {"progress": False, "plots": False},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--attacks", default="sign_flip,random")
    args = ap.parse_args()
    start = time.perf_counter()
    table: dict[tuple[str, str, float], str] = {}
    for attack in args.attacks.split(","):
        for name in STRATEGIES:
            for frac in FRACTIONS:
                accs = []
                for seed in range(args.seeds):
                    cfg = config(name, frac, attack, args.rounds, seed)
                    if cfg is None:
                        break
                    accs.append(fedsim.run(cfg, write=False).summary["final_central_acc"])
                table[(attack, name, frac)] = (
                    "n/a (n < 4f+3)" if not accs else
                    f"{statistics.mean(accs):.3f} +- {statistics.pstdev(accs):.3f}")
                print(f"  {attack} {name} {frac:.0%}: {table[(attack, name, frac)]}", file=sys.stderr)
    print(f"\ndigits, {CLIENTS} IID clients all per round, MLP, {args.rounds} rounds, {args.seeds} seeds: "
          "final centralized accuracy (mean +- std)")
    for attack in args.attacks.split(","):
        print(f"\nattack: {attack}")
        print(f"{'strategy':<15s}" + "".join(f"{f'{frac:.0%} attackers':>18s}" for frac in FRACTIONS))
        for name in STRATEGIES:
            print(f"{name:<15s}" + "".join(f"{table[(attack, name, frac)]:>18s}" for frac in FRACTIONS))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
