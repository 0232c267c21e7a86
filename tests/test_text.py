"""Character-level text tasks: the generated dialects, LEAF Shakespeare on tiny written
files, the text models, LoRA on GPT-2 projections and a pretrained base from a local folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.clients import lora
from fedsim.clients.models import init_model, resolve_model_params
from fedsim.core.errors import ConfigError
from fedsim.scenarios.datasets import load_dataset, resolve_dataset_params
from fedsim.scenarios.datasets.text import LEAF_ALPHABET, windows


def test_windows_by_hand() -> None:
    x, y = windows(np.array([3, 1, 4, 1, 5]), 3)
    assert x.tolist() == [[3, 1, 4], [1, 4, 1]] and y.tolist() == [1, 5]


def dialects(seed: int = 0, **kw: object):
    return load_dataset("dialects", resolve_dataset_params("dialects", kw, "data.dataset"), seed, 8)


def test_dialects_are_seeded_one_group_per_client_and_windows_of_the_text() -> None:
    a, b, c = dialects(0, samples_per_client=50), dialects(0, samples_per_client=50), dialects(1, samples_per_client=50)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and not np.array_equal(a.x, c.x)
    assert a.x.shape == (400, 16) and a.num_classes == 29 and a.test_x.shape == (800, 16)
    assert np.bincount(a.groups).tolist() == [50] * 8
    first = a.x[a.groups == 0]
    assert np.array_equal(first[1, :-1], first[0, 1:]) and a.y[0] == first[1, -1]  # sliding windows of one text


def test_dialects_differ_more_with_spread() -> None:
    from fedsim.scenarios.datasets.text import _chains

    def gap(spread: float) -> float:
        ch = _chains(resolve_dataset_params("dialects", {"spread": spread}, "d"), 0)
        return float(np.abs(ch[0] - ch[1]).sum())

    assert gap(0.0) == 0.0 and gap(0.5) < gap(2.0)


def write_leaf(root: Path, text: str = "to be or not to be, that is the question") -> None:
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        users = {"HAMLET": text, "OPHELIA": text[::-1]}
        data = {u: {"x": [t[i:i + 5] for i in range(len(t) - 5)], "y": [t[i + 5] for i in range(len(t) - 5)]}
                for u, t in users.items()}
        blob = {"users": list(users), "num_samples": [len(d["y"]) for d in data.values()], "user_data": data}
        (root / split / "all_data.json").write_text(json.dumps(blob))


def test_shakespeare_reads_leaf_json_one_client_per_role(tmp_path: Path) -> None:
    write_leaf(tmp_path)
    d = load_dataset("shakespeare", resolve_dataset_params("shakespeare", {"root": str(tmp_path), "seq_len": 5}, "d"), 0, 2)
    assert d.num_classes == 80 and d.x.shape == (2 * 35, 5) and sorted(set(d.groups.tolist())) == [0, 1]
    assert "".join(LEAF_ALPHABET[int(i)] for i in d.x[0]) == "to be" and LEAF_ALPHABET[d.y[0]] == " "


def test_shakespeare_refuses_a_character_outside_leafs_alphabet_in_one_line(tmp_path: Path) -> None:
    write_leaf(tmp_path, "to be or not to be \u00e9 that is the question")
    with pytest.raises(ConfigError) as info:
        load_dataset("shakespeare", resolve_dataset_params("shakespeare", {"root": str(tmp_path), "seq_len": 5}, "d"), 0, 2)
    assert "data.dataset.root" in str(info.value) and "not in LEAF's alphabet" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["char_lstm", "char_transformer"])
def test_text_models_give_next_character_logits(name: str) -> None:
    model = init_model(name, resolve_model_params(name, {}, "model"), (16,), 29, 0)
    again = init_model(name, resolve_model_params(name, {}, "model"), (16,), 29, 0)
    x = torch.randint(0, 29, (3, 16)).float()
    assert model(x).shape == (3, 29) and torch.equal(model(x), again(x))
    with pytest.raises(ConfigError, match="windows of character ids"):
        init_model(name, resolve_model_params(name, {}, "model"), (1, 8, 8), 10, 0)


def test_lora_on_gpt2_projections_trains_only_the_adapters_counted_by_hand() -> None:
    model = init_model("char_transformer", resolve_model_params("char_transformer", {}, "model"), (16,), 29, 0)
    adapted = lora.wrap(model, lora.LoraParams(rank=4, target_modules=("c_attn", "c_proj", "c_fc"), base="init"), 0)
    state = lora.trainable_state(adapted)
    # per block, width 64, rank 4: c_attn 64->192: 4*64 + 192*4; attn c_proj 64->64: 2*256;
    # c_fc 64->256: 256 + 1024; mlp c_proj 256->64: 1024 + 256 -> 4096; two blocks.
    assert len(state) == 16 and sum(v.numel() for v in state.values()) == 8192
    assert all(".lora_A." in k or ".lora_B." in k for k in state)


def test_a_pretrained_base_loads_offline_from_a_local_folder(tmp_path: Path) -> None:
    model = init_model("char_transformer", resolve_model_params("char_transformer", {}, "model"), (16,), 29, 3)
    model.lm.save_pretrained(tmp_path / "base", safe_serialization=True)
    loaded = init_model("pretrained", resolve_model_params("pretrained", {"path": str(tmp_path / "base")}, "model"),
                        (16,), 29, 0)
    x = torch.randint(0, 29, (2, 16)).float()
    assert torch.allclose(model(x), loaded(x))
    with pytest.raises(ConfigError, match="vocabulary"):
        init_model("pretrained", resolve_model_params("pretrained", {"path": str(tmp_path / "base")}, "model"),
                   (16,), 80, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .safetensors"):
        init_model("pretrained", resolve_model_params("pretrained", {"path": str(tmp_path / "empty")}, "model"),
                   (16,), 29, 0)


def test_a_corrupt_pretrained_folder_is_one_line(tmp_path: Path) -> None:
    model = init_model("char_transformer", resolve_model_params("char_transformer", {}, "model"), (16,), 29, 0)
    model.lm.save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError, match="model.path .*not a loadable causal LM") as info:
        init_model("pretrained", resolve_model_params("pretrained", {"path": str(tmp_path)}, "model"), (16,), 29, 0)
    assert "\n" not in str(info.value)


def test_the_vectorized_executor_says_why_it_runs_text_models_one_by_one() -> None:
    from fedsim.clients.vectorized import unsupported

    lstm = init_model("char_lstm", resolve_model_params("char_lstm", {}, "model"), (16,), 29, 0)
    gpt = init_model("char_transformer", resolve_model_params("char_transformer", {}, "model"), (16,), 29, 0)
    assert "LSTM has no torch.func batching rule" in (unsupported(lstm) or "")
    assert "ties weights (lm.lm_head.weight" in (unsupported(gpt) or "")  # GPT-2's head is its embedding
    assert unsupported(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Dropout(0.0))) is None  # p = 0: no masks


@pytest.mark.slow
def test_the_lora_text_preset_gives_serial_numbers_on_ray_and_sends_adapters_only(ray_session) -> None:
    """The shipped benchmarks/text-lora preset's LoRA arm, shrunk (4 clients, 2 rounds, a
    short warm-up): Ray = serial, and every reply carries exactly the 16 adapter arrays of
    rank 4 on c_attn / c_proj / c_fc: 8,192 float32 values plus 16 .npy headers of 128 bytes."""
    import fedsim
    from fedsim.engine.metrics import without_wall

    lora_arm = ('codec=[{ name = "lora", rank = 4, target_modules = ["c_attn", "c_proj", "c_fc"], '
                'base = "warmup" }]')
    cfg = fedsim.load_config("benchmarks/text-lora", [
        lora_arm, "run.rounds=2", "data.num_clients=4", "data.dataset.samples_per_client=48",
        "data.dataset.test_per_dialect=20", "data.sharing.warmup_epochs=1", "strategy.fraction_train=1.0",
        "report.progress=false"])
    serial = fedsim.run(cfg, write=False)
    on_ray = fedsim.run(cfg.replace(['executor.name="ray"', "ray.num_actors=2"]), write=False)
    assert [without_wall(r) for r in serial.history] == [without_wall(r) for r in on_ray.history]
    for r in serial.history[1:]:
        assert r["clients_replied"] == 4 and r["bytes_up"] == 4 * (8192 * 4 + 16 * 128)
    assert serial.summary["energy_j"] > 0


def test_lora_adapters_travel_int8_quantized_on_the_transformer() -> None:
    """LoRA first, a quantizing codec after it: the adapters (only) travel as int8, a quarter
    of their float32 bytes plus each array's scale and headers, and the run trains."""
    import fedsim

    base = ["run.rounds=2", "data.num_clients=4", "data.dataset.samples_per_client=48", "data.dataset.test_per_dialect=20",
            "data.sharing.warmup_epochs=1", "strategy.fraction_train=1.0", "report.progress=false", "energy.enabled=false"]
    lora_arm = 'codec=[{ name = "lora", rank = 4, target_modules = ["c_attn", "c_proj", "c_fc"], base = "warmup" }'
    plain = fedsim.run(fedsim.load_config("benchmarks/text-lora", [lora_arm + "]", *base]), write=False)
    int8 = fedsim.run(fedsim.load_config("benchmarks/text-lora", [lora_arm + ', { name = "int8" }]', *base]), write=False)
    for p, q in zip(plain.history[1:], int8.history[1:]):
        assert q["clients_replied"] == 4 and q["clients_failed"] == 0
        assert q["bytes_up"] < 0.4 * p["bytes_up"]  # 8,192 values: 1 byte instead of 4 each
    assert int8.history[-1]["central_acc"] is not None
