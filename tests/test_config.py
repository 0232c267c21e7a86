"""Scenario validation: every mistake is one line naming the field, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import apply_overrides, from_dict, load_config
from fedsim.core.errors import ConfigError
from tests.clirun import fedsim_main
from tests.conftest import tiny_raw

PRESETS = Path(__file__).resolve().parents[1] / "scenarios" / "presets"


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS.glob("*.toml")))
def test_presets_load_and_round_trip(name: str) -> None:
    cfg = load_config(PRESETS / f"{name}.toml")
    assert from_dict(cfg.to_dict()) == cfg


def test_quickstart_preset_matches_issue() -> None:
    cfg = load_config(PRESETS / "quickstart.toml")
    assert cfg.data.dataset.name == "digits" and cfg.data.num_clients == 20
    assert cfg.data.partitioner.name == "dirichlet" and cfg.data.partitioner.params.alpha == 0.5
    assert cfg.strategy.name == "fedavg" and cfg.strategy.params.args["fraction_train"] * 20 == 10
    assert cfg.run.rounds == 30


def test_synthetic_preset_matches_paper() -> None:
    cfg = load_config(PRESETS / "synthetic.toml")
    p = cfg.data.dataset.params
    assert (p.alpha, p.beta, cfg.data.num_clients) == (1.0, 1.0, 30)
    assert cfg.model.name == "logreg"
    assert (cfg.client.lr, cfg.client.batch_size, cfg.client.local_epochs, cfg.run.rounds) == (0.01, 10, 20, 200)
    args = cfg.strategy.params.args
    assert int(args["fraction_train"] * 30) == 10


@pytest.mark.parametrize(
    ("edit", "field", "fragment"),
    [
        ({"data": {"dataset": "digitz"}}, "data.dataset.name", "known: cifar10, dialects, digits, femnist, file, mnist"),
        ({"data": {"partitioner": {"name": "dirichlet", "alpha": 0}}}, "data.partitioner.alpha", "must be > 0"),
        ({"data": {"partitioner": {"name": "dirichlet", "alpha": -0.5}}}, "data.partitioner.alpha", "must be > 0"),
        ({"data": {"partitioner": "zipf"}}, "data.partitioner.name", "known: dirichlet, flwr_datasets, iid, natural, "),
        ({"model": {"name": "resnet"}}, "model.name", "known: char_lstm, char_transformer, cnn, logreg, mlp"),
        ({"strategy": {"name": "fedfoo"}}, "strategy.name", "known: apfl, bulyan, ditto, fedadagrad"),
        ({"strategy": {"name": "fedavg", "fraction_train": 1.5}}, "strategy.fraction_train", "(0, 1]"),
        ({"strategy": {"name": "fedavg", "fraction_train": 0.0}}, "strategy.fraction_train", "(0, 1]"),
        ({"strategy": {"name": "fedavg", "fraction_trian": 0.5}}, "strategy.fraction_trian", "allowed: fraction_train"),
        ({"strategy": {"name": "fedavg", "fraction_train": "half"}}, "strategy.fraction_train", "must be a number"),
        ({"strategy": {"name": "fedavg", "min_train_nodes": 50}}, "strategy.min_train_nodes", "<= data.num_clients (6)"),
        ({"run": {"rounds": 0}}, "run.rounds", ">= 1"),
        ({"run": {"rounds": 2.5}}, "run.rounds", "must be an integer"),
        ({"run": {"seed": -1}}, "run.seed", ">= 0"),
        ({"data": {"server_test_fraction": 1.0}}, "data.server_test_fraction", "(0, 1)"),
        ({"data": {"num_clients": 0}}, "data.num_clients", ">= 1"),
        ({"client": {"lr": -0.1}}, "client.lr", "> 0"),
        ({"client": {"batch_size": True}}, "client.batch_size", "must be an integer"),
        ({"client": {"app": "not a path"}}, "client.app", "module:attribute"),
        ({"model": {"name": "mlp", "hidden": [0]}}, "model.hidden[0]", ">= 1"),
        ({"model": {"name": "mlp", "hidden": "wide"}}, "model.hidden", "must be a list of integers"),
        ({"executor": {"name": "dask"}}, "executor.name", "serial, ray"),
        ({"run": {"roundz": 3}}, "run.roundz", "unknown key; allowed: name, seed, rounds"),
        ({"extra": {}}, "extra", "unknown key; allowed: model, strategy"),
    ],
)
def test_bad_values_name_field_value_and_rule(edit: dict, field: str, fragment: str) -> None:
    raw = tiny_raw()
    for section, value in edit.items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict) and "name" not in value:
            raw[section] = {**raw[section], **value}
        else:
            raw[section] = value
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    msg = str(info.value)
    assert msg.startswith(f"{field} = "), msg
    assert fragment in msg, msg
    assert "\n" not in msg


def test_missing_required_names() -> None:
    raw = tiny_raw()
    del raw["strategy"]
    with pytest.raises(ConfigError, match=r"^strategy.name = <missing>: required"):
        from_dict(raw)
    raw = tiny_raw()
    del raw["data"]
    with pytest.raises(ConfigError, match=r"^data.dataset.name"):
        from_dict(raw)


def test_more_clients_than_samples_is_a_config_error() -> None:
    from fedsim import runner

    cfg = from_dict(tiny_raw(data={"num_clients": 5000}, strategy={"name": "fedavg", "fraction_train": 0.001}))
    with pytest.raises(ConfigError, match=r"^data.num_clients = 5000: must be <= the \d+ training samples"):
        runner.run(cfg, write=False)


def test_overrides_parse_toml_literals_and_expand_shorthand() -> None:
    raw = apply_overrides({"model": "mlp"}, ["model.hidden=[8, 4]", "run.rounds=7", "run.name=abc",
                                               'data.dataset="digits"', "client.momentum=0.9"])
    assert raw["model"] == {"name": "mlp", "hidden": [8, 4]}
    assert raw["run"] == {"rounds": 7, "name": "abc"}
    assert raw["data"]["dataset"] == "digits" and raw["client"]["momentum"] == 0.9
    with pytest.raises(ConfigError, match=r"^--set = 'rounds': must look like section.key=value"):
        apply_overrides({}, ["rounds"])


def test_malformed_and_missing_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nrounds = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "quickstart", "--set", "data.partitioner.alpha=0"],
        ["run", "quickstart", "--set", "strategy.fraction_train=2"],
        ["run", "quickstart", "--set", "run.rounds=0"],
        ["run", "quickstart", "--set", "data.dataset=imagenet"],
        ["run", "no-such-scenario"],
        ["run", "lossy", "--set", "network.up_mbps.value=-1"],
        ["run", "lossy", "--set", "network.loss.p=1.5"],
        ["run", "stragglers", "--set", "round.deadline=0"],
        ["run", "mobile", "--set", 'devices.availability_trace="missing.csv"'],
        ["run", "quickstart", "--set", 'strategy={name="fedbuff", buffer_size=0}'],
        ["run", "quickstart", "--set", 'strategy={name="no_such_module:Strategy"}'],
        ["run", "quickstart", "--set", 'strategy={name="collections:OrderedDict"}'],
        ["run", "quickstart", "--set", "data.sharing.beta=2"],
        ["run", "quickstart", "--set", "data.sharing.beta=0.1", "--set", "data.sharing.alpha=1.5"],
        ["run", "quickstart", "--set", 'strategy={name="fedprox", proximal_mu=-1}'],
    ],
)
def test_cli_reports_one_line_and_exit_2(args: list[str]) -> None:
    proc = fedsim_main(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
