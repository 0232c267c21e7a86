"""CLI polish: "did you mean" suggestions, preset descriptions, `fedsim check` on a sweep
file, settings that have no effect because of another, time-budget partial work."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fedsim.clients.settings import ClientSection
from fedsim.scenarios.devices import DevicesSection
from fedsim.scenarios.network import NetworkSection
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.cli import main
from fedsim.config import list_presets, load_config, preset_description
from fedsim.core.errors import ConfigError, did_you_mean
from fedsim.core.schema import parse
from fedsim.engine.policies import RoundSection
from fedsim.engine.system import OK, Dispatch, SystemModel
from tests.conftest import tiny_config

REGISTRY_FORM = ('your own: "package.module:attr" (importable from the working directory or [plugins] paths), '
                 "or a name registered by a module in [plugins] imports")


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ did you mean
def test_did_you_mean() -> None:
    assert did_you_mean("fraction_trian", ["fraction_train", "fraction_evaluate"]) == "; did you mean fraction_train?"
    assert did_you_mean("MPL", ["cnn", "mlp"]) == "; did you mean mlp?"  # case ignored
    assert did_you_mean("zzz", ["cnn", "mlp"]) == ""  # nothing close: no suggestion
    assert did_you_mean("mlp", ["mlp"]) == ""  # the word itself is no suggestion
    assert did_you_mean(3, ["3"]) == "" and did_you_mean("", ["a"]) == ""
    e = ConfigError("model.name", "mpl", "unknown model; known: cnn, mlp", choices=["cnn", "mlp"])
    assert str(e) == "model.name = 'mpl': unknown model; known: cnn, mlp; did you mean mlp?"
    assert e.allowed == "unknown model; known: cnn, mlp; did you mean mlp?"  # kept when re-raised (sweeps)


def test_misspelled_preset_name(capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, ["run", "quickstrat"])
    assert line == (f"fedsim: error: SCENARIO = 'quickstrat': no such file, and not a preset "
                    f"({', '.join(list_presets())}); did you mean quickstart?")
    assert error_line(capsys, ["check", "benchmarks/codec"]).endswith("; did you mean benchmarks/codecs?")
    assert "did you mean" not in error_line(capsys, ["check", "no-such-thing-at-all"])


def test_misspelled_key_in_set_and_in_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    keys = "app, local_epochs, local_steps, batch_size, lr, momentum, weight_decay, threads, grad_bits, autocast, " \
           "device, timeout_s, local_dp, app_config"
    assert error_line(capsys, ["check", "quickstart", "--set", "client.local_epocs=2"]) == \
        f"fedsim: error: client.local_epocs = 2: unknown key; allowed: {keys}; did you mean local_epochs?"
    scenario = tmp_path / "typo.toml"
    scenario.write_text('[data]\ndataset = "digits"\n[model]\nname = "logreg"\n[strategy]\nname = "fedavg"\n'
                        "[client]\nbatch_sise = 8\n")
    assert error_line(capsys, ["check", str(scenario)]) == \
        f"fedsim: error: client.batch_sise = 8: unknown key; allowed: {keys}; did you mean batch_size?"
    # A misspelled section, and a registry plug-in's own parameter.
    assert error_line(capsys, ["check", "quickstart", "--set", "devics.speed=1"]).endswith(
        "unknown key; allowed: model, strategy, run, data, client, server, devices, network, energy, round, "
        "selection, codec, probe, faults, byzantine, executor, ray, report, privacy, plugins; did you mean devices?")
    assert error_line(capsys, ["check", "quickstart", "--set", "data.partitioner.alpah=1"]) == \
        "fedsim: error: data.partitioner.alpah = 1: unknown key; allowed: alpha, min_size, max_tries; " \
        "did you mean alpha?"
    assert error_line(capsys, ["check", "quickstart", "--set", "client.zzz=1"]) == \
        f"fedsim: error: client.zzz = 1: unknown key; allowed: {keys}"


@pytest.mark.parametrize(("edit", "start", "suggestion"), [
    ({"model": {"name": "mpl"}}, "model.name = 'mpl': unknown model; known: ", "mlp"),
    ({"data": {"dataset": "digts", "num_clients": 6}}, "data.dataset.name = 'digts': unknown dataset; known: ",
     "digits"),
    ({"data": {"dataset": "digits", "num_clients": 6, "partitioner": "dirichlt"}},
     "data.partitioner.name = 'dirichlt': unknown partitioner; known: ", "dirichlet"),
    ({"strategy": {"name": "fedavgg"}}, "strategy.name = 'fedavgg': unknown strategy; known: ", "fedavg"),
    ({"codec": [{"name": "topkk"}]}, "codec[0].name = 'topkk': unknown codec; known: ", "topk"),
    ({"probe": {"attack": "analytc"}}, "probe.attack.name = 'analytc': unknown attack; known: ", "analytic"),
    ({"round": {"policy": "dedline"}}, "round.policy = 'dedline': unknown round policy; known: ", "deadline"),
    ({"selection": {"policy": "oortt"}}, "selection.policy = 'oortt': unknown selection policy; known: ", "oort"),
    ({"network": {"loss": {"name": "gilbert"}}}, "network.loss.name = 'gilbert': unknown loss model; known: ",
     "gilbert_elliott"),
])
def test_misspelled_registry_name(edit: dict, start: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(**edit)
    text = str(info.value)
    assert text.startswith(start) and text.endswith(f"; {REGISTRY_FORM}; did you mean {suggestion}?"), text


@pytest.mark.parametrize(("setting", "start", "suggestion"), [
    ("strategy.fraction_trian=0.2", "strategy.fraction_trian = 0.2: unknown argument of fedavg", "fraction_train"),
    ('strategy={name="fedprox", proximal_muu=2}', "strategy.proximal_muu = 2: unknown argument of fedprox",
     "proximal_mu"),
    ('data.partitioner={name="dirichlet", alpah=0.5}', "data.partitioner.alpah = 0.5: unknown", "alpha"),
])
def test_misspelled_argument(capsys: pytest.CaptureFixture[str], setting: str, start: str, suggestion: str) -> None:
    line = error_line(capsys, ["check", "quickstart", "--set", setting])
    assert line.startswith(f"fedsim: error: {start}") and line.endswith(f"; did you mean {suggestion}?"), line


def test_misspelled_choice() -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(executor={"name": "seral"})
    assert str(info.value) == "executor.name = 'seral': must be one of serial, ray, vectorized; did you mean serial?"
    with pytest.raises(ConfigError) as info:
        tiny_config(byzantine={"attack": "signflip"})
    assert str(info.value).endswith("must be one of sign_flip, scaled, label_flip, random; did you mean sign_flip?")


# ---------------------------------------------------------------------- presets
def test_presets_lists_each_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = list_presets()
    width = max(map(len, names))
    assert [line[:width].rstrip() for line in lines] == names
    assert all(line[width:width + 2] == "  " and line[width + 2] != " " for line in lines)  # one aligned column
    assert f"{'quickstart':<{width}}  Quickstart: scikit-learn digits over 20 clients with label skew, " \
           "Flower's FedAvg." in lines
    assert f"{'benchmarks/codecs':<{width}}  Sweep: update codecs (fp16, int8, QSGD, top-k) against accuracy, " \
           "bytes and time." in lines
    for name in names:  # every shipped preset says what it is, in one line
        assert 10 < len(preset_description(name)) <= 100, name


def test_presets_without_a_description(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    import fedsim.cli
    import fedsim.config

    files = {"bare": "[run]\nname = 'bare'\n", "blank-comment": "#\n\n[run]\n# not a description\n",
             "later": "\n# A one-liner.\n# More words.\n[run]\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.toml").write_text(text)
    monkeypatch.setattr(fedsim.cli, "list_presets", lambda: sorted(files))
    monkeypatch.setattr(fedsim.config, "preset_path", lambda name: tmp_path / f"{name}.toml")
    assert main(["presets"]) == 0
    assert capsys.readouterr().out.splitlines() == ["bare", "blank-comment", "later          A one-liner."]


# ------------------------------------------------------------ check on a sweep
SWEEP = """
[run]
name = "tiny"
rounds = 1
[data]
dataset = "digits"
num_clients = 4
[model]
name = "logreg"
[strategy]
name = "fedavg"
[sweep]
seeds = [0, 1]
[sweep.axes]
{axis}
"""


def test_check_validates_every_cell_of_a_sweep(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                                               tmp_path: Path) -> None:
    ok = tmp_path / "ok.toml"
    ok.write_text(SWEEP.format(axis='"devices.straggler_epochs" = [0, 2]'))
    with caplog.at_level(logging.INFO, logger="fedsim"):
        assert main(["check", str(ok)]) == 0
    assert capsys.readouterr().out == "tiny: 4 cells ok (2 distinct set-ups checked; `fedsim sweep` runs them)\n"
    assert "running its base scenario" not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        ("devices.straggler_epochs = 2: has no effect: devices.straggler_fraction is 0 (no client straggles) "
         "(sweep cell devices.straggler_epochs=2)")]  # once: the seeds share a set-up
    # A cell whose configuration is valid but whose set-up fails (more clients than
    # samples: only the data split finds it): the axis and the cell are named.
    bad = tmp_path / "bad.toml"
    bad.write_text(SWEEP.format(axis='"data.num_clients" = [4, 3000]'))
    assert error_line(capsys, ["check", str(bad)]) == (
        "fedsim: error: sweep.axes.data.num_clients = 3000: must be <= the 1438 training samples available "
        "(sweep cell data.num_clients=3000)")
    # A configuration error in a cell (caught while expanding the grid) names its axis too.
    typo = tmp_path / "typo.toml"
    typo.write_text(SWEEP.format(axis='"model.name" = ["logreg", "mpl"]'))
    line = error_line(capsys, ["check", str(typo)])
    assert line.startswith("fedsim: error: sweep.axes.model.name = 'mpl': unknown model;"), line
    assert line.endswith("; did you mean mlp?")


# ------------------------------------------------------- settings without effect
def test_settings_that_have_no_effect_are_named() -> None:
    wait_all = "round.policy 'wait_all'"
    cases = [
        ({"round": {"deadline": 5.0}},
         (f'round.deadline = 5.0: has no effect: {wait_all} waits for every reply (round.policy = "deadline" drops '
          'late replies, "partial_work" also gives clients a time budget)')),
        ({"round": {"over_select": 0.5}},
         (f'round.over_select = 0.5: has no effect: {wait_all} samples no extra clients (round.policy = '
          '"over_select" does)')),
        ({"devices": {"straggler_fraction": 0.5}},  # tiny_config: client.local_epochs = 1
         (f"devices.straggler_fraction = 0.5: has no effect: under {wait_all} a straggler is kept and runs fewer "
          'local epochs, but client.local_epochs is 1 (round.policy = "deadline" drops stragglers)')),
        ({"devices": {"straggler_fraction": 0.5}, "client": {"local_epochs": 2, "local_steps": 5}},
         (f"devices.straggler_fraction = 0.5: has no effect: under {wait_all} a straggler is kept and runs fewer "
          'local epochs, but client.local_steps is set (epochs do not limit the work) (round.policy = "deadline" '
          "drops stragglers)")),
        ({"devices": {"straggler_epochs": 3}},
         "devices.straggler_epochs = 3: has no effect: devices.straggler_fraction is 0 (no client straggles)"),
        ({"devices": {"straggler_fraction": 0.5, "straggler_epochs": 1},
          "round": {"policy": "deadline", "deadline": 3.0}},
         ("devices.straggler_epochs = 1: has no effect: round.policy 'deadline' drops stragglers rather than "
          "running their fewer epochs")),
        ({"ray": {"num_actors": 2}},
         'ray.num_actors = 2: has no effect: executor.name is \'serial\' ([ray] configures executor.name = "ray")'),
        ({"energy": {"tail_s": 3.0}}, "energy.tail_s = 3.0: has no effect: energy.enabled is false"),
    ]
    for edit, expected in cases:
        assert tiny_config(**edit).warnings() == [expected], edit
    # Where the other setting is there, nothing is said.
    for edit in ({"round": {"policy": "deadline", "deadline": 5.0}},
                 {"round": {"deadline": 5.0}, "selection": {"policy": "oort"}},  # Oort's preferred round duration
                 {"devices": {"straggler_fraction": 0.5}, "client": {"local_epochs": 2}},  # fewer epochs: an effect
                 {"devices": {"straggler_fraction": 0.5}, "round": {"policy": "deadline", "deadline": 3.0}},
                 {"round": {"policy": "over_select", "over_select": 0.5}},
                 {"executor": {"name": "ray"}, "ray": {"num_actors": 2}},
                 {"energy": {"enabled": True, "tail_s": 3.0}}):
        assert tiny_config(**edit).warnings() == [], edit


def test_check_and_run_say_it(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        cfg = load_config("quickstart", ["round.deadline=5"])
    assert [r.getMessage() for r in caplog.records] == cfg.warnings() and len(cfg.warnings()) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        assert main(["check", "quickstart", "--set", "run.rounds=1", "--set", "round.deadline=5"]) == 0
    assert caplog.records[0].getMessage().startswith("round.deadline = 5.0: has no effect: ")
    assert capsys.readouterr().out.startswith("quickstart: ok - 20 clients")


# -------------------------------------------------- time-budget partial work
def test_time_budget_partial_work_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client given a time budget (partial_work) stops at the steps that fit: by hand,
    budget 0.5 s at 0.01 s per sample and batch 8 is 50 samples = 6 steps; 120 examples
    for 5 epochs are 75 steps, so 6 steps is partial work."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):  # messages built outside a run
        monkeypatch.setattr(TaskIdentity, attr, 1)
    client = parse(ClientSection, {"local_epochs": 5, "batch_size": 8}, "client")
    sysm = SystemModel(DevicesSection(), NetworkSection(), parse(RoundSection, {"policy": "partial_work",
                                                                                "deadline": 1.0}, "round"),
                       4, 0, local_epochs=5, client=client)

    def partial(budget: float | None, steps: int, n: int = 120, config: dict | None = None,
                model: SystemModel = sysm) -> bool:
        sent = Message(RecordDict({"config": ConfigRecord(config or {})}), 1_000_000, "train")
        reply = Message(RecordDict({"metrics": MetricRecord({"num-examples": n, "steps": steps,
                                                             "examples-seen": steps * 8})}), reply_to=sent)
        d = Dispatch(OK, None, 0.01, budget)
        return model.arrive(0, 1, "train", sent, reply, d).partial

    assert partial(0.5, 6)  # 6 of 75 steps
    assert not partial(10.0, 75)  # 1000 samples = 125 steps fit: all 75 done
    assert not partial(0.8, 10, n=10)  # 10 samples, 5 epochs = 10 steps; 80 samples = exactly 10 steps fit
    assert partial(0.79, 9, n=10)  # one step short
    assert partial(0.5, 6, config={"local-epochs": 1})  # the strategy's epochs: 15 steps, 6 fit
    assert not partial(2.0, 15, config={"local-epochs": 1})  # 25 steps fit, 15 done
    assert not partial(None, 75)  # no budget (deadline policy): never partial by time
    assert not partial(0.5, 6, model=SystemModel(DevicesSection(), NetworkSection(), RoundSection(), 4, 0))
