"""SCRC: the stated guarantees hold over many random calibration/test draws; API and bad inputs.

Set NATIX_FULL_VALIDITY=1 to multiply the repetitions of the statistical checks by 10.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from natix.calibrate.checks import sigmoid
from natix.calibrate.scrc import SCRC, max_probability
from natix.errors import ConfigError, DataError

REPS = 10 if os.environ.get("NATIX_FULL_VALIDITY") == "1" else 1
MU, NOISE = 1.5, 0.05  # z ~ N(±MU, 1); labels flipped with prob NOISE, so confident errors exist


def draw(rng, n):
    """Synthetic scores: y ~ Bernoulli(1/2), z | y ~ N(±MU, 1), p = σ(z), then label noise."""
    y = rng.integers(0, 2, n)
    z = (2 * y - 1) * MU + rng.standard_normal(n)
    y = np.where(rng.random(n) < NOISE, 1 - y, y)
    return sigmoid(z), y


def true_selection_rate(tau):
    """P(max(p, 1 − p) ≥ τ) = P(|z| ≥ logit τ) under the mixture ½N(MU, 1) + ½N(−MU, 1)."""
    c = np.log(tau) - np.log1p(-tau)
    return norm.cdf(MU - c) + norm.cdf(-MU - c)


def selected_risk(scrc, p_test, y_test):
    """Mean of L = 1{g ≥ threshold_ and round(p) ≠ y} over the test samples that pass selection."""
    g = max_probability(p_test)
    selected = g >= scrc.selection_threshold_
    loss = scrc.accept(g) & (scrc.predict(p_test) != y_test)
    return loss[selected].mean()


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
@pytest.mark.parametrize("alpha", [0.05, 0.03])
def test_risk_on_selected_test_samples_is_controlled_and_not_wasteful(mode, alpha):
    # Among the top 80 % the error rate is ~0.066 > alpha, so stage 2 is active in almost every
    # draw; CRC is then tight: the mean risk lies in [alpha − 2/(n_a + 1) − slack, alpha + 3 SE].
    rng = np.random.default_rng(1)
    n_rep, n_cal, n_test = 300 * REPS, 2000, 2000
    risks, n_selected, active = [], [], []
    for r in range(n_rep):
        p_cal, y_cal = draw(rng, n_cal)
        p_test, y_test = draw(rng, n_test)
        kw = {"test_confidence": max_probability(p_test)} if mode == "transductive" else {}
        scrc = SCRC(alpha=alpha, mode=mode, random_state=r).fit(p_cal, y_cal, **kw)
        active.append(scrc.threshold_ > scrc.selection_threshold_)
        risks.append(selected_risk(scrc, p_test, y_test))
        n_selected.append(scrc.n_selected_)
    assert np.mean(active) >= 0.9
    risks = np.asarray(risks)
    mean, se = risks.mean(), risks.std(ddof=1) / np.sqrt(n_rep)
    assert mean <= alpha + 3 * se, (mean, se)
    assert mean >= alpha - 2 / (min(n_selected) + 1) - 3 * se - 0.003, (mean, se)


def test_inductive_selection_rate_guarantee_holds_at_the_stated_frequency():
    # P[ P(g ≥ τ) ≥ acceptance ] ≥ 1 − δ/2 over the selection fold (exact binomial bound).
    rng = np.random.default_rng(2)
    n_rep, acceptance, delta = 600 * REPS, 0.8, 0.1
    rates = []
    for r in range(n_rep):
        p_cal, y_cal = draw(rng, 1000)
        scrc = SCRC(alpha=0.1, delta=delta, acceptance=acceptance, random_state=r).fit(p_cal, y_cal)
        rates.append(true_selection_rate(scrc.selection_threshold_))
    rates = np.asarray(rates)
    freq = np.mean(rates >= acceptance)
    target = 1 - delta / 2
    assert freq >= target - 3 * np.sqrt(target * (1 - target) / n_rep), freq
    # ...and it is a bound, not a blanket: the typical rate stays near the target (n₁ = 500).
    assert np.median(rates) < acceptance + 0.05, np.median(rates)


def test_transductive_acceptance_on_the_test_batch_matches_the_target():
    rng = np.random.default_rng(3)
    n_rep, acceptance, n_cal, n_test = 200 * REPS, 0.7, 1000, 1000
    rates = []
    for _ in range(n_rep):
        p_cal, y_cal = draw(rng, n_cal)
        g_test = max_probability(draw(rng, n_test)[0])
        scrc = SCRC(alpha=0.1, acceptance=acceptance, mode="transductive").fit(p_cal, y_cal, test_confidence=g_test)
        pooled = np.concatenate([max_probability(p_cal), g_test])
        assert np.mean(pooled >= scrc.selection_threshold_) >= acceptance  # exact on the pool
        assert scrc.test_selection_rate_ == pytest.approx(np.mean(g_test >= scrc.selection_threshold_))
        rates.append(scrc.test_selection_rate_)
    rates = np.asarray(rates)
    se = rates.std(ddof=1) / np.sqrt(n_rep)
    assert acceptance - 3 * se <= rates.mean() <= acceptance + 1 / (n_cal + n_test) + 3 * se, rates.mean()
    assert np.abs(rates - acceptance).max() < 0.05


def test_smaller_alpha_is_stricter_and_accepts_fewer():
    p_cal, y_cal = draw(np.random.default_rng(4), 3000)
    p_new, _ = draw(np.random.default_rng(5), 3000)
    g_new = max_probability(p_new)
    fits = [SCRC(alpha=a).fit(p_cal, y_cal) for a in (0.2, 0.1, 0.07, 0.05, 0.03, 0.02)]
    thresholds = [f.threshold_ for f in fits]
    accepted = [int(f.accept(g_new).sum()) for f in fits]
    assert len({f.selection_threshold_ for f in fits}) == 1  # alpha only moves stage 2
    assert np.all(np.diff(thresholds) >= 0) and thresholds[-1] > thresholds[0], thresholds
    assert np.all(np.diff(accepted) <= 0) and accepted[-1] < accepted[0], accepted


def test_larger_acceptance_or_smaller_delta_lowers_the_selection_threshold():
    p_cal, y_cal = draw(np.random.default_rng(6), 3000)
    taus = [SCRC(alpha=0.2, acceptance=a).fit(p_cal, y_cal).selection_threshold_ for a in (0.5, 0.7, 0.9)]
    assert taus[0] > taus[1] > taus[2], taus
    taus = [SCRC(alpha=0.2, delta=d).fit(p_cal, y_cal).selection_threshold_ for d in (0.5, 0.1, 0.001)]
    assert taus[0] > taus[1] > taus[2], taus


def test_accept_one_image_at_a_time_equals_the_batch_result():
    p_cal, y_cal = draw(np.random.default_rng(7), 2000)
    g_new = max_probability(draw(np.random.default_rng(8), 500)[0])
    scrc = SCRC(alpha=0.05).fit(p_cal, y_cal)
    online = [scrc.accept(float(g)) for g in g_new]
    assert all(type(a) is bool for a in online)
    batch = scrc.accept(g_new)
    assert batch.dtype == bool and batch.shape == g_new.shape
    np.testing.assert_array_equal(online, batch)
    assert 0 < batch.sum() < batch.size
    np.testing.assert_array_equal(batch, g_new >= scrc.threshold_)


def test_stage_one_uses_only_the_selection_fold_and_stage_two_the_other():
    p_cal, y_cal = draw(np.random.default_rng(9), 1001)
    scrc = SCRC(alpha=0.1, split=0.3).fit(p_cal, y_cal)
    assert (scrc.n_selection_, scrc.n_risk_) == (300, 701)
    assert scrc.n_selected_ <= scrc.n_risk_
    assert "disjoint folds" in scrc.guarantee_ and "split=0.3" in scrc.guarantee_
    g_test = max_probability(draw(np.random.default_rng(10), 400)[0])
    t = SCRC(alpha=0.1, mode="transductive").fit(p_cal, y_cal, test_confidence=g_test)
    assert (t.n_selection_, t.n_risk_) == (1401, 1001)
    assert "not split" in t.guarantee_ and "400 test samples" in t.guarantee_


def test_gate_score_as_confidence_and_one_class_calibration_data():
    rng = np.random.default_rng(11)
    p_cal, y_cal = draw(rng, 2000)
    gate = rng.random(2000)  # an arbitrary score: selection and stage 2 follow it, not p
    scrc = SCRC(alpha=0.2).fit(p_cal, y_cal, confidence=gate)
    assert scrc.n_selected_ == np.sum(gate[np.random.default_rng(0).permutation(2000)[1000:]]
                                      >= scrc.selection_threshold_)
    ones = SCRC(alpha=0.2).fit(np.full(50, 0.9), np.ones(50, dtype=int))
    assert ones.calibration_risk_ == 0 and ones.threshold_ == ones.selection_threshold_


def test_predict_passes_probabilities_through_and_decides_at_one_half():
    scrc = SCRC(alpha=0.2).fit(*draw(np.random.default_rng(12), 500))
    p = np.array([0.0, 0.2, 0.5, 0.5000001, 1.0])
    np.testing.assert_array_equal(scrc.predict_proba(p), np.stack([1 - p, p], axis=1))
    np.testing.assert_array_equal(scrc.predict_proba(np.stack([1 - p, p], axis=1))[:, 1], p)
    np.testing.assert_array_equal(scrc.predict(p), [0, 0, 0, 1, 1])
    assert scrc.predict(p).dtype == np.int64


def test_nothing_decidable_escalates_everything():
    # Every calibration decision is wrong and 9 <= n_a < 19: alpha*(n_a+1) - 1 < 1 error allowed,
    # so only λ̂ = +inf satisfies the CRC condition.
    p = np.linspace(0.6, 0.99, 30)
    scrc = SCRC(alpha=0.1).fit(p, np.zeros(30, dtype=int))
    assert 9 <= scrc.n_selected_ < 19
    assert scrc.threshold_ == np.inf and not scrc.accept(1.0)


def test_clone_and_params():
    est = SCRC(alpha=0.05, delta=0.2, acceptance=0.6, mode="transductive", split=0.4, random_state=3)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    fitted = SCRC().fit(*draw(np.random.default_rng(13), 500))
    assert not hasattr(clone(fitted), "threshold_")
    with pytest.raises(TypeError):
        SCRC(0.1)  # keyword-only hyperparameters


@pytest.mark.parametrize("method, arg", [("accept", 0.9), ("predict", [0.2]), ("predict_proba", [0.2])])
def test_unfitted_raises(method, arg):
    with pytest.raises(NotFittedError):
        getattr(SCRC(), method)(arg)


def _data(n=500):
    return draw(np.random.default_rng(14), n)


@pytest.mark.parametrize("params, fit_kw, data, error, match", [
    ({"alpha": 0.0}, {}, None, ConfigError, "alpha must be in"),
    ({"alpha": 1.5}, {}, None, ConfigError, "alpha must be in"),
    ({"alpha": "low"}, {}, None, ConfigError, "alpha must be a number"),
    ({"delta": 1.0}, {}, None, ConfigError, "delta must be in"),
    ({"acceptance": 0.0}, {}, None, ConfigError, "acceptance must be in"),
    ({"split": 1.0}, {}, None, ConfigError, "split must be in"),
    ({"mode": "online"}, {}, None, ConfigError, "unknown mode .online.: pass one of inductive, transductive"),
    ({"loss": "fnr"}, {}, None, ConfigError, "unknown loss .fnr.: pass one of error"),
    ({"mode": "transductive"}, {}, None, ConfigError, "needs test_confidence"),
    ({}, {"test_confidence": np.full(5, 0.9)}, None, ConfigError, "test_confidence is for mode='transductive'"),
    ({}, {"confidence": np.ones(7)}, None, DataError, "confidence has 7 scores for 500 samples"),
    ({}, {"confidence": np.r_[np.nan, np.ones(499)]}, None, DataError, "confidence contains NaN"),
    ({"mode": "transductive"}, {"test_confidence": []}, None, DataError, "test_confidence is empty"),
    ({}, {}, (np.linspace(-3, 3, 20), np.arange(20) % 2), DataError, "not logits"),
    ({}, {}, (np.full(20, 0.7), np.full(20, 2)), DataError, "labels 0/1"),
    ({}, {}, (np.full(20, 0.7), np.ones(19, dtype=int)), DataError, "19 labels for 20 scores"),
    # 26 samples, 13 per fold: 0.8**13 > 0.05 = delta/2, so no order statistic certifies the rate.
    ({}, {}, (np.full(26, 0.7), np.ones(26, dtype=int)), DataError, "needs at least 14"),
    # 40 samples: ~16 of the 20 in the risk fold pass selection; alpha=0.03 needs 33.
    ({"alpha": 0.03}, {}, _data(40), DataError, "alpha=0.03 needs at least 33"),
    ({"split": 0.001}, {}, None, DataError, "leaves a fold empty"),
])
def test_bad_inputs(params, fit_kw, data, error, match):
    p, y = data if data is not None else _data()
    with pytest.raises(error, match=match):
        SCRC(**params).fit(p, y, **fit_kw)


def test_accept_rejects_non_finite_confidence():
    scrc = SCRC(alpha=0.2).fit(*_data())
    with pytest.raises(DataError, match="finite"):
        scrc.accept(float("nan"))
    with pytest.raises(DataError, match="NaN or inf"):
        scrc.accept([0.9, np.inf])


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_fit_on_100k_scores_takes_under_two_seconds(mode):
    rng = np.random.default_rng(15)
    p, y = draw(rng, 100_000)
    kw = {"test_confidence": max_probability(draw(rng, 100_000)[0])} if mode == "transductive" else {}
    SCRC(mode=mode).fit(p[:1000], y[:1000], **kw)  # warm imports
    start = time.perf_counter()
    SCRC(mode=mode, alpha=0.05).fit(p, y, **kw)
    assert time.perf_counter() - start <= 2.0
