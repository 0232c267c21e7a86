"""FedProx's Synthetic(alpha, beta) generator: shapes, sizes and statistics."""

from __future__ import annotations

import numpy as np
from fedsim.scenarios.datasets.synthetic import SyntheticParams, generate


def test_shapes_and_paper_sizes() -> None:
    x, y, dev = generate(SyntheticParams(alpha=1, beta=1), seed=0, num_devices=30)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.shape[1] == 60 and x.shape[0] == y.shape[0] == dev.shape[0]
    assert set(np.unique(dev)) == set(range(30))
    sizes = np.bincount(dev)
    assert sizes.min() >= 50  # int(lognormal(4, 2)) + 50
    assert 0 <= y.min() and y.max() <= 9
    # lognormal(4, 2): the median device has about e^4 + 50 ~ 105 samples; heavy tail.
    assert 60 < np.median(sizes) < 400
    assert sizes.max() > 5 * np.median(sizes)


def test_seeded() -> None:
    a = generate(SyntheticParams(), 4, 10)
    b = generate(SyntheticParams(), 4, 10)
    c = generate(SyntheticParams(), 5, 10)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0][:50], c[0][:50])


def test_feature_covariance_is_diag_j_plus_1_pow_minus_1_2() -> None:
    x, _, dev = generate(SyntheticParams(samples_per_device=20000), seed=1, num_devices=2)
    xs = x[dev == 0].astype(np.float64)
    var = xs.var(axis=0)
    expected = np.arange(1, 61, dtype=np.float64) ** -1.2
    np.testing.assert_allclose(var, expected, rtol=0.05)
    # Off-diagonal correlations vanish.
    corr = np.corrcoef(xs[:, :5].T)
    assert np.abs(corr[np.triu_indices(5, 1)]).max() < 0.05


def test_beta_spreads_device_feature_means() -> None:
    def spread(beta: float) -> float:
        x, _, dev = generate(SyntheticParams(alpha=0, beta=beta, samples_per_device=400), seed=2, num_devices=40)
        means = np.stack([x[dev == k].mean(axis=0) for k in range(40)])
        # v_k ~ N(B_k, 1), B_k ~ N(0, beta): the per-device average of v_k has variance ~ beta^2 + 1/60.
        return float(means.mean(axis=1).std())

    assert spread(0.0) < 0.35
    assert 0.7 < spread(1.0) < 1.4
    assert spread(5.0) > 3.0


def test_non_iid_devices_label_differently() -> None:
    # Each device has its own W_k, b_k: a classifier fitted on one device transfers badly.
    from sklearn.linear_model import LogisticRegression

    x, y, dev = generate(SyntheticParams(alpha=1, beta=1, samples_per_device=500), seed=0, num_devices=6)
    clf = LogisticRegression(max_iter=2000).fit(x[dev == 0], y[dev == 0])
    assert clf.score(x[dev == 0], y[dev == 0]) > 0.8
    assert np.mean([clf.score(x[dev == k], y[dev == k]) for k in range(1, 6)]) < 0.5


def test_alpha_shift_is_label_invariant_as_in_the_papers_code() -> None:
    # u_k shifts every class logit equally (W_k, b_k ~ N(u_k, 1)), so with the same draws
    # the labels do not depend on alpha: a property of FedProx's generator we keep.
    _, y0, _ = generate(SyntheticParams(alpha=0.0, beta=1, samples_per_device=100), seed=3, num_devices=5)
    _, y5, _ = generate(SyntheticParams(alpha=5.0, beta=1, samples_per_device=100), seed=3, num_devices=5)
    assert np.array_equal(y0, y5)


def test_iid_variant_shares_one_model() -> None:
    x, y, dev = generate(SyntheticParams(iid=True, samples_per_device=3000), seed=0, num_devices=5)
    # Same feature distribution on every device (mean 0) ...
    means = np.stack([x[dev == k].mean(axis=0) for k in range(5)])
    assert np.abs(means).max() < 0.1
    # ... and the same labelling function: a classifier fitted on device 0 transfers.
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(x[dev == 0], y[dev == 0])
    assert clf.score(x[dev == 4], y[dev == 4]) > 0.8
