"""Gradient-inversion probes: hand-checkable inversions, metrics, the threat model, acceptance levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fedsim.clients import trainer
from fedsim.clients.models import LogRegParams, MLPParams, build_model
from fedsim.scenarios.attacks import ATTACKS, ProbeView
from fedsim.scenarios.attacks import metrics as leak
from fedsim.scenarios.attacks.common import infer_labels
from torch import nn

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.core.schema import parse
from tests.conftest import tiny_config


def attack(name: str, **params):  # type: ignore[no-untyped-def]
    entry = ATTACKS.get(name, "probe.attack.name")
    return entry.fn(parse(entry.params, params, "probe.attack"))


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images / 16, dtype=torch.float32)[:, None], torch.tensor(d.target)


def client_view(build, x: torch.Tensor, y: torch.Tensor, *, lr: float = 0.1, steps: int = 1,
                batch: int = 1, defend=None) -> ProbeView:  # type: ignore[no-untyped-def]
    """A real local update (fedsim's trainer), seen as the server sees it."""
    torch.manual_seed(0)
    model = build()
    sent = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.train(model, x, y, trainer.TrainSettings(steps=steps, batch_size=batch, lr=lr),
                  torch.Generator().manual_seed(1))
    received = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if defend is not None:
        received = defend(sent, received)
    return ProbeView(build_model=build, sent=sent, received=received, lr=lr, steps=steps, batch_size=batch,
                     num_examples=len(x), momentum=0.0, input_shape=tuple(x.shape[1:]), num_classes=10,
                     round=1, client=0)


def mlp() -> nn.Module:
    return build_model("mlp", MLPParams(hidden=(64,)), (1, 8, 8), 10)


# ------------------------------------------------------------------ metrics
def test_psnr_and_ssim_on_known_pairs() -> None:
    a = torch.full((1, 8, 8), 0.5)
    assert leak.psnr(a, a) == 100.0  # capped
    assert leak.psnr(a + 0.1, a) == pytest.approx(20.0)  # MSE 0.01
    assert leak.psnr(torch.full((1, 8, 8), 3.0), torch.ones(1, 8, 8)) == 100.0  # clamped to [0, 1] first
    assert leak.ssim(a, a) == pytest.approx(1.0)
    noise = torch.rand((1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert leak.ssim(noise, a) < 0.5
    assert leak.match(torch.stack([a, a + 0.3]), torch.stack([a + 0.3, a])) == [(0, 1), (1, 0)]
    assert leak.label_accuracy(torch.tensor([3, 1, 1]), torch.tensor([1, 3, 2])) == pytest.approx(2 / 3)


# ------------------------------------------------------- hand-checkable attacks
def test_analytic_inversion_of_a_linear_model_is_exact() -> None:
    x, y = digits()

    def logreg() -> nn.Module:
        return build_model("logreg", LogRegParams(), (1, 8, 8), 10)

    view = client_view(logreg, x[:1], y[:1])
    rec = attack("analytic").run(view, torch.Generator())
    assert torch.allclose(rec.x[0], x[0], atol=1e-4)
    assert int(rec.labels[0]) == int(y[0])


def test_idlg_label_rule_on_hand_built_gradients() -> None:
    # Classifier-weight gradient (p - onehot) h^T with h >= 0: only the true row is negative.
    p = torch.tensor([0.1, 0.05, 0.6, 0.25])
    h = torch.tensor([0.5, 1.0, 0.0])
    for label in range(4):
        grad = torch.outer(p - torch.eye(4)[label], h)
        w = torch.zeros(4, 3)
        view = ProbeView(build_model=lambda: nn.Linear(3, 4), sent={"weight": w}, received={"weight": w - 0.1 * grad},
                         lr=0.1, steps=1, batch_size=1, num_examples=1, momentum=0.0, input_shape=(3,),
                         num_classes=4, round=1, client=0)
        assert int(infer_labels(view, 1)[0]) == label


def test_attacks_never_receive_ground_truth() -> None:
    """The runner hands attacks a ProbeView only; a guard around the truth proves it is
    touched after the attack returns, by the metrics code."""
    from fedsim.scenarios.attacks.probe import ProbeRunner, ProbeSection, Truth

    x, y = digits()
    events: list[str] = []

    class Guard(Truth):
        def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
            if name in ("x", "y"):
                events.append("truth read")
            return object.__getattribute__(self, name)

    cfg = parse(ProbeSection, {"attack": {"name": "analytic"}}, "probe")
    runner = ProbeRunner(cfg, seed=0, data=None, client_cfg=None, build_model=mlp, lora=False, out_dir=None,
                         truth_fn=lambda rnd, cid, view: Guard(x[:1], y[:1]))
    real_run = runner.attack.run

    def watched_run(view, generator):  # type: ignore[no-untyped-def]
        assert not any(isinstance(v, Truth) for v in vars(view).values())
        out = real_run(view, generator)
        events.append("attack done")
        return out

    runner.attack.run = watched_run  # type: ignore[method-assign]
    view = client_view(mlp, x[:1], y[:1])
    from fedsim.scenarios.attacks.probe import _Pending

    runner._pending.append(_Pending(view, None))
    summary = runner.run_round(1)
    assert events[0] == "attack done" and "truth read" in events[1:]
    assert summary["probe_psnr_mean"] > 60


# ----------------------------------------------------------- acceptance levels
@pytest.mark.slow
def test_undefended_fedsgd_batch_1_leaks_on_digits_mlp() -> None:
    x, y = digits()
    # 400 iterations: 71.5 dB mean, 10/10 >= 25 (measured; 1000 iterations gave the same)
    ig, idlg, ana = attack("inverting_gradients", iterations=400, restarts=1), attack("idlg", outer_steps=50), attack("analytic")
    ig_psnr, labels_ok, ana_psnr = [], 0, []
    for i in range(10):
        view = client_view(mlp, x[i : i + 1], y[i : i + 1])
        ig_psnr.append(leak.psnr(ig.run(view, torch.Generator().manual_seed(i)).x[0], x[i]))
        labels_ok += int(idlg.run(view, torch.Generator().manual_seed(i)).labels[0]) == int(y[i])
        ana_psnr.append(leak.psnr(ana.run(view, torch.Generator()).x[0], x[i]))
    assert np.mean(ig_psnr) >= 30 and sum(p >= 25 for p in ig_psnr) >= 8
    assert labels_ok == 10
    assert min(ana_psnr) >= 60


@pytest.mark.slow
def test_fedavg_update_of_one_image_and_five_steps_is_inverted_by_unrolling() -> None:
    x, y = digits()
    ig = attack("inverting_gradients", iterations=500, restarts=1)  # measured: 76.9 / 76.6 / 73.1 dB
    psnrs = [leak.psnr(ig.run(client_view(mlp, x[i : i + 1], y[i : i + 1], steps=5), torch.Generator().manual_seed(i)).x[0], x[i])
             for i in range(3)]
    assert np.mean(psnrs) >= 25


def _noise_like_gradient_rms(sent: dict, received: dict) -> dict:
    gen = torch.Generator().manual_seed(7)
    out = {}
    for k in received:
        delta = received[k] - sent[k]
        rms = float(delta.pow(2).mean().sqrt())
        out[k] = received[k] + torch.randn(delta.shape, generator=gen) * rms
    return out


def _topk_1pct(sent: dict, received: dict) -> dict:
    out = {}
    for k in received:
        delta = (received[k] - sent[k]).reshape(-1)
        keep = max(1, math.ceil(0.01 * delta.numel()))
        idx = delta.abs().topk(keep).indices
        sparse = torch.zeros_like(delta)
        sparse[idx] = delta[idx]
        out[k] = sent[k] + sparse.reshape(received[k].shape)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("defence", [_noise_like_gradient_rms, _topk_1pct])
def test_noise_and_top_k_defences_push_psnr_below_25(defence) -> None:  # type: ignore[no-untyped-def]
    x, y = digits()
    ig, ana = attack("inverting_gradients", iterations=500, restarts=1), attack("analytic")
    for att in (ig, ana):
        psnrs = [leak.psnr(att.run(client_view(mlp, x[i : i + 1], y[i : i + 1], defend=defence),
                                   torch.Generator().manual_seed(i)).x[0], x[i]) for i in range(5)]
        assert np.mean(psnrs) < 25, (att.name, psnrs)


def test_probe_in_a_federated_run_writes_its_results(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config(run={"rounds": 2}, model={"name": "mlp", "hidden": [64]},
                      client={"local_steps": 1, "batch_size": 1, "lr": 0.1},
                      strategy={"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0},
                      probe={"attack": {"name": "analytic"}, "clients": 2, "rounds": [2]},
                      report={"plots": True, "progress": False})
    res = fedsim.run(cfg, out_dir=tmp_path / "r")
    assert [r["probes"] for r in res.history[1:]] == [0, 2]
    assert res.history[2]["probe_psnr_mean"] >= 60 and res.history[2]["probe_label_acc"] == 1.0
    lines = (tmp_path / "r" / "probes.jsonl").read_text().splitlines()
    assert len(lines) == 2
    folder = tmp_path / "r" / "probes"
    # One montage for the round, one picture and one array file per probed client.
    assert (folder / "round0002.png").is_file()
    assert len(list(folder.glob("*.png"))) == 3
    saved = sorted(folder.glob("*.npz"))
    assert len(saved) == 2
    z = np.load(saved[0])
    assert set(z.files) >= {"reconstructions", "originals", "true_labels", "inferred_labels", "indices", "pairing",
                            "psnr", "ssim", "loss_trace", "final_loss"}
    assert z["originals"].shape == (1, 1, 8, 8) and z["indices"].shape == (1,) and z["pairing"].tolist() == [0]
    from fedsim.scenarios.federation import federated_data

    data = federated_data(cfg.data, cfg.data_seed)  # the saved indices point at the true samples
    assert np.allclose(data.x[int(z["indices"][0])].numpy(), z["originals"][0])


@pytest.mark.parametrize(("probe", "fragment"), [
    ({"attack": {"name": "dlgx"}}, "probe.attack.name = 'dlgx': unknown attack"),
    ({"attack": {"name": "dlg", "outer_steps": 0}}, "probe.attack.outer_steps = 0: must be >= 1"),
    ({"attack": {"name": "idlg", "iterations": 300}}, "probe.attack.iterations = 300: unknown key; allowed: outer_steps"),
    ({"attack": {"name": "inverting_gradients", "restarts": 0}}, "probe.attack.restarts = 0"),
    ({"attack": {"name": "analytic"}, "clients": 0}, "probe.clients = 0: must be >= 1"),
])
def test_probe_config_errors(probe: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(probe=probe)
    assert str(info.value).startswith(fragment)


def test_attacks_refuse_models_without_the_layers_they_need() -> None:
    cfg = tiny_config(run={"rounds": 1}, model={"name": "cnn"}, client={"local_steps": 1, "batch_size": 1},
                      strategy={"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0},
                      probe={"attack": {"name": "analytic"}})
    with pytest.raises(ConfigError, match="probe.attack.name = 'analytic': needs a model whose first layer is fully connected"):
        fedsim.run(cfg, write=False)
    with pytest.raises(ConfigError, match="user ClientApp|fedsim's ClientApp"):
        tiny_config(client={"app": "tests.apps.toy:app"}, probe={"attack": {"name": "analytic"}})


# --------------------------------------------------------- paper strength (the setting)
def mlp100() -> nn.Module:
    return build_model("mlp", MLPParams(hidden=(100,)), (1, 8, 8), 10)  # digits MLP 64-100-10


@pytest.mark.slow
def test_idlg_and_analytic_at_paper_strength_on_digits_fedsgd_batch_1() -> None:
    """FedSGD, batch 1, lr 0.1, round 1, ten clients of one image each."""
    x, y = digits()
    idlg, ana = attack("idlg"), attack("analytic")
    idlg_psnr, ana_psnr = [], []
    for i in range(10):
        view = client_view(mlp100, x[i : i + 1], y[i : i + 1])
        rec = idlg.run(view, torch.Generator().manual_seed(i))
        idlg_psnr.append(leak.psnr(rec.x[0], x[i]))
        assert len(rec.loss_trace) >= 1 and rec.final_loss == min(rec.loss_trace)
        ana_psnr.append(leak.psnr(ana.run(view, torch.Generator()).x[0], x[i]))
    assert sum(p >= 90 for p in idlg_psnr) >= 9, idlg_psnr
    assert min(ana_psnr) == leak.PSNR_CAP, ana_psnr


def _gradient_noise(std: float):  # type: ignore[no-untyped-def]
    """Gaussian noise of ``std`` on the gradient a FedSGD update carries (update = lr x gradient)."""
    def defend(sent: dict, received: dict) -> dict:
        gen = torch.Generator().manual_seed(7)
        return {k: received[k] + 0.1 * std * torch.randn(received[k].shape, generator=gen) for k in received}

    return defend


def test_analytic_least_squares_survives_gradient_noise() -> None:
    """Under noise of std 0.01 on the gradient, the least-squares estimate over all units still
    rebuilds most images (dead-ReLU units, whose bias gradient is 0, carry only noise)."""
    x, y = digits()
    ana = attack("analytic")
    psnrs = [leak.psnr(ana.run(client_view(mlp100, x[i : i + 1], y[i : i + 1], defend=_gradient_noise(0.01)),
                               torch.Generator()).x[0], x[i]) for i in range(10)]
    assert sum(p >= 25 for p in psnrs) >= 8, psnrs


def test_unreconstructed_images_count_as_failures() -> None:
    """Batch 4, one step: a reconstruction of 2 images scores all 4 (the other 2 at 0 dB)."""
    truths = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 3, 4])
    rec = truths[[2, 0]].clone()
    scores = leak.score_all(rec, torch.tensor([3, 1]), truths, labels)
    assert [s["reconstruction"] for s in scores] == [1, None, 0, None]
    assert [s["psnr"] for s in scores] == [leak.PSNR_CAP, 0.0, leak.PSNR_CAP, 0.0]
    assert np.mean([s["psnr"] for s in scores]) == 50.0  # not 100: half the batch leaked
    assert [s["label_ok"] for s in scores] == [1.0, 0.0, 1.0, 0.0]


def test_probe_with_batch_4_reports_coverage_and_the_honest_mean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config(run={"rounds": 1}, model={"name": "mlp", "hidden": [64]},
                      client={"local_steps": 2, "batch_size": 4, "lr": 0.1},
                      strategy={"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0},
                      probe={"attack": {"name": "analytic"}, "clients": 1}, report={"progress": False, "plots": False})
    res = fedsim.run(cfg, out_dir=tmp_path / "r")
    row = __import__("json").loads((tmp_path / "r" / "probes.jsonl").read_text().splitlines()[0])
    assert row["images"] == 8 and row["reconstructed"] == 1 and row["coverage"] == 1 / 8
    assert len(row["per_image"]) == 8 and sum(s["reconstruction"] is None for s in row["per_image"]) == 7
    assert row["psnr_mean"] <= row["psnr_reconstructed_mean"] / 8 + 1e-9
    assert res.history[1]["probe_coverage"] == 1 / 8


def test_no_object_reachable_from_a_view_holds_client_data() -> None:
    """The threat model: a ProbeView (and everything it refers to, closures included) holds the
    architecture, the arrays sent and received, and the public training configuration only."""
    import gc
    import types

    from fedsim.runner import make_prober
    from fedsim.runsetup import prepare

    cfg = tiny_config(run={"rounds": 1}, model={"name": "mlp", "hidden": [16]},
                      client={"local_steps": 1, "batch_size": 1}, probe={"attack": {"name": "analytic"}})
    setup = prepare(cfg)
    runner = make_prober(cfg, setup, None)
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    arrays = ArrayRecord(setup.server_model.state_dict())
    sent = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"lr": 0.1})}), 1_000_000, "train")
    reply = Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1, "steps": 1})}),
                    reply_to=sent)
    view = runner.view(1, 0, sent, reply)
    data = setup.data
    forbidden = {t.untyped_storage().data_ptr() for t in (data.x, data.y, data.server_x, data.server_y)}
    seen, stack, tensors = set(), [view], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, str, bytes, int, float)):
            continue
        seen.add(id(obj))
        assert obj is not data and type(obj).__name__ not in ("FederatedData", "ProbeRunner", "Truth"), type(obj)
        if isinstance(obj, torch.Tensor):
            tensors += 1
            assert obj.untyped_storage().data_ptr() not in forbidden
            continue
        if isinstance(obj, types.FunctionType):  # closures and defaults, not the module's globals
            stack.extend(c.cell_contents for c in (obj.__closure__ or ()))
            stack.extend(obj.__defaults__ or ())
            continue
        stack.extend(gc.get_referents(obj))
    assert tensors >= 4  # the sent and received arrays were walked
