"""Tests for natix.calibrate.calibrators: common estimator contract, parameter recovery,
calibration quality, decision behaviour at 0.5, the decision-threshold search, bad inputs, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from natix import metrics as M
from natix.calibrate.calibrators import (
    CALIBRATORS,
    BetaCalibration,
    DecisionThreshold,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
    make_calibrator,
)
from natix.errors import ConfigError, DataError


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


# Every estimator in the module, with non-default hyperparameters where there are some.
ESTIMATORS = {
    "temperature": lambda: TemperatureScaling(max_iter=200),
    "platt": lambda: PlattScaling(max_iter=200),
    "beta": lambda: BetaCalibration(reg=0.01),
    "beta-mle": lambda: BetaCalibration(),
    "isotonic": lambda: IsotonicCalibration(eps=1e-6),
    "threshold-mcc": lambda: DecisionThreshold(),
    "threshold-fnr": lambda: DecisionThreshold(objective="fnr", target_fnr=0.1),
    "threshold-reward": lambda: DecisionThreshold(objective="reward", max_candidates=16),
}
ids = list(ESTIMATORS)


@pytest.fixture
def data():
    """Miscalibrated, biased scores (the truth is sigmoid(z / 2 + 0.5)) with edge values 0, 0.5, 1."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 2000)
    y = (rng.random(2000) < sig(z / 2 + 0.5)).astype(np.int64)
    p = sig(z)
    p[:6] = [0.0, 1.0, 0.5, 0.5, 0.0, 1.0]
    return p, y


def test_registry_holds_the_four_calibrators():
    assert dict(CALIBRATORS) == {"temperature": TemperatureScaling, "platt": PlattScaling,
                                 "beta": BetaCalibration, "isotonic": IsotonicCalibration}
    assert make_calibrator("beta", reg=0.5).get_params()["reg"] == 0.5
    with pytest.raises(ConfigError, match="unknown calibrator 'dirichlet': pass one of beta, isotonic, platt, temperature"):
        make_calibrator("dirichlet")


# ---------------------------------------------------------------------------------------------
# Common contract, over every estimator
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ids)
def test_fit_returns_self(name, data):
    est = ESTIMATORS[name]()
    assert est.fit(*data) is est


@pytest.mark.parametrize("name", ids)
@pytest.mark.parametrize("method", ["transform", "predict_proba", "predict"])
def test_unfitted_raises(name, method, data):
    with pytest.raises(NotFittedError):
        getattr(ESTIMATORS[name](), method)(data[0])


@pytest.mark.parametrize("name", ids)
def test_clone_keeps_params_and_drops_state(name, data):
    est = ESTIMATORS[name]().fit(*data)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    assert type(twin) is type(est)
    with pytest.raises(NotFittedError):
        twin.transform(data[0])
    # The clone refits to the same state.
    np.testing.assert_array_equal(twin.fit(*data).transform(data[0]), est.transform(data[0]))


@pytest.mark.parametrize("name", ids)
def test_predict_proba_is_a_distribution(name, data):
    p, y = data
    proba = ESTIMATORS[name]().fit(p, y).predict_proba(p)
    assert proba.shape == (len(p), 2)
    assert np.all(np.isfinite(proba)) and proba.min() >= 0 and proba.max() <= 1
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ids)
def test_two_column_input_equals_one_column(name, data):
    p, y = data
    p2 = np.column_stack([1 - p, p])
    a = ESTIMATORS[name]().fit(p, y)
    b = ESTIMATORS[name]().fit(p2, y)
    np.testing.assert_array_equal(a.predict_proba(p), b.predict_proba(p2))
    np.testing.assert_array_equal(a.transform(p2), a.transform(p))


@pytest.mark.parametrize("name", ids)
def test_predict_is_proba_above_half(name, data):
    p, y = data
    est = ESTIMATORS[name]().fit(p, y)
    pred = est.predict(p)
    assert pred.shape == (len(p),) and pred.dtype.kind == "i"
    np.testing.assert_array_equal(pred, (est.predict_proba(p)[:, 1] > 0.5).astype(int))
    # ... which is the validator's np.round of the calibrated probability.
    np.testing.assert_array_equal(pred, np.round(est.transform(p)).astype(int))


# ---------------------------------------------------------------------------------------------
# Parameter recovery (maximum likelihood; tolerance = 4 asymptotic standard errors)
# ---------------------------------------------------------------------------------------------


def _standard_errors(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Asymptotic SEs of the logistic-regression MLE: sqrt(diag(inverse Fisher information))."""
    q = sig(X @ w)
    info = (X * (q * (1 - q))[:, None]).T @ X
    return np.sqrt(np.diag(np.linalg.inv(info)))


N_RECOVER = 50_000


def test_temperature_recovers_T():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, N_RECOVER)
    T = 2.5
    y = (rng.random(N_RECOVER) < sig(z / T)).astype(int)
    est = TemperatureScaling().fit(sig(z), y)
    se_s = _standard_errors(z[:, None], np.array([1 / T]))[0]  # SE of s = 1/T
    se_T = se_s * T**2  # delta method
    print(f"temperature_={est.temperature_:.4f} (true {T}, SE {se_T:.4f})")
    assert abs(est.temperature_ - T) < 4 * se_T
    assert abs(est.temperature_ - T) < 0.05 * T


def test_platt_recovers_a_b():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, N_RECOVER)
    a, b = 0.6, -0.8
    y = (rng.random(N_RECOVER) < sig(a * z + b)).astype(int)
    est = PlattScaling().fit(sig(z), y)
    se = _standard_errors(np.column_stack([z, np.ones_like(z)]), np.array([a, b]))
    print(f"coef_={est.coef_:.4f} intercept_={est.intercept_:.4f} (true {a}, {b}; SE {se})")
    assert abs(est.coef_ - a) < 4 * se[0]
    assert abs(est.intercept_ - b) < 4 * se[1]


def test_beta_recovers_a_c_d():
    rng = np.random.default_rng(4)
    z = rng.normal(0, 2, N_RECOVER)
    p = sig(z)
    a, c, d = 1.8, 0.6, 0.4
    X = np.column_stack([np.log(p), -np.log1p(-p), np.ones_like(p)])
    y = (rng.random(N_RECOVER) < sig(X @ np.array([a, c, d]))).astype(int)
    est = BetaCalibration().fit(p, y)
    se = _standard_errors(X, np.array([a, c, d]))
    print(f"a_={est.a_:.4f} c_={est.c_:.4f} d_={est.d_:.4f} (true {a}, {c}, {d}; SE {se})")
    np.testing.assert_array_less(np.abs(np.array([est.a_, est.c_, est.d_]) - [a, c, d]), 4 * se)


def test_beta_reg_pulls_towards_identity(data):
    p, y = data  # truth: sigmoid(z/2 + 0.5), so the MLE has a, c near 0.5
    free = BetaCalibration().fit(p, y)
    tied = BetaCalibration(reg=1e3).fit(p, y)
    assert abs(free.a_ - 1) > 0.3 and abs(free.c_ - 1) > 0.3
    assert abs(tied.a_ - 1) < 1e-2 and abs(tied.c_ - 1) < 1e-2
    assert tied.d_ > 0.2  # the offset stays free and picks up the bias


def test_nonconvergence_warns(data):
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        PlattScaling(max_iter=1).fit(*data)


# ---------------------------------------------------------------------------------------------
# Calibration quality and ranking
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def overconfident():
    """A model that is over-confident and biased: reports sigmoid(2.5 z + 0.7), truth sigmoid(z)."""
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, 20_000)
    y = (rng.random(len(z)) < sig(z)).astype(int)
    p = sig(2.5 * z + 0.7)
    half = len(z) // 2
    return (p[:half], y[:half]), (p[half:], y[half:])


@pytest.mark.parametrize("name", list(CALIBRATORS))
def test_calibration_improves_nll_and_ece(name, overconfident):
    (p_cal, y_cal), (p_test, y_test) = overconfident
    q = make_calibrator(name).fit(p_cal, y_cal).transform(p_test)
    nll0, nll1 = M.nll(y_test, p_test), M.nll(y_test, q)
    ece0, ece1 = M.ece(y_test, p_test), M.ece(y_test, q)
    print(f"{name}: NLL {nll0:.4f} -> {nll1:.4f}, ECE {ece0:.4f} -> {ece1:.4f}")
    assert nll1 < 0.9 * nll0
    assert ece1 < 0.5 * ece0


@pytest.mark.parametrize("name", ["temperature", "platt", "beta"])
def test_parametric_maps_keep_the_ranking(name, overconfident):
    (p_cal, y_cal), (p_test, y_test) = overconfident
    est = make_calibrator(name).fit(p_cal, y_cal)
    order = np.argsort(p_test)
    q = est.transform(p_test)
    assert np.all(np.diff(q[order]) >= 0)
    assert M.auroc(y_test, q) == pytest.approx(M.auroc(y_test, p_test), abs=1e-12)


def test_isotonic_loses_auroc_only_through_ties(overconfident):
    (p_cal, y_cal), (p_test, y_test) = overconfident
    q = IsotonicCalibration().fit(p_cal, y_cal).transform(p_test)
    order = np.argsort(p_test)
    assert np.all(np.diff(q[order]) >= 0)  # monotone: can merge ranks, never swap them
    assert len(np.unique(p_test)) == len(p_test)  # so every tie in q is new
    _, group = np.unique(q, return_inverse=True)
    pos = np.bincount(group, weights=y_test)
    neg = np.bincount(group, weights=1 - y_test)
    tied_pairs = float(pos @ neg) / (y_test.sum() * (1 - y_test).sum())
    before, after = M.auroc(y_test, p_test), M.auroc(y_test, q)
    print(f"isotonic AUROC {before:.5f} -> {after:.5f}, newly tied pos/neg pairs {tied_pairs:.4f}")
    assert after >= before - 0.5 * tied_pairs - 1e-12


# ---------------------------------------------------------------------------------------------
# Decisions at 0.5
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def shifted():
    """Scores whose best decision boundary is not 0.5: truth sigmoid(z + 1), model reports sigmoid(z)."""
    rng = np.random.default_rng(6)
    z = rng.normal(0, 2, 5000)
    y = (rng.random(len(z)) < sig(z + 1)).astype(int)
    return sig(z), y


def test_temperature_never_changes_decisions(shifted):
    p, y = shifted
    est = TemperatureScaling().fit(p, y)
    # Include values whose calibrated probability would round onto 0.5 in floats.
    probe = np.r_[p, 0.0, 1.0, 0.5, np.nextafter(0.5, 1), np.nextafter(0.5, 0), 0.5 + 1e-15, 0.5 - 1e-15]
    for T in (est.temperature_, 3.0, 1e4):
        est.temperature_ = T
        np.testing.assert_array_equal(est.predict(probe), (probe > 0.5).astype(int))


def test_platt_with_offset_moves_decisions(shifted):
    p, y = shifted
    est = PlattScaling().fit(p, y)
    assert est.intercept_ > 0.5
    moved = est.predict(p) != (p > 0.5)
    assert moved.sum() > 100
    assert np.all(p[moved] < 0.5)  # b > 0 only turns negatives into positives


# ---------------------------------------------------------------------------------------------
# DecisionThreshold
# ---------------------------------------------------------------------------------------------


def _candidates(p):
    v = np.unique(np.r_[0.0, p, 1.0])
    return (v[:-1] + v[1:]) / 2


@pytest.fixture
def small_shifted():
    rng = np.random.default_rng(7)
    z = rng.normal(0, 1.5, 300)
    y = (rng.random(len(z)) < sig(z)).astype(int)
    return sig(z - 1.5), y  # the model's scores are shifted down


def test_threshold_maximises_mcc_by_brute_force(small_shifted):
    p, y = small_shifted
    est = DecisionThreshold().fit(p, y)
    cands = _candidates(p)
    brute = np.array([M.mcc(y, p, threshold=c) for c in cands])
    assert est.score_ == pytest.approx(brute.max(), abs=1e-12)
    assert M.mcc(y, p, threshold=est.threshold_) == pytest.approx(brute.max(), abs=1e-12)
    assert np.min(np.abs(cands - est.threshold_)) < 1e-15
    assert est.threshold_ < 0.4
    assert M.mcc(y, p) < brute.max() - 0.05  # deciding at 0.5 would have been clearly worse


def test_recentring_properties(small_shifted):
    p, y = small_shifted
    est = DecisionThreshold().fit(p, y)
    t = est.threshold_
    assert est.transform([t])[0] == 0.5
    np.testing.assert_array_equal(est.transform([0.0, 1.0]), [0.0, 1.0])
    grid = np.sort(np.r_[np.linspace(0, 1, 10_001), t, np.nextafter(t, 0), np.nextafter(t, 1)])
    q = est.transform(grid)
    assert np.all(np.diff(q) >= 0) and q.min() >= 0 and q.max() <= 1
    # The validator's rounding of the re-centred score reproduces the decision p > t.
    probe = np.r_[grid, np.random.default_rng(8).random(10_000)]
    np.testing.assert_array_equal(np.round(est.transform(probe)), (probe > t).astype(float))
    np.testing.assert_array_equal(est.predict(probe), (probe > t).astype(int))


@pytest.mark.parametrize("target", [0.0, 0.05, 0.2])
def test_fnr_objective_meets_target_with_largest_threshold(target, small_shifted):
    p, y = small_shifted
    est = DecisionThreshold(objective="fnr", target_fnr=target).fit(p, y)
    t = est.threshold_
    fnr = np.mean(p[y == 1] <= t)
    assert fnr <= target and est.score_ == pytest.approx(fnr)
    above = p[p > t]
    if above.size:  # the next distinct score up would miss too many positives
        assert np.mean(p[y == 1] <= above.min()) > target


def test_reward_objective(small_shifted):
    p, y = small_shifted
    for k in (1, 32):
        est = DecisionThreshold(objective="reward", max_candidates=k).fit(p, y)
        assert 0 < est.threshold_ < 1
        assert est.score_ == pytest.approx(M.ordered_rewards(y, est.transform(p))[1])
        # "decide at 0.5" is always among the candidates, so re-centring never scores worse.
        assert est.score_ >= M.ordered_rewards(y, p)[1]
    assert est.score_ > M.ordered_rewards(y, p)[1]  # on shifted scores it helps


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------

P_OK = np.array([0.1, 0.4, 0.6, 0.9])
Y_OK = np.array([0, 1, 0, 1])

BAD = [
    (TemperatureScaling, {}, [0.1, 1.5, 0.3, 0.9], Y_OK, DataError, r"probabilities in \[0, 1\]"),
    (PlattScaling, {}, [0.1, -0.2, 0.3, 0.9], Y_OK, DataError, "not logits"),
    (BetaCalibration, {}, [0.1, np.nan, 0.3, 0.9], Y_OK, DataError, "NaN or inf"),
    (IsotonicCalibration, {}, P_OK, [1, 1, 1, 1], DataError, "only class 1"),
    (DecisionThreshold, {}, P_OK, [0, 0, 0, 0], DataError, "only class 0"),
    (TemperatureScaling, {}, P_OK, [0, 1, 0], DataError, "3 labels for 4 scores"),
    (PlattScaling, {}, P_OK, [0, 1, 2, 1], DataError, "labels 0/1"),
    (BetaCalibration, {}, np.full((4, 3), 1 / 3), Y_OK, DataError, r"shape \(4, 3\)"),
    (IsotonicCalibration, {}, [], [], DataError, "empty"),
    (TemperatureScaling, {"max_iter": 0}, P_OK, Y_OK, ConfigError, "max_iter must be a positive integer"),
    (PlattScaling, {"max_iter": 2.5}, P_OK, Y_OK, ConfigError, "max_iter must be a positive integer"),
    (BetaCalibration, {"reg": -1.0}, P_OK, Y_OK, ConfigError, "reg must be a finite number >= 0"),
    (BetaCalibration, {"reg": "strong"}, P_OK, Y_OK, ConfigError, "reg must be a number"),
    (IsotonicCalibration, {"eps": 0.5}, P_OK, Y_OK, ConfigError, r"eps must be in \[0, 0.5\)"),
    (DecisionThreshold, {"objective": "f1"}, P_OK, Y_OK, ConfigError, "unknown objective 'f1'.*mcc, reward, fnr"),
    (DecisionThreshold, {"objective": "fnr"}, P_OK, Y_OK, ConfigError, "needs target_fnr"),
    (DecisionThreshold, {"objective": "fnr", "target_fnr": 1.0}, P_OK, Y_OK, ConfigError,
     r"target_fnr must be in \[0, 1\)"),
    (DecisionThreshold, {"target_fnr": 0.1}, P_OK, Y_OK, ConfigError, "only used with objective='fnr'"),
    (DecisionThreshold, {"objective": "reward", "max_candidates": 0}, P_OK, Y_OK, ConfigError, "max_candidates"),
    (DecisionThreshold, {"objective": "fnr", "target_fnr": 0.1}, [0.0, 0.0, 0.5, 0.9], [1, 1, 0, 0], DataError,
     "2 positives have probability 0"),
]


@pytest.mark.parametrize("cls, params, scores, y, exc, match", BAD)
def test_bad_input_raises(cls, params, scores, y, exc, match):
    est = cls(**params)  # __init__ only stores: never raises
    with pytest.raises(exc, match=match) as info:
        est.fit(scores, y)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ids)
def test_bad_input_after_fit_raises(name, data):
    est = ESTIMATORS[name]().fit(*data)
    with pytest.raises(DataError, match=r"probabilities in \[0, 1\]"):
        est.transform([0.2, 3.0])


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ids)
def test_fit_on_100k_is_fast(name):
    rng = np.random.default_rng(9)
    z = rng.normal(0, 2, 100_000)
    y = (rng.random(len(z)) < sig(z / 2)).astype(int)
    est = ESTIMATORS[name]()
    start = time.perf_counter()
    est.fit(sig(z), y)
    elapsed = time.perf_counter() - start
    print(f"{name}: fit on 100k in {elapsed:.3f}s")
    assert elapsed < 5.0  # budget 2 s on a 2-core CPU; generous margin against noisy CI machines


@pytest.mark.parametrize("cls", [TemperatureScaling, PlattScaling])
def test_calibrated_logit_is_the_logit_of_the_calibrated_probability(cls):
    rng = np.random.default_rng(5)
    p = rng.uniform(0.01, 0.99, 400)
    y = (rng.random(400) < p**2).astype(int)
    cal = cls().fit(p, y)
    z = cal.calibrated_logit(p)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-z)), cal.transform(p), rtol=0, atol=1e-12)
