"""LoRA-only updates: what is sent, the two aggregation modes, bases and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fedsim.clients import lora
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import fedsim
from fedsim.core.errors import ConfigError
from tests.conftest import tiny_config

BASE = dict(model={"name": "mlp", "hidden": [64]}, client={"local_epochs": 2, "lr": 0.1},
            data={"sharing": {"beta": 0.1}},
            strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0}, run={"rounds": 3})


def cfg_with(chain: list[dict], **over) -> fedsim.Config:
    base = tiny_config(**{**BASE, **over})
    return fedsim.from_dict({**base.to_dict(), "codec": chain})


def test_lora_sends_exactly_the_adapter_parameters() -> None:
    # mlp 64 -> 64 -> 10 on 8x8 digits: layers 1 (64x64) and 3 (64x10), rank 4.
    fedit = fedsim.run(cfg_with([{"name": "lora", "rank": 4}]), write=False)
    assert sum(a.numpy().size for a in fedit.arrays.values()) == 4 * (64 + 64) + 4 * (64 + 10)
    ffa = fedsim.run(cfg_with([{"name": "lora", "rank": 4, "mode": "ffa"}]), write=False)
    assert sum(a.numpy().size for a in ffa.arrays.values()) == 64 * 4 + 10 * 4  # B only
    assert all("lora_B" in k for k in ffa.arrays)
    full = fedsim.run(cfg_with([]), write=False)
    assert fedit.summary["bytes_up"] < 0.25 * full.summary["bytes_up"]
    assert ffa.summary["bytes_up"] < fedit.summary["bytes_up"]
    # The warm-up base is already good; adapters keep it there or improve it.
    assert fedit.history[0]["central_acc"] > 0.6
    assert fedit.summary["final_central_acc"] >= fedit.history[0]["central_acc"] - 0.05


def _reply(arrays: dict, n: int) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    msg = Message(RecordDict({"config": ConfigRecord({})}), 5, "train")
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n})})
    return Message(content, reply_to=msg)


def test_fedit_aggregation_error_by_hand() -> None:
    a1, b1 = np.array([[1.0, 0.0]]), np.array([[1.0], [0.0]])
    a2, b2 = np.array([[0.0, 1.0]]), np.array([[0.0], [1.0]])
    replies = [_reply({"l.lora_A.w": a1, "l.lora_B.w": b1}, 1), _reply({"l.lora_A.w": a2, "l.lora_B.w": b2}, 1)]
    # mean(BA) = I/2, mean(B) mean(A) = ones/4: the difference has Frobenius norm 0.5.
    assert lora.aggregation_error(replies) == pytest.approx(0.5)


def test_ffa_aggregation_is_exact() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 30))  # the shared, frozen A
    bs = [rng.normal(size=(20, 4)) for _ in range(5)]
    weights = np.array([3, 1, 4, 1, 5], dtype=float) / 14
    mean_b_times_a = sum(w * b for w, b in zip(weights, bs)) @ a
    mean_of_ba = sum(w * (b @ a) for w, b in zip(weights, bs))
    np.testing.assert_allclose(mean_b_times_a, mean_of_ba, rtol=1e-12, atol=1e-12)
    replies = [_reply({"l.lora_A.w": a, "l.lora_B.w": b}, n) for b, n in zip(bs, (3, 1, 4, 1, 5))]
    assert lora.aggregation_error(replies) == pytest.approx(0.0, abs=1e-12)


def test_fedit_reports_its_aggregation_error_each_round() -> None:
    res = fedsim.run(cfg_with([{"name": "lora", "rank": 4}]), write=False)
    errors = [r["lora_aggregation_error"] for r in res.history[1:]]
    assert all(e is not None and e > 0 for e in errors)


def test_lora_bases_and_their_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"codec\[0\].base = 'warmup': needs \[data.sharing\]"):
        fedsim.run(cfg_with([{"name": "lora"}], data={"sharing": {}}), write=False)
    with pytest.raises(ConfigError, match=r"codec\[0\].target_modules .* 'fc9' matches no Linear/Conv2d/Conv1D layer"):
        fedsim.run(cfg_with([{"name": "lora", "target_modules": ["fc9"]}]), write=False)
    with pytest.raises(ConfigError, match=r"codec\[0\].rank = 10: must be < the width of layer '3' \(10\)"):
        fedsim.run(cfg_with([{"name": "lora", "rank": 10}]), write=False)
    with pytest.raises(ConfigError, match="checkpoint not found"):
        fedsim.run(cfg_with([{"name": "lora", "base": str(tmp_path / "none.safetensors")}]), write=False)
    # A checkpoint of the right model loads (safetensors and a torch state dict) and is the base.
    from fedsim.clients.models import init_model
    from safetensors.torch import save_file

    model = init_model("mlp", fedsim.from_dict({**tiny_config(**BASE).to_dict()}).model.params, (1, 8, 8), 10, 42)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "base.safetensors"))
    torch.save(model.state_dict(), tmp_path / "base.pt")
    for name in ("base.safetensors", "base.pt"):
        res = fedsim.run(cfg_with([{"name": "lora", "base": str(tmp_path / name)}], run={"rounds": 1}), write=False)
        assert res.summary["client_failures"] == 0
    # A mismatching one, and a pickle that would run code, are refused.
    torch.save({"0.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match="does not match the model"):
        fedsim.run(cfg_with([{"name": "lora", "base": str(tmp_path / "wrong.pt")}]), write=False)

    class Evil:
        def __reduce__(self):  # noqa: D105
            import os

            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="unreadable checkpoint"):
        fedsim.run(cfg_with([{"name": "lora", "base": str(tmp_path / "evil.pt")}]), write=False)


def test_lora_must_come_first() -> None:
    with pytest.raises(ConfigError, match=r"codec\[1\].name = 'lora': must come first"):
        cfg_with([{"name": "topk"}, {"name": "lora"}])


def test_lora_on_a_cnn_adapts_conv_layers() -> None:
    res = fedsim.run(cfg_with([{"name": "lora", "rank": 2, "base": "init"}], model={"name": "cnn"},
                              run={"rounds": 1}), write=False)
    assert any(".0.lora_A" in k for k in res.arrays)  # the first Conv2d got adapters
    assert res.summary["client_failures"] == 0


def test_lora_errors_exit_2_from_the_cli(tmp_path: Path) -> None:
    from tests.clirun import fedsim_main

    proc = fedsim_main("run", "quickstart", "--set", "run.rounds=1",
                       "--set", 'codec=[{name="lora", base="init", target_modules=["fc9"]}]', "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "codec[0].target_modules" in proc.stderr and "Traceback" not in proc.stderr


def test_lora_base_and_full_fine_tunings_warm_up_are_the_same_model() -> None:
    """One warm-up on the shared set G for both arms of a LoRA-vs-full study: LoRA's frozen
    base (built in every client process) equals full fine-tuning's initial global model."""
    import torch

    from fedsim.clients.models import init_model
    from fedsim.runsetup import prepare, warm_up
    from fedsim.scenarios.federation import federated_data

    sharing = {"beta": 0.1, "alpha": 0.0, "warmup_epochs": 2, "warmup_lr": 0.2}
    lora_cfg = tiny_config(data={"sharing": sharing}, codec=[{"name": "lora", "rank": 2, "base": "warmup"}])
    full_cfg = tiny_config(data={"sharing": sharing})
    data = federated_data(full_cfg.data, full_cfg.data_seed)
    base = lora.build_base(lora_cfg.client_spec(), data, lora.lora_params(lora_cfg.codec))
    full = init_model(full_cfg.model.name, full_cfg.model.params, data.input_shape, data.num_classes, full_cfg.run.seed)
    untrained = {k: v.clone() for k, v in full.state_dict().items()}
    warm_up(full, data, full_cfg)
    assert any(not torch.equal(untrained[k], v) for k, v in full.state_dict().items())  # it trained
    assert all(torch.equal(base.state_dict()[k], v) for k, v in full.state_dict().items())
    # ... and the full arm's run starts from it.
    initial = prepare(full_cfg, with_strategy=False).initial
    assert all(torch.equal(torch.from_numpy(initial[k].numpy()), v) for k, v in full.state_dict().items())
