"""A scenario across a two-node local Ray cluster gives the serial executor's numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedsim
from fedsim.config import from_dict
from fedsim.engine.metrics import without_wall
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_node_cluster_matches_serial() -> None:
    raw = tiny_raw(run={"name": "cluster", "seed": 11, "rounds": 3})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "two_node_cluster.py"), json.dumps(raw)],
                          capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["cluster_nodes"]) == 2
    assert sorted(set(out["actor_nodes"])) == sorted(out["cluster_nodes"])  # one actor on each node
    serial = fedsim.run(from_dict(raw), write=False)
    assert [without_wall(r) for r in out["history"]] == [without_wall(r) for r in serial.history]
