"""Training heads: learns easy data, deterministic, early stopping, class weights, gate, OOF."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from natix import metrics as M
from natix.cache.synthetic import make_synthetic_cache
from natix.errors import ConfigError
from natix.heads.runs import load_dataset
from natix.heads.splits import make_splits
from natix.heads.train import HeadConfig, TrainConfig, feature_stats, fit, fold_ids, out_of_fold, predict

FAST = TrainConfig(lr=1e-2, batch_size=64, max_epochs=30, patience=8)



@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """600 images × 3 views × 16 dims, a strong signal in one tile of each positive."""
    path = make_synthetic_cache(tmp_path_factory.mktemp("easy"), n=600, n_views=3, dim=16, strength=4.0, seed=0)
    data = load_dataset(path)
    rows = make_splits(data.ids, data.labels, fingerprint=data.fingerprint).rows(data.ids)
    return {name: (data.X[r], data.labels[r], data.ids[r]) for name, r in rows.items()}


def _fit(easy, head=HeadConfig(hidden=32), train=FAST):
    (Xtr, ytr, _), (Xva, yva, _) = easy["train"], easy["val_select"]
    return fit(Xtr, ytr, Xva, yva, head, train)


@pytest.mark.parametrize("head,agg", [("linear", "mean"), ("mlp", "max"), ("linear", "attention")])
def test_learns_easy_data(easy, head, agg):
    model, history = _fit(easy, HeadConfig(head=head, agg=agg, hidden=32))
    X, y, _ = easy["val_test"]
    assert M.auroc(y, predict(model, X)["prob"]) >= 0.95
    assert np.isfinite(history["train_loss"]).all()
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert not model.training


@pytest.mark.parametrize("head", [HeadConfig(agg="max"), HeadConfig(head="mlp", agg="attention", hidden=8),
                                  HeadConfig(agg="mean"), HeadConfig(head="mlp", agg="mean", hidden=8)],
                         ids=["lbfgs-views", "adamw-views", "lbfgs-pooled", "adamw-pooled"])
def test_standardisation_comes_from_train(easy, head):
    # statistics of the training rows the head sees: every view, or the pooled rows of global/mean heads
    model, _ = _fit(easy, head, train=dataclasses.replace(FAST, max_epochs=1, max_iter=1))
    Xtr = easy["train"][0].astype(np.float64)
    X = (Xtr.mean(axis=1) if head.agg == "mean" else Xtr.reshape(-1, 16))
    mu, sigma = feature_stats(X[:, None, :])
    np.testing.assert_allclose(mu, X.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sigma, X.std(0), rtol=1e-4)
    np.testing.assert_allclose(model.mu.numpy(), mu)
    np.testing.assert_allclose(model.sigma.numpy(), sigma)


def test_same_seed_same_predictions_bitwise(easy):
    # mlp dropout + view dropout + shuffling: every random draw must come from the seed
    head = HeadConfig(head="mlp", agg="attention", hidden=32, dropout=0.2, view_dropout=0.3)
    train = dataclasses.replace(FAST, max_epochs=5, patience=5, seed=7)
    X = easy["val_test"][0]
    a = predict(_fit(easy, head, train)[0], X)
    torch.manual_seed(123)  # global RNG state before the call must not matter
    b = predict(_fit(easy, head, train)[0], X)
    for key in ("logit", "view_logits", "attention"):
        assert np.array_equal(a[key], b[key]), key
    c = predict(_fit(easy, head, dataclasses.replace(train, seed=8))[0], X)
    assert not np.array_equal(a["logit"], c["logit"])


def test_early_stopping(easy):
    train = dataclasses.replace(FAST, lr=5e-2, batch_size=32, max_epochs=30, patience=2)
    model, history = _fit(easy, HeadConfig(head="mlp", agg="mean", hidden=64, dropout=0.0), train)
    assert history["epochs"] < train.max_epochs
    assert history["epochs"] == history["best_epoch"] + 1 + train.patience
    assert len(history["val_score"]) == history["epochs"]
    assert history["best_val_score"] == min(history["val_score"])
    # the returned model is the best epoch's, not the last one's
    X, y, _ = easy["val_select"]
    assert M.nll(y, predict(model, X)["prob"]) == pytest.approx(history["best_val_score"], rel=1e-4)
    assert history["val_score"][-1] > history["best_val_score"]


def test_stop_metric_mcc_and_full_batch(easy):
    model, history = _fit(easy, HeadConfig(agg="max"),
                          dataclasses.replace(FAST, stop_metric="mcc", batch_size=0, lr=5e-2, patience=4))
    X, y, _ = easy["val_select"]
    assert history["best_val_score"] == pytest.approx(-M.mcc(y, predict(model, X)["prob"]))
    assert history["best_val_score"] < -0.5


def test_class_weights_change_the_fit(easy):
    X, y, _ = easy["train"]
    keep = np.flatnonzero((y == 0) | (np.arange(len(y)) % 5 == 0))  # ~1 positive for 5 negatives
    Xi, yi = X[keep], y[keep]
    Xva, yva, _ = easy["val_select"]
    head = HeadConfig(head="linear", agg="max")
    train = dataclasses.replace(FAST, lr=5e-2, max_epochs=15, patience=15, l2=(1e-3,))  # one L2 for both fits
    plain, _ = fit(Xi, yi, Xva, yva, head, train)
    weighted, _ = fit(Xi, yi, Xva, yva, head, dataclasses.replace(train, class_weights=True))
    p_plain, p_weighted = predict(plain, Xi)["prob"], predict(weighted, Xi)["prob"]
    assert not np.allclose(p_plain, p_weighted)
    # equal total weight per class pulls the minority (positive) class's probabilities up
    assert p_weighted.mean() > p_plain.mean() + 0.03
    assert p_weighted[yi == 1].mean() > p_plain[yi == 1].mean() + 0.05


@pytest.mark.parametrize("coverage", [0.5, 0.9])
def test_gate_meets_target_coverage(easy, coverage):
    model, _ = _fit(easy, HeadConfig(policy="gate", coverage=coverage, hidden=32))
    pred = predict(model, easy["train"][0])
    assert abs(pred["gate"].mean() - coverage) < 0.15
    assert pred["aux_logit"].shape == pred["logit"].shape


def test_fold_ids_are_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    ids = np.array([f"r{i}" for i in range(203)])
    labels = (rng.random(203) < 0.3).astype(int)
    folds = fold_ids(ids, labels, 5, seed=1)
    assert set(folds) == set(range(5))
    for c in (0, 1):
        counts = np.bincount(folds[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    perm = rng.permutation(203)
    assert np.array_equal(fold_ids(ids[perm], labels[perm], 5, seed=1), folds[perm])
    assert not np.array_equal(fold_ids(ids, labels, 5, seed=2), folds)


def test_out_of_fold_covers_every_row(easy):
    X, y, ids = easy["train"]
    Xva, yva, _ = easy["val_select"]
    head = HeadConfig(head="linear", agg="attention")
    train = dataclasses.replace(FAST, max_epochs=10)
    oof = out_of_fold(X, y, ids, Xva, yva, head, train, k=3)
    n = len(y)
    assert oof["prob"].shape == (n,) and oof["view_logits"].shape == (n, 3) and oof["attention"].shape == (n, 3)
    assert np.isfinite(oof["prob"]).all()
    assert np.array_equal(oof["fold"], fold_ids(ids, y, 3, seed=train.seed))
    for c in (0, 1):
        counts = np.bincount(oof["fold"][y == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_allclose(oof["attention"].sum(1), 1.0, rtol=1e-5)  # every row really predicted
    assert M.auroc(y, oof["prob"]) >= 0.9
    full, _ = fit(X, y, Xva, yva, head, train)
    assert not np.allclose(predict(full, X)["prob"], oof["prob"], atol=1e-4)


def test_out_of_fold_is_really_cross_fitted():
    """Random labels: a model memorises its own rows (in-sample AUROC ~1) but OOF stays at chance."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 1, 32)).astype(np.float32)
    y = rng.integers(0, 2, 48)
    ids = np.array([f"id{i}" for i in range(48)])
    head = HeadConfig(head="linear", agg="global", dropout=0.0)
    train = TrainConfig(lr=0.05, batch_size=8, max_epochs=30, patience=30, weight_decay=0.0)
    model, _ = fit(X, y, X, y, head, train)
    assert M.auroc(y, predict(model, X)["prob"]) > 0.95
    oof = out_of_fold(X, y, ids, X, y, head, train, k=4)
    assert M.auroc(y, oof["prob"]) < 0.75


def test_out_of_fold_needs_two_folds(easy):
    X, y, ids = easy["train"]
    with pytest.raises(ConfigError, match="oof-folds must be >= 2"):
        out_of_fold(X, y, ids, X, y, HeadConfig(), FAST, k=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"head": "resnet"}, "unknown head 'resnet': pass one of linear, mlp"),
    ({"agg": "sum"}, "unknown aggregator 'sum'"),
    ({"policy": "argmax"}, "unknown policy 'argmax': pass one of softmax, gate"),
    ({"view_dropout": 1.0}, "view dropout"),
    ({"view_dropout": -0.1}, "view dropout"),
    ({"coverage": 0.0}, "coverage"),
    ({"coverage": 1.5}, "coverage"),
    ({"norm": "batch"}, "norm"),
    ({"k": 0}, "k"),
    ({"hidden": 0}, "hidden"),
    ({"depth": -1}, "depth"),
    ({"dropout": 1.0}, "dropout"),
    ({"attn_hidden": 0}, "attn"),
    ({"gate_alpha": 1.5}, "alpha"),
    ({"gate_lambda": -1.0}, "lambda"),
])
def test_bad_head_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HeadConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"stop_metric": "auroc"}, "unknown stop metric 'auroc': pass one of nll, mcc"),
    ({"batch_size": -1}, "batch size"),
    ({"max_epochs": 0}, "max epochs"),
    ({"lr": 0.0}, "lr"),
    ({"patience": 0}, "patience"),
    ({"weight_decay": -1e-3}, "weight decay"),
])
def test_bad_train_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)
