"""Uncertainty features, failure labels, ViLU-style failure predictors and confidence comparison."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from natix import metrics as M
from natix.cascade import (
    BASE_FEATURES,
    FailurePredictor,
    compare_confidences,
    failure_labels,
    load_run_split,
    uncertainty_features,
    vilu_failure_weight,
)
from natix.cascade.failure import fit_failure_run
from natix.errors import ConfigError, DataError
from natix.rundir import Run

MODELS = ("mlp", "xgboost")



def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _h2(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# --------------------------------------------------------------------------- a hand example

HAND = {
    "prob": np.array([0.8, 0.5, 0.1, 1.0]),
    "labels": np.array([1, 1, 0, 0]),
    "view_logits": np.array([[2.0, 1.0, -1.0, 0.0],    # decisions 1 1 0 0 vs image 1 → 2 of 4 disagree
                             [0.0, 0.0, 0.0, 0.0],     # p_v = 0.5 is class 0, as is p = 0.5 → 0 disagree
                             [3.0, 3.0, 3.0, -3.0],    # 3 views say 1, the image says 0 → 3 of 4
                             [5.0, 5.0, 5.0, 5.0]]),
    "attention": np.array([[0.25, 0.25, 0.25, 0.25],   # uniform: normalised entropy 1
                           [1.0, 0.0, 0.0, 0.0],       # one view: 0
                           [0.5, 0.5, 0.0, 0.0],       # two views: ln 2 / ln 4 = 0.5
                           [0.7, 0.1, 0.1, 0.1]]),
}


def test_features_on_a_hand_example():
    X, names = uncertainty_features(HAND)
    assert names == list(BASE_FEATURES) + ["attention_entropy"]
    assert X.shape == (4, 9) and X.dtype == np.float64
    col = {n: X[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(col["max_prob"], [0.8, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(col["entropy"], [_h2(0.8), 1.0, _h2(0.1), 0.0])
    assert _h2(0.1) == pytest.approx(0.4689955936)
    np.testing.assert_allclose(col["margin"], [0.6, 0.0, 0.8, 1.0], atol=1e-12)
    pv0 = [_sig(2.0), _sig(1.0), _sig(-1.0), 0.5]
    np.testing.assert_allclose(col["view_prob_mean"], [np.mean(pv0), 0.5, (3 * _sig(3) + _sig(-3)) / 4, _sig(5)])
    np.testing.assert_allclose(col["view_prob_std"][[1, 3]], [0.0, 0.0], atol=1e-15)
    assert col["view_prob_std"][0] == pytest.approx(np.std(pv0))
    np.testing.assert_allclose(col["view_prob_min"], [_sig(-1.0), 0.5, _sig(-3.0), _sig(5.0)])
    np.testing.assert_allclose(col["view_prob_max"], [_sig(2.0), 0.5, _sig(3.0), _sig(5.0)])
    np.testing.assert_allclose(col["view_disagreement"], [0.5, 0.0, 0.75, 0.0])
    ent3 = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)) / math.log(4)
    np.testing.assert_allclose(col["attention_entropy"], [1.0, 0.0, 0.5, ent3], atol=1e-12)
    assert ((X[:, [1, 7, 8]] >= 0) & (X[:, [1, 7, 8]] <= 1)).all()


def test_optional_columns_follow_what_the_split_has():
    base = {k: HAND[k] for k in ("prob", "view_logits")}
    X, names = uncertainty_features(base)
    assert names == list(BASE_FEATURES) and X.shape == (4, 8)

    gated = dict(base, gate=np.array([0.9, 0.1, 0.4, 0.6]))
    X, names = uncertainty_features(gated, pooled=np.arange(8.0).reshape(4, 2))
    assert names == list(BASE_FEATURES) + ["gate", "pooled_0", "pooled_1"]
    np.testing.assert_array_equal(X[:, 8], [0.9, 0.1, 0.4, 0.6])
    np.testing.assert_array_equal(X[:, 9:], np.arange(8.0).reshape(4, 2))
    # The base columns do not depend on which optional columns are present.
    np.testing.assert_array_equal(X[:, :8], uncertainty_features(HAND)[0][:, :8])


def test_single_view_attention_entropy_is_zero():
    pred = {"prob": np.array([0.3, 0.7]), "view_logits": np.array([[1.0], [-1.0]]), "attention": np.ones((2, 1))}
    X, names = uncertainty_features(pred)
    np.testing.assert_array_equal(X[:, names.index("attention_entropy")], [0.0, 0.0])
    np.testing.assert_array_equal(X[:, names.index("view_disagreement")], [1.0, 1.0])


def test_failure_labels_follow_the_validator_rounding():
    np.testing.assert_array_equal(failure_labels(HAND), [0, 1, 0, 1])  # p = 0.5 decides class 0
    rng = np.random.default_rng(0)
    p = rng.random(500)
    p[:20] = 0.5
    y = rng.integers(0, 2, 500)
    np.testing.assert_array_equal(failure_labels({"prob": p, "labels": y}), (np.round(p) != y).astype(int))


@pytest.mark.parametrize("change, match", [
    ({"prob": np.array([0.1, 0.2, np.nan, 0.4])}, "prob must hold probabilities"),
    ({"prob": np.array([0.1, 0.2, 1.5, 0.4])}, "prob must hold probabilities"),
    ({"view_logits": np.zeros((3, 4))}, r"view_logits must have shape \(4, V\)"),
    ({"view_logits": np.full((4, 4), np.inf)}, "view_logits contain NaN"),
    ({"attention": np.full((4, 4), 0.5)}, "sum to 1"),
    ({"attention": np.full((4, 3), 1 / 3)}, r"attention must have shape \(4, 4\)"),
    ({"gate": np.ones(3)}, "gate must be"),
])
def test_bad_predictions_raise_one_line(change, match):
    with pytest.raises(DataError, match=match):
        uncertainty_features(dict(HAND, **change))


def test_bad_pooled_and_labels_raise():
    with pytest.raises(DataError, match="pooled must have shape"):
        uncertainty_features(HAND, pooled=np.zeros((3, 2)))
    with pytest.raises(DataError, match="pooled features contain NaN"):
        uncertainty_features(HAND, pooled=np.full((4, 2), np.nan))
    with pytest.raises(DataError, match="labels must be 0/1"):
        failure_labels(dict(HAND, labels=np.array([1, -1, 0, 0])))
    with pytest.raises(DataError, match="lack 'view_logits'"):
        uncertainty_features({"prob": HAND["prob"]})


# --------------------------------------------------------------------------- a synthetic failure task


def _disagreement_task(n: int, seed: int, *, p_dis: float = 0.3, err_dis: float = 0.5, err_agree: float = 0.05):
    """Images whose views disagree are wrong far more often; the image probability says nothing.

    max(p, 1 - p) is drawn independently of whether the decision is wrong, so max-probability
    ranks failures at chance, while the view statistics carry the signal.
    """
    rng = np.random.default_rng(seed)
    n_views = 5
    y = rng.integers(0, 2, n)
    dis = rng.random(n) < p_dis
    wrong = rng.random(n) < np.where(dis, err_dis, err_agree)
    decision = np.where(wrong, 1 - y, y)
    conf = rng.uniform(0.6, 0.95, n)
    sign = np.where(decision == 1, 1.0, -1.0)
    view_logits = sign[:, None] * rng.uniform(0.5, 3.0, (n, n_views))
    for i in np.flatnonzero(dis):
        view_logits[i, rng.choice(n_views, 2, replace=False)] *= -1
    pred = {"prob": np.where(decision == 1, conf, 1 - conf), "labels": y, "view_logits": view_logits,
            "attention": rng.dirichlet(np.ones(n_views), n)}
    X, names = uncertainty_features(pred)
    return X, failure_labels(pred), names


@pytest.fixture(scope="module")
def task():
    return {"train": _disagreement_task(2000, 0), "calib": _disagreement_task(1000, 1),
            "test": _disagreement_task(2000, 2)}


@pytest.mark.parametrize("model", MODELS)
def test_failure_predictor_beats_max_probability_where_views_disagree(task, model):
    (Xtr, etr, names), (Xca, eca, _), (Xte, ete, _) = task["train"], task["calib"], task["test"]
    est = FailurePredictor(model=model, threads=1).fit(Xtr, etr, X_calib=Xca, is_error_calib=eca)
    max_prob = Xte[:, names.index("max_prob")]
    res = compare_confidences(ete, {"max_prob": max_prob, "failure": 1 - est.failure_score(Xte)},
                              n_boot=200, reference="max_prob")
    assert res["confidences"]["max_prob"]["auroc_f"]["high"] > 0.5  # built to be uninformative
    assert res["confidences"]["max_prob"]["auroc_f"]["estimate"] < 0.56
    gain = res["confidences"]["failure"]["vs_reference"]
    assert gain["auroc_f"]["low"] > 0.15, gain
    assert gain["augrc"]["high"] < 0.0, gain
    assert res["confidences"]["failure"]["auroc_f"]["estimate"] > 0.75


@pytest.mark.parametrize("model", MODELS)
def test_estimator_contract(task, model):
    Xtr, etr, _ = task["train"]
    est = FailurePredictor(model=model, hidden=16, epochs=30, n_estimators=20, threads=1)
    assert est.fit(Xtr, etr) is est
    proba = est.predict_proba(Xtr[:50])
    assert proba.shape == (50, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(est.predict(Xtr[:50]), (proba[:, 1] > 0.5).astype(int))
    np.testing.assert_array_equal(est.failure_score(Xtr[:50]), proba[:, 1])
    np.testing.assert_array_equal(est.classes_, [0, 1])
    assert est.calibrator_ is None


@pytest.mark.parametrize("model", MODELS)
def test_unfitted_raises_and_clone_gives_an_unfitted_copy(task, model):
    est = FailurePredictor(model=model, hidden=8, epochs=5, n_estimators=5, seed=3, threads=1)
    with pytest.raises(NotFittedError):
        est.predict_proba(task["test"][0])
    with pytest.raises(NotFittedError):
        est.to_state()
    est.fit(*task["train"][:2])
    copy = clone(est)
    assert copy.get_params() == est.get_params() and copy.get_params()["seed"] == 3
    with pytest.raises(NotFittedError):
        copy.predict(task["test"][0])


def test_vilu_weight_value_and_its_effect():
    e = np.array([1, 0, 0, 0, 0] * 200)
    assert vilu_failure_weight(e) == pytest.approx(-math.log(1 - 0.8))  # acc = 0.8 → w_f = 1.609
    assert vilu_failure_weight(np.array([1] + [0] * 9)) == pytest.approx(math.log(10))
    # With uninformative (constant) features both models can only learn the weighted prior,
    # w_f * err / (w_f * err + 1 - err) = 0.287, not the plain error rate 0.2.
    X = np.ones((len(e), 3))
    w = -math.log(0.2)
    for model in MODELS:
        est = FailurePredictor(model=model, threads=1).fit(X, e)
        assert est.train_accuracy_ == pytest.approx(0.8)
        assert est.failure_weight_ == pytest.approx(w)
        np.testing.assert_allclose(est.failure_score(X[:3]), w * 0.2 / (w * 0.2 + 0.8), atol=2e-3)


def test_platt_calibration_lowers_xgboost_nll_and_ece_on_held_out_rows(task):
    (Xtr, etr, _), (Xca, eca, _), (Xte, ete, _) = task["train"], task["calib"], task["test"]
    raw = FailurePredictor(model="xgboost", max_depth=5, n_estimators=300, threads=1).fit(Xtr, etr)
    cal = FailurePredictor(model="xgboost", max_depth=5, n_estimators=300, threads=1).fit(Xtr, etr, X_calib=Xca,
                                                                              is_error_calib=eca)
    assert raw.calibrator_ is None and cal.calibrator_ is not None
    p_raw, p_cal = raw.failure_score(Xte), cal.failure_score(Xte)
    # The boosters are identical: calibration is the only difference, and it is monotone.
    assert M.auroc(ete, p_cal) == pytest.approx(M.auroc(ete, p_raw), abs=1e-9)
    assert M.nll(ete, p_cal) < M.nll(ete, p_raw) - 0.02
    assert M.ece(ete, p_cal) < M.ece(ete, p_raw)
    assert abs(p_cal.mean() - ete.mean()) < 0.02
    # Platt undoes what we expect: deep trees are over-confident (slope < 1) and the ViLU weight
    # inflates the failure odds (negative offset, about -log w_f).
    assert cal.calibrator_.coef_ < 1.0 and cal.calibrator_.intercept_ < 0.0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("calibrated", [False, True])
def test_state_round_trip_is_exact_and_pickle_free(task, model, calibrated):
    (Xtr, etr, _), (Xca, eca, _), (Xte, _, _) = task["train"], task["calib"], task["test"]
    kwargs = {"X_calib": Xca, "is_error_calib": eca} if calibrated else {}
    est = FailurePredictor(model=model, hidden=16, epochs=50, n_estimators=50, threads=1).fit(Xtr, etr, **kwargs)
    meta, tensors = est.to_state()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in tensors.values())
    text = json.dumps(meta, allow_nan=False)  # strict JSON, no opaque objects
    blob = st_save(tensors)  # safetensors holds only numeric tensors: nothing to unpickle
    back = FailurePredictor.from_state(json.loads(text), st_load(blob))
    assert back.get_params() == est.get_params()
    assert (back.calibrator_ is None) is (not calibrated)
    np.testing.assert_array_equal(back.predict_proba(Xte), est.predict_proba(Xte))
    if model == "xgboost":
        assert json.loads(tensors["xgboost_json"].tobytes())["learner"]  # XGBoost's own JSON format


def test_state_written_before_calibrators_kept_their_own_state_still_loads(task):
    (Xtr, etr, _), (Xca, eca, _), (Xte, _, _) = task["train"], task["calib"], task["test"]
    est = FailurePredictor(model="mlp", hidden=8, epochs=5, threads=1).fit(Xtr, etr, X_calib=Xca, is_error_calib=eca)
    meta, tensors = est.to_state()
    assert set(meta["calibrator"]) == {"method", "coef_", "intercept_"}
    old = {**meta, "calibrator": {"method": "platt", "coef": meta["calibrator"]["coef_"],
                                  "intercept": meta["calibrator"]["intercept_"]}}
    back = FailurePredictor.from_state(old, tensors)
    np.testing.assert_array_equal(back.predict_proba(Xte), est.predict_proba(Xte))


def test_damaged_state_is_refused(task):
    est = FailurePredictor(model="mlp", hidden=8, epochs=5, threads=1).fit(*task["train"][:2])
    meta, tensors = est.to_state()
    with pytest.raises(DataError, match="not a failure predictor state"):
        FailurePredictor.from_state({"format": "other"}, tensors)
    with pytest.raises(DataError, match="incomplete or damaged"):
        FailurePredictor.from_state(meta, {k: v for k, v in tensors.items() if k != "mean"})


GOOD_X = np.random.default_rng(0).normal(size=(20, 3))
GOOD_E = np.array([0, 1] * 10)


@pytest.mark.parametrize("params, X, e, kwargs, error, match", [
    ({"model": "forest"}, GOOD_X, GOOD_E, {}, ConfigError, "unknown failure model 'forest'"),
    ({"hidden": 0}, GOOD_X, GOOD_E, {}, ConfigError, "hidden must be a positive integer"),
    ({"epochs": 2.5}, GOOD_X, GOOD_E, {}, ConfigError, "epochs must be a positive integer"),
    ({"lr": 0.0}, GOOD_X, GOOD_E, {}, ConfigError, "lr must be a finite number > 0"),
    ({"weight_decay": -1.0}, GOOD_X, GOOD_E, {}, ConfigError, "weight_decay must be"),
    ({"threads": -1}, GOOD_X, GOOD_E, {}, ConfigError, r"threads must be an integer >= 0, got -1: pass 0 \(every"),
    ({"threads": 1.5}, GOOD_X, GOOD_E, {}, ConfigError, "threads must be an integer >= 0, got 1.5"),
    ({}, GOOD_X[:, 0], GOOD_E, {}, DataError, r"X must have shape \(n, k\)"),
    ({}, np.where(np.eye(20, 3) > 0, np.nan, GOOD_X), GOOD_E, {}, DataError, "X contains NaN"),
    ({}, GOOD_X, GOOD_E[:-1], {}, DataError, r"is_error must have shape \(20,\)"),
    ({}, GOOD_X, GOOD_E * 2, {}, DataError, "0 \\(correct\\) / 1 \\(wrong\\)"),
    ({}, GOOD_X, np.zeros(20, int), {}, DataError, "every prediction correct: nothing to learn"),
    ({}, GOOD_X, np.ones(20, int), {}, DataError, "every prediction wrong: nothing to learn"),
    ({}, GOOD_X, GOOD_E, {"X_calib": GOOD_X}, DataError, "pass both X_calib and is_error_calib"),
    ({}, GOOD_X, GOOD_E, {"X_calib": GOOD_X[:, :2], "is_error_calib": GOOD_E}, DataError, "X_calib has 2 features"),
    ({}, GOOD_X, GOOD_E, {"X_calib": GOOD_X, "is_error_calib": np.zeros(20)}, DataError,
     "is_error_calib marks every prediction correct"),
])
def test_bad_fit_inputs_raise_one_line(params, X, e, kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        FailurePredictor(**params).fit(X, e, **kwargs)
    assert "\n" not in str(info.value)


def test_predicting_with_other_features_raises():
    est = FailurePredictor(model="xgboost", n_estimators=5, threads=1).fit(GOOD_X, GOOD_E)
    with pytest.raises(DataError, match="X has 2 features but the predictor uses 3"):
        est.predict_proba(GOOD_X[:, :2])


# --------------------------------------------------------------------------- threads


def _xgboost_threads(est: FailurePredictor) -> int:
    """The thread count the fitted booster was configured with."""
    return int(json.loads(est.booster_.save_config())["learner"]["generic_param"]["nthread"])


@pytest.mark.parametrize("model", MODELS)
def test_threads_are_applied_during_the_fit_and_change_no_result(task, model, threads_in_steps):
    import torch

    from natix.heads.config import available_cores

    (Xtr, etr, _), (Xca, eca, _), (Xte, _, _) = task["train"], task["calib"], task["test"]
    before = torch.get_num_threads()
    proba = {}
    for threads in (1, 0):
        threads_in_steps.clear()
        est = FailurePredictor(model=model, hidden=16, epochs=10, n_estimators=5, threads=threads)
        est.fit(Xtr[:400], etr[:400], X_calib=Xca[:200], is_error_calib=eca[:200])
        want = threads or available_cores()
        if model == "mlp":
            assert threads_in_steps == [(want, want)] * 10
        else:
            assert _xgboost_threads(est) == want and threads_in_steps == []
        proba[threads] = est.predict_proba(Xte)
    assert torch.get_num_threads() == before  # the caller's setting is restored
    np.testing.assert_allclose(proba[1], proba[0], rtol=1e-5, atol=1e-6)


def test_bad_threads_are_refused_before_the_run_is_read(tmp_path):
    with pytest.raises(ConfigError, match="threads must be an integer >= 0, got -2"):
        fit_failure_run(tmp_path / "no-such-run", threads=-2)


# --------------------------------------------------------------------------- compare_confidences


def test_compare_confidences_intervals_contain_the_estimates():
    rng = np.random.default_rng(1)
    e = (rng.random(400) < 0.2).astype(int)
    good = rng.normal(size=400) - 1.5 * e
    noise = rng.normal(size=400)
    res = compare_confidences(e, {"good": good, "noise": noise}, n_boot=300, seed=0)
    assert res["n"] == 400 and res["error_rate"] == pytest.approx(e.mean()) and res["reference"] is None
    assert set(res["confidences"]) == {"good", "noise"}
    for name, row in res["confidences"].items():
        assert set(row) == {"auroc_f", "fpr_at_95_tpr", "augrc"}
        for key, fn in (("auroc_f", M.auroc_failure), ("fpr_at_95_tpr", M.fpr_at_95_tpr), ("augrc", M.augrc)):
            ci = row[key]
            assert ci["estimate"] == pytest.approx(fn(e, {"good": good, "noise": noise}[name]))
            assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["low"] < ci["high"]
    assert res["confidences"]["good"]["auroc_f"]["low"] > res["confidences"]["noise"]["auroc_f"]["high"]
    json.dumps(res, allow_nan=False)


@pytest.mark.parametrize("y_err, scores, kwargs, error, match", [
    (np.zeros(10), {"a": np.arange(10.0)}, {}, DataError, "every prediction correct"),
    (np.array([0, 1] * 5), {}, {}, DataError, "non-empty mapping"),
    (np.array([0, 1] * 5), {"a": np.arange(9.0)}, {}, DataError, "confidence 'a' has shape"),
    (np.array([0, 1] * 5), {"a": np.full(10, np.nan)}, {}, DataError, "confidence 'a' contains NaN"),
    (np.array([0, 1] * 5), {"a": np.arange(10.0)}, {"reference": "b"}, ConfigError, "reference 'b'"),
    (np.array([0, 1] * 5), {"a": np.arange(10.0)}, {"n_boot": 0}, ConfigError, "n_boot must be"),
    (np.array([[0, 1]] * 5), {"a": np.arange(10.0)}, {}, DataError, "y_err must be 1-D"),
])
def test_compare_confidences_bad_inputs(y_err, scores, kwargs, error, match):
    with pytest.raises(error, match=match):
        compare_confidences(y_err, scores, **kwargs)


# --------------------------------------------------------------------------- a real run, end to end


def test_end_to_end_on_a_fitted_run(tmp_path):
    from natix.cache.synthetic import make_synthetic_cache
    from natix.heads.runs import fit_run, load_dataset
    from natix.heads.train import HeadConfig, TrainConfig

    cache = make_synthetic_cache(tmp_path / "cache", n=600, n_views=3, dim=16)
    run = tmp_path / "run"
    fit_run(cache, run, head=HeadConfig(agg="attention"),
            train=TrainConfig(lr=1e-2, batch_size=64, max_epochs=10, threads=1), oof_folds=2)
    data = load_dataset(cache)
    row_of = {i: r for r, i in enumerate(data.ids.astype(str))}

    def split(name):
        pred = load_run_split(run, name)
        pooled = data.X[[row_of[i] for i in pred["ids"].astype(str)]].astype(np.float64).mean(axis=1)
        X, names = uncertainty_features(pred, pooled=pooled)
        return pred, X, names, failure_labels(pred)

    oof, Xtr, names, etr = split("train_oof")
    assert "fold" in oof and set(np.unique(oof["fold"])) == {0, 1}  # cross-fitted labels
    assert names[:9] == list(BASE_FEATURES) + ["attention_entropy"] and names[-1] == "pooled_15"
    assert 0 < etr.sum() < len(etr)
    _, Xca, names_ca, eca = split("val_calib")
    test, Xte, names_te, ete = split("val_test")
    assert names_ca == names_te == names

    # max_prob and the failure labels agree with the run's own val_test AUROC_f.
    stored = json.loads((run / "metrics.json").read_text())["val_test"]["auroc_f"]
    max_prob = Xte[:, names.index("max_prob")]
    assert M.auroc_failure(ete, max_prob) == pytest.approx(stored, abs=1e-12)

    for model in MODELS:
        est = FailurePredictor(model=model, epochs=100, n_estimators=50, threads=1).fit(Xtr, etr, X_calib=Xca,
                                                                             is_error_calib=eca)
        score = est.failure_score(Xte)
        assert score.shape == (len(test["prob"]),) and np.isfinite(score).all()
        res = compare_confidences(ete, {"max_prob": max_prob, model: 1 - score}, n_boot=100)
        assert 0.0 <= res["confidences"][model]["auroc_f"]["estimate"] <= 1.0

    # fit_failure_run stores a predictor that the run reads back and that scores val_test as reported.
    res = fit_failure_run(run, model="mlp", n_boot=20, threads=1, epochs=50)
    meta, blob = Run(run).failure()
    assert meta["trained_on"] == "train_oof" and meta["features"] == names[:-16]
    est = FailurePredictor.from_state(meta, st_load(blob))
    X_plain, _ = uncertainty_features(test)
    reported = res["confidences"]["failure predictor (mlp)"]["auroc_f"]["estimate"]
    assert M.auroc_failure(ete, 1 - est.failure_score(X_plain)) == pytest.approx(reported, abs=1e-12)

    with pytest.raises(DataError, match="has no predictions for split .nope."):
        load_run_split(run, "nope")
    with pytest.raises(DataError, match="not a natix run"):
        load_run_split(tmp_path, "val_test")


def test_cascade_never_imports_the_extractor_or_torch_at_import():
    code = ("import sys\nimport natix.cascade\n"
            "assert 'natix.extract' not in sys.modules, 'natix.extract'\n"
            "assert 'torch' not in sys.modules and 'xgboost' not in sys.modules, 'heavy import'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
