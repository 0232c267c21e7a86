"""Optional experiment tracking: TensorBoard and MLflow, written next to the run's results.

``[report] tensorboard = true`` writes event files to ``<run>/tensorboard``;
``[report] mlflow = true`` logs the flattened config as parameters and every numeric
per-round field as a metric (step = round) to a local MLflow store,
``sqlite:///<run>/mlflow.db`` — no server needed — or to ``[report] mlflow_uri``
(e.g. one sqlite file shared by a sweep's cells: experiment = run name, one MLflow run per
results folder). Both are optional installs
(``pip install "fedsim[tracking]"``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from fedsim.core.errors import ConfigError


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to plain strings (lists and inline tables as JSON): MLflow params, TensorBoard text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not (set(value) == {"name"}):
            out.update(flatten(value, name + "."))
        elif isinstance(value, dict):
            out[name] = str(value.get("name", "{}"))
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value), default=str)
        else:
            out[name] = str(value)
    return out


def numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) and k != "round"}


class Tracker:
    def __init__(self, out: Path, run_name: str, params: dict[str, str], tensorboard: bool, mlflow: bool,
                 mlflow_uri: str = "") -> None:
        self._tb = None
        self._mlflow = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("report.tensorboard", True,
                                  'needs the tensorboard package: pip install "fedsim[tracking]"') from None
            self._tb = SummaryWriter(str(out / "tensorboard"))
            self._tb.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(params.items())))
        if mlflow:
            try:
                import mlflow as mlf
            except ImportError:
                raise ConfigError("report.mlflow", True, 'needs MLflow: pip install "fedsim[tracking]"') from None
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            self.mlflow_uri = mlflow_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
            mlf.set_tracking_uri(self.mlflow_uri)
            mlf.set_experiment(run_name)
            self._run = mlf.start_run(run_name=out.name)
            mlf.log_params({k: str(v)[:500] for k, v in params.items()})
            self._mlflow = mlf

    def log(self, record: dict[str, Any]) -> None:
        values = numeric(record)
        step = int(record.get("round", 0))
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
        if self._mlflow is not None and values:
            self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
