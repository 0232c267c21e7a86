"""What Flower's SecAgg+ costs, on fedsim's virtual clock and links, next to plain FedAvg.

One Flower app (``benchmarks/secaggapp``: FedAvg over ``--params`` float32 values, every
client adds 1) runs unchanged on fedsim's grid with ``secagg = false`` (Flower's default
fit workflow) and ``secagg = true`` (``SecAggPlusWorkflow`` + ``secaggplus_mod``), for
10 / 50 / 100 clients per round and 0 / 10 % dropouts per message (each SecAgg+ stage
draws its own). Links: 20 Mbit/s down, 5 Mbit/s up, 50 ms latency. Per configuration it
prints the rounds whose aggregate is right (the mean moved by exactly 1, to SecAgg+'s
quantization), messages, bytes up and down and virtual seconds per round, and the
wall-clock seconds of the whole run (the protocol's real cryptography included).

    python benchmarks/secagg.py                    # the table (about 2 minutes on 2 cores)
    python benchmarks/secagg.py --clients 10 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "benchmarks" / "secaggapp"


def system_file(folder: Path, dropout: float) -> Path:
    path = folder / f"system-{dropout}.toml"
    path.write_text(f"""[devices]
dropout = {dropout}
[network]
down_mbps = {{ name = "constant", value = 20.0 }}
up_mbps = {{ name = "constant", value = 5.0 }}
latency_s = {{ name = "constant", value = 0.05 }}
""")
    return path


def one(clients: int, dropout: float, secagg: bool, rounds: int, params: int, folder: Path) -> dict[str, float]:
    sys.path.insert(0, str(APP))
    from secaggapp import app as bench_app

    from fedsim.runapp import run_app

    bench_app.RESULT.clear()
    start = time.perf_counter()
    res = run_app(APP, run_config=[f"num-server-rounds={rounds} secagg={'true' if secagg else 'false'} "
                                   f"num-params={params}"],
                  num_supernodes=clients, out_dir=folder / f"{clients}-{dropout}-{secagg}", plots=False,
                  system=system_file(folder, dropout), progress=False)
    wall = time.perf_counter() - start
    records = [r for r in res.history if r["round"] > 0]
    means = dict(bench_app.RESULT)
    right, previous = 0, 0.0
    for rnd in range(1, rounds + 1):
        value = means.get(rnd, previous)
        right += abs(value - previous - 1.0) < 1e-2
        previous = value
    return {"right": right, "messages": statistics.mean(r["clients_sampled"] for r in records),
            "up_kb": statistics.mean(r["bytes_up"] for r in records) / 1e3,
            "down_kb": statistics.mean(r["bytes_down"] for r in records) / 1e3,
            "virtual_s": statistics.mean(r["virtual_round_s"] for r in records), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 50, 100])
    parser.add_argument("--dropouts", type=float, nargs="*", default=[0.0, 0.1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--params", type=int, default=10_000)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    print(f"FedAvg over {args.params} float32 values, {args.rounds} rounds; per round: training messages, "
          "kB up / down, virtual s; wall s per run")
    print(f"{'clients':>7} {'dropout':>7} {'protocol':>9} {'right':>6} {'msgs':>6} {'kB up':>9} {'kB down':>9} "
          f"{'virtual s':>9} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            for dropout in args.dropouts:
                for secagg in (False, True):
                    r = one(clients, dropout, secagg, args.rounds, args.params, Path(tmp))
                    print(f"{clients:>7} {dropout:>7.0%} {'SecAgg+' if secagg else 'FedAvg':>9} "
                          f"{int(r['right'])}/{args.rounds:<4} {r['messages']:>6.0f} {r['up_kb']:>9.1f} "
                          f"{r['down_kb']:>9.1f} {r['virtual_s']:>9.3f} {r['wall_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
