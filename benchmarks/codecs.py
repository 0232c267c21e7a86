"""Update codecs: accuracy, uplink bytes, compression, virtual time, and their cost.

On the quickstart (digits) and a Synthetic(1,1) scenario (MLP 60-64-10, E = 5), each
codec runs over the ``mobile`` preset's links (Wi-Fi / 4G / 3G tiers, 1 % loss with
retransmission; compute is not charged, so virtual time is communication): none, fp16, int8, QSGD 4 and 2 bits, top-k 1 % and 10 %
with and without error feedback, LoRA r = 4 and r = 16 in both modes (hidden layers
adapted, the classifier head trained in full; base warmed up on a 5 % shared set), one
chain (top-k 10 % + QSGD 8 bits), and quantized local training (8- and 4-bit gradients,
bf16 autocast). Prints final accuracy, uplink bytes (as they travel: encoded arrays with
their .npy headers), compression vs none, virtual time, and encode+decode wall time as a
share of local training time; plots accuracy vs cumulative uplink bytes.

    python benchmarks/codecs.py [--quick-rounds 30] [--synthetic-rounds 50]
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

import fedsim
from fedsim.config import Config, load_config

PRESETS = Path(__file__).resolve().parents[1] / "scenarios" / "presets"
LORA = {"target_modules": ["1"], "full_modules": ["3"]}

VARIANTS: list[tuple[str, list[dict], list[str]]] = [
    ("none", [], []),
    ("fp16", [{"name": "fp16"}], []),
    ("int8", [{"name": "int8"}], []),
    ("QSGD 4-bit", [{"name": "qsgd", "bits": 4}], []),
    ("QSGD 2-bit", [{"name": "qsgd", "bits": 2}], []),
    ("top-k 1% + EF", [{"name": "topk", "k": 0.01, "error_feedback": "classic"}], []),
    ("top-k 1%, no EF", [{"name": "topk", "k": 0.01, "error_feedback": "none"}], []),
    ("top-k 10% + EF", [{"name": "topk", "k": 0.1, "error_feedback": "classic"}], []),
    ("top-k 10%, no EF", [{"name": "topk", "k": 0.1, "error_feedback": "none"}], []),
    ("LoRA r4 FedIT", [{"name": "lora", "rank": 4, **LORA}], []),
    ("LoRA r4 FFA", [{"name": "lora", "rank": 4, "mode": "ffa", **LORA}], []),
    ("LoRA r16 FedIT", [{"name": "lora", "rank": 16, **LORA}], []),
    ("LoRA r16 FFA", [{"name": "lora", "rank": 16, "mode": "ffa", **LORA}], []),
    ("top-k 10% + QSGD 8", [{"name": "topk", "k": 0.1}, {"name": "qsgd", "bits": 8}], []),
    ("train: 8-bit grads", [], ["client.grad_bits=8"]),
    ("train: 4-bit grads", [], ["client.grad_bits=4"]),
    ("train: bf16 autocast", [], ['client.autocast="bf16"']),
]


def scenarios(quick_rounds: int, synthetic_rounds: int) -> dict[str, Config]:
    mobile = load_config(PRESETS / "mobile.toml")
    # A 5 % shared set G for the LoRA bases' warm-up only: alpha = 0 sends none of it to clients.
    system = ["report.progress=false", "report.plots=false", "data.sharing.beta=0.05", "data.sharing.alpha=0.0"]
    out = {}
    quick = load_config(PRESETS / "quickstart.toml").replace([f"run.rounds={quick_rounds}", *system])
    synth = load_config(PRESETS / "synthetic.toml").replace([
        f"run.rounds={synthetic_rounds}", "client.local_epochs=5", 'model={name="mlp", hidden=[64]}', *system])
    for name, cfg in (("quickstart", quick), ("synthetic", synth)):
        raw = cfg.to_dict()
        raw["network"] = mobile.to_dict()["network"]
        out[name] = fedsim.from_dict(raw)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick-rounds", type=int, default=30)
    ap.add_argument("--synthetic-rounds", type=int, default=50)
    ap.add_argument("--out", default="results/codecs")
    ap.add_argument("--scenarios", default="quickstart,synthetic")
    args = ap.parse_args()
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    histories: dict[tuple[str, str], list[dict]] = {}
    rows = []
    for scen, base in scenarios(args.quick_rounds, args.synthetic_rounds).items():
        if scen not in args.scenarios.split(","):
            continue
        none_bytes = None
        for label, chain, edits in VARIANTS:
            cfg = fedsim.from_dict({**base.replace(edits).to_dict(), "codec": chain})
            res = fedsim.run(cfg, write=False)
            h = res.history
            histories[(scen, label)] = h
            s = res.summary
            none_bytes = none_bytes or s["bytes_up"]
            train = sum(r["wall_train_s"] for r in h)
            codec = sum(r["wall_encode_s"] + r["wall_decode_s"] for r in h)
            n = max(1, sum(r["clients_replied"] for r in h))
            rows.append((scen, label, s["final_central_acc"], s["bytes_up"], none_bytes / s["bytes_up"],
                         s["virtual_time_s"], codec / train if train else 0.0, 1e3 * codec / n, 1e3 * train / n))
            print(f"  {scen} {label}: acc {s['final_central_acc']:.4f}", file=sys.stderr)
    print("\nmobile preset links, wait_all; LoRA: hidden layer adapted, head trained in full, base warmed up on 5 % shared data")
    print(f"{'scenario':<11s} {'codec':<22s} {'final acc':>9s} {'uplink MB':>10s} {'compress':>9s} "
          f"{'virtual s':>10s} {'codec/train':>11s} {'codec ms':>9s} {'train ms':>9s}")
    for scen, label, acc, up, ratio, vt, cost, codec_ms, train_ms in rows:
        print(f"{scen:<11s} {label:<22s} {acc:>9.4f} {up / 1e6:>10.3f} {ratio:>8.1f}x {vt:>10.1f} "
              f"{100 * cost:>10.1f}% {codec_ms:>9.3f} {train_ms:>9.3f}")
    for scen in dict.fromkeys(r[0] for r in rows):
        worst = max(r[6] for r in rows if r[0] == scen)
        print(f"{scen}: encode + decode cost, worst case {100 * worst:.1f}% of client training time  [target <= 10%]")
    print(f"plot: {plot(histories, out)}")


def plot(histories: dict[tuple[str, str], list[dict]], out: Path) -> Path:
    plt = _plot.pyplot()

    scens = sorted({s for s, _ in histories})
    fig, axes = plt.subplots(1, len(scens), figsize=(7 * len(scens), 4.8), squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("tab20")
    for ax, scen in zip(axes, scens):
        for i, (label, _, edits) in enumerate(VARIANTS):
            if edits:
                continue
            h = histories[(scen, label)]
            up, xs, ys = 0, [], []
            for r in h:
                up += r["bytes_up"]
                if r.get("central_acc") is not None and r["round"] > 0:
                    xs.append(up / 1e6)
                    ys.append(r["central_acc"])
            ax.plot(xs, ys, label=label, color=cmap(i % 20))
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uplink (MB, log)")
        ax.set_ylabel("centralized accuracy")
        ax.set_title(scen)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    return _plot.save(fig, out / "accuracy_vs_uplink.png")


if __name__ == "__main__":
    main()
