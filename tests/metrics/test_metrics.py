"""Tests for natix.metrics: scikit-learn agreement, hand examples, closed forms, identities."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from sklearn import metrics as skm

from natix import metrics as M

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _binary_data(rng, n=300, ties=False):
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 * y + 0.5 * rng.random(n) - 0.1 * rng.random(n) + 0.05, 0.0, 1.0)
    if ties:
        p = np.round(p, 1)  # many ties, and some exact 0.5 values
    return y, p


def _selective_data(rng, n, ties):
    errors = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    if errors.min() == errors.max():
        errors[0] = 1 - errors[0]
    confidence = rng.random(n) - 0.3 * errors * rng.random()
    if ties:
        confidence = np.round(confidence, 1)
    return errors, confidence


# --------------------------------------------------------------------------------------------
# binary classification against scikit-learn
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_threshold_metrics_match_sklearn_with_np_round_decisions(rng, ties):
    for _ in range(5):
        y, p = _binary_data(rng, ties=ties)
        if ties:
            p[:5] = 0.5  # the validator's np.round sends 0.5 to class 0
        y_pred = np.round(p)
        assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, y_pred))
        assert M.balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, y_pred))
        assert M.mcc(y, p) == pytest.approx(skm.matthews_corrcoef(y, y_pred))
        np.testing.assert_array_equal(M.predictions(p), y_pred)


def test_threshold_option_moves_decisions(rng):
    y, p = _binary_data(rng)
    for t in (0.2, 0.7):
        y_pred = (p > t).astype(int)
        assert M.accuracy(y, p, threshold=t) == pytest.approx(skm.accuracy_score(y, y_pred))
        assert M.mcc(y, p, threshold=t) == pytest.approx(skm.matthews_corrcoef(y, y_pred))
    assert M.predictions([0.3], threshold=0.3)[0] == 0  # strictly greater


def test_mcc_is_zero_when_undefined():
    assert M.mcc([0, 1, 1], [0.9, 0.9, 0.9]) == 0.0
    assert M.mcc([1, 1, 1], [0.9, 0.9, 0.9]) == 0.0


def test_balanced_accuracy_single_class_is_that_recall():
    assert M.balanced_accuracy([1, 1, 1, 1], [0.9, 0.9, 0.9, 0.1]) == pytest.approx(0.75)


@pytest.mark.parametrize("ties", [False, True])
def test_ranking_metrics_match_sklearn(rng, ties):
    for _ in range(5):
        y, p = _binary_data(rng, ties=ties)
        assert M.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert M.auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    # any real score, not only probabilities
    s = rng.normal(size=len(y)) * 10
    assert M.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_auroc_tie_gets_half_credit():
    assert M.auroc([0, 1], [0.3, 0.3]) == 0.5
    assert M.auroc([0, 0, 1], [0.2, 0.3, 0.3]) == 0.75


def test_probabilistic_metrics_match_sklearn(rng):
    for _ in range(5):
        y, p = _binary_data(rng)
        p = np.clip(p, 0.01, 0.99)
        assert M.nll(y, p) == pytest.approx(skm.log_loss(y, p), rel=1e-12)
        assert M.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), rel=1e-12)


def test_nll_clips_confident_mistakes():
    assert M.nll([1, 0], [0.0, 0.0]) == pytest.approx(-np.log(1e-12) / 2)
    assert M.nll([1], [0.0], eps=1e-3) == pytest.approx(-np.log(1e-3))
    assert np.isfinite(M.nll([0], [1.0]))


# --------------------------------------------------------------------------------------------
# ECE
# --------------------------------------------------------------------------------------------


def test_ece_uniform_hand_example():
    y = [0, 1, 1, 1, 0]
    p = [0.1, 0.3, 0.6, 0.8, 0.9]
    # bin [0, .5): mean p .2, freq .5 -> .3 * 2/5; bin [.5, 1]: mean p .7667, freq .6667 -> .1 * 3/5
    assert M.ece(y, p, n_bins=2) == pytest.approx(0.3 * 2 / 5 + 0.1 * 3 / 5)


def test_ece_quantile_hand_example():
    y = [0, 1, 1, 1, 0]
    p = [0.8, 0.3, 0.6, 0.9, 0.1]  # unsorted on purpose
    # sorted: (.1,0) (.3,1) (.6,1) | (.8,1) (.9,0)
    # bin 1: mean p 1/3, freq 2/3 -> 1/3 * 3/5; bin 2: mean p .85, freq .5 -> .35 * 2/5
    assert M.ece(y, p, n_bins=2, strategy="quantile") == pytest.approx(1 / 3 * 3 / 5 + 0.35 * 2 / 5)


def test_ece_uniform_bin_edges():
    # bins [0,.25) [.25,.5) [.5,.75) [.75,1]: 0.25 opens bin 2, 1.0 falls in the last bin
    y = [1, 0, 1]
    p = [0.0, 0.25, 1.0]
    assert M.ece(y, p, n_bins=4) == pytest.approx((1.0 + 0.25 + 0.0) / 3)


def test_ece_perfectly_calibrated_bins_and_more_bins_than_samples():
    assert M.ece([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], n_bins=10) == 0.0
    assert M.ece([0, 1], [0.2, 0.7], n_bins=15, strategy="quantile") == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------
# selective classification
# --------------------------------------------------------------------------------------------

# hand example: groups {.9}, {.8,.8}, {.7}, {.6}, {.5}
ERR = np.array([0, 1, 0, 0, 1, 1])
CONF = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5])


def test_risk_coverage_curve_hand_example():
    cov, sr, gr, thr = M.risk_coverage_curve(ERR, CONF)
    np.testing.assert_allclose(cov, [1 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    np.testing.assert_allclose(sr, [0, 1 / 3, 1 / 4, 2 / 5, 1 / 2])
    np.testing.assert_allclose(gr, [0, 1 / 6, 1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(thr, [0.9, 0.8, 0.7, 0.6, 0.5])
    # order of the input does not matter
    perm = np.array([3, 5, 0, 2, 4, 1])
    for a, b in zip(M.risk_coverage_curve(ERR[perm], CONF[perm]), (cov, sr, gr, thr)):
        np.testing.assert_allclose(a, b)


def test_aurc_augrc_hand_example():
    aurc = (
        1 / 6 * 0  # [0, 1/6] held at the first point's risk 0
        + 2 / 6 * (0 + 1 / 3) / 2
        + 1 / 6 * (1 / 3 + 1 / 4) / 2
        + 1 / 6 * (1 / 4 + 2 / 5) / 2
        + 1 / 6 * (2 / 5 + 1 / 2) / 2
    )
    augrc = (
        1 / 6 * 0  # starts at (0, 0)
        + 2 / 6 * (0 + 1 / 6) / 2
        + 1 / 6 * (1 / 6 + 1 / 6) / 2
        + 1 / 6 * (1 / 6 + 2 / 6) / 2
        + 1 / 6 * (2 / 6 + 3 / 6) / 2
    )
    assert M.aurc(ERR, CONF) == pytest.approx(aurc)
    assert M.augrc(ERR, CONF) == pytest.approx(augrc)


def test_aurc_start_point_is_the_first_risk():
    # all tied: one point (1, err); the risk is held flat down to coverage 0
    assert M.aurc([0, 1, 1, 0], [0.5] * 4) == pytest.approx(0.5)
    assert M.augrc([0, 1, 1, 0], [0.5] * 4) == pytest.approx(0.25)  # (0,0) -> (1, .5)
    assert M.aurc([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3]) == pytest.approx(
        0.25 * 1 + 0.25 * (1 + 1 / 2) / 2 + 0.25 * (1 / 2 + 1 / 3) / 2 + 0.25 * (1 / 3 + 1 / 4) / 2
    )


@pytest.mark.parametrize("err_count", [1, 3, 7])
def test_closed_forms_perfect_and_worst(rng, err_count):
    n = 10
    e = np.zeros(n, int)
    e[:err_count] = 1
    err = err_count / n
    # tied oracle (all correct tied above all errors tied) and strict perfect ranking
    perfect_tied = 1.0 - e
    perfect_strict = rng.random(n) - 2.0 * e
    assert M.aurc(e, perfect_tied) == pytest.approx(err**2 / 2)
    assert M.augrc(e, perfect_tied) == pytest.approx(err**2 / 2)
    assert M.augrc(e, perfect_strict) == pytest.approx(err**2 / 2)
    # worst: errors above correct
    worst_tied = e.astype(float)
    worst_strict = rng.random(n) + 2.0 * e
    assert M.aurc(e, worst_tied) == pytest.approx(err * 1 + (1 - err) * (1 + err) / 2)
    assert M.augrc(e, worst_tied) == pytest.approx(err - err**2 / 2)
    assert M.augrc(e, worst_strict) == pytest.approx(err - err**2 / 2)
    # strict worst: SR = 1 up to coverage err, then err_count / k
    k = np.arange(err_count, n + 1)
    sr = err_count / k
    expected = err + np.sum((sr[1:] + sr[:-1]) / 2) / n
    assert M.aurc(e, worst_strict) == pytest.approx(expected)


@pytest.mark.parametrize("ties", [False, True])
def test_augrc_auroc_identity(rng, ties):
    for _ in range(100):
        n = int(rng.integers(5, 200))
        e, g = _selective_data(rng, n, ties)
        acc = 1 - e.mean()
        auroc_f = skm.roc_auc_score(1 - e, g)  # independent of our auroc
        expected = (1 - auroc_f) * acc * (1 - acc) + 0.5 * (1 - acc) ** 2
        assert M.augrc(e, g) == pytest.approx(expected, abs=1e-12)
        assert M.auroc_failure(e, g) == pytest.approx(auroc_f, abs=1e-12)
        assert M.e_augrc(e, g) == pytest.approx((1 - auroc_f) * acc * (1 - acc), abs=1e-12)


def test_identity_holds_with_a_single_class_of_outcome():
    e = np.zeros(8, int)
    assert M.augrc(e, np.arange(8.0)) == 0.0
    assert M.augrc(1 - e, np.arange(8.0)) == pytest.approx(0.5)


@pytest.mark.parametrize("ties", [False, True])
def test_excess_areas_are_non_negative(rng, ties):
    for _ in range(100):
        e, g = _selective_data(rng, int(rng.integers(2, 80)), ties)
        assert M.e_augrc(e, g) >= -1e-12
        assert M.aurc_minus_tied_oracle(e, g) >= -1e-12
        expected = M.aurc(e, g) - e.mean() ** 2 / 2
        assert M.aurc_minus_tied_oracle(e, g) == pytest.approx(expected, abs=1e-12)


def test_optimal_aurc_is_the_continuous_perfect_ranking_area():
    assert M.optimal_aurc(0.0) == 0.0
    assert M.optimal_aurc(1.0) == 1.0  # the limit of (1 - err) ln(1 - err) is 0
    for err in (1e-6, 0.05, 0.3, 0.7, 1 - 1e-9):
        # integral of the perfect ranking's risk: 0 up to 1 - err, then (c - (1 - err)) / c
        c = np.geomspace(1 - err, 1, 200_001)  # dense where the curve is steep
        risk = (c - (1 - err)) / c
        area = np.sum(np.diff(c) * (risk[1:] + risk[:-1]) / 2)
        assert M.optimal_aurc(err) == pytest.approx(area, abs=1e-9)
    with pytest.raises(ValueError, match=r"err must lie in \[0, 1\]"):
        M.optimal_aurc(1.5)


def test_e_aurc_hand_example():
    # errors [0, 0, 1]; the error is most confident: points (1/3, 1), (2/3, 1/2), (1, 1/3)
    e, g = [0, 0, 1], [0.7, 0.8, 0.9]
    aurc = 1 / 3 * 1 + 1 / 3 * (1 + 1 / 2) / 2 + 1 / 3 * (1 / 2 + 1 / 3) / 2  # = 13/18
    assert M.aurc(e, g) == pytest.approx(13 / 18)
    assert M.e_aurc(e, g) == pytest.approx(aurc - (1 / 3 + 2 / 3 * np.log(2 / 3)))  # Geifman et al.
    assert M.aurc_minus_tied_oracle(e, g) == pytest.approx(aurc - (1 / 3) ** 2 / 2)


@pytest.mark.parametrize(
    "n_correct,n_errors", [(7, 3), (70, 30), (700, 300), (9, 1), (1, 9), (30, 70)]
)
def test_e_aurc_of_a_perfect_ranking(n_correct, n_errors):
    n = n_correct + n_errors
    e = np.r_[np.zeros(n_correct, int), np.ones(n_errors, int)]
    g = -np.arange(n, dtype=float)  # distinct, every correct sample above every error
    # Trapezoid over (k/n, (k - n0)/k), k = n0..n, from risk 0 at n0/n:
    # (1/n) [sum_{k>n0} (1 - n0/k) - err/2] = err - (n0/n)(H_n - H_n0) - err/(2n)
    err, c0 = n_errors / n, n_correct / n
    harmonic = np.sum(1.0 / np.arange(n_correct + 1, n + 1))
    assert M.aurc(e, g) == pytest.approx(err - c0 * harmonic - err / (2 * n), abs=1e-12)
    # The 1/n terms cancel against AURC*: what is left is the trapezoid's error on the concave
    # curve, h**2/12 * (f'(1) - f'(c0)) with h = 1/n and f'(c) = c0/c**2: negative, O(1/n**2).
    trapezoid_error = (c0 - 1 / c0) / (12 * n**2)
    assert M.e_aurc(e, g) < 0
    assert M.e_aurc(e, g) == pytest.approx(trapezoid_error, rel=0.5 if n <= 10 else 0.05)


@pytest.mark.parametrize("ties", [False, True])
def test_e_aurc_lower_bounds(rng, ties):
    for _ in range(100):
        e, g = _selective_data(rng, int(rng.integers(2, 80)), ties)
        err = e.mean()
        # the gap between the two excess areas is the gap between their references
        assert M.e_aurc(e, g) - M.aurc_minus_tied_oracle(e, g) == pytest.approx(
            err**2 / 2 - M.optimal_aurc(err), abs=1e-12)
        if not ties:  # with distinct confidences the perfect ranking is the minimum
            perfect = -np.argsort(np.argsort(e, kind="stable"), kind="stable").astype(float)
            assert M.e_aurc(e, g) >= M.e_aurc(e, perfect) - 1e-12
            c0 = 1 - err  # twice the asymptotic trapezoid error of test_e_aurc_of_a_perfect_ranking
            assert M.e_aurc(e, perfect) >= (c0 - 1 / c0) / (6 * len(e) ** 2)


def test_excess_areas_of_perfect_rankings(rng):
    e = np.array([0] * 7 + [1] * 3)
    strict = rng.random(10) - 2.0 * e
    assert M.e_augrc(e, 1.0 - e) == pytest.approx(0.0, abs=1e-15)
    assert M.e_augrc(e, strict) == pytest.approx(0.0, abs=1e-15)
    assert M.aurc_minus_tied_oracle(e, 1.0 - e) == pytest.approx(0.0, abs=1e-15)
    # documented: distinct confidences on a perfect ranking leave a small positive excess
    assert 0.0 < M.aurc_minus_tied_oracle(e, strict) < 0.02
    assert M.aurc_minus_tied_oracle(e, e.astype(float)) > 0.4  # worst ranking
    assert M.e_aurc(e, e.astype(float)) > 0.4
    # at err = 1 every confidence has AURC 1 = AURC*
    assert M.e_aurc([1, 1, 1], [0.1, 0.5, 0.9]) == 0.0


def test_risk_at_coverage_hand_example():
    assert M.risk_at_coverage(ERR, CONF, 1 / 6) == 0.0
    assert M.risk_at_coverage(ERR, CONF, 0.1) == 0.0
    assert M.risk_at_coverage(ERR, CONF, 0.4) == pytest.approx(1 / 3)  # the tie enters whole
    assert M.risk_at_coverage(ERR, CONF, 0.5) == pytest.approx(1 / 3)
    assert M.risk_at_coverage(ERR, CONF, 2 / 3) == pytest.approx(1 / 4)
    assert M.risk_at_coverage(ERR, CONF, 1.0) == pytest.approx(1 / 2)


def test_coverage_at_risk_hand_example():
    assert M.coverage_at_risk(ERR, CONF, 0.0) == pytest.approx(1 / 6)
    assert M.coverage_at_risk(ERR, CONF, 0.25) == pytest.approx(4 / 6)
    assert M.coverage_at_risk(ERR, CONF, 0.3) == pytest.approx(4 / 6)
    assert M.coverage_at_risk(ERR, CONF, 0.4) == pytest.approx(5 / 6)
    assert M.coverage_at_risk(ERR, CONF, 0.5) == 1.0
    assert M.coverage_at_risk([1, 0], [0.9, 0.1], 0.4) == 0.0


def test_fpr_at_95_tpr_hand_example():
    correct_conf = np.arange(1.0, 21.0)
    e = np.r_[np.zeros(20, int), 1, 1]
    g = np.r_[correct_conf, 1.5, 10.5]
    # 19 of 20 correct accepted at tau = 2: of the errors only 10.5 is in
    assert M.fpr_at_95_tpr(e, g) == pytest.approx(0.5)
    assert M.fpr_at_95_tpr(e, g, tpr=1.0) == 1.0
    assert M.fpr_at_95_tpr(e, g, tpr=0.5) == pytest.approx(0.0)


@pytest.mark.parametrize("ties", [False, True])
def test_fpr_at_95_tpr_matches_sklearn_roc_curve(rng, ties):
    for _ in range(20):
        e, g = _selective_data(rng, 150, ties)
        fpr, tpr, _ = skm.roc_curve(1 - e, g, drop_intermediate=False)
        expected = fpr[np.argmax(tpr >= 0.95 - 1e-12)]
        assert M.fpr_at_95_tpr(e, g) == pytest.approx(expected)


def test_failure_metrics_undefined_with_one_outcome():
    with pytest.raises(M.UndefinedMetricError, match="correct or all wrong"):
        M.auroc_failure([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(M.UndefinedMetricError, match="correct or all wrong"):
        M.fpr_at_95_tpr([1, 1], [0.1, 0.2])


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n(rng):
    widths = []
    for n in (100, 2000):
        y, p = _binary_data(rng, n=n)
        est, low, high = M.bootstrap_ci(M.accuracy, y, p, n_boot=300, seed=1)
        assert est == M.accuracy(y, p)
        assert low <= est <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): about 4.5 times narrower


def test_bootstrap_resamples_rows_jointly():
    a = np.arange(50.0)
    est, low, high = M.bootstrap_ci(lambda x, z: float(np.mean(x == z)), a, a.copy(), n_boot=200)
    assert (est, low, high) == (1.0, 1.0, 1.0)


def test_bootstrap_is_reproducible(rng):
    y, p = _binary_data(rng, n=80)
    r1 = M.bootstrap_ci(M.auroc, y, p, n_boot=200, seed=3)
    r2 = M.bootstrap_ci(M.auroc, y, p, n_boot=200, seed=3)
    r3 = M.bootstrap_ci(M.auroc, y, p, n_boot=200, seed=4)
    assert r1 == r2
    assert r1[1:] != r3[1:]


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_skips_undefined_resamples(method):
    y = np.array([0] * 9 + [1])  # about a third of resamples have no positive
    s = np.linspace(0, 1, 10)
    est, low, high = M.bootstrap_ci(M.auroc, y, s, n_boot=300, method=method)
    assert est == 1.0
    assert np.isfinite(low) and np.isfinite(high) and low <= high <= 1.0
    with pytest.raises(M.UndefinedMetricError, match="every bootstrap resample"):
        # defined only on the original row order, which no resample of 30 rows reproduces
        M.bootstrap_ci(lambda a: 0.0 if np.all(np.diff(a) == 1) else float("nan"), np.arange(30),
                       method=method)
    with pytest.raises(M.UndefinedMetricError, match="undefined on the full data"):
        M.bootstrap_ci(lambda a: float("nan"), np.arange(30), method=method)


def test_paired_bootstrap_identical_arms_is_exactly_zero(rng):
    y, p = _binary_data(rng, n=120)
    assert M.paired_bootstrap_diff(M.auroc, y, p, p.copy(), n_boot=200) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_detects_a_better_arm(rng):
    y, p = _binary_data(rng, n=400)
    noisy = np.clip(p + rng.normal(0, 0.4, len(p)), 0, 1)
    diff, low, high = M.paired_bootstrap_diff(M.auroc, y, p, noisy, n_boot=300, seed=0)
    assert diff == pytest.approx(M.auroc(y, p) - M.auroc(y, noisy))
    assert 0.0 < low <= diff <= high
    # pairing: the paired interval is narrower than the two unpaired ones combined
    _, la, ha = M.bootstrap_ci(M.auroc, y, p, n_boot=300, seed=0)
    _, lb, hb = M.bootstrap_ci(M.auroc, y, noisy, n_boot=300, seed=0)
    assert high - low < (ha - la) + (hb - lb)


def test_bootstrap_works_with_selective_metrics(rng):
    e, g = _selective_data(rng, 200, ties=True)
    est, low, high = M.bootstrap_ci(M.augrc, e, g, n_boot=200)
    assert low <= est <= high


# The metrics evaluated in blocks of resamples, each with the arrays it takes.
_BATCHED = [
    (M.accuracy, "prob"), (M.balanced_accuracy, "prob"), (M.mcc, "prob"), (M.auroc, "prob"),
    (M.auprc, "prob"), (M.nll, "prob"), (M.brier, "prob"), (M.ece, "prob"),
    (M.augrc, "selective"), (M.e_augrc, "selective"), (M.auroc_failure, "selective"),
]


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("fn,kind", _BATCHED, ids=[f.__name__ for f, _ in _BATCHED])
def test_batched_bootstrap_equals_one_call_per_resample(rng, fn, kind, method):
    # a lambda has no batched form, so it takes the one-call-per-resample path
    if kind == "prob":
        y, p = _binary_data(rng, n=40, ties=True)
        y[:34] = 0  # few positives: some resamples have one class (skipped where undefined)
    else:
        y, p = _selective_data(rng, 40, ties=True)
    fast = M.bootstrap_ci(fn, y, p, n_boot=200, method=method, seed=2)
    slow = M.bootstrap_ci(lambda a, b: fn(a, b), y, p, n_boot=200, method=method, seed=2)
    assert fast == pytest.approx(slow, abs=1e-12)
    q = np.clip(p[::-1] + 0.05, 0.0, 1.0) if kind == "prob" else p[::-1]
    fast = M.paired_bootstrap_diff(fn, y, p, q, n_boot=200, method=method, seed=2)
    slow = M.paired_bootstrap_diff(lambda a, b: fn(a, b), y, p, q, n_boot=200, method=method,
                                   seed=2)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_percentile_method_is_the_quantiles_of_the_resampled_metric(rng):
    y, p = _binary_data(rng, n=70)
    est, low, high = M.bootstrap_ci(M.auroc, y, p, n_boot=300, method="percentile", seed=9)
    idx = np.random.default_rng(9).integers(0, 70, size=(300, 70))
    values = [skm.roc_auc_score(y[r], p[r]) for r in idx if 0 < y[r].sum() < 70]
    assert est == pytest.approx(skm.roc_auc_score(y, p))
    assert (low, high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))


def test_bca_matches_scipy():
    # A right-skewed mean (squared errors of exponential probabilities), where BCa moves both
    # ends right of the percentile interval. Independent resamples: agreement is up to Monte
    # Carlo noise, which at 40,000 resamples is a small fraction of the BCa-percentile shift.
    from scipy import stats

    p = np.clip(np.random.default_rng(5).exponential(0.15, 40), 0, 1)
    y = np.zeros(40, int)
    ours = np.array(M.bootstrap_ci(M.brier, y, p, n_boot=40_000, method="bca", seed=0)[1:])
    pct = np.array(M.bootstrap_ci(M.brier, y, p, n_boot=40_000, method="percentile", seed=0)[1:])
    ref = stats.bootstrap((p**2,), np.mean, method="BCa", n_resamples=40_000, random_state=0)
    ref = np.array([ref.confidence_interval.low, ref.confidence_interval.high])
    assert np.all(ref > pct)
    assert np.all(np.abs(ours - ref) < 0.35 * np.abs(pct - ref))


def test_bca_covers_auroc_better_than_percentile_at_n_60():
    # n = 60, labels 50/50 at random, scores N(0, 1) vs N(2.5, 1): true AUROC = Phi(2.5 / sqrt 2)
    # = 0.961, where the bootstrap distribution of AUROC is biased and skewed. 2,000 repetitions
    # with 1,000 resamples give coverage 0.894 (percentile) and 0.942 (BCa). This reduced run
    # (400 repetitions, 500 resamples, under a second) has a binomial sd of about 0.012 per
    # method; it gives 0.870 and 0.933, and over four other seeds BCa covered 0.925-0.948 and led
    # by 0.04-0.07. Asserted, with that margin: BCa covers >= 0.92, beats percentile by >= 0.02,
    # and a one-sided sign test on the repetitions that only one method covers rejects "equally
    # good" at p < 0.01 (it gave 2e-6 here, at most 0.003 on the other seeds).
    truth = NormalDist().cdf(2.5 / np.sqrt(2))
    rng = np.random.default_rng(7)
    covered = {"percentile": [], "bca": []}
    for rep in range(400):
        y = rng.integers(0, 2, 60)
        s = rng.normal(size=60) + 2.5 * y
        for method, hits in covered.items():
            _, low, high = M.bootstrap_ci(M.auroc, y, s, n_boot=500, method=method, seed=rep)
            hits.append(low <= truth <= high)
    pct, bca = np.array(covered["percentile"]), np.array(covered["bca"])
    assert bca.mean() >= 0.92
    assert bca.mean() - pct.mean() >= 0.02
    only_bca, only_pct = int(np.sum(bca & ~pct)), int(np.sum(pct & ~bca))
    k = only_bca + only_pct
    p_value = sum(math.comb(k, i) for i in range(only_bca, k + 1)) / 2**k
    assert p_value < 0.01


def test_bootstrap_method_auto_threshold():
    assert M.bootstrap_method("auto", M.AUTO_BCA_BELOW - 1) == "bca"
    assert M.bootstrap_method("auto", M.AUTO_BCA_BELOW) == "percentile"
    assert M.bootstrap_method("percentile", 10) == "percentile"
    assert M.bootstrap_method("bca", 10_000) == "bca"
    y = np.array([0, 1] * 30)
    s = np.linspace(0, 1, 60) + 0.2 * y
    # the default is "auto", which is BCa for these 60 rows
    default = M.bootstrap_ci(M.auroc, y, s, n_boot=200)
    assert default == M.bootstrap_ci(M.auroc, y, s, n_boot=200, method="bca")
    assert default != M.bootstrap_ci(M.auroc, y, s, n_boot=200, method="percentile")


def test_bca_of_a_constant_statistic_is_a_point():
    y, p = np.array([0, 1] * 20), np.array([0.2, 0.8] * 20)
    assert M.bootstrap_ci(M.accuracy, y, p, n_boot=100, method="bca") == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# seed bootstrap
# --------------------------------------------------------------------------------------------


def _seeded_probs(rng, y, n_seeds, spread):
    """Per-seed probabilities [S, n]: a shared signal, seed-specific noise and a per-seed bias."""
    bias = spread * np.linspace(-1, 1, n_seeds)
    logits = 1.5 * (2 * y - 1) + rng.normal(0, 1, (n_seeds, len(y))) + bias[:, None]
    return 1 / (1 + np.exp(-logits))


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize(
    "fn", [M.auroc, M.mcc, lambda y, p: M.nll(y, p)], ids=["auroc", "mcc", "nll-loop"]
)
def test_seed_bootstrap_with_one_seed_is_the_row_bootstrap(rng, fn, method):
    y = rng.integers(0, 2, 90)
    a, b = _seeded_probs(rng, y, 1, 0.0), _seeded_probs(rng, y, 1, 0.0)
    res = M.seed_bootstrap_ci(fn, y, a, reference=b, n_boot=300, method=method, seed=4)
    assert res.method == method
    assert (res.estimate, res.low, res.high) == pytest.approx(
        M.bootstrap_ci(fn, y, a[0], n_boot=300, method=method, seed=4), abs=1e-12)
    assert (res.diff, res.diff_low, res.diff_high) == pytest.approx(
        M.paired_bootstrap_diff(fn, y, a[0], b[0], n_boot=300, method=method, seed=4), abs=1e-12)
    alone = M.seed_bootstrap_ci(fn, y, a[0], n_boot=300, method=method, seed=4)  # 1-D = one seed
    assert alone[:3] == res[:3] and alone.diff is None and alone.diff_low is None


def test_seed_bootstrap_estimate_and_diff_are_means_over_seeds(rng):
    y = rng.integers(0, 2, 80)
    a, b = _seeded_probs(rng, y, 3, 1.0), _seeded_probs(rng, y, 3, 0.0)
    res = M.seed_bootstrap_ci(M.mcc, y, a, reference=b, n_boot=200)
    assert res.estimate == pytest.approx(np.mean([M.mcc(y, p) for p in a]))
    assert res.diff == pytest.approx(res.estimate - np.mean([M.mcc(y, p) for p in b]))
    assert res.low <= res.estimate <= res.high and res.diff_low <= res.diff <= res.diff_high
    same = M.seed_bootstrap_ci(M.mcc, y, a, reference=a.copy(), n_boot=200)
    assert (same.diff, same.diff_low, same.diff_high) == (0.0, 0.0, 0.0)


def test_seed_bootstrap_resamples_seeds():
    # The metric reads a per-seed constant, so row resampling changes nothing and the spread is
    # the seeds' alone: values 0, 0, 0, 1 make the resampled mean K/4 with K ~ Binomial(4, 1/4),
    # P(K = 0) = 0.32 and P(K <= 2) = 0.949 < 0.975 <= P(K <= 3): the 95% percentile interval
    # is [0, 3/4].
    y = np.array([0, 1] * 10)
    scores = np.repeat([[0.0], [0.0], [0.0], [1.0]], 20, axis=1)

    def first(y_true, s):
        return float(s[0])

    res = M.seed_bootstrap_ci(first, y, scores, n_boot=4000, method="percentile")
    assert (res.estimate, res.low, res.high) == (0.25, 0.0, 0.75)
    tied = M.seed_bootstrap_ci(first, y, np.zeros((4, 20)), n_boot=500)
    assert (tied.low, tied.high) == (0.0, 0.0)


def test_seed_bootstrap_skips_seeds_where_the_metric_is_undefined(rng):
    def picky(y_true, s):  # undefined on the seed whose scores are all 0.5
        if np.all(s == 0.5):
            raise M.UndefinedMetricError("flat")
        return M.accuracy(y_true, s)

    y = rng.integers(0, 2, 50)
    scores = np.vstack([_seeded_probs(rng, y, 2, 0.0), np.full((1, 50), 0.5)])
    res = M.seed_bootstrap_ci(picky, y, scores, n_boot=100)
    assert res.estimate == pytest.approx(np.mean([M.accuracy(y, s) for s in scores[:2]]))
    with pytest.raises(M.UndefinedMetricError, match="undefined on the full data"):
        M.seed_bootstrap_ci(picky, y, np.full((2, 50), 0.5), n_boot=100)


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------

Y = [0, 1, 1, 0]
P = [0.1, 0.8, 0.6, 0.4]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.accuracy([0, 1, 1], P), "same length"),
        (lambda: M.accuracy([], []), "empty"),
        (lambda: M.accuracy([0, 2, 1, 0], P), "only 0 and 1"),
        (lambda: M.accuracy(Y, [0.1, 1.5, 0.2, 0.3]), r"y_prob must lie in \[0, 1\]"),
        (lambda: M.brier(Y, [0.1, np.nan, 0.2, 0.3]), r"y_prob must lie in \[0, 1\]"),
        (lambda: M.mcc(np.array([Y, Y]), np.array([P, P])), "must be 1-D"),
        (lambda: M.accuracy(Y, ["a", "b", "c", "d"]), "must be numeric"),
        (lambda: M.accuracy(Y, P, threshold=1.5), "threshold must lie"),
        (lambda: M.auroc(Y, [0.1, np.inf, 0.2, 0.3]), "y_score must be finite"),
        (lambda: M.auroc([1, 1, 1, 1], P), "only one class"),
        (lambda: M.auprc([0, 0, 0, 0], P), "no positives"),
        (lambda: M.nll(Y, P, eps=0.0), "eps must lie"),
        (lambda: M.ece(Y, P, n_bins=0), "n_bins must be a positive integer"),
        (lambda: M.ece(Y, P, n_bins=2.5), "n_bins must be a positive integer"),
        (lambda: M.ece(Y, P, strategy="equal"), "strategy must be"),
        (lambda: M.risk_coverage_curve([0, 1, 2], [0.1, 0.2, 0.3]), "errors must contain only"),
        (lambda: M.aurc([0, 1], [0.1, np.nan]), "confidence must be finite"),
        (lambda: M.augrc([0, 1], [0.1]), "same length"),
        (lambda: M.risk_at_coverage(Y, P, 0.0), r"coverage must lie in \(0, 1\]"),
        (lambda: M.risk_at_coverage(Y, P, 1.2), r"coverage must lie in \(0, 1\]"),
        (lambda: M.coverage_at_risk(Y, P, -0.1), r"risk must lie in \[0, 1\]"),
        (lambda: M.fpr_at_95_tpr(Y, P, tpr=0.0), "tpr must lie"),
        (lambda: M.bootstrap_ci(M.accuracy, Y, P, n_boot=0), "n_boot must be"),
        (lambda: M.bootstrap_ci(M.accuracy, Y, P, alpha=1.0), "alpha must lie"),
        (lambda: M.bootstrap_ci(M.accuracy, Y, P[:3]), "same length"),
        (lambda: M.bootstrap_ci(M.accuracy), "at least one array"),
        (lambda: M.paired_bootstrap_diff(M.auroc, Y, P, P[:3]), "same length"),
        (lambda: M.bootstrap_ci(M.accuracy, Y, P, method="BCa"), "one of percentile, bca, auto"),
        (lambda: M.paired_bootstrap_diff(M.auroc, Y, P, P, method="basic"), "method must be"),
        (lambda: M.bootstrap_method("student", 10), "method must be one of"),
        (lambda: M.seed_bootstrap_ci(M.auroc, Y, [P, P], reference=[P]), "reference must have"),
        (lambda: M.seed_bootstrap_ci(M.auroc, Y, [[P]]), r"scores must have shape \(seeds, n\)"),
        (lambda: M.seed_bootstrap_ci(M.auroc, Y, np.empty((0, 4))), r"scores must have shape"),
        (lambda: M.seed_bootstrap_ci(M.auroc, Y[:3], [P, P]), "same length"),
        (lambda: M.seed_bootstrap_ci(M.auroc, Y, [P, P], n_boot=0), "n_boot must be"),
        (lambda: M.seed_bootstrap_ci(M.auroc, Y, [P, P], method="x"), "method must be one of"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
