"""Cascade router: certified and budget thresholds, routing, the estimator contract."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from natix import metrics as M
from natix.calibrate.conformal import LearnThenTest, ltt_start
from natix.cascade.evaluation import cascade_run, evaluate_cascade
from natix.cascade.router import Router
from natix.cascade.stages import join_stages, load_stage
from natix.errors import ConfigError, DataError


def _calibrated_pool(rng, n):
    """Stage-1 probabilities that are calibrated: y ~ Bernoulli(p), so P(error | g) = 1 - g."""
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.int64)
    return p, y


# --------------------------------------------------------------------------- certified mode


def test_certified_stage1_selective_risk_holds_on_held_out_data():
    """200 calibration draws: P(held-out selective risk of stage 1's answers > alpha) <= delta + MC error."""
    rng = np.random.default_rng(0)
    alpha, delta, reps, n_calib = 0.1, 0.1, 200, 1000
    p_test, y_test = _calibrated_pool(rng, 100_000)
    err_test = ((p_test > 0.5) != y_test)
    g_test = np.maximum(p_test, 1 - p_test)
    p2_test = np.where(y_test == 1, 0.9, 0.1)
    violations, naive_violations, coverage = 0, 0, []
    for _ in range(reps):
        p, y = _calibrated_pool(rng, n_calib)
        router = Router(target_risk=alpha, delta=delta).fit(
            [{"prob": p, "labels": y}, {"prob": np.where(y == 1, 0.9, 0.1), "labels": y}])
        answered = router.route([g_test, np.maximum(p2_test, 1 - p2_test)]) == 0
        coverage.append(answered.mean())
        if answered.any() and err_test[answered].mean() > alpha:
            violations += 1
        # the uncertified rule "lowest threshold whose calibration risk is <= alpha" (the test's power)
        g, e = np.maximum(p, 1 - p), ((p > 0.5) != y)
        order = np.argsort(-g)
        risk = np.cumsum(e[order]) / np.arange(1, n_calib + 1)
        ok = np.flatnonzero(risk <= alpha)
        tau = g[order][ok[-1]] if len(ok) else np.inf
        naive = g_test >= tau
        if naive.any() and err_test[naive].mean() > alpha:
            naive_violations += 1
    slack = 3 * np.sqrt(delta * (1 - delta) / reps)
    assert violations / reps <= delta + slack
    assert naive_violations / reps > delta + slack  # the check can fail: plug-in thresholds do
    assert np.mean(coverage) > 0.1  # and the certificate is not vacuous


def test_certified_stage2_risk_holds_on_the_samples_that_reach_it():
    """Three stages: stage 2 is certified on its own fold's arrivals; check its held-out selective risk."""
    rng = np.random.default_rng(1)
    alpha, delta, reps = 0.15, 0.1, 200

    def draw(n):
        p1, y = _calibrated_pool(rng, n)
        z = 1.2 * (2 * y - 1) + rng.normal(0, 1.5, n)  # a better, uncalibrated stage 2
        p2 = 1 / (1 + np.exp(-z))
        return p1, p2, y

    p1t, p2t, yt = draw(100_000)
    conf_t = [np.maximum(p1t, 1 - p1t), np.maximum(p2t, 1 - p2t)]
    err2 = (p2t > 0.5) != yt
    violations, answered2 = 0, []
    for rep in range(reps):
        p1, p2, y = draw(1000)
        router = Router(target_risk=alpha, delta=delta, random_state=rep).fit(
            [{"prob": p1, "labels": y}, {"prob": p2, "labels": y}, None])
        assert router.n_calibration_[0] == 500  # stage 1 is certified on its own fold only
        stage = router.route(conf_t)
        at2 = stage == 1
        answered2.append(at2.mean())
        if at2.any() and err2[at2].mean() > alpha:
            violations += 1
    assert violations / reps <= delta + 3 * np.sqrt(delta * (1 - delta) / reps)
    assert np.mean(answered2) > 0.05


def test_certified_start_follows_learn_then_test():
    rng = np.random.default_rng(2)
    p, y = _calibrated_pool(rng, 1000)
    stages = [{"prob": p, "labels": y}, {"prob": np.where(y == 1, 0.9, 0.1), "labels": y}]
    for kw, start in (({}, ltt_start(0.1, 0.1)), ({"p_value": "hb"}, ltt_start(0.1, 0.1, p_value="hb")),
                      ({"min_accepted": 40}, 40)):
        router = Router(target_risk=0.1, **kw).fit(stages)
        assert router.ltt_[0].min_accepted_ == start
        ltt = LearnThenTest(alpha=0.1, **kw).fit(np.maximum(p, 1 - p), ((p > 0.5) != y).astype(int))
        assert router.thresholds_[0] == ltt.threshold_
    with pytest.raises(ConfigError, match="min_accepted"):
        Router(target_risk=0.1, min_accepted="all").fit(stages)


def test_uncertifiable_stage_defers_everything():
    y = np.tile([0, 1], 100)
    coin = np.full(200, 0.6)  # right half of the time at confidence 0.6
    router = Router(target_risk=0.05).fit([{"prob": coin, "labels": y}, {"prob": y * 0.8 + 0.1, "labels": y}])
    assert router.thresholds_ == [np.inf] and router.certified_ == [False]
    assert (router.route([np.full(7, 0.99)]) == 1).all()


# --------------------------------------------------------------------------- budget mode


def test_budget_holds_on_calibration_and_beats_stage1_alone(runs):
    s1, s2 = join_stages([load_stage(runs["stage1"]), load_stage(runs["stage2"])])
    c1, c2 = s1["val_calib"], s2["val_calib"]
    router = Router(budget=0.3).fit([c1, c2])
    stage = router.route([c1["confidence"]])
    assert stage.mean() <= 0.3
    y = c1["labels"]
    joint = router.roadwork_probability([c1["prob"], c2["prob"]])
    reward = M.ordered_rewards(y, joint)[1]
    assert reward == pytest.approx(router.reward_calib_)
    assert reward >= M.ordered_rewards(y, c1["prob"])[1]


def test_budget_is_spent_when_stage2_is_perfect_and_saved_when_it_is_useless():
    rng = np.random.default_rng(2)
    p1, y = _calibrated_pool(rng, 2000)
    perfect = np.where(y == 1, 0.99, 0.01)
    router = Router(budget=0.3).fit([{"prob": p1, "labels": y}, {"prob": perfect, "labels": y}])
    deferred = router.route([np.maximum(p1, 1 - p1)]) == 1
    assert 0.28 <= deferred.mean() <= 0.3
    useless = 1 - perfect  # always wrong: deferring never helps
    router = Router(budget=0.3).fit([{"prob": p1, "labels": y}, {"prob": useless, "labels": y}])
    assert router.thresholds_ == [-np.inf]


def test_budget_with_three_stages_applies_the_budget_to_each_stage_arrivals():
    rng = np.random.default_rng(3)
    p1, y = _calibrated_pool(rng, 1500)
    p2 = np.clip(np.where(y == 1, 0.75, 0.25) + rng.normal(0, 0.2, len(y)), 0, 1)
    p3 = np.where(y == 1, 0.99, 0.01)
    stages = [{"prob": p1, "labels": y}, {"prob": p2}, {"prob": p3}]
    router = Router(budget=0.4, n_grid=20).fit(stages)
    stage = router.route([np.maximum(p1, 1 - p1), np.maximum(p2, 1 - p2)])
    reach2, reach3 = (stage >= 1).mean(), (stage >= 2).mean()
    assert reach2 <= 0.4 and reach3 <= 0.4 * reach2 + 1e-12 and reach3 > 0
    # external stage 3 without calibration data: stage 2 spends its budget on its arrivals
    ext = Router(budget=0.4).fit([stages[0], stages[1], None])
    stage = ext.route([np.maximum(p1, 1 - p1), np.maximum(p2, 1 - p2)])
    arrivals = (stage >= 1).sum()
    assert (stage == 2).sum() == pytest.approx(0.4 * arrivals, abs=1 + 0.01 * arrivals)


# --------------------------------------------------------------------------- answers


def test_every_sample_gets_a_probability_from_its_stage(runs):
    s1, s2 = join_stages([load_stage(runs["stage1"]), load_stage(runs["stage2"])])
    router = Router(budget=0.5).fit([s1["val_calib"], s2["val_calib"]])
    res = evaluate_cascade([runs["stage1"], runs["stage2"]], router)
    prob, stage = res["predictions"]["prob"], res["predictions"]["stage"]
    assert prob.shape == (225,) and np.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()
    assert 0 < (stage == 1).mean() < 1
    np.testing.assert_array_equal(prob[stage == 0], s1["val_test"]["prob"][stage == 0])
    np.testing.assert_array_equal(prob[stage == 1], s2["val_test"]["prob"][stage == 1])
    assert res["accuracy"] == pytest.approx(M.accuracy(s1["val_test"]["labels"], prob))
    assert res["deferral"] == [pytest.approx((stage == 1).mean())]


def test_nan_in_an_answering_stage_raises_but_not_elsewhere():
    y = np.tile([0, 1], 50)
    p1 = np.where(y == 1, 0.95, 0.05)
    p1[:20] = 0.55  # low confidence: deferred
    router = Router(budget=0.5).fit([{"prob": p1, "labels": y}, {"prob": np.where(y == 1, 0.9, 0.1), "labels": y}])
    deferred = router.route([np.maximum(p1, 1 - p1)]) == 1
    assert deferred.any() and not deferred.all()
    p2 = np.where(deferred, 0.7, np.nan)  # NaN only where stage 2 does not answer
    out = router.roadwork_probability([p1, p2])
    np.testing.assert_array_equal(router.predict_proba([p1, p2]), np.column_stack([1 - out, out]))
    assert np.isfinite(out).all()
    p2[np.flatnonzero(deferred)[0]] = np.nan
    with pytest.raises(DataError, match="stage 2 answers 1 images with NaN"):
        router.roadwork_probability([p1, p2])
    p1_bad = p1.copy()
    p1_bad[np.flatnonzero(~deferred)[0]] = np.nan
    with pytest.raises(DataError, match="stage 1 confidence is NaN"):
        router.roadwork_probability([p1_bad, np.full(len(y), 0.7)])


def test_router_is_a_scikit_learn_estimator():
    y = np.tile([0, 1], 50)
    stages = [{"prob": np.linspace(0.01, 0.99, 100), "labels": y}, {"prob": y * 0.8 + 0.1, "labels": y}]
    router = Router(budget=0.2)
    with pytest.raises(NotFittedError):
        router.route([np.ones(3)])
    assert router.fit(stages) is router
    copy = clone(router)
    assert copy.get_params() == router.get_params() and not hasattr(copy, "thresholds_")
    assert router.predict([stages[0]["prob"], stages[1]["prob"]]).dtype == np.int64


@pytest.mark.parametrize("params, match", [
    ({"target_risk": 0.1, "budget": 0.3}, "exactly one of target_risk .* got both"),
    ({}, "exactly one of target_risk .* got neither"),
    ({"budget": 1.5}, "budget must be in \\(0, 1\\)"),
    ({"budget": 0.0}, "budget must be in \\(0, 1\\)"),
    ({"target_risk": 1.5}, "target_risk must be in \\(0, 1\\)"),
    ({"target_risk": 0.1, "delta": 0.0}, "delta must be in \\(0, 1\\)"),
])
def test_bad_router_options_are_config_errors(params, match):
    y = np.tile([0, 1], 20)
    with pytest.raises(ConfigError, match=match):
        Router(**params).fit([{"prob": np.full(40, 0.7), "labels": y}, {"prob": np.full(40, 0.7), "labels": y}])


def test_cascade_run_refuses_both_modes_before_writing(runs, tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        cascade_run(runs["stage1"], runs["stage2"], target_risk=0.1, budget=0.3, out=tmp_path / "out")
    with pytest.raises(ConfigError, match="budget must be in"):
        cascade_run(runs["stage1"], runs["stage2"], budget=1.5, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
