"""Device energy: compute power x compute time, radio energy per bit and per second of
transfer, radio tails; per round, cumulative, in the summary, compare and report."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedsim
from fedsim.core.errors import ConfigError
from fedsim.core.schema import parse
from fedsim.scenarios.energy import EnergyModel, EnergySection, Use, sent_bytes
from tests.conftest import tiny_config

#: Round numbers so the arithmetic below is easy to follow.
ENERGY = {"enabled": True, "compute_w": {"name": "constant", "value": 3.0}, "up_mw_per_mbps": 400.0,
          "down_mw_per_mbps": 50.0, "radio_mw": 1000.0, "tail_mw": 1000.0, "tail_s": 2.0}


def test_one_message_by_hand() -> None:
    model = EnergyModel(parse(EnergySection, ENERGY, "energy"), num_clients=2, seed=0)
    # 2 Mbit down in 1.05 s, 0.5 s of compute, 1 Mbit up in 1.05 s:
    # compute 3 W x 0.5 s = 1.5; down (50 mW/Mbps x 2 Mbit + 1000 mW x 1.05 s) = 1.15;
    # the download's tail until the upload starts, 1 W x min(2, 0.5) = 0.5;
    # up (400 x 1 + 1000 x 1.05) mJ = 1.45; the upload's whole tail, 1 W x 2 s = 2.
    use = Use(down_bytes=250_000, down_s=1.05, compute_s=0.5, up_bytes=125_000, up_s=1.05, uploaded=True)
    assert model.joules(1, use) == pytest.approx(1.5 + 1.15 + 0.5 + 1.45 + 2.0)
    # A client that dropped out after its download: the download and its whole tail.
    assert model.joules(0, Use(down_bytes=250_000, down_s=1.05)) == pytest.approx(1.15 + 2.0)
    # Retransmissions are on the air too: 10 packets, 13 transmissions.
    assert sent_bytes(15_000, 10, 13) == pytest.approx(19_500)


def test_compute_power_is_drawn_per_device_from_the_seed() -> None:
    section = parse(EnergySection, {**ENERGY, "compute_w": {"name": "uniform", "low": 1.0, "high": 4.0}}, "energy")
    a, b = EnergyModel(section, 50, seed=7), EnergyModel(section, 50, seed=7)
    assert (a.compute_w == b.compute_w).all() and a.compute_w.min() >= 1.0 and a.compute_w.max() <= 4.0
    assert len(set(a.compute_w.tolist())) == 50
    with pytest.raises(ConfigError, match=r"energy.compute_w"):
        EnergyModel(parse(EnergySection, {**ENERGY, "compute_w": {"name": "constant", "value": -1.0}}, "energy"), 3, 0)


def energy_config(**extra: object) -> fedsim.Config:
    sections: dict[str, object] = {
        "run": {"rounds": 2}, "client": {"local_epochs": 0, "local_steps": 2, "batch_size": 16},
        "strategy": {"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0},
        "devices": {"seconds_per_sample": 0.01},
        "network": {"down_mbps": {"name": "constant", "value": 2.0}, "up_mbps": {"name": "constant", "value": 1.0},
                    "latency_s": {"name": "constant", "value": 0.05}},
        "energy": ENERGY}
    return tiny_config(**{**sections, **extra})


def test_a_round_by_hand_then_cumulative_in_summary_compare_and_report(tmp_path: Path) -> None:
    result = fedsim.run(energy_config(), out_dir=tmp_path / "run")
    r1, r2 = result.history[1], result.history[2]
    assert r1["clients_sampled"] == 3 and r1["clients_replied"] == 3
    # Every client gets the same model and sends an update of the same size, trains
    # 2 steps x 16 samples at 0.01 s each, on identical links (no loss).
    down, up = r1["bytes_down"] / 3, r1["bytes_up"] / 3
    t_down, compute, t_up = 0.05 + down * 8 / 2e6, 32 * 0.01, 0.05 + up * 8 / 1e6
    assert r1["virtual_round_s"] == pytest.approx(t_down + compute + t_up)
    one = (3.0 * compute + (50 * down * 8 / 1e6 + 1000 * t_down) / 1000 + 1.0 * min(2.0, compute)
           + (400 * up * 8 / 1e6 + 1000 * t_up) / 1000 + 1.0 * 2.0)
    assert r1["energy_j"] == pytest.approx(3 * one)
    assert r2["energy_total_j"] == pytest.approx(r1["energy_j"] + r2["energy_j"])
    assert result.summary["energy_j"] == pytest.approx(r2["energy_total_j"])

    from fedsim import compare
    from fedsim.cli import write_report

    target = r1["central_acc"]  # reached in round 1 at the latest
    rows = compare.summarize(compare.load([str(tmp_path / "run")]), target)
    assert rows[0]["energy_j_mean"] == pytest.approx(r2["energy_total_j"])
    first = next(r for r in result.history if r["central_acc"] >= target)
    assert rows[0]["energy_j_to_target"] == pytest.approx(first["energy_total_j"])
    page = write_report([str(tmp_path / "run")], target, None)[0].read_text()
    assert f"<td>{r2['energy_total_j'] / 1e3:.3f}</td>" in page
    assert "<h2>Centralized accuracy vs energy</h2>" in page


def test_no_energy_model_no_energy_columns(tmp_path: Path) -> None:
    result = fedsim.run(tiny_config(run={"rounds": 1}), out_dir=tmp_path / "run")
    assert "energy_j" not in result.history[1] and result.summary["energy_j"] is None
    from fedsim import compare

    rows = compare.summarize(compare.load([str(tmp_path / "run")]), 0.5)
    assert "energy kJ" not in [c for c, _ in compare.shown_columns(rows)]


def test_a_dropout_after_the_download_costs_the_download_and_its_tail() -> None:
    result = fedsim.run(energy_config(devices={"seconds_per_sample": 0.01, "dropout": 0.999}, run={"rounds": 1}),
                        write=False)
    r1 = result.history[1]
    assert r1["dropouts"] == 3 and r1["clients_replied"] == 0
    down = r1["bytes_down"] / 3
    t_down = 0.05 + down * 8 / 2e6
    assert r1["energy_j"] == pytest.approx(3 * ((50 * down * 8 / 1e6 + 1000 * t_down) / 1000 + 2.0))
