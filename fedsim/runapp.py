"""Run an existing Flower app folder on `SimulationGrid` (``fedsim run-app PATH``).

The app's ``pyproject.toml`` names its components as Flower does
(``[tool.flwr.app.components] serverapp = "pkg.server_app:app"``,
``clientapp = "pkg.client_app:app"``) and its run config
(``[tool.flwr.app.config]``). The ServerApp's ``main(grid, context)`` receives
fedsim's grid; each virtual SuperNode runs the ClientApp with ``partition-id`` and
``num-partitions`` in its ``node_config``, as in Flower's simulation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.common.config import flatten_dict, get_project_config
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp

from fedsim import legacybatch, report
from fedsim.apptap import ResultTap
from fedsim.config import load_toml, resolve_scenario
from fedsim.core.errors import ConfigError
from fedsim.core.schema import parse
from fedsim.engine.executors import AppRef, make_executor
from fedsim.engine.executors.base import load_object
from fedsim.engine.grid import NodesNeverCome, SimulationGrid
from fedsim.engine.metrics import Recorder
from fedsim.engine.policies import RoundSection
from fedsim.engine.system import SystemModel
from fedsim.progress import RoundProgress
from fedsim.runner import flower_log_level, torch_threads
from fedsim.scenarios.devices import DevicesSection
from fedsim.scenarios.energy import EnergySection
from fedsim.scenarios.network import NetworkSection

log = logging.getLogger("fedsim")

DEFAULT_SUPERNODES = 10


@dataclasses.dataclass
class AppRunResult:
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path | None
    context: Context


@dataclasses.dataclass(frozen=True)
class FlowerApp:
    path: Path
    serverapp: str
    clientapp: str
    run_config: dict[str, Any]
    num_supernodes: int | None


def read_app(path: str | Path) -> FlowerApp:
    app_dir = Path(path).resolve()
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError("run-app PATH", str(path), "must be a Flower app folder holding a pyproject.toml")
    try:
        project = get_project_config(app_dir)
    except Exception as exc:  # noqa: BLE001 - Flower's validator raises ValueError/tomli errors
        first = str(exc).strip().splitlines()
        raise ConfigError("pyproject.toml", str(app_dir), f"not a valid Flower app: {' '.join(first)}") from None
    flwr_cfg = project.get("tool", {}).get("flwr", {})
    components = flwr_cfg.get("app", {}).get("components", {})
    for key in ("serverapp", "clientapp"):
        if not isinstance(components.get(key), str) or ":" not in components[key]:
            raise ConfigError(f"tool.flwr.app.components.{key}", components.get(key), 'required as "module:attribute"')
    num = None
    feds = flwr_cfg.get("federations", {})
    default = feds.get("default")
    if isinstance(default, str):
        value = feds.get(default, {}).get("options", {}).get("num-supernodes")
        num = value if isinstance(value, int) else None
    return FlowerApp(path=app_dir, serverapp=components["serverapp"], clientapp=components["clientapp"],
                     run_config=flatten_dict(flwr_cfg.get("app", {}).get("config", {})), num_supernodes=num)


def load_system(path: str | Path, num_nodes: int, seed: int) -> SystemModel:
    """The devices, links, energy and round policy of a scenario file or preset (other sections are ignored)."""
    raw = load_toml(resolve_scenario(path))
    sections = {key: raw.get(key, {}) for key in ("devices", "network", "round", "energy")}
    return SystemModel(parse(DevicesSection, sections["devices"], "devices"),
                       parse(NetworkSection, sections["network"], "network"),
                       parse(RoundSection, sections["round"], "round"), num_nodes, seed,
                       energy=parse(EnergySection, sections["energy"], "energy"))


def fused_run_config(app: FlowerApp, items: Iterable[str]) -> dict[str, Any]:
    """The app's run config with ``--run-config`` overrides, parsed and fused by Flower's own
    functions (several ``key=value`` pairs per string, a TOML file; a key the app does not
    declare is an error, as in ``flwr run``)."""
    import click
    from flwr.common.config import fuse_dicts, parse_config_args

    items = [i for i in items if i]
    try:
        overrides = parse_config_args(items) if items else {}
    except (ValueError, OSError, click.ClickException) as exc:
        text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        raise ConfigError("--run-config", " ".join(items), " ".join(text.split())) from None
    unknown = [k for k in overrides if k not in app.run_config]
    if unknown:
        raise ConfigError(f"--run-config {unknown[0]}", overrides[unknown[0]],
                          f"unknown key; the app declares: {', '.join(app.run_config) or 'none'}")
    return fuse_dicts(dict(app.run_config), overrides)


def run_app(path: str | Path, *, run_config: Iterable[str] = (), num_supernodes: int | None = None,
            executor: str = "serial", num_actors: int = 0, seed: int = 0, out_dir: str | Path | None = None,
            threads: int = 1, verbose: bool = False, plots: bool = True,
            system: str | Path | None = None, progress: bool = True) -> AppRunResult:
    """Run a Flower app folder on a `SimulationGrid`; ``run_config`` items use Flower's syntax
    (``"key1=1 key2='x'"``, or one TOML file).

    ``system`` is a scenario TOML (or a preset name) whose ``[devices]``, ``[network]``
    and ``[round]`` sections simulate the devices, links and round policy around the app
    (the app's own ``timeout`` is the virtual deadline under the deadline policies).
    """
    app = read_app(path)
    config = fused_run_config(app, run_config)
    n = num_supernodes or app.num_supernodes or DEFAULT_SUPERNODES
    if n < 1:
        raise ConfigError("--num-supernodes", n, "must be >= 1")
    if str(app.path) not in sys.path:
        sys.path.insert(0, str(app.path))
    server_app = load_object(app.serverapp, ServerApp, "tool.flwr.app.components.serverapp")
    client_ref = AppRef(app.clientapp, paths=(str(app.path),))
    system_model = load_system(system, n, seed) if system else None

    out = Path(out_dir) if out_dir else Path("results") / f"{app.path.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    writer = report.RunWriter(out)
    rounds = config.get("num-server-rounds")
    bar = RoundProgress(rounds if isinstance(rounds, int) and rounds > 0 else 0, app.path.name, enabled=progress)
    errors = ClientErrors()

    def on_record(record: dict[str, Any]) -> None:
        writer.append(record)
        bar.update(record)

    recorder = Recorder(auto_close=True, on_record=on_record, client_metrics=True)
    kwargs: dict[str, Any] = {"threads": threads}
    if executor == "ray":
        kwargs["num_actors"] = num_actors
    ex = make_executor(executor, **kwargs)
    with flower_log_level(verbose), torch_threads(threads), bar:
        grid = SimulationGrid(n, ex, seed=seed, observer=recorder.on_exchange, system=system_model)
        grid.on_client_error = errors
        recorder.clock = grid.clock
        ex.start(client_ref, grid.run.run_id, config)
        context = Context(run_id=grid.run.run_id, node_id=SUPERLINK_NODE_ID, node_config={},
                          state=RecordDict(), run_config=config)
        try:
            with ResultTap(recorder).installed(), legacybatch.batched():
                server_app(grid, context)
        except KeyboardInterrupt:
            if grid.stalled:  # the grid stopped a legacy ServerApp that waited for nodes forever
                raise NodesNeverCome.of(grid.num_nodes) from None
            raise
        finally:
            ex.shutdown()
            recorder.flush()
    summary = {"app": str(app.path), "serverapp": app.serverapp, "clientapp": app.clientapp,
               "num_supernodes": n, "executor": executor, "seed": seed, "run_config": config,
               **report.summarize(recorder.records)}
    writer.write_summary(summary)
    if plots and recorder.records:
        report.plot_curves(recorder.records, out)
        report.plot_system(recorder.records, out)
    return AppRunResult(history=recorder.records, summary=summary, out_dir=out, context=context)


class ClientErrors:
    """Counts failed client calls and shows the first one's traceback (the ClientApp's own frames)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, rnd: int, cid: int, phase: str, trace: str) -> None:
        self.count += 1
        if self.count == 1:
            log.warning("round %d: client %d raised in %s (first client failure; later ones are counted in "
                        "metrics.jsonl):\n%s", rnd, cid, phase, trace.rstrip())
