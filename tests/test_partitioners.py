"""Partitioners: sizes sum to the dataset, skew follows alpha, shards give exactly k labels."""

from __future__ import annotations

import numpy as np
import pytest
from fedsim.scenarios.partitioners import (
    DirichletParams,
    IidParams,
    NaturalParams,
    QuantityParams,
    ShardsParams,
    partition,
)

from fedsim.core.errors import ConfigError


def labels(n_per_class: int = 100, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), n_per_class))


def check_is_partition(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n, "sizes must sum to the dataset"
    assert len(np.unique(joined)) == n, "parts must be disjoint"
    assert joined.min() == 0 and joined.max() == n - 1


CASES = [
    ("iid", IidParams()),
    ("dirichlet", DirichletParams(alpha=0.3)),
    ("shards", ShardsParams(shards_per_client=2)),
    ("quantity", QuantityParams(exponent=1.2)),
]


@pytest.mark.parametrize(
    ("name", "params", "num_clients"),
    # shards needs num_clients x k >= 10 labels (the refusal is tested below)
    [(n, p, c) for n, p in CASES for c in (1, 7, 20) if not (n == "shards" and c * 2 < 10)],
)
def test_sizes_sum_to_dataset_and_parts_are_disjoint(name: str, params: object, num_clients: int) -> None:
    y = labels()
    parts = partition(name, params, y, None, num_clients, np.random.default_rng(1))
    assert len(parts) == num_clients
    check_is_partition(parts, len(y))


@pytest.mark.parametrize(("name", "params"), CASES)
def test_same_rng_same_partition(name: str, params: object) -> None:
    y = labels()
    a = partition(name, params, y, None, 10, np.random.default_rng(5))
    b = partition(name, params, y, None, 10, np.random.default_rng(5))
    c = partition(name, params, y, None, 10, np.random.default_rng(6))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert name == "iid" or not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = partition("iid", IidParams(), labels(), None, 7, np.random.default_rng(0))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def _mean_label_entropy(parts: list[np.ndarray], y: np.ndarray) -> float:
    ents = []
    for p in parts:
        counts = np.bincount(y[p], minlength=10).astype(float)
        q = counts / counts.sum()
        q = q[q > 0]
        ents.append(-(q * np.log(q)).sum())
    return float(np.mean(ents))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    y = labels(200)
    entropy = {}
    for alpha in (100.0, 1.0, 0.1):
        vals = [_mean_label_entropy(partition("dirichlet", DirichletParams(alpha=alpha), y, None, 20,
                                              np.random.default_rng(s)), y) for s in range(5)]
        entropy[alpha] = np.mean(vals)
    # Lower entropy of a client's label distribution = more skew.
    assert entropy[100.0] > entropy[1.0] > entropy[0.1]
    assert entropy[100.0] > 0.95 * np.log(10)  # near-uniform labels per client
    assert entropy[0.1] < 0.5 * np.log(10)


def test_dirichlet_min_size_is_met_or_reported() -> None:
    y = labels(50)
    parts = partition("dirichlet", DirichletParams(alpha=0.5, min_size=10), y, None, 10, np.random.default_rng(0))
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(ConfigError, match="data.partitioner.min_size"):
        partition("dirichlet", DirichletParams(alpha=0.01, min_size=45, max_tries=3), y, None, 10,
                  np.random.default_rng(0))


@pytest.mark.parametrize(("clients", "k"), [(10, 1), (20, 2), (50, 2), (7, 3), (100, 2)])
def test_shards_give_exactly_k_labels_per_client(clients: int, k: int) -> None:
    y = labels(120)
    parts = partition("shards", ShardsParams(shards_per_client=k), y, None, clients, np.random.default_rng(2))
    check_is_partition(parts, len(y))
    for p in parts:
        assert len(np.unique(y[p])) == k


def test_shards_with_unbalanced_classes() -> None:
    rng = np.random.default_rng(0)
    y = rng.permutation(np.concatenate([np.full(n, c) for c, n in enumerate([300, 40, 90, 15, 200, 60, 10, 120, 80, 85])]))
    parts = partition("shards", ShardsParams(shards_per_client=2), y, None, 15, np.random.default_rng(3))
    check_is_partition(parts, len(y))
    assert all(len(np.unique(y[p])) == 2 for p in parts)


def test_shards_refuses_what_it_cannot_do() -> None:
    y = labels()
    with pytest.raises(ConfigError, match="shards_per_client = 11: must be <= the number of labels"):
        partition("shards", ShardsParams(shards_per_client=11), y, None, 10, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="some labels would be unused"):
        partition("shards", ShardsParams(shards_per_client=1), y, None, 5, np.random.default_rng(0))


def test_quantity_sizes_are_unequal_with_a_floor() -> None:
    y = labels(100)
    parts = partition("quantity", QuantityParams(exponent=1.0, min_size=5), y, None, 20, np.random.default_rng(0))
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 5
    assert sizes.max() > 3 * np.median(sizes)  # heavy tail
    # Labels stay IID inside each client: every big client sees most classes.
    big = parts[int(np.argmax(sizes))]
    assert len(np.unique(y[big])) == 10


def test_natural_partition_follows_groups() -> None:
    groups = np.array([2, 0, 1, 2, 2, 0, 1, 1, 1])
    y = np.zeros(len(groups), dtype=np.int64)
    parts = partition("natural", NaturalParams(), y, groups, 3, np.random.default_rng(0))
    assert [p.tolist() for p in parts] == [[1, 5], [2, 6, 7, 8], [0, 3, 4]]
    with pytest.raises(ConfigError, match="data.num_clients = 4: must equal the dataset's 3 natural groups"):
        partition("natural", NaturalParams(), y, groups, 4, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="no natural groups"):
        partition("natural", NaturalParams(), y, None, 3, np.random.default_rng(0))


def test_more_clients_than_samples() -> None:
    with pytest.raises(ConfigError, match="data.num_clients = 11: must be <= the 10 training samples"):
        partition("iid", IidParams(), np.zeros(10, dtype=np.int64), None, 11, np.random.default_rng(0))
