"""Heterogeneity on the virtual clock: stragglers, lossy links, and what the simulation costs.

  A. FedAvg on Synthetic(1,1) (the ``stragglers`` preset) with 0 / 50 / 90 % of devices
     straggling (speed tiers 1 and 0.001; the deadline lets every fast device finish),
     deadline policy: accuracy at a fixed virtual-time budget (``--rounds`` deadlines).
     One more row: 50 % stragglers under wait_all, which waits for them.
  B. The quickstart over lossy links (the ``lossy`` preset) at 0 / 5 / 20 % i.i.d. packet
     loss, with retransmission, and without (lost spans filled from the global model, or
     replies dropped): accuracy, bytes, retransmissions, virtual time.
  C. Overhead: the quickstart with and without the clock, device and link models (slow,
     lossy links with retransmission and wait_all, so the training is identical), wall
     time of ``fedsim.run``, median of interleaved runs.

    python benchmarks/heterogeneity.py [--rounds 60] [--repeats 5] [--out results/heterogeneity]
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import _plot  # noqa: E402  (benchmarks/_plot.py)
import numpy as np
from fedsim.scenarios.federation import federated_data

import fedsim
from fedsim.config import Config, load_config

PRESETS = Path(__file__).resolve().parents[1] / "scenarios" / "presets"


def accuracy_at(history: list[dict], budget: float) -> tuple[float | None, int]:
    """Centralized accuracy of the last round finished within ``budget`` virtual seconds."""
    best = (None, 0)
    for r in history:
        if r["virtual_time_s"] <= budget + 1e-9 and r.get("central_acc") is not None:
            best = (r["central_acc"], r["round"])
    return best


def straggler_deadline(cfg: Config) -> float:
    """A deadline every fast (speed 1) device meets: its full local work plus transfers, +20 %."""
    data = federated_data(cfg.data, cfg.data_seed)
    sizes = np.array([len(i) for i in data.train_idx])
    epochs, spp = cfg.client.local_epochs, cfg.devices.seconds_per_sample
    jitter = math.exp(3 * cfg.devices.jitter)  # a 3-sigma slow round
    compute = float(sizes.max()) * epochs * spp * jitter
    return round(1.2 * compute + 2.0, 1)  # + generous transfer time for a logreg model


def part_a(rounds: int, out: Path) -> list[dict]:
    base = load_config(PRESETS / "stragglers.toml").replace(["report.progress=false", "report.plots=false"])
    deadline = straggler_deadline(base)
    budget = deadline * rounds
    rows = []
    for frac, policy in ((0.0, "deadline"), (0.5, "deadline"), (0.9, "deadline"), (0.5, "wait_all")):
        cfg = base.replace([
            f"devices.speed={{name=\"tiers\", values=[1.0, 0.001], probs=[{1 - frac}, {frac}]}}",
            f'round.policy="{policy}"', f"round.deadline={deadline}",
            f"run.rounds={2 * rounds if frac == 0 else rounds}", f'run.name="stragglers-{int(frac * 100)}-{policy}"',
        ])
        t = time.perf_counter()
        res = fedsim.run(cfg, out_dir=out / cfg.run.name)
        acc, rnd = accuracy_at(res.history, budget)
        h = [r for r in res.history if r["round"] > 0 and r["virtual_time_s"] <= budget + 1e-9]
        rows.append({"stragglers": frac, "policy": policy, "deadline": deadline, "budget": budget, "acc": acc,
                     "rounds_in_budget": rnd, "mean_replied": np.mean([r["clients_replied"] for r in h]) if h else 0,
                     "dropped": sum(r["stragglers"] for r in h), "final_acc": res.summary["final_central_acc"],
                     "history": res.history, "wall": time.perf_counter() - t})
        print(f"  A {frac:.0%} {policy}: acc@budget {acc}, {rnd} rounds, {rows[-1]['wall']:.0f} s", file=sys.stderr)
    return rows


def part_b(out: Path) -> list[dict]:
    base = load_config(PRESETS / "lossy.toml").replace(["report.progress=false", "report.plots=false"])
    rows = []
    for p in (0.0, 0.05, 0.2):
        for mode, edits in (("retransmit", ["network.retransmit=true"]),
                            ("no retransmit, fill", ["network.retransmit=false", 'network.on_loss="mark"',
                                                     'network.fill="global"']),
                            ("no retransmit, drop", ["network.retransmit=false", 'network.on_loss="drop"'])):
            cfg = base.replace([f"network.loss.p={p}", *edits, f'run.name="lossy-{int(p * 100)}-{mode.split(",")[-1].strip().replace(" ", "-")}"'])
            res = fedsim.run(cfg, out_dir=out / cfg.run.name)
            s = res.summary
            train = [r for r in res.history if r["round"] > 0]
            rows.append({"loss": p, "mode": mode, "acc": s["final_central_acc"], "bytes_down": s["bytes_down"],
                         "bytes_up": s["bytes_up"], "retransmissions": s["retransmissions"],
                         "lost_for_good": s["packets_lost_for_good"], "model_lost": s["model_lost"],
                         "reply_lost": s["reply_lost"], "virtual_time": s["virtual_time_s"],
                         "replied": float(np.mean([r["clients_replied"] for r in train]))})
            print(f"  B {p:.0%} {mode}: acc {s['final_central_acc']:.4f}", file=sys.stderr)
    return rows


def part_c(repeats: int) -> dict:
    plain = load_config(PRESETS / "quickstart.toml").replace(["report.progress=false", "report.plots=false"])
    system = plain.replace([
        "devices.seconds_per_sample=0.0005", "devices.jitter=0.2",
        "devices.speed={name=\"lognormal\", sigma=0.5}",
        "network.up_mbps={value=2.0}", "network.down_mbps={value=10.0}", "network.latency_s={value=0.05}",
        "network.loss={name=\"gilbert_elliott\", p_gb=0.02, p_bg=0.3}", "network.max_retries=50",
    ])
    times: dict[str, list[float]] = {"without": [], "with": []}
    accs = {}
    for _ in range(repeats):
        for name, cfg in (("without", plain), ("with", system)):
            t = time.perf_counter()
            res = fedsim.run(cfg, write=False)
            times[name].append(time.perf_counter() - t)
            accs[name] = (res.summary["final_central_acc"], res.summary["virtual_time_s"], res.summary["retransmissions"])
    return {"times": times, "accs": accs}


def plot_a(rows: list[dict], out: Path) -> Path:
    plt = _plot.pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        pts = [(r["virtual_time_s"], r["central_acc"]) for r in row["history"] if r.get("central_acc") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], drawstyle="steps-post",
                label=f"{row['stragglers']:.0%} stragglers, {row['policy']}")
    ax.axvline(rows[0]["budget"], color="k", ls="--", lw=0.8, label="budget")
    ax.set_xlim(0, rows[0]["budget"] * 1.05)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("centralized accuracy")
    ax.set_title("FedAvg on Synthetic(1,1), deadline policy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _plot.save(fig, out / "stragglers_accuracy_vs_time.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60, help="virtual-time budget, in deadlines (A)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per variant (C)")
    ap.add_argument("--out", default="results/heterogeneity")
    ap.add_argument("--parts", default="A,B,C")
    args = ap.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.upper().split(","))

    if "A" in parts:
        rows = part_a(args.rounds, out)
        r0 = rows[0]
        print(f"\nA. FedAvg, Synthetic(1,1), 30 devices, 10/round, E=20: deadline {r0['deadline']:g} s, "
              f"budget {r0['budget']:g} virtual s")
        print(f"{'stragglers':>10s} {'policy':>9s} {'acc@budget':>11s} {'rounds':>7s} {'replies/round':>14s} "
              f"{'dropped':>8s}")
        for r in rows:
            acc = "-" if r["acc"] is None else f"{r['acc']:.4f}"
            print(f"{r['stragglers']:>10.0%} {r['policy']:>9s} {acc:>11s} {r['rounds_in_budget']:>7d} "
                  f"{r['mean_replied']:>14.2f} {r['dropped']:>8d}")
        print(f"plot: {plot_a(rows, out)}")
    if "B" in parts:
        rows_b = part_b(out)
        print("\nB. quickstart (digits, 20 clients, FedAvg, 30 rounds), links 10/2 Mbit/s, 50 ms, 1500 B packets")
        print(f"{'loss':>5s} {'mode':>20s} {'acc':>7s} {'MB down':>8s} {'MB up':>7s} {'retx':>7s} {'lost':>6s} "
              f"{'no model':>8s} {'no reply':>8s} {'replies/rnd':>11s} {'virtual s':>10s}")
        for r in rows_b:
            print(f"{r['loss']:>5.0%} {r['mode']:>20s} {r['acc']:>7.4f} {r['bytes_down'] / 1e6:>8.2f} "
                  f"{r['bytes_up'] / 1e6:>7.2f} {r['retransmissions']:>7d} {r['lost_for_good']:>6d} "
                  f"{r['model_lost']:>8d} {r['reply_lost']:>8d} {r['replied']:>11.2f} {r['virtual_time']:>10.1f}")
    if "C" in parts:
        c = part_c(args.repeats)
        w, wo = statistics.median(c["times"]["with"]), statistics.median(c["times"]["without"])
        print(f"\nC. overhead of the clock + device + link models (quickstart, {args.repeats} interleaved runs each)")
        print(f"   without: median {wo:.2f} s  {sorted(round(x, 2) for x in c['times']['without'])}")
        print(f"   with:    median {w:.2f} s  {sorted(round(x, 2) for x in c['times']['with'])}")
        print(f"   ratio with/without: {w / wo:.3f}  [target <= 1.10]")
        (acc_wo, vt_wo, _), (acc_w, vt_w, retx) = c["accs"]["without"], c["accs"]["with"]
        print(f"   same training: accuracy {acc_wo:.4f} vs {acc_w:.4f}; virtual time {vt_wo:.1f} vs {vt_w:.1f} s; "
              f"{retx} retransmissions")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
