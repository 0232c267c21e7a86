"""The same scenario on Flower's Deployment Engine: a real SuperLink, real SuperNodes, gRPC/HTTP.

``fedsim deploy-app SCENARIO --out DIR`` writes a Flower app folder whose ServerApp is
`server_app` below and whose ClientApp is fedsim's own (``fedsim.clients.app:app``, or its
clipping variant for the ``dp_client_*`` wrappers); the scenario travels in the app's
``[tool.flwr.app.config]`` exactly as fedsim's simulation passes it to the ClientApp (flat
``section.key`` TOML literals), plus ``[server]`` and the simulated-grid sections for the
ServerApp, so both sides rebuild the same data, model and strategy from the same seed.
Each SuperNode is one client: ``--node-config "partition-id=I num-partitions=N"``. With
the same seed the run gives the numbers of ``fedsim run`` (``tests/test_deployment_engine.py``
checks it). The folder also holds ``.flwr/config.toml`` (Flower leaves ``.flwr`` out of the
app bundle) naming the local SuperLink, so ``FLWR_HOME=DIR/.flwr flwr run DIR fedsim-local``
needs nothing in ``~/.flwr``.

The virtual clock (``[devices]``, ``[network]``, ``[round]`` policies), injected faults,
Byzantine clients and attack probes belong to the simulated grid: on real infrastructure
they do not apply, and the ServerApp says so in its log. Codecs are decoded by the simulated
grid, so a scenario with ``[[codec]]`` is refused.
"""

from __future__ import annotations

import json
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from fedsim.core.errors import ConfigError

RESULT_PREFIX = "FEDSIM-DEPLOY-RESULT "
CONNECTION = "fedsim-local"  # the SuperLink connection written into the app's .flwr/config.toml
SIMULATED = ("devices", "network", "round", "faults", "byzantine", "probe")

server_app = ServerApp()


def simulation_only(cfg: Any) -> list[str]:
    """Sections of a scenario that only fedsim's simulated grid can honour."""
    from fedsim.config import Config

    default = Config.__dataclass_fields__
    return [f"[{s}]" for s in SIMULATED if getattr(cfg, s) != default[s].default]


def check_deployable(cfg: Any) -> None:
    if cfg.client.app != "fedsim":
        raise ConfigError("client.app", cfg.client.app, 'deploy-app runs fedsim\'s ClientApp ("fedsim"); '
                                                         "a Flower app of your own already deploys as it is")
    if cfg.codec:
        raise ConfigError("codec", [c.name for c in cfg.codec], "codecs are decoded by fedsim's simulated grid; "
                                                                 "remove [[codec]] to deploy")


def run_config(cfg: Any) -> dict[str, str]:
    """The app's run config: the whole scenario as flat ``section.key`` literals. The
    ClientApp reads only its contract's keys (`fedsim.clients.spec`); the ServerApp
    rebuilds the scenario from all of them (and names the sections that do not apply)."""
    from fedsim.core.overrides import flatten

    out: dict[str, str] = {}
    plain = cfg.to_dict()
    for section in ("run", "data", "model", "client", "strategy", "server", "plugins", *SIMULATED):
        flatten(section, plain[section], out)
    return out


def from_run_config(run_config: Any) -> Any:
    """The scenario an app's run config carries (see `run_config`)."""
    from fedsim.config import from_dict
    from fedsim.core.overrides import unflatten

    return from_dict(unflatten({k: str(v) for k, v in run_config.items()}))


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fedsim.core import seeding
    from fedsim.runner import torch_threads
    from fedsim.runsetup import prepare

    cfg = from_run_config(dict(context.run_config))
    check_deployable(cfg)
    ignored = simulation_only(cfg)
    if ignored:
        flwr_log(WARNING, "fedsim: %s of scenario %r apply to fedsim's simulated grid only; on the Deployment "
                          "Engine the real network and devices decide", ", ".join(ignored), cfg.run.name)
    rounds = cfg.run.rounds
    history: list[dict[str, Any]] = []
    with torch_threads(cfg.client.threads):
        setup = prepare(cfg)
        assert setup.strategy is not None

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            due = server_round % cfg.server.eval_every == 0 or server_round == rounds
            if not cfg.server.centralized_eval or not due:
                return None
            loss, acc = setup.evaluate(arrays)
            history.append({"round": server_round, "central_loss": loss, "central_acc": acc})
            flwr_log(INFO, "fedsim: round %d/%d centralized accuracy %.4f, loss %.4f", server_round, rounds, acc, loss)
            return MetricRecord({"loss": loss, "accuracy": acc})

        seeding.seed_python_random(cfg.run.seed, 0, "start")
        result = setup.strategy.start(grid=grid, initial_arrays=setup.initial, num_rounds=rounds,
                                      timeout=cfg.server.timeout, evaluate_fn=central)
    trained = sorted(getattr(result, "train_metrics_clientapp", None) or {})
    print(RESULT_PREFIX + json.dumps({
        "name": cfg.run.name, "rounds": rounds, "train_rounds": trained,
        "final_central_acc": history[-1]["central_acc"] if history else None, "history": history,
    }), flush=True)


def write_app(cfg: Any, folder: str | Path, port: int = 9093) -> Path:
    """A Flower app folder (pyproject.toml) running ``cfg`` with fedsim's ServerApp and ClientApp,
    and ``.flwr/config.toml`` naming the SuperLink at ``127.0.0.1:port`` as ``fedsim-local``."""
    import tomli_w

    from fedsim.runsetup import make_app_ref

    check_deployable(cfg)
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
                                                 "clientapp": make_app_ref(cfg)[0].target},
                                  "config": run_config(cfg)}}},
    }
    path = out / "pyproject.toml"
    path.write_text(tomli_w.dumps(doc))
    home = out / ".flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {
        "default": CONNECTION, CONNECTION: {"address": f"127.0.0.1:{port}", "insecure": True}}}))
    return path


def commands(cfg: Any, folder: str | Path, port: int = 9093) -> list[str]:
    """The shell commands that start a local SuperLink, one SuperNode per client, and the run."""
    n = cfg.data.num_clients
    lines = [f"flower-superlink --insecure --port {port} &"]
    for i in range(n):
        lines.append(f'flower-supernode --insecure --superlink 127.0.0.1:{port} --port {port + 10 + i} '
                     f'--node-config "partition-id={i} num-partitions={n}" &')
    lines.append(f"FLWR_HOME={Path(folder) / '.flwr'} flwr run {folder} {CONNECTION} --stream")
    return lines
