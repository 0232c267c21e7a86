"""The vectorized executor trains many clients at once and matches the serial trainer."""

from __future__ import annotations

import logging

import pytest
import torch
from fedsim.clients.trainer import TrainSettings, train
from fedsim.clients.vectorized import Job, train_many, unsupported
from torch import nn

import fedsim
from tests.conftest import tiny_config


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def tanh_net() -> nn.Module:  # not a Flatten/Linear/ReLU stack: the torch.func vmap path
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


SETTINGS = [
    TrainSettings(epochs=2, batch_size=4, lr=0.1),
    TrainSettings(epochs=1, batch_size=4, lr=0.05, momentum=0.9),
    TrainSettings(steps=7, batch_size=4, lr=0.2, weight_decay=0.01, proximal_mu=0.5),
    TrainSettings(epochs=3, batch_size=4, lr=0.1, max_steps=2),
    TrainSettings(epochs=1, batch_size=3, lr=0.1, momentum=0.5, proximal_mu=1.0),
    TrainSettings(epochs=1, batch_size=4, lr=0.1),  # an empty client
]
SIZES = [10, 13, 5, 9, 7, 0]


def test_batch_plan_is_the_serial_order() -> None:
    from fedsim.clients.vectorized import _plan

    positions, valid, perms = _plan(10, TrainSettings(epochs=2, batch_size=4))
    assert perms == 2 and valid.sum(dim=1).tolist() == [4, 4, 2, 4, 4, 2]
    g = torch.Generator().manual_seed(1)
    flat = torch.cat([torch.randperm(10, generator=g), torch.randperm(10, generator=g)])
    batches = [flat[p[v.bool()]] for p, v in zip(positions, valid)]
    g = torch.Generator().manual_seed(1)
    p1, p2 = torch.randperm(10, generator=g), torch.randperm(10, generator=g)
    assert torch.equal(torch.cat(batches), torch.cat([p1, p2]))
    assert torch.equal(batches[2], p1[8:]) and torch.equal(batches[3], p2[:4])


@pytest.mark.parametrize("make", [mlp, tanh_net], ids=["dense-kernel", "vmap"])
def test_many_clients_equal_one_by_one(make) -> None:
    from fedsim.clients.vectorized import dense_layers

    model = make()
    assert (dense_layers(model) is not None) == (make is mlp)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = []
    for i, n in enumerate(SIZES):
        gen = torch.Generator().manual_seed(100 + i)
        data.append((torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)))
    # Every client starts from its own weights (as after a FedBuff push at different times).
    starts = [{k: v + 0.01 * i for k, v in start.items()} for i in range(len(SIZES))]
    jobs = [Job(starts[i], x, y, s, torch.Generator().manual_seed(i)) for i, ((x, y), s) in enumerate(zip(data, SETTINGS))]
    batched = train_many(model, jobs)
    for i, ((x, y), s) in enumerate(zip(data, SETTINGS)):
        ref = make()
        ref.load_state_dict(starts[i])
        outcome = train(ref, x, y, s, torch.Generator().manual_seed(i))
        weights, got = batched[i]
        assert (got.steps, got.examples_seen) == (outcome.steps, outcome.examples_seen)
        if outcome.steps == 0:
            assert got.loss != got.loss  # NaN, as the serial trainer reports
        else:
            assert got.loss == pytest.approx(outcome.loss, rel=1e-5)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6)
        if outcome.steps:
            first = next(iter(starts[i]))
            assert not torch.equal(weights[first], starts[i][first])


def test_unsupported_models_and_settings_say_why() -> None:
    assert unsupported(mlp()) is None
    assert "dropout" in unsupported(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    assert "buffers" in unsupported(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    assert "grad_bits" in unsupported(mlp(), TrainSettings(grad_bits=4))


def test_run_matches_serial_and_is_batched() -> None:
    base = dict(run={"name": "tiny", "seed": 5, "rounds": 3},
                client={"local_epochs": 2, "batch_size": 8, "lr": 0.1, "momentum": 0.5},
                strategy={"name": "fedprox", "proximal_mu": 0.1, "fraction_train": 0.5, "fraction_evaluate": 0.5})
    serial = fedsim.run(tiny_config(**base), write=False)
    vec_cfg = tiny_config(**base, executor={"name": "vectorized"})
    vec = fedsim.run(vec_cfg, write=False)
    for a, b in zip(serial.history, vec.history):
        assert a["clients_replied"] == b["clients_replied"] and a["eval_clients_replied"] == b["eval_clients_replied"]
        assert a["bytes_up"] == b["bytes_up"]
        for key in ("central_loss", "train_loss", "fed_loss"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert vec.summary["executor"] == "vectorized"


def test_batched_calls_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsim.engine.executors.vectorized import VectorizedExecutor

    seen = []
    original = VectorizedExecutor.shutdown

    def spy(self):
        seen.append((self.batched_calls, self.serial_calls))
        original(self)

    monkeypatch.setattr(VectorizedExecutor, "shutdown", spy)
    fedsim.run(tiny_config(executor={"name": "vectorized"}), write=False)
    assert seen == [(3 * 3, 0)]  # 3 rounds x 3 of 6 clients, all batched


def test_codec_falls_back_to_per_client_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    raw = dict(codec=[{"name": "int8"}])
    serial = fedsim.run(tiny_config(**raw), write=False)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        vec = fedsim.run(tiny_config(**raw, executor={"name": "vectorized"}), write=False)
    notes = [r.getMessage() for r in caplog.records if "vectorized executor" in r.getMessage()]
    assert notes == ["vectorized executor: running clients one by one: a codec chain encodes the updates"]
    assert [r["central_acc"] for r in serial.history] == [r["central_acc"] for r in vec.history]


def test_device_choice_is_validated_and_auto_is_cpu_here() -> None:
    from fedsim.clients.device import resolve

    from fedsim.core.errors import ConfigError

    if not torch.cuda.is_available():
        assert resolve("auto").type == "cpu"
        with pytest.raises(ConfigError, match="client.device = 'cuda': CUDA is not available here"):
            tiny_config(client={"device": "cuda"})
    with pytest.raises(ConfigError, match="client.device = 'gpu0'"):
        tiny_config(client={"device": "gpu0"})
    a = fedsim.run(tiny_config(client={"device": "cpu"}), write=False)
    b = fedsim.run(tiny_config(), write=False)
    assert [r["central_acc"] for r in a.history] == [r["central_acc"] for r in b.history]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_clients_and_vectorized_executor_match_cpu_closely() -> None:
    cpu = fedsim.run(tiny_config(client={"device": "cpu"}), write=False)
    for executor in ("serial", "vectorized"):
        gpu = fedsim.run(tiny_config(client={"device": "cuda"}, executor={"name": executor}), write=False)
        for a, b in zip(cpu.history, gpu.history):
            assert b["central_loss"] == pytest.approx(a["central_loss"], rel=1e-3)


def test_fast_array_bytes_equal_flowers() -> None:
    import numpy as np
    from flwr.app import Array

    from fedsim.core.arrays import array_view, fast_array

    for a in (np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(0), np.array(3.5), np.ones(5, dtype=">f4")):
        assert fast_array(a).data == Array(a).data
        assert np.array_equal(array_view(Array(a)), a) and array_view(Array(a)).shape == a.shape
