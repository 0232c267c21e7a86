"""fedsim: federated-learning simulation on Flower strategies.

``fedsim.run(config)`` runs a scenario; ``fedsim.SimulationGrid`` is the Flower ``Grid``
that simulates the federation, usable by any Flower strategy or ServerApp.
"""

from fedsim.config import Config, from_dict, load_config
from fedsim.errors import ConfigError
from fedsim.grid import SimulationGrid
from fedsim.runner import RunResult, run

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "RunResult", "SimulationGrid", "from_dict", "load_config", "run", "__version__"]
