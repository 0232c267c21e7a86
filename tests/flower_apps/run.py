"""Run one compatibility app on one engine and print what its ServerApp saw, as JSON.

    python -m tests.flower_apps.run APP[,APP...] flower                      # Flower's run_simulation
    python -m tests.flower_apps.run APP[,APP...] fedsim serial|ray OUT_DIR
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> None:
    apps, engine = argv[0].split(","), argv[1]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from tests.flower_apps.common import NODES, plain

    logging.getLogger("flwr").setLevel(logging.WARNING)
    for app in apps:
        module = importlib.import_module(f"tests.flower_apps.{app}.app")
        module.RESULTS.clear()
        if engine == "flower":
            from flwr.simulation import run_simulation

            run_simulation(server_app=module.server_app, client_app=module.client_app, num_supernodes=NODES,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"num_cpus": 2, "include_dashboard": False,
                                                         "_node_ip_address": "127.0.0.1"}})
        else:
            from fedsim.runapp import run_app

            executor, out = argv[2], argv[3]
            run_app(ROOT / "tests" / "flower_apps" / app, executor=executor, num_actors=2,
                    out_dir=f"{out}/{app}", plots=False, progress=False)
        print(f"RESULTS {app} " + json.dumps(plain(module.RESULTS)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
