"""Leakage report: how much each defence leaks to an honest-but-curious server, and what it costs.

digits, 20 clients (10 per round), a small CNN and the MLP; FedSGD (one local step) and
FedAvg (5 local steps), batch 1 and batch 4. In round 1 the server runs Inverting
Gradients (Geiping et al.) on 5 clients' decoded updates. Defences: none, fp16, int8,
QSGD 4-bit, top-k 10 % and 1 % (with error feedback), LoRA-only (rank 4, base warmed up
on 5 % shared data), and Flower's LocalDpMod at three noise levels. Columns: mean PSNR,
SSIM and label accuracy of the reconstructions, final model accuracy, uplink bytes.
Saves a privacy (PSNR) vs utility (accuracy) plot.

    python benchmarks/leakage.py [--rounds 30] [--iterations 1000] [--models mlp,cnn]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _plot  # noqa: E402  (benchmarks/_plot.py)

import fedsim
from fedsim.config import Config, from_dict

DP = [(f"LDP std {std:g}", std) for std in (1e-4, 1e-3, 1e-2)]
CLIP = 1.0
DELTA = 1e-5


def epsilon_for(std: float) -> float:
    """LocalDpMod's per-release epsilon for Gaussian noise of this std (sensitivity = clip)."""
    return CLIP * math.sqrt(2 * math.log(1.25 / DELTA)) / std


def composed_epsilon(std: float, releases: int) -> float:
    """Epsilon after ``releases`` Gaussian releases of one client, from Flower's RDP accountant."""
    from flwr.serverapp import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        RdpAccountant,
        SamplingMethod,
    )

    acc = RdpAccountant(PrivacyConfig(target_delta=DELTA, population_size=1,
                                      neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                      sampling_method=SamplingMethod.NO_AMPLIFICATION))
    for _ in range(releases):
        acc.compose(GaussianPrivacyEvent(noise_multiplier=std / CLIP, sample_size=1, population_size=1))
    return float(acc.get_epsilon(DELTA))


DEFENCES: list[tuple[str, dict]] = [
    ("none", {}),
    ("fp16", {"codec": [{"name": "fp16"}]}),
    ("int8", {"codec": [{"name": "int8"}]}),
    ("QSGD 4-bit", {"codec": [{"name": "qsgd", "bits": 4}]}),
    ("top-k 10%", {"codec": [{"name": "topk", "k": 0.1}]}),
    ("top-k 1%", {"codec": [{"name": "topk", "k": 0.01}]}),
    ("LoRA-only r4", {"codec": [{"name": "lora", "rank": 4}]}),
    *[(label, {"local_dp": {"epsilon": epsilon_for(std), "delta": DELTA, "clipping_norm": CLIP,
                            "sensitivity": CLIP}}) for label, std in DP],
]


def config(model: str, steps: int, batch: int, rounds: int, iterations: int, defence: dict) -> Config:
    client = {"local_steps": steps, "batch_size": batch, "lr": 0.1 if model == "mlp" else 0.05}
    if "local_dp" in defence:
        client["local_dp"] = defence["local_dp"]
    raw = {
        "run": {"name": "leakage", "seed": 0, "rounds": rounds},
        "data": {"dataset": "digits", "num_clients": 20, "partitioner": {"name": "dirichlet", "alpha": 0.5},
                 "client_test_fraction": 0.0, "sharing": {"beta": 0.05, "alpha": 0.0}},
        "model": {"name": "mlp", "hidden": [64]} if model == "mlp" else {"name": "cnn"},
        "client": client,
        "strategy": {"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0},
        "probe": {"attack": {"name": "inverting_gradients", "iterations": iterations, "restarts": 1},
                  "rounds": [1], "clients": 5, "grid_images": 0},
        "report": {"progress": False, "plots": False},
    }
    if "codec" in defence:
        raw["codec"] = defence["codec"]
    return from_dict(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iterations", type=int, default=1000, help="Inverting Gradients iterations per probe")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--out", default="results/leakage")
    args = ap.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        for steps, proto in ((1, "FedSGD"), (5, "FedAvg 5 steps")):
            for batch in (1, 4):
                for label, defence in DEFENCES:
                    t = time.perf_counter()
                    res = fedsim.run(config(model, steps, batch, args.rounds, args.iterations, defence), write=False)
                    r1 = res.history[1]
                    rows.append({"model": model, "protocol": proto, "batch": batch, "defence": label,
                                 "psnr": r1["probe_psnr_mean"], "ssim": r1["probe_ssim_mean"],
                                 "label_acc": r1["probe_label_acc"], "acc": res.summary["final_central_acc"],
                                 "bytes_up": res.summary["bytes_up"], "probe_s": r1["wall_probe_s"]})
                    print(f"  {model} {proto} b{batch} {label}: PSNR {r1['probe_psnr_mean']:.1f} "
                          f"acc {res.summary['final_central_acc']:.3f} ({time.perf_counter() - t:.0f} s)",
                          file=sys.stderr)
    print(f"\ndigits, 20 clients (10/round), {args.rounds} rounds; Inverting Gradients ({args.iterations} "
          f"iterations) on 5 clients in round 1; LDP = Flower's LocalDpMod, clip {CLIP:g}, delta {DELTA:g}, "
          f"per-release epsilon " + ", ".join(f"{epsilon_for(s):.3g} (std {s:g})" for _, s in DP))
    print("epsilon of one client after all its releases (Flower's RDP accountant, at most "
          f"{args.rounds} releases): " + ", ".join(f"{composed_epsilon(s, args.rounds):.3g} (std {s:g})" for _, s in DP))
    print(f"{'model':<5s} {'protocol':<15s} {'batch':>5s}  {'defence':<14s} {'PSNR dB':>8s} {'SSIM':>6s} "
          f"{'labels':>7s} {'model acc':>9s} {'uplink MB':>10s}")
    for r in rows:
        print(f"{r['model']:<5s} {r['protocol']:<15s} {r['batch']:>5d}  {r['defence']:<14s} {r['psnr']:>8.1f} "
              f"{r['ssim']:>6.3f} {r['label_acc']:>7.2f} {r['acc']:>9.4f} {r['bytes_up'] / 1e6:>10.3f}")
    print(f"plot: {plot(rows, out)}")


def plot(rows: list[dict], out: Path) -> Path:
    plt = _plot.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    labels = [label for label, _ in DEFENCES]
    markers = {("mlp", "FedSGD"): "o", ("mlp", "FedAvg 5 steps"): "s", ("cnn", "FedSGD"): "^",
               ("cnn", "FedAvg 5 steps"): "D"}
    cmap = plt.get_cmap("tab10")
    for r in rows:
        ax.scatter(r["psnr"], r["acc"], color=cmap(labels.index(r["defence"]) % 10),
                   marker=markers[(r["model"], r["protocol"])], alpha=0.5 if r["batch"] == 4 else 0.95, s=40)
    for i, label in enumerate(labels):
        ax.scatter([], [], color=cmap(i % 10), label=label)
    for (model, proto), m in markers.items():
        ax.scatter([], [], color="k", marker=m, label=f"{model}, {proto}")
    ax.axvline(25, color="k", ls="--", lw=0.8)
    ax.set_xlabel("reconstruction PSNR (dB), round 1 — higher leaks more")
    ax.set_ylabel("final model accuracy")
    ax.set_title("privacy vs utility (faded: batch 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    return _plot.save(fig, out / "privacy_vs_utility.png")


if __name__ == "__main__":
    main()
