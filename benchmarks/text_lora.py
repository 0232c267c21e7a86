"""LoRA vs full fine-tuning vs top-k on the dialects text task, on FedScale-format device traces.

The sweep is the ``benchmarks/text-lora`` preset (see it for the task, model and arms).
FedScale's real traces cannot be downloaded here, so this script writes device traces in
FedScale's own pickle layout (capacity: per-device inference ms per sample and kbit/s,
drawn lognormal around FedScale's typical values of ~60 ms and ~5 Mbit/s; availability:
per-device online intervals over a one-hour period, ~85 % online) -- they are synthetic,
and say so -- converts them with ``fedsim traces import`` exactly as a user converts
FedScale's files, and runs the sweep on the converted ``[devices]`` and ``[network]``
sections (the preset's own lognormal devices are replaced). Energy: fedsim's defaults (LTE
radio from Huang et al. 2012, 2 W compute).

Prints, per arm (mean over seeds): final next-character accuracy, rounds and virtual
seconds to the target accuracy, clients' energy to the target (kJ), uplink MB, total
virtual time and energy. One report (HTML + summary.csv) is written with the sweep.

    python benchmarks/text_lora.py [--rounds 30] [--seeds 0 1] [--out results/text-lora]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from fedsim import compare
from fedsim.cli import write_report
from fedsim.scenarios.traces import convert
from fedsim.sweeps import load_sweep, run_sweep

PRESET = Path(__file__).resolve().parents[1] / "scenarios" / "presets" / "benchmarks" / "text-lora.toml"


def fedscale_layout_traces(folder: Path, devices: int, seed: int) -> tuple[Path, Path]:
    """Synthetic traces in FedScale's pickle layout (plain dicts of numbers)."""
    rng = np.random.default_rng(seed)
    capacity = {int(1000 + i): {"computation": float(rng.lognormal(np.log(60.0), 0.6)),
                                "communication": float(rng.lognormal(np.log(5000.0), 0.8))} for i in range(devices)}
    behave = {}
    period = 3600.0
    for i in range(devices):
        t, active, inactive = (0.0 if rng.random() < 0.85 else float(rng.uniform(0, 300))), [], []
        while t < period:
            on = float(rng.exponential(1200.0))
            end = min(t + on, period)
            active.append(t)
            inactive.append(end)
            t = end + float(rng.exponential(200.0))
        behave[int(1000 + i)] = {"active": active, "inactive": inactive, "finish_time": period, "duration": period}
    cap, beh = folder / "client_device_capacity", folder / "client_behave_trace"
    cap.write_bytes(pickle.dumps(capacity))
    beh.write_bytes(pickle.dumps(behave))
    return cap, beh


def overrides(system: dict) -> list[str]:
    def literal(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {literal(x)}" for k, x in v.items()) + " }"
        return f'"{v}"' if isinstance(v, str) else repr(v)
    out = [f"devices.speed={literal(system['devices']['speed'])}",
           f"devices.seconds_per_sample={system['devices']['seconds_per_sample']!r}",
           f"devices.availability_trace={literal(system['devices']['availability_trace'])}",
           f"devices.availability_period={system['devices']['availability_period']!r}"]
    out += [f"network.{k}={literal(system['network'][k])}" for k in ("up_mbps", "down_mbps")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", default="results/text-lora")
    args = ap.parse_args()
    traces = Path(tempfile.mkdtemp(prefix="fedscale-traces-"))
    cap, beh = fedscale_layout_traces(traces, devices=200, seed=0)
    print("traces:", convert(cap, beh, traces / "fedsim"))
    system = tomllib.loads((traces / "fedsim" / "system.toml").read_text())
    sweep = load_sweep(PRESET, [*overrides(system), f"run.rounds={args.rounds}", f"sweep.seeds={args.seeds}"])
    start = time.perf_counter()
    run_sweep(sweep, args.out, yes=True, parallel=args.parallel)
    wall = time.perf_counter() - start
    html, csv_path = write_report([args.out], sweep.spec.target, None)
    loaded = compare.load([args.out])
    rows = compare.summarize(loaded, sweep.spec.target)
    print(f"\n{len(loaded.runs)} runs in {wall:.0f} s wall; target next-character accuracy {sweep.spec.target}")
    head = ("arm", "final acc", "reached", "rounds to", "virtual s to", "kJ to", "MB up", "virtual s", "kJ")
    print(" | ".join(head))
    for r in rows:
        def f(v: object, spec: str) -> str:
            return "-" if v is None else format(v, spec)
        print(" | ".join([r["config"], f(r["final_acc_mean"], ".3f"), f"{r['reached']}/{r['seeds']}",
                          f(r["rounds_to_target"], ".1f"), f(r["virtual_s_to_target"], ".0f"),
                          f(None if r["energy_j_to_target"] is None else r["energy_j_to_target"] / 1e3, ".2f"),
                          f(r["bytes_up_mean"] / 1e6, ".2f"), f(r["virtual_time_s_mean"], ".0f"),
                          f(None if r["energy_j_mean"] is None else r["energy_j_mean"] / 1e3, ".2f")]))
    print(f"report: {html}, {csv_path}")


if __name__ == "__main__":
    main()
