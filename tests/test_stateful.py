"""Stateful and personalized FL: SCAFFOLD on hand-checkable quadratics, FedPer's bytes,
Ditto's proximal personal model, APFL's mixed model, the per-client evaluation spread, resume with state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array

import fedsim
from fedsim.clients.state import load_arrays
from fedsim.engine import checkpoint
from fedsim.engine.metrics import client_spread
from tests.apps import quadratic
from tests.conftest import tiny_config


def quadratic_run(strategy: str, rounds: int) -> float:
    cfg = tiny_config(data={"num_clients": 2}, model={"name": "tests.apps.quadratic:Scalar"},
                      client={"app": "tests.apps.quadratic:app"}, run={"rounds": rounds},
                      strategy={"name": strategy, "fraction_train": 1.0, "fraction_evaluate": 0.0},
                      server={"centralized_eval": False})
    result = fedsim.run(cfg, write=False)
    assert result.summary["client_failures"] == 0
    return float(result.arrays["w"].numpy()[0])


def fedavg_fixed_point() -> float:
    """FedAvg's drifted fixed point, by hand: K local steps take w to b_i + q_i (w - b_i),
    q_i = (1 - lr a_i)^K, and w = mean_i(b_i + q_i (w - b_i))."""
    q = [(1 - quadratic.LR * a) ** quadratic.K for a in quadratic.A]
    return sum(b * (1 - qi) for b, qi in zip(quadratic.B, q)) / 2 / (1 - sum(q) / 2)


def test_scaffold_converges_where_fedavg_drifts() -> None:
    optimum = sum(a * b for a, b in zip(quadratic.A, quadratic.B)) / sum(quadratic.A)  # 10/11
    drift = fedavg_fixed_point()  # 0.7134...
    assert abs(drift - 0.71343) < 1e-4 and abs(optimum - 10 / 11) < 1e-12
    fedavg = quadratic_run("fedavg", 40)
    scaffold = quadratic_run("scaffold", 40)
    assert abs(fedavg - drift) < 1e-4, fedavg
    assert abs(scaffold - optimum) < 1e-4, scaffold


def test_scaffold_charges_its_control_variates_both_ways() -> None:
    strategy = {"fraction_train": 1.0, "fraction_evaluate": 0.0}
    plain = fedsim.run(tiny_config(strategy={"name": "fedavg", **strategy}, run={"rounds": 2}), write=False)
    scaffold = fedsim.run(tiny_config(strategy={"name": "scaffold", **strategy}, run={"rounds": 2}), write=False)
    for a, b in zip(plain.history[1:], scaffold.history[1:]):
        # c down and dc_i up: one more model-sized record each way (the MLP has no buffers).
        assert b["bytes_down"] == 2 * a["bytes_down"] and b["bytes_up"] == 2 * a["bytes_up"]


def test_fedper_sends_and_charges_only_the_shared_body() -> None:
    strategy = {"fraction_train": 1.0, "fraction_evaluate": 0.0}
    plain = fedsim.run(tiny_config(strategy={"name": "fedavg", **strategy}, run={"rounds": 1}), write=False)
    per = fedsim.run(tiny_config(strategy={"name": "fedper", "personal_layers": ["3"], **strategy},
                                 run={"rounds": 1}), write=False)
    head = [v.numpy() for k, v in plain.arrays.items() if k.startswith("3.")]
    head_bytes = sum(len(Array(np.zeros(a.shape, a.dtype)).data) for a in head)
    clients = plain.history[1]["clients_replied"]
    assert clients == 6 and len(head) == 2
    assert plain.history[1]["bytes_up"] - per.history[1]["bytes_up"] == clients * head_bytes
    assert plain.history[1]["bytes_down"] - per.history[1]["bytes_down"] == clients * head_bytes
    # The server's head never moves (it is never sent back); the body does.
    from fedsim.runsetup import prepare

    start = prepare(tiny_config(strategy={"name": "fedper", "personal_layers": ["3"], **strategy})).initial
    for k in per.arrays:
        same = np.array_equal(per.arrays[k].numpy(), start[k].numpy())
        assert same == k.startswith("3."), k


def test_fedper_refuses_personal_layers_that_name_nothing_or_everything() -> None:
    with pytest.raises(fedsim.ConfigError, match="personal_layers"):
        fedsim.run(tiny_config(strategy={"name": "fedper", "personal_layers": ["nothing"], "fraction_train": 1.0,
                                         "fraction_evaluate": 0.0}, run={"rounds": 1}), write=False)


def test_ditto_personal_model_is_one_proximal_step_from_where_it_was(tmp_path: Path) -> None:
    """Full-batch, one local step: round 1 leaves v_1 = w_0 - lr grad(w_0) (the prox term is 0
    at its start); round 2 gives v_2 = v_1 - lr (grad(v_1) + lam (v_1 - w_1)), computed here
    by hand with autograd on the client's data."""
    lam, lr = 0.7, 0.1
    cfg = tiny_config(strategy={"name": "ditto", "lam": lam, "fraction_train": 1.0, "fraction_evaluate": 0.0},
                      client={"local_steps": 1, "local_epochs": 0, "batch_size": 100_000, "lr": lr},
                      run={"rounds": 2, "checkpoint_every": 1})
    one = fedsim.run(cfg.replace(["run.rounds=1"]), out_dir=tmp_path / "one")
    two = fedsim.run(cfg, out_dir=tmp_path / "two")
    from fedsim.runsetup import prepare

    setup = prepare(cfg)
    data = setup.data
    v1 = load_arrays(checkpoint.load(tmp_path / "one").nodes[_node(tmp_path / "one", 0)], "ditto")
    v2 = load_arrays(checkpoint.load(tmp_path / "two").nodes[_node(tmp_path / "two", 0)], "ditto")
    model = setup.server_model
    x, y = data.client_train(0)

    def grads(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {k: p.grad.numpy().copy() for k, p in model.named_parameters()}

    w0 = {k: v.numpy() for k, v in setup.initial.items()}
    g0 = grads(w0)
    for k in w0:
        np.testing.assert_allclose(v1[k], w0[k] - lr * g0[k], atol=1e-6)
    w1 = {k: v.numpy() for k, v in one.arrays.items()}
    g1 = grads(v1)
    for k in w0:
        np.testing.assert_allclose(v2[k], v1[k] - lr * (g1[k] + lam * (v1[k] - w1[k])), atol=1e-6)
    assert not np.allclose(v2["1.weight"], two.arrays["1.weight"].numpy())  # personal differs from global


def test_apfl_steps_and_personalized_evaluation_by_hand(tmp_path: Path) -> None:
    """Full-batch, one local step, adaptive alpha. Round 1 (v_0 = w_0, alpha_0 = a): the mixed
    model is w_0, so v_1 = w_0 - lr a g(w_0) and alpha_1 = a (v_0 - w_0 = 0). Round 2, with
    the global W_1: vbar = alpha_1 v_1 + (1 - alpha_1) W_1, v_2 = v_1 - lr alpha_1 g(vbar),
    alpha_2 = alpha_1 - lr <v_1 - W_1, g(vbar)>. Evaluation after round 2 scores the mixed
    model alpha_2 v_2 + (1 - alpha_2) W_2 on the client's own test split."""
    a, lr = 0.4, 0.1
    cfg = tiny_config(data={"num_clients": 2},
                      strategy={"name": "apfl", "alpha": a, "fraction_train": 1.0, "fraction_evaluate": 1.0},
                      client={"local_steps": 1, "local_epochs": 0, "batch_size": 100_000, "lr": lr},
                      run={"rounds": 2, "checkpoint_every": 1})
    one = fedsim.run(cfg.replace(["run.rounds=1"]), out_dir=tmp_path / "one")
    two = fedsim.run(cfg, out_dir=tmp_path / "two")
    from fedsim.clients import trainer
    from fedsim.runsetup import prepare

    setup = prepare(cfg)
    model = setup.server_model
    x, y = setup.data.client_train(0)

    def grads(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in state.items()})
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {k: p.grad.numpy().astype(np.float64) for k, p in model.named_parameters()}

    def node_state(folder: Path, name: str) -> dict[str, np.ndarray]:
        return load_arrays(checkpoint.load(folder).nodes[_node(folder, 0)], name)

    w0 = {k: v.numpy().astype(np.float64) for k, v in setup.initial.items()}
    g0 = grads(w0)
    v1, alpha1 = node_state(tmp_path / "one", "apfl"), node_state(tmp_path / "one", "apfl-alpha")["alpha"][0]
    assert alpha1 == pytest.approx(a)
    for k in w0:
        np.testing.assert_allclose(v1[k], w0[k] - lr * a * g0[k], atol=1e-6)
    big_w1 = {k: v.numpy().astype(np.float64) for k, v in one.arrays.items()}
    vbar = {k: alpha1 * v1[k] + (1 - alpha1) * big_w1[k] for k in w0}
    g = grads(vbar)
    v2, alpha2 = node_state(tmp_path / "two", "apfl"), node_state(tmp_path / "two", "apfl-alpha")["alpha"][0]
    expected_alpha = alpha1 - lr * sum(float(((v1[k] - big_w1[k]) * g[k]).sum()) for k in w0)
    assert alpha2 == pytest.approx(expected_alpha, abs=1e-6) and alpha2 != pytest.approx(a, abs=1e-9)
    for k in w0:
        np.testing.assert_allclose(v2[k], v1[k] - lr * alpha1 * g[k], atol=1e-6)
    # the personalized evaluation: each client's mixed model on its own test split, unweighted mean
    w2 = {k: v.numpy().astype(np.float64) for k, v in two.arrays.items()}
    accs = []
    for cid, node in enumerate(sorted(checkpoint.load(tmp_path / "two").nodes)):
        st = checkpoint.load(tmp_path / "two").nodes[node]
        v, al = load_arrays(st, "apfl"), load_arrays(st, "apfl-alpha")["alpha"][0]
        model.load_state_dict({k: torch.from_numpy((al * v[k] + (1 - al) * w2[k]).astype(np.float32)) for k in w2})
        accs.append(trainer.evaluate(model, *setup.data.client_test(cid))[1])
    assert two.history[-1]["client_acc_mean"] == pytest.approx(float(np.mean(accs)))
    assert two.history[-1]["client_acc_worst"] == pytest.approx(min(accs))


def _node(folder: Path, partition: int) -> int:
    ck = checkpoint.load(folder)
    return sorted(ck.nodes)[partition]


def test_client_spread_by_hand() -> None:
    from flwr.app import Message, MetricRecord, RecordDict

    def reply(acc: float, n: int = 5) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": n, "eval_acc": acc})}),
                       dst_node_id=1, message_type="evaluate")

    spread = client_spread([reply(0.9), reply(0.5), reply(0.7), reply(0.1), reply(0.3, n=0)])
    # 4 clients with test data: 0.1, 0.5, 0.7, 0.9 (the one without counts for nothing)
    assert spread["client_acc_mean"] == pytest.approx(0.55)
    assert spread["client_acc_p10"] == pytest.approx(0.1 + 0.3 * (0.5 - 0.1))  # numpy: rank 0.3
    assert spread["client_acc_worst"] == pytest.approx(0.1)
    assert client_spread([]) == {"client_acc_mean": None, "client_acc_p10": None, "client_acc_worst": None}


@pytest.mark.parametrize("strategy", [
    {"name": "scaffold", "fraction_train": 0.5, "fraction_evaluate": 0.5},
    {"name": "fedper", "personal_layers": ["3"], "fraction_train": 0.5, "fraction_evaluate": 0.5},
    {"name": "ditto", "lam": 0.5, "fraction_train": 0.5, "fraction_evaluate": 0.5},
    {"name": "apfl", "alpha": 0.4, "fraction_train": 0.5, "fraction_evaluate": 0.5},
], ids=["scaffold", "fedper", "ditto", "apfl"])
def test_resume_with_client_state_is_bit_identical(tmp_path: Path, strategy: dict) -> None:
    """The server's control variate and every client's state (c_i, personal layers, personal
    model) are checkpointed: a run stopped at round 3 and resumed to 6 equals a 6-round run."""
    from fedsim.engine.metrics import without_wall
    from fedsim.report import read_metrics
    from fedsim.runner import resume

    cfg = tiny_config(strategy=strategy, run={"rounds": 6, "checkpoint_every": 1, "seed": 4})
    whole = fedsim.run(cfg, out_dir=tmp_path / "whole")
    fedsim.run(cfg.replace(["run.rounds=3"]), out_dir=tmp_path / "part")
    resumed = resume(tmp_path / "part", overrides=["run.rounds=6"], accept=["run.rounds"])
    assert all(whole.arrays[k].numpy().tobytes() == resumed.arrays[k].numpy().tobytes() for k in whole.arrays)
    strip = [{k: v for k, v in without_wall(r).items()} for r in read_metrics(tmp_path / "whole")]
    assert strip == [without_wall(r) for r in read_metrics(tmp_path / "part")]
    assert whole.history[-1]["client_acc_worst"] is not None
