"""The shared primitives: confidence, decision errors, the deferral curve and s_d, reliability curves."""

import itertools
import math

import numpy as np
import pytest

from natix import metrics as M


def test_confidence_is_the_gate_when_given_else_the_max_probability():
    p = np.array([0.1, 0.5, 0.8])
    np.testing.assert_array_equal(M.confidence(p), [0.9, 0.5, 0.8])
    np.testing.assert_array_equal(M.confidence(p, gate=[3.0, -1.0, 0.0]), [3.0, -1.0, 0.0])


def test_decisions_of_no_probabilities_are_empty():
    out = M.predictions(np.array([]))
    assert out.dtype == np.int64 and out.shape == (0,)
    with pytest.raises(ValueError, match="threshold"):
        M.predictions([], threshold=2.0)


def test_decision_errors_round_half_to_class_zero_as_the_validator():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.5, 0.5, 0.51, 0.49])
    np.testing.assert_array_equal(M.decision_errors(y, p), [0, 1, 0, 0])
    with pytest.raises(ValueError, match="same length"):
        M.decision_errors([0, 1], [0.2])


def _brute_force_joint(c1, c2, g):
    """Mean joint accuracy per deferral count over every order of the tied confidences."""
    n = len(c1)
    curves = []
    for perm in itertools.permutations(range(n)):
        order = sorted(range(n), key=lambda i: (g[i], perm.index(i)))
        joint = [np.mean([c2[i] if r < k else c1[i] for r, i in enumerate(order)]) for k in range(n + 1)]
        curves.append(joint)
    return np.mean(curves, axis=0)


def test_deferral_curve_averages_tied_confidences_over_their_orders():
    c1 = np.array([1, 0, 0, 1, 1, 0])
    c2 = np.array([1, 1, 0, 0, 1, 1])
    g = np.array([0.9, 0.6, 0.6, 0.6, 0.7, 0.55])
    curve = M.deferral_curve(c1, c2, g)
    np.testing.assert_allclose(curve.joint, _brute_force_joint(c1, c2, g), atol=1e-12)
    assert curve.joint[0] == c1.mean() and curve.joint[-1] == c2.mean()


def test_s_d_does_not_depend_on_the_row_order():
    rng = np.random.default_rng(0)
    c1, c2 = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    g = np.round(rng.random(300), 1)  # many ties
    perm = rng.permutation(300)
    assert M.deferral_curve(c1, c2, g).s_d == M.deferral_curve(c1[perm], c2[perm], g[perm]).s_d


def test_s_d_is_one_for_the_ideal_order_and_about_zero_for_a_random_one():
    rng = np.random.default_rng(1)
    c1, c2 = rng.integers(0, 2, 4000), rng.integers(0, 2, 4000)
    ideal = -(c2 - c1) + rng.random(4000) * 1e-3  # what stage 2 gains most is deferred first
    assert M.deferral_curve(c1, c2, ideal).s_d == pytest.approx(1.0, abs=1e-3)
    assert abs(M.deferral_curve(c1, c2, rng.random(4000)).s_d) < 0.1


def test_s_d_is_nan_when_no_deferral_can_help_or_hurt():
    c = np.ones(5, dtype=int)
    assert math.isnan(M.deferral_curve(c, c, np.arange(5.0)).s_d)


def test_deferred_counts_and_curve_points_at_thresholds():
    g = np.array([0.2, 0.4, 0.4, 0.9])
    k = M.deferred_counts(g, [-np.inf, 0.4, 0.5, np.inf])
    np.testing.assert_array_equal(k, [0, 1, 3, 4])
    curve = M.deferral_curve([1, 0, 1, 1], [0, 1, 1, 1], g)
    np.testing.assert_array_equal(curve.at(k)["deferral_ratio"], k / 4)


def test_reliability_curve_bins_as_the_ece():
    rng = np.random.default_rng(2)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    for strategy in ("uniform", "quantile"):
        mean_p, freq, counts = M.reliability_curve(y, p, strategy=strategy)  # the ECE's default bins
        assert counts.sum() == 500 and len(counts) == 15
        ece = float(np.sum(counts * np.abs(freq - mean_p)) / 500)
        assert ece == pytest.approx(M.ece(y, p, strategy=strategy), abs=1e-12)


def test_split_metrics_names_and_undefined_values():
    out = M.split_metrics([1, 1, 1], [0.9, 0.8, 0.3])
    assert set(M.METRIC_NAMES) <= set(out) and out["n"] == 3
    assert math.isnan(out["auroc"])  # one class only
    assert M.split_metrics([0, 1], [0.2, 0.7], names=("accuracy",)) == {"accuracy": 1.0, "n": 2}
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        M.split_metrics([0, 1], [0.2, 0.7], names=("acc",))
