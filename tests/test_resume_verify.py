"""Resume verifies what it continues: a changed scenario, a damaged checkpoint or crafted
metadata is refused with one line; intended changes are named with --resume-with-changes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from safetensors import safe_open
from safetensors.numpy import save_file

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.engine import checkpoint
from fedsim.report import CONFIG, read_metrics
from fedsim.runner import resume
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-round run's folder as it was after round 2 (checkpoint and metrics cut there)."""
    folder = tmp_path_factory.mktemp("resume") / "run"
    raw = tiny_raw(run={"name": "rv", "seed": 2, "rounds": 2, "checkpoint_every": 1},
                   strategy={"name": "fedadam", "fraction_train": 0.5, "fraction_evaluate": 0.0})
    fedsim.run(fedsim.from_dict(raw), out_dir=folder)
    return folder


@pytest.fixture
def run_dir(stopped_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(stopped_run, tmp_path / "run")
    return tmp_path / "run"


def edit_config(folder: Path, section: str, key: str, value: Any) -> None:
    import tomllib

    raw = tomllib.loads((folder / CONFIG).read_text())
    raw[section][key] = value
    (folder / CONFIG).write_text(tomli_w.dumps(raw))


def craft(folder: Path, edit: Any) -> None:
    """Rewrite the checkpoint's metadata (digests untouched: what a forger or a bug would do)."""
    path = folder / checkpoint.FILE
    with safe_open(str(path), framework="numpy") as fh:
        meta = json.loads(fh.metadata()["fedsim"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    edit(meta, tensors)
    save_file(tensors, str(path), metadata={"fedsim": json.dumps(meta)})


def refused(folder: Path, match: str, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as info:
        resume(folder, **kw)
    assert "\n" not in str(info.value)
    return info.value


def test_a_changed_field_is_refused_naming_it(run_dir: Path) -> None:
    edit_config(run_dir, "client", "lr", 0.5)
    err = refused(run_dir, r"client.lr = 0.5: changed since the checkpoint \(was 0.1\)")
    assert err.field == "client.lr" and "--resume-with-changes client.lr" in str(err)
    edit_config(run_dir, "run", "seed", 9)
    refused(run_dir, r"client.lr = 0.5: changed since the checkpoint \(was 0.1\) \(and 1 more: run.seed\)")


def test_rounds_cannot_go_below_the_checkpoint(run_dir: Path) -> None:
    edit_config(run_dir, "run", "rounds", 1)
    refused(run_dir, r"run.rounds = 1: is below the checkpoint's round 2", accept=["run.rounds"])


def test_named_changes_are_accepted_and_recorded(run_dir: Path) -> None:
    result = resume(run_dir, overrides=["run.rounds=3"], accept=["run.rounds"])
    assert result.summary["rounds"] == 3 and result.summary["resumed_with_changes"] == {"run.rounds": [2, 3]}
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1, 2, 3]
    assert "rounds = 3" in (run_dir / CONFIG).read_text()  # the folder now describes the run it holds


def test_a_model_that_does_not_fit_is_one_line_even_when_named(run_dir: Path) -> None:
    edit_config(run_dir, "model", "hidden", [32])
    refused(run_dir, r"model arrays do not fit the scenario's model: .* is \(16, 64\) in the checkpoint, "
                     r"\(32, 64\) now", accept=["model"])


def test_a_flipped_tensor_byte_is_refused(run_dir: Path) -> None:
    path = run_dir / checkpoint.FILE
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # the last tensor's bytes; the header stays intact
    path.write_bytes(bytes(raw))
    refused(run_dir, "tensor bytes do not match the digest")


def test_a_crafted_round_is_refused_before_anything_is_allocated(run_dir: Path) -> None:
    original = (run_dir / checkpoint.FILE).read_bytes()
    craft(run_dir, lambda meta, _: meta.update(round=1_000_000_000))
    refused(run_dir, "round 1000000000 is beyond its own scenario's run.rounds = 2")
    (run_dir / checkpoint.FILE).write_bytes(original)
    craft(run_dir, lambda meta, _: meta.update(round=-1))
    refused(run_dir, "round -1 is outside")


def test_crafted_strategy_state_cannot_set_undeclared_attributes(run_dir: Path) -> None:
    original = (run_dir / checkpoint.FILE).read_bytes()
    for name, spec, match in [
        ("aggregate_train", {"kind": "plain", "value": 1}, "names 'aggregate_train', which FedAdam does not declare"),
        ("__class__", {"kind": "json", "value": {}}, "names '__class__'"),
        ("eta", {"kind": "plain", "value": "fast"}, "strategy state 'eta' holds a str where FedAdam has a float"),
    ]:
        (run_dir / checkpoint.FILE).write_bytes(original)
        craft(run_dir, lambda meta, _, n=name, v=spec: meta["strategy"].update({n: v}))
        refused(run_dir, match)


@pytest.mark.parametrize("edit, match", [
    (lambda m, t: m.update(round="2"), "'round' is missing or not a int"),
    (lambda m, t: m.pop("global"), "'global' is missing"),
    (lambda m, t: m["strategy"].update(m_t={"kind": "pickle"}), "'m_t' has no known kind"),
    (lambda m, t: m["global"].append("ghost"), "tensor 'global/ghost' is named but absent"),
    (lambda m, t: m["strategy"].update(m_t={"kind": "list", "n": 10**9}), "'m_t' has a bad length"),
    (lambda m, t: m["scenario"]["client"].update(lr=0.7), "scenario does not match the digest"),
    (lambda m, t: m["grid"].update(exchanges="many"), "grid state unusable"),
    (lambda m, t: t.update({"global/extra": np.zeros(2, np.float32)}), "tensor bytes do not match"),
    (lambda m, t: m.update(format=1), "has checkpoint format 1; this fedsim reads 2"),
])
def test_crafted_metadata_is_refused_by_schema(run_dir: Path, edit: Any, match: str) -> None:
    craft(run_dir, edit)
    refused(run_dir, match)


def test_cli_refusal_is_one_line_exit_2_and_changes_go_through_when_named(run_dir: Path) -> None:
    edit_config(run_dir, "client", "lr", 0.5)
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", "--resume", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("fedsim: error: client.lr = 0.5: changed since the checkpoint")
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", "--resume", str(run_dir), "--set",
                           "run.rounds=3", "--resume-with-changes", "client.lr,run.rounds"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_with_changes"] == {"client.lr": [0.1, 0.5], "run.rounds": [2, 3]}
