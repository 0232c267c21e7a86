"""Local training: step counts, reproducibility, the FedProx term, evaluation maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fedsim.clients import trainer
from fedsim.clients.models import (
    MODELS,
    CNNParams,
    LogRegParams,
    MLPParams,
    build_model,
    init_model,
)
from torch import nn

from fedsim.core import seeding
from fedsim.core.errors import ConfigError


def toy_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


@pytest.mark.parametrize(("n", "bs", "epochs", "steps", "want"), [(64, 10, 1, 0, 7), (64, 10, 3, 0, 21),
                                                                  (64, 64, 2, 0, 2), (64, 10, 1, 25, 25),
                                                                  (5, 10, 1, 0, 1), (0, 10, 1, 0, 0)])
def test_step_counts(n: int, bs: int, epochs: int, steps: int, want: int) -> None:
    s = trainer.TrainSettings(epochs=epochs, steps=steps, batch_size=bs)
    assert s.total_steps(n) == want


def test_training_is_reproducible_and_learns() -> None:
    x, y = toy_data()
    outcomes, states = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        before = trainer.evaluate(model, x, y)[0]
        out = trainer.train(model, x, y, trainer.TrainSettings(epochs=20, batch_size=8, lr=0.5),
                            seeding.torch_generator(1, 2, 3, "batches"))
        outcomes.append(out)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        assert trainer.evaluate(model, x, y)[0] < before / 2
    assert outcomes[0] == outcomes[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert outcomes[0].steps == 20 * 8 and outcomes[0].examples_seen == 20 * 64


def test_proximal_term_is_the_squared_l2_distance() -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([3.0]))
    global_params = [torch.tensor([[0.0, 0.0]]), torch.tensor([1.0])]
    # (1^2 + 2^2) + (3 - 1)^2 = 9 -- squared, not the norm (3).
    with torch.no_grad():
        assert float(trainer.proximal_term(model, global_params)) == pytest.approx(9.0)


def test_fedprox_mu_keeps_the_local_model_near_the_global_one() -> None:
    x, y = toy_data()

    def drift(mu: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        start = [p.detach().clone() for p in model.parameters()]
        trainer.train(model, x, y, trainer.TrainSettings(epochs=10, batch_size=8, lr=0.3, proximal_mu=mu),
                      seeding.torch_generator(0, 0, 0, "b"))
        with torch.no_grad():
            return float(trainer.proximal_term(model, start))

    assert drift(2.0) < 0.5 * drift(0.0)


def test_evaluate_by_hand() -> None:
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [-1.0]]))  # class 0 if x > 0
    x = torch.tensor([[1.0], [2.0], [-1.0], [-3.0]])
    y = torch.tensor([0, 1, 1, 1])
    loss, acc = trainer.evaluate(model, x, y)
    assert acc == pytest.approx(0.75)
    logits = torch.tensor([[1.0, -1.0], [2.0, -2.0], [-1.0, 1.0], [-3.0, 3.0]])
    want = torch.nn.functional.cross_entropy(logits, y).item()
    assert loss == pytest.approx(want)
    assert all(math.isnan(v) for v in trainer.evaluate(model, x[:0], y[:0]))


def test_model_registry_shapes() -> None:
    assert set(MODELS.names()) >= {"logreg", "mlp", "cnn"}
    for shape in ((1, 8, 8), (1, 28, 28), (3, 32, 32)):
        out = build_model("cnn", CNNParams(), shape, 10)(torch.zeros(2, *shape))
        assert out.shape == (2, 10)
    assert build_model("mlp", MLPParams(hidden=(200,)), (60,), 10)(torch.zeros(3, 60)).shape == (3, 10)
    lr = build_model("logreg", LogRegParams(), (60,), 10)
    assert sum(p.numel() for p in lr.parameters()) == 60 * 10 + 10
    with pytest.raises(ConfigError, match="model.name = 'cnn': needs image inputs"):
        build_model("cnn", CNNParams(), (60,), 10)
    a = init_model("mlp", MLPParams(hidden=(8,)), (4,), 2, seed=5)
    b = init_model("mlp", MLPParams(hidden=(8,)), (4,), 2, seed=5)
    c = init_model("mlp", MLPParams(hidden=(8,)), (4,), 2, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_seed_streams_are_reproducible_and_independent() -> None:
    a = seeding.rng(1, 2, 3, "x").random(5)
    assert (a == seeding.rng(1, 2, 3, "x").random(5)).all()
    for other in (seeding.rng(1, 2, 3, "y"), seeding.rng(1, 2, 4, "x"), seeding.rng(1, 3, 3, "x"),
                  seeding.rng(2, 2, 3, "x"), seeding.rng(1, 2, seeding.SERVER, "x")):
        assert not (a == other.random(5)).any()
    s = seeding.int_seed(1, 2, 3, "x")
    assert 0 <= s < 2**63 and s == seeding.int_seed(1, 2, 3, "x")


def test_dorefa_gradient_quantizer_is_unbiased_and_on_the_grid() -> None:
    g = torch.tensor([0.3, -0.7, 0.05, 1.0, -1.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([trainer.quantize_gradient(g, 2, gen) for _ in range(20000)])
    assert torch.allclose(draws.mean(0), g, atol=0.02)
    # 2 bits: values on 2m * ({0, 1/3, 2/3, 1} - 1/2), m = 1.
    grid = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    assert torch.isclose(draws.reshape(-1, 1), grid).any(dim=1).all()


def test_quantized_and_bf16_local_training_still_learn() -> None:
    x, y = toy_data()
    losses = {}
    for name, extra in (("fp32", {}), ("grad8", {"grad_bits": 8}), ("grad2", {"grad_bits": 2}),
                        ("bf16", {"autocast": "bf16"})):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        trainer.train(model, x, y, trainer.TrainSettings(epochs=20, batch_size=8, lr=0.5, **extra),
                      seeding.torch_generator(0, 0, 0, "b"))
        losses[name] = trainer.evaluate(model, x, y)[0]
    assert losses["grad8"] < 1.2 * losses["fp32"] + 0.02
    assert losses["bf16"] < 1.2 * losses["fp32"] + 0.02
    assert losses["grad2"] < 0.5  # coarser, still learning (chance is log 2 = 0.69)


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-3), (0.5, 1e-2)])
def test_plain_sgd_takes_torch_optims_steps_exactly(momentum: float, weight_decay: float) -> None:
    from fedsim.clients.sgd import SGD

    def steps(make_opt) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
        model[2].bias.requires_grad_(False)  # a frozen parameter: no gradient, no step
        opt = make_opt(model.parameters())
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            x, y = torch.randn(8, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    ours = steps(lambda ps: SGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay))
    theirs = steps(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_seed_torch_seeds_as_manual_seed_does() -> None:
    from fedsim.core.seeding import seed_torch

    torch.manual_seed(123)
    want = torch.rand(6), torch.nn.functional.dropout(torch.ones(10), 0.5)
    seed_torch(123)
    got = torch.rand(6), torch.nn.functional.dropout(torch.ones(10), 0.5)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_local_training_never_imports_torch_dynamo_in_a_fresh_process() -> None:
    """torch.optim's first optimizer imports torch._dynamo (seconds, in the driver and every
    Ray actor): the trainers step with fedsim's own SGD instead."""
    import subprocess
    import sys

    code = """
import sys, torch
from fedsim.clients import trainer
from torch import nn
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
trainer.train(model, x, y, trainer.TrainSettings(momentum=0.9, weight_decay=1e-3, proximal_mu=0.1),
              torch.Generator().manual_seed(0))
print("torch._dynamo" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
