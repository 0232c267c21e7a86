"""Shared fixtures: tiny scenarios and one Ray instance per test session."""

from __future__ import annotations

import os
from typing import Any

import pytest

from fedsim.config import Config, from_dict

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def tiny_raw(**sections: Any) -> dict[str, Any]:
    """A small digits scenario (fast), with per-section overrides."""
    raw: dict[str, Any] = {
        "run": {"name": "tiny", "seed": 3, "rounds": 3},
        "data": {"dataset": "digits", "num_clients": 6, "partitioner": {"name": "dirichlet", "alpha": 1.0}},
        "model": {"name": "mlp", "hidden": [16]},
        "client": {"local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "strategy": {"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.5},
        "report": {"progress": False, "plots": False},
    }
    for key, value in sections.items():
        raw.setdefault(key, {})
        if isinstance(value, dict) and isinstance(raw[key], dict) and "name" not in value:
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def tiny_config(**sections: Any) -> Config:
    return from_dict(tiny_raw(**sections))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for all tests that need it (fedsim reuses an initialized Ray)."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *([old] if old else [])])
    from fedsim.engine.executors.ray import _loopback_only

    with _loopback_only(True):  # as fedsim starts its own: every Ray process on 127.0.0.1
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
