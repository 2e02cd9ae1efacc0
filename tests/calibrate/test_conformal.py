"""Split conformal, conformal risk control and Learn-then-Test: exact values, validity, MAPIE, bad inputs.

The validity checks draw many calibration/test splits from a known score distribution
(``p = sigmoid(z)``, ``z ~ N(+-mu, 1)`` by class). The default run uses a reduced number of
repetitions that still separates an off-by-one rank or a missing multiplicity correction from
the guarantee; ``NATIX_FULL_VALIDITY=1`` multiplies every repetition count by 7 (e.g. 1000 → 7000).
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import numpy as np
import pytest
from scipy.stats import binom, kstest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError

from natix.calibrate.checks import sigmoid, two_column
from natix.calibrate.conformal import (
    APS,
    LAC,
    ConformalRiskControl,
    LearnThenTest,
    SplitConformal,
    binomial_p_value,
    calibration_folds,
    confidence_and_errors,
    conformal_quantile,
    conformal_rank,
    hoeffding_bentkus_p_value,
    ltt_start,
)
from natix.errors import ConfigError, DataError

FULL = os.environ.get("NATIX_FULL_VALIDITY", "") == "1"


def reps(n: int) -> int:
    """Monte Carlo repetitions: ``n`` by default, 7n with NATIX_FULL_VALIDITY=1."""
    return 7 * n if FULL else n


def draw(rng, shape, *, mu=1.0, prior=0.5, mu0=None):
    """``p = sigmoid(z)``, ``z ~ N(mu, 1)`` for class 1 and ``N(-mu0, 1)`` for class 0 (``mu0 = mu`` by default)."""
    y = (rng.random(shape) < prior).astype(np.int64)
    mu0 = mu if mu0 is None else mu0
    z = rng.normal(np.where(y == 1, mu, -mu0), 1.0)
    return sigmoid(z), y


def draw_class(rng, shape, c, *, mu=1.0, mu0=None):
    """Scores of class ``c`` only."""
    mu0 = mu if mu0 is None else mu0
    return sigmoid(rng.normal(mu if c == 1 else -mu0, 1.0, size=shape))


def mc_mean(x):
    """Mean and 3 standard errors of per-repetition values."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(), 3 * x.std(ddof=1) / np.sqrt(len(x))


def _fnr_callable(lambdas, p, y):
    """The miss indicator of positives as a callable CRC loss ``(n, n_lambda)``."""
    return ((p[:, None] < 1 - lambdas[None, :]) & (y[:, None] == 1)).astype(np.float64)


ESTIMATORS = [
    (lambda: SplitConformal(alpha=0.1), "proba"),
    (lambda: SplitConformal(score=APS(randomized=True, random_state=0), alpha=0.1), "proba"),
    (lambda: SplitConformal(score="aps", alpha=0.1, mondrian=True), "proba"),
    (lambda: ConformalRiskControl(alpha=0.1), "proba"),
    (lambda: ConformalRiskControl(alpha=0.1, loss=_fnr_callable), "proba"),
    (lambda: LearnThenTest(alpha=0.1, delta=0.1), "conf"),
    (lambda: LearnThenTest(alpha=0.1, delta=0.1, p_value="hb"), "conf"),
]


def fit_args(kind, rng, n=400):
    p, y = draw(rng, n, mu=2.0)
    return (p, y) if kind == "proba" else confidence_and_errors(p, y)


# --------------------------------------------------------------------------- common estimator checks


@pytest.mark.parametrize("make, kind", ESTIMATORS)
def test_estimator_contract(make, kind, rng):
    est = make()
    args = fit_args(kind, rng)
    with pytest.raises(NotFittedError):
        est.predict_set(args[0]) if hasattr(est, "predict_set") else (
            est.predict(args[0]) if hasattr(est, "predict") else est.accept(args[0]))
    assert est.fit(*args) is est
    assert est.n_calibration_ > 0
    twin = clone(est)
    assert repr(twin) == repr(est)
    assert not hasattr(twin, "n_calibration_")
    with pytest.raises(TypeError):
        type(est)(0.1)  # hyperparameters are keyword-only


# --------------------------------------------------------------------------- exact quantiles


@pytest.mark.parametrize("n, alpha, rank", [
    (9, 0.1, 9),     # (n+1)(1-alpha) = 9 exactly
    (9, 0.3, 7),     # 10 * (1 - 0.3) = 7.000000000000001 in floats: still rank 7
    (25, 0.1, 24),   # ceil(23.4)
    (99, 0.1, 90),
    (8, 0.1, 9),     # ceil(8.1) = 9 > n
    (0, 0.1, 1),
])
def test_conformal_rank(n, alpha, rank):
    assert conformal_rank(n, alpha) == rank


def test_conformal_quantile_hand_examples(rng):
    scores = rng.permutation(np.arange(1, 10) / 10)  # 0.1 .. 0.9, n = 9
    assert conformal_quantile(scores, 0.2) == 0.8     # rank ceil(10 * 0.8) = 8
    assert conformal_quantile(scores, 0.3) == 0.7     # rank 7
    assert conformal_quantile(scores, 0.5) == 0.5     # rank 5
    assert conformal_quantile(scores, 0.05) == np.inf  # rank 10 > 9
    assert conformal_quantile(scores, 0.1) == 0.9     # rank 9 = n


def test_split_conformal_hand_example():
    p = np.array([0.9, 0.8, 0.3, 0.6, 0.95, 0.2, 0.7, 0.4, 0.85])
    y = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0])
    # LAC scores 1 - p_y: 0.1 0.2 0.3 0.4 0.05 0.2 0.3 0.4 0.85; sorted, the 8th (alpha=0.2) is 0.4
    sc = SplitConformal(alpha=0.2).fit(p, y)
    np.testing.assert_allclose(sc.score_.score(two_column(p), y),
                               [0.1, 0.2, 0.3, 0.4, 0.05, 0.2, 0.3, 0.4, 0.85], atol=1e-12)
    assert sc.quantile_ == pytest.approx(0.4)
    assert sc.quantiles_ is None
    assert sc.coverage_bounds_ == pytest.approx((0.8, 0.9))
    sets = sc.predict_set(np.array([0.5, 0.65, 0.35, 0.99, 0.61]))
    expected = np.array([[False, False],   # both labels score 0.5 > 0.4: empty set
                         [False, True],    # 1 - 0.65 = 0.35 <= 0.4
                         [True, False],
                         [False, True],
                         [False, True]])
    np.testing.assert_array_equal(sets, expected)
    # the calibration set itself: exactly rank / n of its labels are covered (8 of 9)
    cal = sc.predict_set(p)[np.arange(len(y)), y]
    assert cal.sum() == 8
    # rank 10 > n = 9: the quantile is +inf and every set is full
    sc = SplitConformal(alpha=0.05).fit(p, y)
    assert sc.quantile_ == np.inf
    assert sc.predict_set(p).all()
    assert sc.coverage_bounds_[1] == 1.0


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.37])
def test_calibration_points_covered_at_rank(alpha, rng):
    p, y = draw(rng, 301)
    sc = SplitConformal(alpha=alpha).fit(p, y)
    covered = sc.predict_set(p)[np.arange(len(y)), y]
    assert covered.sum() == conformal_rank(len(y), alpha)  # continuous scores: no ties


def test_mondrian_and_groups_quantiles(rng):
    p, y = draw(rng, 400, prior=0.3)
    s = LAC().score(two_column(p), y)
    sc = SplitConformal(alpha=0.1, mondrian=True).fit(p, y)
    assert set(sc.quantiles_) == {0, 1}
    for c in (0, 1):
        assert sc.quantiles_[c] == conformal_quantile(s[y == c], 0.1)
        assert sc.counts_[c] == int((y == c).sum())
    n_min = min(sc.counts_.values())
    assert sc.coverage_bounds_ == pytest.approx((0.9, 0.9 + 1 / (n_min + 1)))
    pt = rng.random(50)
    sets = sc.predict_set(pt)
    np.testing.assert_array_equal(sets[:, 0], 1 - (1 - pt) <= sc.quantiles_[0])
    np.testing.assert_array_equal(sets[:, 1], 1 - pt <= sc.quantiles_[1])

    groups = rng.choice(np.array(["day", "night", "rain"]), size=len(y))
    sg = SplitConformal(alpha=0.1).fit(p, y, groups=groups)
    assert set(sg.quantiles_) == {"day", "night", "rain"}
    for gname in ("day", "night", "rain"):
        assert sg.quantiles_[gname] == conformal_quantile(s[groups == gname], 0.1)
    gt = np.array(["night"] * 25 + ["day"] * 25)
    sets = sg.predict_set(pt, groups=gt)
    np.testing.assert_array_equal(sets[:25, 1], 1 - pt[:25] <= sg.quantiles_["night"])
    np.testing.assert_array_equal(sets[25:, 1], 1 - pt[25:] <= sg.quantiles_["day"])
    with pytest.raises(DataError, match="pass groups"):
        sg.predict_set(pt)
    with pytest.raises(DataError, match="not in the calibration data"):
        sg.predict_set(pt[:2], groups=["day", "snow"])
    with pytest.raises(DataError, match="not to fit"):
        sc.predict_set(pt, groups=gt)

    both = SplitConformal(alpha=0.1, mondrian=True).fit(p, y, groups=groups)
    m = (groups == "rain") & (y == 1)
    assert both.quantiles_[("rain", 1)] == conformal_quantile(s[m], 0.1)
    assert both.counts_[("rain", 1)] == int(m.sum())


def test_aps_scores_by_hand():
    p2 = two_column(np.array([0.8, 0.3, 0.5]))
    aps = APS()
    # top label scores its own mass, the runner-up scores 1; a tie ranks both labels "at least as high"
    np.testing.assert_allclose(aps.class_scores(p2), [[1.0, 0.8], [0.7, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(aps.score(p2, np.array([1, 1, 0])), [0.8, 1.0, 1.0])
    # {k : s <= 0.75} is empty for the first and the tied last row; the default adds the top label(s)
    empty_ok = APS(allow_empty=True)
    np.testing.assert_array_equal(empty_ok.set_from_threshold(p2, 0.75),
                                  [[False, False], [True, False], [False, False]])
    np.testing.assert_array_equal(aps.set_from_threshold(p2, 0.75), [[False, True], [True, False], [True, True]])
    for est in (aps, empty_ok):
        np.testing.assert_array_equal(est.set_from_threshold(p2, 1.0), np.ones((3, 2), dtype=bool))
    r = APS(randomized=True, random_state=0).class_scores(p2)
    # randomized: U p_top for the top label, p_top + U p_second for the other (same U per row)
    u = r[0, 1] / 0.8
    assert 0 <= u <= 1 and r[0, 0] == pytest.approx(0.8 + u * 0.2)
    assert np.all(r <= 1.0) and np.all(r >= 0.0)
    # one fresh U per row: on identical rows the top label's score U * 0.8 is uniform on [0, 0.8]
    top = APS(randomized=True, random_state=1).class_scores(two_column(np.full(4000, 0.8)))[:, 1] / 0.8
    assert kstest(top, "uniform").pvalue > 1e-3


def test_aps_matches_mapie_scores(rng):
    from mapie.conformity_scores import APSConformityScore

    p, y = draw(rng, 200)
    ours = APS().score(two_column(p), y)
    # MAPIE's get_conformity_scores always randomizes; its deterministic part is the cumulated mass.
    # Its label_binarize collapses two classes to one column, so pad an empty third class.
    padded = np.c_[two_column(p), np.zeros(len(p))]
    theirs, _ = APSConformityScore().get_true_label_cumsum_proba(y, padded, np.array([0, 1, 2]))
    np.testing.assert_allclose(ours, np.ravel(theirs), atol=1e-12)


def test_deterministic_aps_sets_are_never_empty(rng):
    """A confident classifier: qhat < 1, so old deterministic APS leaves every row above qhat with no label."""
    n, alpha, m = 500, 0.1, 2000
    p, y = draw(rng, n, mu=2.5)
    pt, _ = draw(rng, m, mu=2.5)
    old = SplitConformal(score=APS(allow_empty=True), alpha=alpha).fit(p, y)
    new = SplitConformal(score="aps", alpha=alpha).fit(p, y)
    assert old.quantile_ == new.quantile_ < 1  # same scores, same qhat: only the sets differ
    old_sets, new_sets = old.predict_set(pt), new.predict_set(pt)
    top = np.c_[pt <= 0.5, pt >= 0.5]
    empty = ~old_sets.any(axis=1)
    np.testing.assert_array_equal(empty, np.maximum(pt, 1 - pt) > old.quantile_)
    assert empty.mean() > 0.05  # 13% of these rows
    assert new_sets.any(axis=1).all()
    np.testing.assert_array_equal(new_sets, old_sets | top)  # the top label is added, nothing else changes
    # randomized APS keeps its empty sets by default (its upper coverage bound needs them)
    rand = SplitConformal(score=APS(randomized=True, random_state=0), alpha=alpha).fit(p, y)
    assert not rand.predict_set(pt).any(axis=1).all()
    forced = SplitConformal(score=APS(randomized=True, allow_empty=False, random_state=0), alpha=alpha).fit(p, y)
    assert forced.predict_set(pt).any(axis=1).all()


@pytest.mark.parametrize("n, alpha, mu", [(25, 0.1, 2.5), (200, 0.05, 2.0), (100, 0.2, 1.0)])
def test_non_empty_aps_coverage(n, alpha, mu):
    """Adding the top label keeps coverage >= 1 - alpha (the old sets' coverage is the lower reference)."""
    rng = np.random.default_rng(n)
    R, m = reps(400), 300
    cal_p, cal_y = draw(rng, (R, n), mu=mu)
    te_p, te_y = draw(rng, (R, m), mu=mu)
    cov = {True: np.empty(R), False: np.empty(R)}
    for r in range(R):
        for allow in cov:
            sc = SplitConformal(score=APS(allow_empty=allow), alpha=alpha).fit(cal_p[r], cal_y[r])
            sets = sc.predict_set(te_p[r])
            cov[allow][r] = sets[np.arange(m), te_y[r]].mean()
            if not allow:
                assert sets.any(axis=1).all()
    assert np.all(cov[False] >= cov[True])
    for allow in cov:
        mean, tol = mc_mean(cov[allow])
        assert mean >= 1 - alpha - tol, (allow, mean, tol)


# --------------------------------------------------------------------------- validity: split conformal


def coverage_runs(rng, *, n, alpha, n_reps, m=500, est=None, mu=1.0):
    cal_p, cal_y = draw(rng, (n_reps, n), mu=mu)
    te_p, te_y = draw(rng, (n_reps, m), mu=mu)
    cov = np.empty(n_reps)
    for r in range(n_reps):
        sc = (est or SplitConformal(alpha=alpha)).fit(cal_p[r], cal_y[r])
        cov[r] = sc.predict_set(te_p[r])[np.arange(m), te_y[r]].mean()
    return cov


@pytest.mark.slow
@pytest.mark.parametrize("n, alpha", [(10, 0.2), (25, 0.1), (200, 0.05)])
def test_split_conformal_marginal_coverage(n, alpha):
    cov = coverage_runs(np.random.default_rng(n), n=n, alpha=alpha, n_reps=reps(1000))
    mean, tol = mc_mean(cov)
    assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n + 1) + tol, (mean, tol)


@pytest.mark.slow
def test_aps_coverage():
    n, alpha, R = 20, 0.15, reps(600)
    rng = np.random.default_rng(7)
    est = SplitConformal(score=APS(randomized=True, random_state=1), alpha=alpha)
    mean, tol = mc_mean(coverage_runs(rng, n=n, alpha=alpha, n_reps=R, est=est))
    assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n + 1) + tol, (mean, tol)
    # deterministic APS: every runner-up label scores exactly 1. With 16% errors > alpha, qhat = 1 in
    # most draws and sets are full: coverage stays above 1 - alpha but exceeds the no-ties upper bound
    mean, tol = mc_mean(coverage_runs(rng, n=n, alpha=alpha, n_reps=R, est=SplitConformal(score="aps", alpha=alpha)))
    assert mean >= 1 - alpha - tol, (mean, tol)
    assert mean > 1 - alpha + 1 / (n + 1) + tol, (mean, tol)


@pytest.mark.slow
def test_mondrian_class_conditional_coverage():
    """Imbalanced classes of unequal difficulty: each class is covered at 1 - alpha with Mondrian."""
    rng = np.random.default_rng(3)
    n_c, alpha, m, R = {0: 30, 1: 12}, 0.15, 400, reps(600)
    kw = {"mu": 0.3, "mu0": 2.0}  # class 1 is hard, class 0 easy
    cov = {False: {0: [], 1: []}, True: {0: [], 1: []}}
    cal = {c: draw_class(rng, (R, n_c[c]), c, **kw) for c in (0, 1)}
    test = {c: draw_class(rng, (R, m), c, **kw) for c in (0, 1)}
    y_cal = np.r_[np.zeros(n_c[0], int), np.ones(n_c[1], int)]
    for r in range(R):
        p_cal = np.r_[cal[0][r], cal[1][r]]
        for mondrian in (False, True):
            sc = SplitConformal(alpha=alpha, mondrian=mondrian).fit(p_cal, y_cal)
            for c in (0, 1):
                cov[mondrian][c].append(sc.predict_set(test[c][r])[:, c].mean())
    for c in (0, 1):
        mean, tol = mc_mean(cov[True][c])
        assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n_c[c] + 1) + tol, (c, mean, tol)
    # the check has power: pooled quantiles under-cover the hard class
    mean, tol = mc_mean(cov[False][1])
    assert mean + tol < 1 - alpha


@pytest.mark.slow
def test_group_conditional_coverage():
    rng = np.random.default_rng(4)
    alpha, n_g, m, R = 0.2, 15, 300, reps(400)
    mus = {"easy": 2.5, "hard": 0.2}
    cov = {g: [] for g in mus}
    for r in range(R):
        parts = [draw(rng, n_g, mu=mus[g]) for g in mus]
        p = np.concatenate([a for a, _ in parts])
        y = np.concatenate([b for _, b in parts])
        groups = np.repeat(list(mus), n_g)
        sc = SplitConformal(alpha=alpha).fit(p, y, groups=groups)
        for g, mu in mus.items():
            pt, yt = draw(rng, m, mu=mu)
            cov[g].append(sc.predict_set(pt, groups=np.full(m, g))[np.arange(m), yt].mean())
    for g in mus:
        mean, tol = mc_mean(cov[g])
        assert 1 - alpha - tol <= mean <= 1 - alpha + 1 / (n_g + 1) + tol, (g, mean, tol)


# --------------------------------------------------------------------------- conformal risk control


def test_crc_fnr_hand_example(rng):
    pos = rng.permutation(np.arange(1, 20) / 20)  # 19 positives: 0.05 .. 0.95
    p = np.r_[pos, rng.random(30)]
    y = np.r_[np.ones(19, int), np.zeros(30, int)]
    crc = ConformalRiskControl(alpha=0.2).fit(p, y)
    # misses allowed m = floor(0.2 * 20 - 1) = 3: the threshold is the 4th smallest positive score
    assert crc.threshold_ == pytest.approx(0.20)
    assert crc.lambda_ == pytest.approx(0.80)
    assert crc.empirical_risk_ == pytest.approx(3 / 19)
    assert crc.n_calibration_ == 19

    def bound(t):  # (n/(n+1)) R_hat + B/(n+1)
        return (19 / 20) * np.mean(pos < t) + 1 / 20

    assert bound(crc.threshold_) <= 0.2 < bound(0.25)  # the infimum over lambda = sup over thresholds
    np.testing.assert_array_equal(crc.predict([0.19, 0.2, 0.9]), [0, 1, 1])


def test_crc_callable_matches_exact_fnr(rng):
    p, y = draw(rng, 3000)

    def fnr_on_positives(lambdas, q, t):
        return (q[:, None] < 1 - lambdas[None, :]).astype(float)

    exact = ConformalRiskControl(alpha=0.1).fit(p, y)
    grid = np.linspace(0, 1, 2001)
    gridded = ConformalRiskControl(loss=fnr_on_positives, alpha=0.1, lambdas=grid).fit(p[y == 1], y[y == 1])
    # the grid can only land on a lambda at or above the exact infimum, within one step
    assert exact.lambda_ - 1e-12 <= gridded.lambda_ <= exact.lambda_ + grid[1]
    assert gridded.threshold_ == pytest.approx(1 - gridded.lambda_)
    assert gridded.empirical_risk_ <= exact.empirical_risk_ + 1e-12


def test_crc_callable_checks(rng):
    p, y = draw(rng, 200)
    with pytest.raises(DataError, match="non-increasing"):
        ConformalRiskControl(loss=lambda lam, q, t: np.tile(lam, (len(q), 1))).fit(p, y)
    with pytest.raises(DataError, match=r"\[0, bound"):
        ConformalRiskControl(loss=lambda lam, q, t: np.full((len(q), len(lam)), 2.0)).fit(p, y)
    with pytest.raises(DataError, match="shape"):
        ConformalRiskControl(loss=lambda lam, q, t: np.zeros(len(q))).fit(p, y)
    with pytest.raises(DataError, match="cannot reach"):
        ConformalRiskControl(loss=lambda lam, q, t: np.full((len(q), len(lam)), 0.5)).fit(p, y)
    with pytest.raises(ConfigError, match="increasing"):
        ConformalRiskControl(loss=lambda lam, q, t: q, lambdas=[0.5, 0.2]).fit(p, y)

    def two(lam, q, t):  # a miss costs 2: B = 2 needs n >= B/alpha - 1 = 19
        return 2.0 * (q[:, None] < 1 - lam[None, :])

    with pytest.raises(DataError, match="at least 19 calibration points"):
        ConformalRiskControl(loss=two, bound=2.0, alpha=0.1).fit(p[:18], y[:18])
    # with n = 19 the bound 2/20 uses the whole budget: no point may be missed
    crc = ConformalRiskControl(loss=two, bound=2.0, alpha=0.1).fit(p[:19], y[:19])
    assert crc.empirical_risk_ == 0 and crc.threshold_ <= p[:19].min()


@pytest.mark.slow
@pytest.mark.parametrize("n_pos, alpha", [(20, 0.2), (60, 0.1)])
def test_crc_fnr_validity(n_pos, alpha):
    rng = np.random.default_rng(n_pos)
    R, m = reps(1000), 500
    cal_pos = draw_class(rng, (R, n_pos), 1)
    cal_neg = draw_class(rng, (R, 37), 0)  # negatives are ignored by FNR control
    test_pos = draw_class(rng, (R, m), 1)
    y = np.r_[np.ones(n_pos, int), np.zeros(37, int)]
    fnr = np.empty(R)
    for r in range(R):
        crc = ConformalRiskControl(alpha=alpha).fit(np.r_[cal_pos[r], cal_neg[r]], y)
        fnr[r] = 1 - crc.predict(test_pos[r]).mean()
    mean, tol = mc_mean(fnr)
    assert alpha - 2 / (n_pos + 1) - tol <= mean <= alpha + tol, (mean, tol)


# --------------------------------------------------------------------------- learn then test


def test_ltt_p_values_and_fixed_sequence_by_hand():
    # 50 clean answers at the top, a burst of 12 errors, then 300 clean answers
    g = np.arange(362, 0, -1).astype(float)
    e = np.zeros(362, int)
    e[50:62] = 1
    ltt = LearnThenTest(alpha=0.1, delta=0.1, min_accepted=20, n_thresholds=362).fit(g, e)
    assert np.all(np.diff(ltt.thresholds_) < 0)  # highest first
    tested = ~np.isnan(ltt.p_values_)
    # tested: at least min_accepted points, and enough that zero errors could reject (0.9^n <= 0.1: n >= 22)
    np.testing.assert_array_equal(tested, ltt.n_accepted_ >= 22)
    assert 0.9 ** 21 > 0.1 >= 0.9 ** 22
    k = np.round(ltt.risks_ * ltt.n_accepted_)
    np.testing.assert_allclose(ltt.p_values_[tested], binom.cdf(k[tested], ltt.n_accepted_[tested], 0.1))
    # accepting everything has 12/362 = 3.3% errors and would pass alone (p < delta), but the
    # sequence stops in the burst, so the threshold stays above it
    assert binom.cdf(12, 362, 0.1) < 0.1
    assert ltt.certified_
    assert ltt.threshold_ > g[62]
    first_fail = np.flatnonzero(tested & (ltt.p_values_ > 0.1))[0]
    np.testing.assert_array_equal(np.flatnonzero(ltt.certified_mask_), np.arange(np.flatnonzero(tested)[0],
                                                                                  first_fail))
    assert ltt.threshold_ == ltt.thresholds_[first_fail - 1]
    assert ltt.coverage_ == pytest.approx((g >= ltt.threshold_).mean())
    np.testing.assert_array_equal(ltt.accept([ltt.threshold_, ltt.threshold_ - 0.5]), [True, False])


def test_ltt_hb_is_more_conservative(rng):
    p, y = draw(rng, 3000)
    g, e = confidence_and_errors(p, y)
    # one start for both (the automatic one is later for HB), so the sequences differ only in p-values
    b = LearnThenTest(alpha=0.08, delta=0.1, min_accepted=200).fit(g, e)
    h = LearnThenTest(alpha=0.08, delta=0.1, p_value="hb", min_accepted=200).fit(g, e)
    tested = ~np.isnan(b.p_values_)
    np.testing.assert_array_equal(tested, ~np.isnan(h.p_values_))
    assert np.all(h.p_values_[tested] >= b.p_values_[tested])
    assert b.certified_ and h.threshold_ >= b.threshold_


def test_hb_p_value_formula_and_mapie():
    from mapie.risk_control.methods import compute_hoeffding_bentkus_p_value

    n = np.array([40, 100, 250, 1000, 1000, 5000])
    k = np.array([0, 3, 20, 80, 120, 400])
    a = 0.1
    r = k / n
    kl = np.where(r > 0, r * np.log(np.where(r > 0, r, 1) / a), 0) + (1 - r) * np.log((1 - r) / (1 - a))
    by_hand = np.minimum(np.exp(-n * np.where(r <= a, kl, 0.0)), np.e * binom.cdf(k, n, a))
    ours = hoeffding_bentkus_p_value(k, n, a)
    np.testing.assert_allclose(ours, np.minimum(1, by_hand))
    exact = np.ceil(n * r) == k  # where MAPIE's float ceil(n * r_hat) returns k itself
    theirs = compute_hoeffding_bentkus_p_value(r, n, a, binary=False)[:, 0]
    np.testing.assert_allclose(ours[exact], np.minimum(1, theirs[exact]))
    np.testing.assert_allclose(binomial_p_value(k, n, a), binom.cdf(k, n, a))


def test_ltt_easy_task_certifies(rng):
    p, y = draw(rng, 2000, mu=3.0)
    ltt = LearnThenTest(alpha=0.05, delta=0.1).fit(*confidence_and_errors(p, y))
    assert ltt.certified_ and ltt.coverage_ > 0.8
    pt, yt = draw(rng, 20000, mu=3.0)
    gt, et = confidence_and_errors(pt, yt)
    acc = ltt.accept(gt)
    assert et[acc].mean() <= 0.05


@pytest.mark.parametrize("n, min_accepted", [(20, 25), (30, 5)])
def test_ltt_tiny_n_certifies_nothing(n, min_accepted, rng):
    # n = 20 < min_accepted: nothing is tested. n = 30 without a single error: p = 0.95^30 = 0.21 > delta
    g = rng.random(n)
    ltt = LearnThenTest(alpha=0.05, delta=0.1, min_accepted=min_accepted).fit(g, np.zeros(n, int))
    assert not ltt.certified_
    assert ltt.threshold_ == np.inf and ltt.coverage_ == 0.0
    assert not ltt.accept(rng.random(100) * 10).any()


@pytest.mark.parametrize("alpha, delta", [(0.1, 0.1), (0.05, 0.1), (0.15, 0.2), (0.01, 0.05), (0.3, 0.3)])
@pytest.mark.parametrize("p_value, pfun", [("binomial", lambda k, n, a: binom.cdf(k, n, a)),
                                           ("hb", hoeffding_bentkus_p_value)])
def test_ltt_start_rule(alpha, delta, p_value, pfun):
    """From n0 on, floor(n alpha / 2) errors in n accepted points always pass at delta; at n0 - 1 they do not."""
    n0 = ltt_start(alpha, delta, p_value=p_value)
    n = np.arange(1, 40_000)
    passes = pfun(np.floor(n * alpha / 2 + 1e-9), n, alpha) <= delta
    assert passes[n0 - 1:].all()
    assert n0 == 1 or not passes[n0 - 2]
    assert (1 - alpha) ** n0 <= delta  # zero errors pass too: the start is never below the zero-error minimum


def test_ltt_auto_start_is_used(rng, caplog):
    g, e = confidence_and_errors(*draw(rng, 1500))
    auto = LearnThenTest(alpha=0.1, delta=0.1).fit(g, e)
    assert auto.min_accepted_ == ltt_start(0.1, 0.1) > 25
    np.testing.assert_array_equal(~np.isnan(auto.p_values_), auto.n_accepted_ >= auto.min_accepted_)
    hb = LearnThenTest(alpha=0.1, delta=0.1, p_value="hb").fit(g, e)
    assert hb.min_accepted_ == ltt_start(0.1, 0.1, p_value="hb")
    assert LearnThenTest(min_accepted=40).fit(g, e).min_accepted_ == 40
    # generalized risk: every p-value uses all n points and grows along the sequence, so it starts at the top
    gen = LearnThenTest(risk="generalized").fit(g, e)
    assert gen.min_accepted_ == 1
    assert np.all(np.diff(gen.p_values_[~np.isnan(gen.p_values_)]) >= 0)
    # fewer calibration points than the start: nothing is tested, and the log says why
    with caplog.at_level(logging.WARNING, logger="natix.calibrate.conformal"):
        small = LearnThenTest(alpha=0.1, delta=0.1).fit(g[:60], e[:60])
    assert not small.certified_ and np.isnan(small.p_values_).all()
    assert f"the sequence starts at {ltt_start(0.1, 0.1)}" in caplog.text


def _ltt_draw(rng, n, floor, slope):
    """``g ~ U(0, 1)``, ``P(error | g) = floor + slope (1 - g)``: ``R(tau) = floor + slope (1 - tau) / 2``."""
    g = rng.random(n)
    return g, (rng.random(n) < floor + slope * (1 - g)).astype(np.int64)


@pytest.mark.parametrize("floor, slope", [(0.0, 0.36), (0.005, 0.35)])
def test_ltt_power_and_validity_with_a_known_risk_curve(floor, slope):
    """n = 2000, alpha = delta = 0.1, a closed-form selective risk: the automatic start is valid and powerful.

    ``R(tau) = floor + slope (1 - tau) / 2`` at coverage ``1 - tau``, so the oracle (the largest
    coverage whose true risk is <= alpha) is ``2 (alpha - floor) / slope``: 0.556 and 0.543. Measured
    over 5000 draws (floor 0 / 0.005): the automatic start (n0 = 65) certifies nothing in 0.2% / 1.0%
    of draws, violates alpha in 7.6% / 7.5%, and keeps 86% / 84% of the oracle coverage; the old
    start at 25 accepted points certifies nothing in 8.3% / 22% and keeps 78% / 65%.
    """
    alpha = delta = 0.1
    n, R = 2000, reps(400)
    rng = np.random.default_rng(int(1000 * floor) + 5)
    oracle = 2 * (alpha - floor) / slope

    def true_risk(tau):
        return floor + slope * (1 - np.clip(tau, 0.0, 1.0)) / 2

    res = {"auto": [], "old": [], "naive": []}
    for _ in range(R):
        g, e = _ltt_draw(rng, n, floor, slope)
        for name, start in (("auto", "auto"), ("old", 25)):
            ltt = LearnThenTest(alpha=alpha, delta=delta, min_accepted=start).fit(g, e)
            cov = 1 - max(ltt.threshold_, 0.0) if ltt.certified_ else 0.0
            res[name].append((ltt.certified_, cov, ltt.certified_ and true_risk(ltt.threshold_) > alpha))
        # uncorrected plug-in: the lowest tested candidate whose empirical risk is <= alpha
        ok = np.flatnonzero(~np.isnan(ltt.p_values_) & (ltt.risks_ <= alpha))
        res["naive"].append(len(ok) > 0 and true_risk(ltt.thresholds_[ok[-1]]) > alpha)
    auto, old = np.array(res["auto"], float), np.array(res["old"], float)
    tol = 3 * np.sqrt(delta * (1 - delta) / R)
    # (a) validity, for both starts; the same check catches the plug-in rule
    assert auto[:, 2].mean() <= delta + tol, auto[:, 2].mean()
    assert old[:, 2].mean() <= delta + tol, old[:, 2].mean()
    assert np.mean(res["naive"]) > delta + tol, np.mean(res["naive"])
    # (b) power: something is certified in >= 98% of draws; mean coverage >= 80% of the oracle's
    fail_bound = 0.02 + 3 * np.sqrt(0.02 * 0.98 / R)
    assert 1 - auto[:, 0].mean() <= fail_bound, 1 - auto[:, 0].mean()
    assert auto[:, 1].mean() >= 0.8 * oracle, (auto[:, 1].mean(), oracle)
    # (c) the old start at 25 accepted points misses the power claim and covers less
    assert 1 - old[:, 0].mean() > fail_bound, 1 - old[:, 0].mean()
    assert auto[:, 1].mean() > old[:, 1].mean() + 0.02, (auto[:, 1].mean(), old[:, 1].mean())


@pytest.mark.slow
def test_ltt_validity():
    """P(true selective risk of the certified threshold > alpha) <= delta over calibration draws."""
    rng = np.random.default_rng(11)
    alpha, delta, n, R = 0.1, 0.2, 600, reps(400)
    # the true risk function from one large reference draw (overall error rate 16%)
    ref_g, ref_e = confidence_and_errors(*draw(rng, 2_000_000))
    order = np.argsort(ref_g)
    ref_g, err_below = ref_g[order], np.r_[0, np.cumsum(ref_e[order])]

    def true_risk(tau, generalized=False):
        i = np.searchsorted(ref_g, tau)
        k = err_below[-1] - err_below[i]
        return k / len(ref_g) if generalized else k / max(len(ref_g) - i, 1)

    cal_p, cal_y = draw(rng, (R, n))
    viol = {"binomial": 0, "hb": 0, "generalized": 0, "naive": 0}
    certified = 0
    for r in range(R):
        g, e = confidence_and_errors(cal_p[r], cal_y[r])
        fits = {name: LearnThenTest(alpha=alpha, delta=delta, **kw).fit(g, e) for name, kw in
                (("binomial", {}), ("hb", {"p_value": "hb"}), ("generalized", {"risk": "generalized"}))}
        for name, ltt in fits.items():
            if ltt.certified_:
                viol[name] += true_risk(ltt.threshold_, name == "generalized") > alpha
        certified += fits["binomial"].certified_
        # the naive rule: lowest candidate whose empirical risk is <= alpha (no test, no sequence)
        b = fits["binomial"]
        ok = np.flatnonzero((b.n_accepted_ >= 25) & (b.risks_ <= alpha))
        if len(ok):
            viol["naive"] += true_risk(b.thresholds_[ok[-1]]) > alpha
    tol = 3 * np.sqrt(delta * (1 - delta) / R)
    for name in ("binomial", "hb", "generalized"):
        assert viol[name] / R <= delta + tol, (name, viol[name] / R)
    assert certified / R > 0.8  # the certificate is not vacuous
    assert viol["naive"] / R > delta + tol  # and the check would catch an uncorrected rule


# --------------------------------------------------------------------------- MAPIE cross-checks


class _PassThrough(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier whose predict_proba returns its input: MAPIE sees our probabilities as-is."""

    def fit(self, X, y=None):
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = 2
        return self

    def predict_proba(self, X):
        return np.asarray(X, dtype=np.float64)

    def predict(self, X):
        return np.argmax(X, axis=1)


def _mapie_lac(P, y, alpha):
    from mapie.classification import SplitConformalClassifier

    return SplitConformalClassifier(_PassThrough().fit(P, y), confidence_level=1 - alpha, conformity_score="lac",
                                    prefit=True).conformalize(P, y)


@pytest.mark.parametrize("seed, n, alpha", [(0, 500, 0.1), (1, 137, 0.05), (2, 1000, 0.2), (3, 60, 0.25)])
def test_split_conformal_matches_mapie(seed, n, alpha):
    rng = np.random.default_rng(seed)
    p, y = draw(rng, n)
    pt, _ = draw(rng, 3000)
    mapie = _mapie_lac(two_column(p), y, alpha)
    ours = SplitConformal(alpha=alpha).fit(p, y)
    _, sets = mapie.predict_set(two_column(pt))
    assert ours.quantile_ == float(mapie._mapie_classifier.quantiles_[0])
    np.testing.assert_array_equal(ours.predict_set(pt), sets[:, :, 0])
    np.testing.assert_allclose(mapie.conformity_scores.ravel(), ours.score_.score(two_column(p), y))


@pytest.mark.filterwarnings("ignore:WARNING. your conformalization dataset has less labels:UserWarning")
def test_mondrian_matches_mapie_per_class(rng):
    """MAPIE has no Mondrian option: a MAPIE predictor fitted on each class's rows is the closest equivalent."""
    p, y = draw(rng, 400, prior=0.3)
    pt, _ = draw(rng, 1000)
    ours = SplitConformal(alpha=0.1, mondrian=True).fit(p, y)
    sets = ours.predict_set(pt)
    for c in (0, 1):
        mapie = _mapie_lac(two_column(p[y == c]), y[y == c], 0.1)
        np.testing.assert_array_equal(sets[:, c], mapie.predict_set(two_column(pt))[1][:, c, 0])


@pytest.mark.parametrize("seed, alpha", [(0, 0.1), (1, 0.07), (2, 0.12), (3, 0.03)])
def test_ltt_matches_mapie_controller(seed, alpha):
    """MAPIE's BinaryClassificationController with precision (1 - selective risk) and fixed-sequence testing.

    Accepting ``g >= tau`` is MAPIE's positive prediction with ``predict_proba = [1 - g, g]`` and
    ``y = 1 - error``; we give it our tested candidates. MAPIE computes ``ceil(n * (1 - precision))``
    in floats, which sometimes lands on k + 1 errors: its p-values are ours or ours at k + 1.
    """
    from mapie.risk_control import BinaryClassificationController
    from mapie.risk_control.fwer_control import control_fwer

    rng = np.random.default_rng(seed)
    g, e = confidence_and_errors(*draw(rng, 1500))
    ours = LearnThenTest(alpha=alpha, delta=0.1, n_thresholds=120).fit(g, e)
    tested = ~np.isnan(ours.p_values_)
    grid = ours.thresholds_[tested][::-1]  # ascending, as MAPIE expects
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-monotone empirical risk; nothing certified
        bcc = BinaryClassificationController(predict_function=lambda X: np.stack([1 - X, X], axis=1),
                                             risk="precision", target_level=1 - alpha, confidence_level=0.9,
                                             list_predict_params=grid, fwer_method="fixed_sequence")
        bcc.calibrate(g, 1 - e)
    theirs = bcc.p_values[:, 0][::-1]  # highest first, like ours
    n_acc = ours.n_accepted_[tested]
    k = np.round(ours.risks_[tested] * n_acc)
    ours_p = ours.p_values_[tested]
    # where MAPIE's float ceiling counts k + 1 errors, its p-value is min(Hoeffding, P(Bin <= k + 1))
    r = np.minimum(k / n_acc, alpha)
    hoeffding = np.exp(-n_acc * (np.where(r > 0, r * np.log(np.maximum(r, 1e-300) / alpha), 0)
                                 + (1 - r) * np.log((1 - r) / (1 - alpha))))
    bumped = np.minimum(hoeffding, binom.cdf(k + 1, n_acc, alpha))
    same = np.isclose(theirs, ours_p, rtol=1e-9)
    assert np.all(same | np.isclose(theirs, bumped, rtol=1e-9))
    assert same.mean() > 0.5 and np.all(ours_p <= theirs * (1 + 1e-9))
    # same testing procedure: MAPIE's fixed sequence on our p-values certifies our prefix
    idx = control_fwer(ours_p, 0.1, fwer_method="fixed_sequence")
    np.testing.assert_array_equal(idx, np.flatnonzero(ours.certified_mask_[tested]))
    # end to end: both certify or both fail, thresholds within one grid step
    assert (bcc.best_predict_param is not None) == ours.certified_
    if ours.certified_:
        i_ours = np.flatnonzero(grid == ours.threshold_)[0]
        i_theirs = np.flatnonzero(grid == bcc.best_predict_param)[0]
        assert 0 <= i_theirs - i_ours <= 1


# --------------------------------------------------------------------------- helpers


def test_confidence_and_errors():
    g, e = confidence_and_errors([0.5, 0.9, 0.2, 0.7], [1, 1, 1, 0])
    np.testing.assert_allclose(g, [0.5, 0.9, 0.8, 0.7])
    np.testing.assert_array_equal(e, [1, 0, 1, 1])  # p = 0.5 answers class 0, like np.round


def test_calibration_folds(rng):
    y = (rng.random(101) < 0.3).astype(int)
    folds = calibration_folds(y, 3, random_state=0)
    idx = np.concatenate(folds)
    assert len(idx) == 101 and len(np.unique(idx)) == 101
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for f in folds:
        assert abs(y[f].sum() - y.sum() / 3) <= 1
    np.testing.assert_array_equal(folds[0], calibration_folds(y, 3, random_state=0)[0])
    with pytest.raises(ConfigError, match="n_folds"):
        calibration_folds(y, 1)


@pytest.mark.parametrize("make, kind", ESTIMATORS)
def test_fit_time_100k(make, kind):
    args = fit_args(kind, np.random.default_rng(0), n=100_000)
    est = make()
    t = time.perf_counter()
    est.fit(*args)
    assert time.perf_counter() - t <= 2.0


# --------------------------------------------------------------------------- bad inputs


P_OK, Y_OK = np.linspace(0.01, 0.99, 60), np.tile([0, 1], 30)


@pytest.mark.parametrize("est", [SplitConformal, ConformalRiskControl, LearnThenTest])
@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, "x", None])
def test_bad_alpha(est, alpha):
    with pytest.raises(ConfigError, match="alpha"):
        est(alpha=alpha).fit(P_OK, Y_OK)


@pytest.mark.parametrize("delta", [0, 1, 2.0, "x"])
def test_bad_delta(delta):
    with pytest.raises(ConfigError, match="delta"):
        LearnThenTest(delta=delta).fit(P_OK, Y_OK)


@pytest.mark.parametrize("est", [SplitConformal(), ConformalRiskControl(), SplitConformal(mondrian=True)])
@pytest.mark.parametrize("proba, y, match", [
    (np.r_[P_OK[:-1], 1.2], Y_OK, r"\[0, 1\]"),
    (np.r_[P_OK[:-1], -0.1], Y_OK, r"\[0, 1\]"),
    (np.r_[P_OK[:-1], np.nan], Y_OK, "NaN"),
    (np.c_[P_OK, P_OK, P_OK], Y_OK, "shape"),
    (np.c_[P_OK, P_OK], Y_OK, "sum to 1"),
    (np.empty(0), np.empty(0), "empty"),
    (P_OK, np.r_[Y_OK[:-1], 2], "0/1"),
    (P_OK, Y_OK[:-1], "one label per score"),
])
def test_bad_proba_and_labels(est, proba, y, match):
    with pytest.raises(DataError, match=match):
        est.fit(proba, y)


def test_bad_inputs_at_predict_time():
    sc = SplitConformal().fit(P_OK, Y_OK)
    with pytest.raises(DataError, match="NaN"):
        sc.predict_set([0.2, np.nan])
    crc = ConformalRiskControl(alpha=0.2).fit(P_OK, Y_OK)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        crc.predict([1.5])
    ltt = LearnThenTest().fit(P_OK, Y_OK)
    with pytest.raises(DataError, match="NaN"):
        ltt.accept([np.inf])
    with pytest.raises(DataError, match="1-D"):
        ltt.accept(np.ones((3, 2)))


@pytest.mark.parametrize("est, match", [
    (SplitConformal(score="raps"), "lac, aps"),
    (ConformalRiskControl(loss="fpr"), "fnr"),
    (ConformalRiskControl(bound=0), "bound"),
    (ConformalRiskControl(bound=0.5), "bound must be >= 1"),
    (ConformalRiskControl(bound=float("nan")), "bound"),
    (LearnThenTest(p_value="wsr"), "binomial, hb"),
    (LearnThenTest(risk="fnr"), "selective"),
    (LearnThenTest(min_accepted=0), "min_accepted"),
    (LearnThenTest(min_accepted="all"), "'auto' or an integer"),
    (LearnThenTest(min_accepted=2.5), "min_accepted"),
    (LearnThenTest(min_accepted=True), "min_accepted"),
    (SplitConformal(score=APS(allow_empty="no")), "allow_empty"),
    (LearnThenTest(n_thresholds=1), "n_thresholds"),
    (LearnThenTest(n_thresholds=2.5), "n_thresholds"),
])
def test_bad_hyperparameters(est, match):
    with pytest.raises(ConfigError, match=match):
        est.fit(P_OK, Y_OK)


@pytest.mark.parametrize("alpha, n_needed", [(0.1, 9), (0.05, 19), (0.3, 3)])
def test_crc_too_few_points_says_how_many(alpha, n_needed, rng):
    p = rng.random(n_needed)
    with pytest.raises(DataError, match=f"at least {n_needed} positive calibration points"):
        ConformalRiskControl(alpha=alpha).fit(p[:-1], np.ones(n_needed - 1, int))
    ConformalRiskControl(alpha=alpha).fit(p, np.ones(n_needed, int))  # exactly enough


def test_one_class_data():
    neg = np.zeros(60, int)
    with pytest.raises(DataError, match="positives"):
        ConformalRiskControl().fit(P_OK, neg)
    with pytest.raises(DataError, match="only class 0"):
        SplitConformal(mondrian=True).fit(P_OK, neg)
    # one class is fine where it does not matter: marginal sets, FNR on positives only, LTT without errors
    assert SplitConformal().fit(P_OK, neg).quantile_ < np.inf
    assert ConformalRiskControl(alpha=0.2).fit(P_OK, np.ones(60, int)).n_calibration_ == 60
    assert LearnThenTest(min_accepted=5).fit(P_OK, neg).certified_


def test_ltt_bad_errors_and_lengths():
    with pytest.raises(DataError, match="errors must hold labels 0/1"):
        LearnThenTest().fit(P_OK, np.r_[Y_OK[:-1], 2])
    with pytest.raises(DataError, match="one label per score"):
        LearnThenTest().fit(P_OK, Y_OK[:-3])
    with pytest.raises(DataError, match="NaN"):
        LearnThenTest().fit(np.r_[P_OK[:-1], np.nan], Y_OK)


def test_split_conformal_too_few_points_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="natix.calibrate.conformal"):
        sc = SplitConformal(alpha=0.05).fit(P_OK[:10], Y_OK[:10])
    assert sc.quantile_ == np.inf and sc.predict_set(P_OK).all()
    assert "fewer than 19 calibration points" in caplog.text
