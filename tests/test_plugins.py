"""The researcher's own world: datasets, partitioners, models, codecs, attacks, policies and
strategies by ``module:attr`` path or by registered name, in this process and in others
(Ray actors, sweep processes, a fresh ``fedsim`` process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fedsim.scenarios.federation import federated_data

import fedsim
from fedsim.config import from_dict
from fedsim.core.errors import ConfigError
from fedsim.engine.metrics import without_wall
from fedsim.runner import check
from tests.clirun import fedsim_main
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
P = "tests.apps.plugins"


def plugin_raw(**sections: Any) -> dict[str, Any]:
    raw = tiny_raw(data={"dataset": {"name": f"{P}:blobs", "n": 240}, "num_clients": 6,
                         "partitioner": {"name": f"{P}:blocks"}},
                   model={"name": f"{P}:TinyNet", "width": 8})
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and "name" not in value else value
    return raw


def fedsim_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


# ------------------------------------------------------------------ by path, in process
def test_dataset_partitioner_and_model_by_path() -> None:
    cfg = from_dict(plugin_raw())
    data = federated_data(cfg.data, cfg.data_seed)
    assert data.num_classes == 3 and data.input_shape == (6,)
    assert len(data.y) + len(data.server_y) == 240  # the server's held-out share, then the clients' pool
    pool = [np.sort(np.concatenate([t.numpy(), e.numpy()])) for t, e in zip(data.train_idx, data.test_idx)]
    expected = np.array_split(np.arange(len(data.y)), 6)  # `blocks`: contiguous, in order, by hand
    assert all((p == q).all() for p, q in zip(pool, expected))
    result = fedsim.run(cfg, write=False)
    assert result.final("central_acc") > 0.6 and result.summary["client_failures"] == 0
    assert set(result.arrays.keys()) == {"body.1.weight", "body.1.bias", "head.weight", "head.bias"}
    assert result.arrays["body.1.weight"].shape == (8, 6)


def test_plugin_arguments_are_checked_against_their_signatures() -> None:
    cases = [
        ({"data": {"dataset": {"name": f"{P}:blobs", "nn": 5}}}, "data.dataset.nn = 5: unknown argument of"),
        ({"data": {"dataset": {"name": f"{P}:blobs", "seed": 5}}}, "data.dataset.seed = 5: is supplied by fedsim"),
        ({"data": {"dataset": {"name": f"{P}:blobs", "n": "many"}}}, "data.dataset.n = 'many': must be an integer"),
        ({"model": {"name": f"{P}:TinyNet", "depth": 2}}, "model.depth = 2: unknown argument of"),
        ({"data": {"partitioner": {"name": f"{P}:blocks", "shufle": True}}}, "data.partitioner.shufle = True"),
    ]
    for edit, start in cases:
        with pytest.raises(ConfigError) as info:
            from_dict(plugin_raw(**edit))
        assert str(info.value).startswith(start), str(info.value)
        assert "\n" not in str(info.value)


def test_bad_paths_are_one_line_errors_naming_the_field() -> None:
    cases = [
        ({"data": {"dataset": {"name": "tests.apps.nope:blobs"}}}, "data.dataset.name", "no module named"),
        ({"data": {"dataset": {"name": f"{P}:blobz"}}}, "data.dataset.name", "has no attribute 'blobz'"),
        ({"model": {"name": f"{P}:blobs"}}, None, "not a torch.nn.Module"),
        ({"data": {"partitioner": {"name": f"{P}:overlapping"}}}, "data.partitioner.name", "more than one client"),
        ({"model": {"name": "mlpp"}}, "model.name", '"package.module:attr"'),
        ({"strategy": {"name": f"{P}:TinyNet"}}, "strategy.name", "not a flwr.serverapp.strategy.Strategy"),
        ({"codec": [{"name": f"{P}:TinyNet"}]}, "codec[0].name", "not a subclass of fedsim.clients.codecs.base.Codec"),
        ({"round": {"policy": f"{P}:blocks"}}, "round.policy", "not a subclass of fedsim.engine.policies.RoundPolicy"),
        ({"data": {"dataset": {"name": "tests.apps:"}}}, "data.dataset.name", "must be a registered name or"),
    ]
    for edit, field, fragment in cases:
        with pytest.raises(ConfigError) as info:
            check(from_dict(plugin_raw(**edit)))
        text = str(info.value)
        assert (field is None or text.startswith(field)) and fragment in text and "\n" not in text, text


def test_a_codec_an_attack_and_a_round_policy_by_path() -> None:
    cfg = from_dict(plugin_raw(codec=[{"name": f"{P}:HalfPrecision", "scale": 2.0}],
                               probe={"attack": {"name": f"{P}:ZeroAttack"}, "rounds": [1], "clients": 1},
                               round={"policy": f"{P}:FastestHalf"},
                               devices={"speed": {"name": "uniform", "low": 0.5, "high": 2.0},
                                        "seconds_per_sample": 0.01},
                               strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0},
                               model={"name": f"{P}:TinyNet", "width": 64}))
    result = fedsim.run(cfg, write=False)
    first = result.history[1]
    assert first["clients_sampled"] == 6 and first["clients_replied"] == 3 and first["stragglers"] == 3
    plain = fedsim.run(cfg.replace(["codec=[]", "probe={}"]), write=False).history[1]
    assert 0.5 < first["bytes_up"] / plain["bytes_up"] < 0.6  # float16 deltas: half the bytes, plus framing
    assert first["probes"] == 1 and first["probe_psnr_mean"] is not None
    with pytest.raises(ConfigError, match="codec\\[0\\].scale = 'x': must be a number"):
        from_dict(plugin_raw(codec=[{"name": f"{P}:HalfPrecision", "scale": "x"}]))


def test_a_users_strategy_is_checked_against_its_own_signature_only() -> None:
    code = textwrap.dedent("""
        from flwr.serverapp.strategy import FedAvg
        class BetaFedAvg(FedAvg):
            def __init__(self, *, beta: float = 0.9, **kwargs):
                super().__init__(**kwargs)
                self.beta = beta
    """)
    import types

    module = types.ModuleType("user_beta_strategy")
    exec(code, module.__dict__)  # noqa: S102 - a user's module, built in the test
    sys.modules["user_beta_strategy"] = module
    try:
        cfg = from_dict(plugin_raw(strategy={"name": "user_beta_strategy:BetaFedAvg", "beta": 0.9,
                                             "fraction_train": 0.5}))
        assert cfg.strategy.params.args["beta"] == 0.9  # not FedTrimmedAvg's "must be in [0, 0.5)"
        with pytest.raises(ConfigError, match=r"strategy.fraction_train = 2.0: must be in \(0, 1\]"):
            from_dict(plugin_raw(strategy={"name": "user_beta_strategy:BetaFedAvg", "fraction_train": 2.0}))
        with pytest.raises(ConfigError, match=r"strategy.beta = 0.9: must be in \[0, 0.5\)"):
            from_dict(plugin_raw(strategy={"name": "fedtrimmedavg", "beta": 0.9}))
    finally:
        sys.modules.pop("user_beta_strategy", None)


# ------------------------------------------------------------------ registered names, other processes
def registered_raw(**edits: Any) -> dict[str, Any]:
    import tests.apps.plugins  # noqa: F401  (registers plugin_blobs, plugin_tinynet, plugin_blocks)

    raw = plugin_raw(**edits)
    raw["data"]["dataset"] = "plugin_blobs"
    raw["data"]["partitioner"] = {"name": "plugin_blocks", "shuffle": True}
    raw["model"] = {"name": "plugin_tinynet", "width": 8}
    return raw


def test_registered_names_list_their_module_for_other_processes() -> None:
    cfg = from_dict(registered_raw())
    assert cfg.plugin_modules() == (P,)
    assert cfg.client_spec().plugins.imports == (P,)
    assert cfg.to_dict()["plugins"]["imports"] == [P]


@pytest.mark.slow
def test_registered_plugins_reach_ray_actors_with_the_same_numbers(ray_session) -> None:
    cfg = from_dict(registered_raw(strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.5}))
    serial = fedsim.run(cfg, write=False)
    ray = fedsim.run(cfg.replace(['executor.name="ray"', "ray.num_actors=2"]), write=False)
    assert all(r["clients_failed"] == 0 and r["eval_clients_failed"] == 0 for r in ray.history)
    assert [without_wall(r) for r in ray.history] == [without_wall(r) for r in serial.history]


#: The top of a user's script: a model and a partitioner registered in its ``__main__``.
SCRIPT_PLUGINS = textwrap.dedent(f"""
    import json, sys
    sys.path.insert(0, {str(ROOT)!r})
    import numpy as np
    from torch import nn
    from fedsim.clients.models import register_model
    from fedsim.scenarios.partitioners import register_partitioner
    from tests.conftest import tiny_raw

    @register_model("script_linear")
    def script_linear(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    @register_partitioner("script_sorted")
    def script_sorted(labels, num_clients):
        return [np.sort(p) for p in np.array_split(np.argsort(labels, kind="stable"), num_clients)]
""")


@pytest.mark.slow
def test_plugins_registered_in_a_script_reach_ray_actors(tmp_path: Path) -> None:
    """A script registers a model and a partitioner in ``__main__`` (not importable
    elsewhere): Ray actors get them by value, with the serial executor's numbers."""
    script = tmp_path / "study.py"
    script.write_text(SCRIPT_PLUGINS + textwrap.dedent("""
        import fedsim

        if __name__ == "__main__":
            raw = tiny_raw(model="script_linear")
            raw["data"]["partitioner"] = {"name": "script_sorted"}
            cfg = fedsim.from_dict(raw)
            a = fedsim.run(cfg, write=False)
            b = fedsim.run(cfg.replace(['executor.name="ray"', "ray.num_actors=2"]), write=False)
            print(json.dumps([[r["central_acc"], r["clients_failed"]] for r in a.history],),
                  json.dumps([[r["central_acc"], r["clients_failed"]] for r in b.history]), sep="\\n")
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    serial, ray = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert serial == ray and all(failed == 0 for _, failed in ray)


@pytest.mark.slow
def test_plugins_registered_in_a_scripts_main_reach_sweep_processes(tmp_path: Path) -> None:
    """A script registers a model and a partitioner in ``__main__`` and runs a 2-process
    sweep from the Python API: each cell process re-imports the script (its run is under
    ``if __name__ == "__main__"``) and finds both; no client fails."""
    script = tmp_path / "study.py"
    script.write_text(SCRIPT_PLUGINS + textwrap.dedent("""
        import tomli_w
        from fedsim.sweeps import load_sweep, run_sweep

        if __name__ == "__main__":
            raw = tiny_raw(model="script_linear", run={"rounds": 2})
            raw["data"]["partitioner"] = {"name": "script_sorted"}
            raw["sweep"] = {"seeds": [0], "parallel": 2, "axes": {"client.lr": [0.05, 0.1]}}
            with open("study.toml", "wb") as fh:
                tomli_w.dump(raw, fh)
            run_sweep(load_sweep("study.toml"), "sweep", yes=True, parallel=2)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [c["status"] for c in manifest["cells"]] == ["done"] * 2, manifest["cells"]
    for cell in manifest["cells"]:
        summary = json.loads((tmp_path / "sweep" / cell["dir"] / "summary.json").read_text())
        assert summary["client_failures"] == 0 and summary.get("stopped") is None, (cell, summary)
        assert summary["final_central_acc"] is not None


@pytest.mark.slow
def test_registered_plugins_reach_sweep_processes(tmp_path: Path) -> None:
    import tomli_w

    raw = registered_raw()
    raw["plugins"] = {"imports": [P]}
    raw["sweep"] = {"seeds": [0, 1], "parallel": 2, "axes": {"client.lr": [0.05, 0.1]}}
    path = tmp_path / "study.toml"
    path.write_text(tomli_w.dumps(raw))
    proc = fedsim_cli("sweep", str(path), "--out", str(tmp_path / "sweep"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [c["status"] for c in manifest["cells"]] == ["done"] * 4
    for cell in manifest["cells"]:  # every client of every cell found the plug-ins (none failed)
        summary = json.loads((tmp_path / "sweep" / cell["dir"] / "summary.json").read_text())
        assert summary["client_failures"] == 0 and summary.get("stopped") is None, (cell, summary)


def test_fedsim_check_validates_plugins_by_path_and_a_misspelled_path_exits_2() -> None:
    ok = fedsim_main("check", "quickstart", "--set", f'data.dataset={{name="{P}:blobs", n=200}}',
                     "--set", f'model={{name="{P}:TinyNet", width=4}}',
                     "--set", f'data.partitioner={{name="{P}:blocks"}}', "--set", "data.num_clients=4")
    assert ok.returncode == 0, ok.stderr
    assert "ok - 4 clients" in ok.stdout
    bad = fedsim_main("check", "quickstart", "--set", f'model={{name="{P}:TinyNett"}}')
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("fedsim: error: model.name = 'tests.apps.plugins:TinyNett': module "), bad.stderr


# ------------------------------------------------------------------ a user project of its own
@pytest.mark.slow
def test_a_user_project_with_its_own_clients_package(tmp_path: Path) -> None:
    """fedsim installs no generic top-level names: a project's own ``clients`` package works."""
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "__init__.py").write_text("SITES = 4\n")
    (tmp_path / "clients" / "data.py").write_text(textwrap.dedent("""
        import numpy as np
        from clients import SITES

        def load(n: int = 200, seed: int = 0):
            rng = np.random.default_rng(seed)
            x = rng.normal(size=(n, 5))
            return {"x": x, "y": (x[:, 0] > 0).astype(int), "client_ids": np.arange(n) % SITES}
    """))
    (tmp_path / "study.toml").write_text(textwrap.dedent("""
        [run]
        rounds = 2
        [data]
        dataset = { name = "clients.data:load", n = 200 }
        partitioner = "natural"
        num_clients = 4
        [model]
        name = "logreg"
        [strategy]
        name = "fedavg"
        [report]
        progress = false
        plots = false
    """))
    accuracy = []
    for executor in ("serial", "ray"):
        proc = fedsim_cli("run", "study.toml", "--set", f'executor.name="{executor}"', "--set", "ray.num_actors=2",
                          "--out", f"out-{executor}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / f"out-{executor}" / "summary.json").read_text())
        assert summary["client_failures"] == 0 and summary["rounds"] == 2
        accuracy.append(summary["final_central_acc"])
    assert accuracy[0] == accuracy[1] and accuracy[0] > 0.3


# ------------------------------------------------------------------ the dataset contract
def test_dataset_return_values_are_converted_or_refused_in_one_line() -> None:
    from fedsim.scenarios.datasets.base import as_dataset

    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.array([0, 1, 2, 0, 1, 2])
    ds = as_dataset((x, y), "t")
    assert ds.x.dtype == np.float32 and ds.num_classes == 3 and ds.test_x is None
    ds = as_dataset((torch.tensor(x), torch.tensor(y), x[:2], y[:2]), "t")
    assert ds.test_x.shape == (2, 2) and list(ds.test_y) == [0, 1]
    ds = as_dataset({"x": x, "y": y, "client_ids": ["a", "b", "a", "b", "c", "c"], "num_classes": 5}, "t")
    assert list(ds.groups) == [0, 1, 0, 1, 2, 2] and ds.num_classes == 5
    tds = torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    ds = as_dataset(tds, "t")
    assert ds.x.shape == (6, 2) and list(ds.y) == list(y)
    for bad, fragment in [((x, y[:3]), "one label per sample (6)"), ({"x": x}, "without 'x' and 'y'"),
                          ((x, y - 1), "negative labels"), ((x, y + 0.5), "integer class labels"),
                          ({"x": x, "y": y, "labels": y}, "unknown key(s) ['labels']"), ("data", "returned a str"),
                          ({"x": x, "y": y, "num_classes": 2}, "labels go up to 2, but num_classes is 2"),
                          ((np.full((6, 2), np.nan), y), "NaN or Inf")]:
        with pytest.raises(ConfigError) as info:
            as_dataset(bad, "t")
        assert fragment in str(info.value) and str(info.value).startswith("data.dataset.name = 't'"), str(info.value)


# ------------------------------------------------------------------ seeds
def test_the_data_seed_fixes_the_data_and_the_run_seed_the_simulation() -> None:
    raw = tiny_raw(data={"dataset": {"name": "synthetic", "num_devices": 6, "samples_per_device": 40},
                         "partitioner": "natural", "seed": 11})
    a = from_dict(raw)
    b = a.replace(["run.seed=4"])
    c = a.replace(["data.seed=12"])
    da, db, dc = (federated_data(cfg.data, cfg.data_seed) for cfg in (a, b, c))
    assert torch.equal(da.x, db.x) and all(torch.equal(p, q) for p, q in zip(da.train_idx, db.train_idx))
    assert not torch.equal(da.x, dc.x)
    ra, rb = fedsim.run(a, write=False), fedsim.run(b, write=False)
    assert ra.history[-1]["central_acc"] != rb.history[-1]["central_acc"] or \
        ra.history[-1]["train_loss"] != rb.history[-1]["train_loss"]
    assert from_dict(tiny_raw()).data_seed == 3  # unset: the run seed, as before


# ------------------------------------------------------------------ a run that cannot work
def test_every_client_failing_with_the_same_configuration_error_stops_the_run(tmp_path: Path) -> None:
    cfg = from_dict(tiny_raw(client={"app": "tests.apps.failing:app"}, run={"rounds": 6}))
    result = fedsim.run(cfg, out_dir=tmp_path / "run")
    assert result.stopped is not None and result.stopped.startswith("round 1: every client failed with the same")
    assert "ModuleNotFoundError: No module named 'my_missing_dependency'" in result.stopped
    assert len(result.history) == 2  # round 0 and round 1: kept, and nothing after
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped"] == result.stopped
    from safetensors.numpy import load_file

    model = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert len(model) == 4  # the initial global model, not an empty record


def test_rounds_that_aggregate_nothing_stop_the_run_and_keep_the_initial_model(tmp_path: Path) -> None:
    cfg = from_dict(tiny_raw(devices={"seconds_per_sample": 10.0}, round={"policy": "deadline", "deadline": 1.0},
                             server={"max_empty_rounds": 2}, run={"rounds": 8}))
    result = fedsim.run(cfg, out_dir=tmp_path / "run")
    assert result.stopped is not None and "no training reply was aggregated in 2 rounds in a row" in result.stopped
    assert [r["clients_replied"] for r in result.history[1:]] == [0, 0]
    initial = fedsim.run(cfg.replace(["run.rounds=1"]), write=False)
    assert all(np.array_equal(result.arrays[k].numpy(), initial.arrays[k].numpy()) for k in result.arrays)
    assert len(result.arrays) == 4
    cli = fedsim_main("run", "quickstart", "--set", "devices.seconds_per_sample=10.0", "--set",
                     'round.policy="deadline"', "--set", "round.deadline=1.0", "--set", "server.max_empty_rounds=1",
                      "--set", "report.progress=false", "--out", str(tmp_path / "cli"))
    assert cli.returncode == 3, cli.stderr
    assert "stopped" in cli.stdout or "stopped" in cli.stderr


def test_a_device_distribution_and_a_loss_model_by_path() -> None:
    from fedsim.scenarios.devices import DeviceModel
    from fedsim.scenarios.network import LinkModel

    cfg = from_dict(plugin_raw(devices={"speed": {"name": f"{P}:halves", "fast": 3.0}},
                               network={"loss": {"name": f"{P}:every_other"}, "up_mbps": {"name": "constant",
                                                                                         "value": 1.0}}))
    speeds = DeviceModel(cfg.devices, 6, 0).speeds
    assert list(speeds) == [3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    links = LinkModel(cfg.network, 6, 0)
    # 2 packets of 1500 B: the model loses the first transmission of every batch, so packet 1
    # gets through at once and packet 0 is lost in all 1 + 8 (network.max_retries) attempts.
    t = links.transfer(0, 3000, "up", 1, "train")
    assert (t.packets, t.sent, t.retransmissions, t.lost_events, list(t.lost)) == (2, 10, 8, 9, [0])
    assert not t.complete
    with pytest.raises(ConfigError, match=r"devices.speed.name = 'tests.apps.plugins:negative': drew -1; "
                                          r"this quantity must be > 0"):
        DeviceModel(from_dict(plugin_raw(devices={"speed": {"name": f"{P}:negative"}})).devices, 6, 0)
    with pytest.raises(ConfigError, match=r"devices.speed.fast = 'x': must be a number"):
        from_dict(plugin_raw(devices={"speed": {"name": f"{P}:halves", "fast": "x"}}))


def test_mistakes_in_the_users_own_code_are_one_line_before_anything_runs() -> None:
    cases = [
        ({"model": {"name": f"{P}:WrongOutput"}}, "model.name", "gives outputs of shape (2, 7) for inputs of shape "
                                                                "(2, 6); expected (2, 3): one logit per class"),
        ({"model": {"name": f"{P}:WrongInput"}}, "model.name", "fails on inputs of shape (2, 6) (RuntimeError"),
        ({"model": {"name": f"{P}:NoParameters"}}, "model.name", "has no trainable parameters"),
        ({"data": {"dataset": {"name": f"{P}:from_file", "path": "nope.csv"}}}, "data.dataset.name",
         "raised FileNotFoundError: nope.csv not found. at plugins.py:"),
        ({"data": {"partitioner": {"name": f"{P}:first_gets_nothing"}}}, "data.partitioner.name",
         "gives client 0 no samples"),
        ({"data": {"partitioner": {"name": f"{P}:y_not_labels"}}}, "data.partitioner.y = None",
         "(fedsim passes groups, labels, num_clients, rng by name)"),
    ]
    for edit, field, fragment in cases:
        with pytest.raises(ConfigError) as info:
            check(from_dict(plugin_raw(**edit)))
        text = str(info.value)
        assert text.startswith(field) and fragment in text and "\n" not in text, text
