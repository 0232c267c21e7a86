"""fedsim: federated-learning simulation on Flower strategies.

``fedsim.run(config)`` runs a scenario; ``fedsim.SimulationGrid`` is the Flower ``Grid``
that simulates the federation, usable by any Flower strategy or ServerApp. Names are
imported on first use, so Ray workers that only need an executor stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "fedsim.config",
    "from_dict": "fedsim.config",
    "load_config": "fedsim.config",
    "ConfigError": "fedsim.core.errors",
    "SimulationGrid": "fedsim.engine.grid",
    "RunResult": "fedsim.runner",
    "run": "fedsim.runner",
    "resume": "fedsim.runner",
    "sweep": "fedsim.sweeps",
    # Finished runs and sweeps read back, for notebooks.
    "LoadedRun": "fedsim.results",
    "Runs": "fedsim.results",
    "load_run": "fedsim.results",
    "load_runs": "fedsim.results",
    "plot_metric": "fedsim.plots",
    # Registration of your own plug-ins by name (or name them by "package.module:attr").
    "Dataset": "fedsim.scenarios.datasets",
    "register_dataset": "fedsim.scenarios.datasets",
    "register_partitioner": "fedsim.scenarios.partitioners",
    "register_model": "fedsim.clients.models",
    "register_codec": "fedsim.clients.codecs",
    "register_attack": "fedsim.scenarios.attacks",
    "register_strategy": "fedsim.strategies",
    "register_policy": "fedsim.engine.policies",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Config",
    "ConfigError",
    "Dataset",
    "LoadedRun",
    "RunResult",
    "Runs",
    "SimulationGrid",
    "__version__",
    "from_dict",
    "load_config",
    "load_run",
    "load_runs",
    "plot_metric",
    "register_attack",
    "register_codec",
    "register_dataset",
    "register_model",
    "register_partitioner",
    "register_policy",
    "register_strategy",
    "run",
    "sweep",
]
