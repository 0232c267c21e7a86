"""Checkpoint/resume: a run killed with SIGKILL and resumed equals an uninterrupted one, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from safetensors.numpy import load_file

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.engine import checkpoint
from fedsim.engine.metrics import without_wall
from fedsim.report import read_metrics
from fedsim.runner import resume
from tests.conftest import tiny_config, tiny_raw

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoint_holds_strategy_moments_node_state_and_counters(tmp_path: Path) -> None:
    cfg = tiny_config(run={"name": "ck", "seed": 1, "rounds": 4, "checkpoint_every": 2},
                      strategy={"name": "fedadam", "fraction_train": 0.5, "fraction_evaluate": 0.0},
                      codec=[{"name": "topk", "k": 0.1, "error_feedback": "classic"}])
    fedsim.run(cfg, out_dir=tmp_path / "run")
    ck = checkpoint.load(tmp_path / "run")
    assert ck.round == 4
    assert {"m_t", "v_t"} <= set(ck.strategy["plain"])  # FedOpt's moments
    assert any(k.startswith("strategy/m_t/") for k in ck.strategy["tensors"])
    assert ck.nodes and all(len(state) > 0 for state in ck.nodes.values())  # error-feedback residuals
    assert ck.grid["exchanges"] > 0 and ck.grid["last_round"] == 4
    model = load_file(str(tmp_path / "run" / "model.safetensors"))
    for k, v in ck.arrays.items():
        assert np.array_equal(v.numpy(), model[k])


def test_checkpoint_file_is_not_pickle_and_bad_files_are_config_errors(tmp_path: Path) -> None:
    fedsim.run(tiny_config(run={"name": "ck", "seed": 1, "rounds": 2, "checkpoint_every": 1}), out_dir=tmp_path / "r")
    raw = (tmp_path / "r" / checkpoint.FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["__metadata__"]["fedsim"]  # safetensors: JSON header + raw tensors
    (tmp_path / "r" / checkpoint.FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as info:
        resume(tmp_path / "r")
    assert info.value.field == "--resume" and "not a readable fedsim checkpoint" in str(info.value)
    with pytest.raises(ConfigError, match="no config.toml"):
        resume(tmp_path / "nowhere")


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedsim.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, codec", [
    ({"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.5}, []),
    ({"name": "fedadam", "fraction_train": 0.5, "fraction_evaluate": 0.5}, [{"name": "topk", "k": 0.1}]),
    # asynchronous: replies in flight, the buffer and staleness bookkeeping are checkpointed
    ({"name": "fedbuff", "concurrency": 4, "buffer_size": 2, "fraction_evaluate": 0.0}, []),
], ids=["fedavg", "fedadam-topk", "fedbuff"])
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, strategy: dict, codec: list) -> None:
    raw = tiny_raw(run={"name": "ck", "seed": 7, "rounds": 16, "checkpoint_every": 3}, strategy=strategy,
                   devices={"speed": {"name": "lognormal", "mu": 0.0, "sigma": 1.0}, "seconds_per_sample": 0.01})
    raw["codec"] = codec
    scenario = tmp_path / "s.toml"
    scenario.write_bytes(tomli_w.dumps(raw).encode())

    whole = cli("run", str(scenario), "--out", str(tmp_path / "whole"))  # the uninterrupted run, alongside
    out = tmp_path / "killed"
    proc = cli("run", str(scenario), "--out", str(out), start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= 8:  # round 7 recorded: checkpoint at 6
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "summary.json").exists()  # it really died mid-run
    done_before = len(read_metrics(out))
    assert checkpoint.load(out).round < 16
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    again = cli("run", "--resume", str(out))
    assert again.wait(timeout=300) == 0, again.stderr.read()
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert [without_wall(r) for r in read_metrics(out)] == [without_wall(r) for r in read_metrics(tmp_path / "whole")]
    assert done_before > 3


def test_resume_cli_errors_are_one_line(tmp_path: Path) -> None:
    proc = cli("run", "quickstart", "--resume", str(tmp_path))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and err.startswith("fedsim: error: --resume")
