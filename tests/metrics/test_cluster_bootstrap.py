"""Cluster bootstrap (``groups=``): whole groups resampled, one group left out by the jackknife."""

from __future__ import annotations

import numpy as np
import pytest

from natix import metrics as M

K = 4  # draws per image


@pytest.fixture
def data(rng):
    n = 120
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0.01, 0.99)
    q = np.clip(p + rng.normal(0, 0.1, n), 0.01, 0.99)
    return y, p, q


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_singleton_groups_are_the_row_bootstrap(data, method):
    y, p, _ = data
    rows = M.bootstrap_ci(M.mcc, y, p, n_boot=300, method=method, seed=3)
    assert M.bootstrap_ci(M.mcc, y, p, n_boot=300, method=method, seed=3, groups=np.arange(len(y))) == rows


@pytest.mark.parametrize("metric", [M.accuracy, M.auroc, M.mcc, lambda y, p: float(np.mean((p > 0.5) == y))])
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_k_copies_of_each_row_grouped_give_the_ci_of_the_rows(data, metric, method):
    # Each image's K identical draws carry no more information than the image: resampling whole
    # images of the repeated data is resampling rows of the original data.
    y, p, _ = data
    rep = np.repeat(np.arange(len(y)), K)
    alone = M.bootstrap_ci(metric, y, p, n_boot=300, method=method, seed=5)
    grouped = M.bootstrap_ci(metric, y[rep], p[rep], n_boot=300, method=method, seed=5, groups=rep)
    np.testing.assert_allclose(grouped, alone, rtol=0, atol=1e-9)
    naive = M.bootstrap_ci(metric, y[rep], p[rep], n_boot=300, method=method, seed=5)
    assert naive[2] - naive[1] < 0.75 * (alone[2] - alone[1])  # rows as independent: far too narrow


def test_paired_and_seed_bootstraps_take_groups_the_same_way(data):
    y, p, q = data
    rep = np.repeat(np.arange(len(y)), K)
    ids = np.array([f"img{i:03d}" for i in range(len(y))])[rep]  # string groups, as image ids are
    alone = M.paired_bootstrap_diff(M.auroc, y, p, q, n_boot=200, seed=1)
    grouped = M.paired_bootstrap_diff(M.auroc, y[rep], p[rep], q[rep], n_boot=200, seed=1, groups=ids)
    np.testing.assert_allclose(grouped, alone, rtol=0, atol=1e-9)
    scores, ref = np.stack([p, q]), np.stack([q, p])
    one = M.seed_bootstrap_ci(M.mcc, y, scores, reference=ref, n_boot=200, seed=2, method="bca")
    many = M.seed_bootstrap_ci(M.mcc, y[rep], scores[:, rep], reference=ref[:, rep], n_boot=200, seed=2,
                               method="bca", groups=ids)
    np.testing.assert_allclose([v for v in many[:6]], [v for v in one[:6]], rtol=0, atol=1e-9)


def test_groups_must_label_every_row(data):
    y, p, _ = data
    with pytest.raises(ValueError, match="same length"):
        M.bootstrap_ci(M.mcc, y, p, groups=np.arange(3))
