"""Differential-privacy accounting in runs: epsilon by hand for simple cases, per round in
metrics.jsonl, in the summary and compare, and the budget that stops a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.config import from_dict
from fedsim.core.errors import ConfigError
from fedsim.privacy import gaussian_epsilon
from tests.conftest import tiny_raw


def by_hand(z: float, releases: int, delta: float) -> float:
    """RDP of ``releases`` Gaussian releases of multiplier z at order a is releases * a / (2 z^2);
    to (epsilon, delta) by Canonne et al.'s conversion: rdp + log(1 - 1/a) - log(delta a) / (a - 1),
    minimized over a (here on a fine grid)."""
    a = np.linspace(1.02, 400, 400_000)
    eps = releases * a / (2 * z * z) + np.log1p(-1 / a) - np.log(delta * a) / (a - 1)
    return float(max(0.0, eps.min()))


@pytest.mark.parametrize(("z", "releases"), [(1.0, 1), (2.0, 10), (0.8, 3)])
def test_gaussian_mechanism_epsilon_by_hand(z: float, releases: int) -> None:
    hand = by_hand(z, releases, 1e-5)
    got = gaussian_epsilon(z, releases, 1e-5)
    assert hand <= got <= hand * 1.02, (hand, got)  # Flower's accountant minimizes over fewer orders


def test_sampling_without_replacement_amplifies() -> None:
    none = gaussian_epsilon(1.0, 10, 1e-5, sample_size=5, population=50)
    amplified = gaussian_epsilon(1.0, 10, 1e-5, sample_size=5, population=50, sampling="without_replacement")
    assert amplified < none / 2


def dp_raw(**sections: object) -> dict:
    raw = tiny_raw(strategy={"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0,
                             "wrapper": {"name": "dp_server_fixed", "noise_multiplier": 1.0, "clipping_norm": 5.0,
                                         "num_sampled_clients": 3}},
                   run={"rounds": 3}, report={"progress": False, "plots": False})
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}  # type: ignore[dict-item]
    return raw


def test_server_side_dp_run_reports_epsilon_every_round(tmp_path: Path) -> None:
    result = fedsim.run(from_dict(dp_raw()), out_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [0.0] + [gaussian_epsilon(1.0, r, 1e-5) for r in (1, 2, 3)]
    assert [r["privacy_epsilon"] for r in records] == pytest.approx(expected)
    assert all(r["privacy_delta"] == 1e-5 for r in records)
    assert result.summary["privacy_epsilon"] == pytest.approx(expected[-1])
    from fedsim import compare

    rows = compare.summarize(compare.load([str(tmp_path / "run")]), 0.5)
    assert rows[0]["epsilon_mean"] == pytest.approx(expected[-1])
    assert dict(compare.METRIC_COLUMNS)["epsilon"](rows[0]) == f"{expected[-1]:.3g}"
    # The HTML report: the final ε in its table, and ε per round as a plot beside accuracy.
    from fedsim.cli import write_report

    html_path, _ = write_report([str(tmp_path / "run")], 0.5, None)
    page = html_path.read_text()
    assert f"<td>{expected[-1]:.3g}</td>" in page
    assert "<h2>Privacy budget (ε) per round, beside accuracy</h2><img" in page


def test_the_budget_stops_a_run_before_the_round_that_would_exceed_it(tmp_path: Path) -> None:
    limit = (gaussian_epsilon(1.0, 2, 1e-5) + gaussian_epsilon(1.0, 3, 1e-5)) / 2
    cfg = from_dict(dp_raw(privacy={"max_epsilon": limit}, run={"rounds": 5}))
    result = fedsim.run(cfg, out_dir=tmp_path / "run")
    assert [r["round"] for r in result.history] == [0, 1, 2]
    assert result.stopped is not None and result.stopped.startswith("privacy budget: the next round would take")
    assert result.history[-1]["privacy_epsilon"] <= limit
    with pytest.raises(ConfigError, match="privacy.max_epsilon = 1.0: needs a DP mechanism"):
        from_dict(tiny_raw(privacy={"max_epsilon": 1.0}))


def test_local_dp_composes_per_client_over_the_rounds_it_took_part_in() -> None:
    """Every client trains every round: each made 1, 2, 3 releases of LocalDpMod's Gaussian
    noise (std from its per-release epsilon 8 and delta 1e-5, multiplier std / clipping norm)."""
    local_dp = {"epsilon": 8.0, "delta": 1e-5, "clipping_norm": 1.0, "sensitivity": 1.0}
    cfg = from_dict(tiny_raw(client={"local_dp": local_dp}, run={"rounds": 3},
                             strategy={"name": "fedavg", "fraction_train": 1.0, "fraction_evaluate": 0.0}))
    result = fedsim.run(cfg, write=False)
    z = math.sqrt(2 * math.log(1.25 / 1e-5)) / 8.0
    assert [r["privacy_epsilon"] for r in result.history] == pytest.approx(
        [0.0] + [gaussian_epsilon(z, k, 1e-5) for k in (1, 2, 3)])
    assert result.history[-1]["privacy_epsilon_mean"] == pytest.approx(result.history[-1]["privacy_epsilon"])
    # Half the clients a round: the worst client has taken part in at most every round.
    half = fedsim.run(cfg.replace(["strategy.fraction_train=0.5"]), write=False).history[-1]
    assert gaussian_epsilon(z, 1, 1e-5) <= half["privacy_epsilon_mean"] <= half["privacy_epsilon"]
    assert half["privacy_epsilon"] <= gaussian_epsilon(z, 3, 1e-5) + 1e-12
