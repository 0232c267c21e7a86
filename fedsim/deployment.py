"""The same scenario on Flower's Deployment Engine: a real SuperLink, real SuperNodes, gRPC/HTTP.

``fedsim deploy-app SCENARIO --out DIR`` writes a Flower app folder whose ServerApp is
`server_app` below and whose ClientApp is fedsim's own (``clients.app:app``); the scenario
travels in the app's ``[tool.flwr.app.config]`` exactly as fedsim's simulation passes it to
the ClientApp (flat ``section.key`` TOML literals), so both sides rebuild the same data,
model and strategy from the same seed. Each SuperNode is one client:
``--node-config "partition-id=I num-partitions=N"``. With the same seed the run gives the
numbers of ``fedsim run`` (``tests/test_deployment_engine.py`` checks it).

The virtual clock (``[devices]``, ``[network]``, ``[round]`` policies), injected faults,
Byzantine clients, codecs' grid-side decoding and attack probes belong to the simulated
grid: on real infrastructure they do not apply, and the ServerApp says so in its log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger("fedsim")
RESULT_PREFIX = "FEDSIM-DEPLOY-RESULT "

server_app = ServerApp()


def simulation_only(cfg: Any) -> list[str]:
    """Sections of a scenario that only fedsim's simulated grid can honour."""
    from fedsim.config import Config

    default = Config.__dataclass_fields__
    out = []
    for section in ("devices", "network", "round", "faults", "byzantine", "probe"):
        value = getattr(cfg, section)
        if value != default[section].default:
            out.append(f"[{section}]")
    if cfg.codec:
        out.append("codec")
    return out


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from clients.models import init_model
    from clients.runconfig import from_run_config
    from clients.trainer import evaluate
    from scenarios.federation import federated_data
    from strategies.registry import build_strategy

    cfg = from_run_config(dict(context.run_config))
    ignored = simulation_only(cfg)
    if ignored:
        logging.getLogger("flwr").warning(
            "fedsim: %s of scenario %r apply to fedsim's simulated grid only; on the Deployment Engine the "
            "real network and devices decide", ", ".join(ignored), cfg.run.name)
    data = federated_data(cfg.data, cfg.run.seed)
    model = init_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes, cfg.run.seed)
    strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
    history: list[dict[str, Any]] = []

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if not cfg.server.centralized_eval:
            return None
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, data.server_x, data.server_y)
        history.append({"round": server_round, "central_loss": loss, "central_acc": acc})
        return MetricRecord({"loss": loss, "accuracy": acc})

    timeout = cfg.round.deadline if cfg.round.deadline is not None else cfg.server.timeout
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=cfg.run.rounds,
                   timeout=timeout, evaluate_fn=central)
    print(RESULT_PREFIX + json.dumps({"name": cfg.run.name, "rounds": cfg.run.rounds, "history": history}),
          flush=True)


def write_app(cfg: Any, folder: str | Path) -> Path:
    """A Flower app folder (pyproject.toml) running ``cfg`` with fedsim's ServerApp and ClientApp."""
    import tomli_w

    from clients.runconfig import to_run_config

    if cfg.client.app != "fedsim":
        from fedsim.errors import ConfigError

        raise ConfigError("client.app", cfg.client.app, 'deploy-app runs fedsim\'s ClientApp ("fedsim"); '
                                                         "a Flower app of your own already deploys as it is")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fedsim-deployment", "version": "1.0.0",
                    "description": f"fedsim scenario {cfg.run.name!r} on Flower's Deployment Engine",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "fedsim",
                                  "components": {"serverapp": "fedsim.deployment:server_app",
                                                 "clientapp": "clients.app:app"},
                                  "config": to_run_config(cfg)}}},
    }
    path = out / "pyproject.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def commands(cfg: Any, folder: str | Path, port: int = 9093) -> list[str]:
    """The shell commands that start a local SuperLink, one SuperNode per client, and the run."""
    n = cfg.data.num_clients
    lines = [f"flower-superlink --insecure --port {port} &"]
    for i in range(n):
        lines.append(f'flower-supernode --insecure --superlink 127.0.0.1:{port} --port {port + 10 + i} '
                     f'--node-config "partition-id={i} num-partitions={n}" &')
    lines.append(f"# in $FLWR_HOME/config.toml (default ~/.flwr): [superlink.fedsim-local] address = \"127.0.0.1:{port}\""
                 ", insecure = true")
    lines.append(f"flwr run {folder} fedsim-local --stream")
    return lines
