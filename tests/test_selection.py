"""Client selection policies: hand-checkable choices, seeded and executor-independent runs,
checkpointed observations, and a server that sees only what it would really see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.engine.metrics import without_wall
from fedsim.engine.selection import DataSize, Oort, PowerOfChoice, Seen, SelectionSection
from tests.conftest import tiny_config

SPEEDS = {"speed": {"name": "lognormal", "mu": 0.0, "sigma": 1.0}, "seconds_per_sample": 0.01}


def test_power_of_choice_takes_the_highest_reported_losses_untried_first() -> None:
    policy = PowerOfChoice(SelectionSection(policy="power_of_choice", candidates=100.0))
    policy.seen = {1: Seen(loss=0.5), 2: Seen(loss=2.0), 4: Seen(loss=1.0), 5: Seen(late=True)}
    chosen = policy.choose(2, [1, 2, 3, 4, 5], 5, np.random.default_rng(0))
    assert sorted(chosen) == [2, 3]  # 3 never tried (counts as the highest), then 2's loss 2.0
    chosen = policy.choose(4, [1, 2, 3, 4, 5], 5, np.random.default_rng(0))
    assert sorted(chosen) == [1, 2, 3, 4]  # 5 was tried and never heard back from: the last


def test_data_size_draws_in_proportion_to_reported_examples() -> None:
    policy = DataSize(SelectionSection(policy="data_size"))
    policy.seen = {10: Seen(examples=1.0), 11: Seen(examples=3.0)}
    rng = np.random.default_rng(1)
    picks = [policy.choose(1, [10, 11], 1, rng)[0] for _ in range(4000)]
    assert abs(np.mean([p == 11 for p in picks]) - 0.75) < 0.03  # 3 / (1 + 3)
    policy.seen[12] = Seen()  # not heard from: the mean of the others (2 examples)
    picks = [policy.choose(1, [10, 11, 12], 1, rng)[0] for _ in range(6000)]
    assert abs(np.mean([p == 12 for p in picks]) - 2 / 6) < 0.03


def test_oort_penalizes_clients_slower_than_the_deadline() -> None:
    """Equal statistical utility; durations 1 s and 4 s against a 2 s deadline: the slow one's
    utility is scaled by (2/4)^2 = 0.25, below the 0.95 cut-off of the best, so with nothing
    left to explore Oort always picks the fast one."""
    policy = Oort(SelectionSection(policy="oort", exploration=0.0, exploration_min=0.0), deadline=2.0)
    policy.seen = {1: Seen(examples=10, loss=1.0, duration=1.0, last_round=3),
                   2: Seen(examples=10, loss=1.0, duration=4.0, last_round=3)}
    assert policy.utility(2, 4) == pytest.approx(0.25 * policy.utility(1, 4))
    rng = np.random.default_rng(2)
    assert {policy.choose(1, [1, 2], 4, rng)[0] for _ in range(200)} == {1}
    explore = Oort(SelectionSection(policy="oort", exploration=1.0, exploration_min=1.0), deadline=2.0)
    explore.seen = dict(policy.seen)
    assert {explore.choose(1, [1, 2, 3], 4, rng)[0] for _ in range(50)} == {3}  # the untried client


@pytest.mark.parametrize("policy", ["data_size", "power_of_choice", "oort"])
def test_selection_is_seeded_and_the_same_on_serial_vectorized_and_ray(policy: str, ray_session) -> None:
    cfg = tiny_config(selection={"policy": policy}, run={"rounds": 4, "seed": 3}, data={"num_clients": 10},
                      devices=SPEEDS, round={"policy": "deadline", "deadline": 3.0})
    serial = fedsim.run(cfg, write=False)
    again = fedsim.run(cfg, write=False)
    want = [without_wall(r) for r in serial.history]
    assert [without_wall(r) for r in again.history] == want
    ray = fedsim.run(cfg.replace(["executor.name=ray", "ray.num_actors=2"]), write=False)
    assert [without_wall(r) for r in ray.history] == want
    # The vectorized executor batches SGD (float sums in another order): the same clients
    # and counts, losses and accuracies to float precision.
    vec = fedsim.run(cfg.replace(["executor.name=vectorized"]), write=False)
    for a, b in zip(want, [without_wall(r) for r in vec.history], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-4), key
            else:
                assert b[key] == a[key], key
    uniform = fedsim.run(cfg.replace(['selection.policy="uniform"']), write=False)
    assert [without_wall(r) for r in uniform.history] != want  # it did choose other clients


def test_uniform_is_flowers_own_sampling() -> None:
    base = tiny_config(run={"rounds": 3})
    named = base.replace(['selection.policy="uniform"'])
    assert [without_wall(r) for r in fedsim.run(base, write=False).history] == \
        [without_wall(r) for r in fedsim.run(named, write=False).history]


def test_oort_observations_are_checkpointed_and_resume_is_bit_identical(tmp_path: Path) -> None:
    from fedsim.report import read_metrics
    from fedsim.runner import resume

    cfg = tiny_config(selection={"policy": "oort"}, run={"rounds": 6, "checkpoint_every": 1}, devices=SPEEDS)
    whole = fedsim.run(cfg, out_dir=tmp_path / "whole")
    fedsim.run(cfg.replace(["run.rounds=3"]), out_dir=tmp_path / "part")
    resumed = resume(tmp_path / "part", overrides=["run.rounds=6"], accept=["run.rounds"])
    assert all(whole.arrays[k].numpy().tobytes() == resumed.arrays[k].numpy().tobytes() for k in whole.arrays)
    assert [without_wall(r) for r in read_metrics(tmp_path / "whole")] == \
        [without_wall(r) for r in read_metrics(tmp_path / "part")]


def test_a_selection_policy_by_path_and_a_bad_name(tmp_path: Path) -> None:
    cfg = tiny_config(selection={"policy": "tests.apps.plugins:LowestIds"}, run={"rounds": 2},
                      strategy={"name": "fedavg", "fraction_train": 0.5, "fraction_evaluate": 0.0})
    result = fedsim.run(cfg, write=False)
    assert result.history[1]["clients_replied"] == 3
    with pytest.raises(fedsim.ConfigError, match="selection.policy = 'nope': unknown selection policy"):
        tiny_config(selection={"policy": "nope"})
