"""The two tier-2 engines: batched L-BFGS (numpy) and stacked AdamW (torch).

Stacking is only an optimisation: a member of a stacked fit is the model a fit of that seed
alone gives. The L-BFGS engine solves the same problem scikit-learn's LogisticRegression does.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from natix.cache.synthetic import make_synthetic_cache
from natix.errors import ConfigError
from natix.heads.config import HeadConfig, TrainConfig, limit_threads
from natix.heads.fitting import RowView, fit_heads, fold_ids, out_of_fold
from natix.heads.lbfgs import minimize_lbfgs
from natix.heads.linear import predict_view_linear
from natix.heads.registry import BUILTIN_AGGREGATORS, BUILTIN_HEADS, list_aggregators, list_heads
from natix.heads.runs import load_dataset
from natix.heads.splits import make_splits

FAST = TrainConfig(batch_size=64, max_epochs=6, threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """500 images × 4 views × 12 dims, the signal in one tile of each positive."""
    path = make_synthetic_cache(tmp_path_factory.mktemp("eng"), n=500, n_views=4, dim=12, strength=2.0, seed=3)
    d = load_dataset(path)
    rows = make_splits(d.ids, d.labels, fingerprint=d.fingerprint).rows(d.ids)
    return {name: (d.X[r], d.labels[r], d.ids[r]) for name, r in rows.items()}


def _fit(data, head, train, seeds):
    (Xtr, ytr, _), (Xva, yva, _) = data["train"], data["val_select"]
    return fit_heads(Xtr, ytr, Xva, yva, head, train, seeds=seeds)


STACKED = [
    HeadConfig(agg="max"),  # lbfgs, non-convex: one member per seed and L2
    HeadConfig(agg="topk", k=2),
    HeadConfig(agg="mean"),  # lbfgs, convex: the seeds share one fit
    HeadConfig(head="mlp", agg="attention", hidden=8, dropout=0.2, view_dropout=0.3),  # adamw with randomness
    HeadConfig(head="linear", agg="max", policy="gate"),  # adamw, gate
]


@pytest.mark.parametrize("head", STACKED, ids=lambda h: h.name)
def test_a_stacked_multi_seed_fit_equals_separate_fits_per_seed(data, head):
    seeds = (0, 1, 2)
    stacked = _fit(data, head, FAST, seeds)
    X = data["val_test"][0]
    probs = []
    for seed, member in zip(seeds, stacked):
        (alone,) = _fit(data, head, FAST, (seed,))
        assert member.history["seed"] == seed
        for key in alone.state:
            np.testing.assert_allclose(member.state[key], alone.state[key], rtol=1e-4, atol=1e-5, err_msg=key)
        a, b = member.predict(X), alone.predict(X)
        np.testing.assert_allclose(a["prob"], b["prob"], rtol=0, atol=1e-5)
        probs.append(a["prob"])
    if head.agg != "mean":  # the seeds are different models
        assert not np.allclose(probs[0], probs[1])


def test_adamw_members_are_bitwise_the_solo_fits(data):
    head = HeadConfig(head="mlp", agg="attention", hidden=8, dropout=0.2, view_dropout=0.3)
    stacked = _fit(data, head, FAST, (4, 5))
    (alone,) = _fit(data, head, FAST, (5,))
    for key in alone.state:
        assert np.array_equal(stacked[1].state[key], alone.state[key]), key
    assert stacked[1].history["val_score"] == alone.history["val_score"]


def test_members_stop_on_their_own(data):
    head = HeadConfig(head="mlp", agg="mean", hidden=8, dropout=0.0)
    fits = _fit(data, head, dataclasses.replace(FAST, lr=5e-2, max_epochs=40, patience=2), (0, 1, 2, 3))
    for f in fits:
        h = f.history
        assert h["epochs"] == h["best_epoch"] + 1 + 2 or h["epochs"] == 40
        assert h["best_val_score"] == min(h["val_score"])


def test_lbfgs_probe_solves_scikit_learns_problem(data):
    from sklearn.linear_model import LogisticRegression

    (Xtr, ytr, _), (Xva, yva, _) = data["train"], data["val_select"]
    lam = 1e-2
    train = dataclasses.replace(FAST, l2=(lam,), max_iter=500, patience=500)  # no early stop: the optimum
    (fitted,) = fit_heads(Xtr, ytr, Xva, yva, HeadConfig(agg="mean"), train)
    Z = Xtr.astype(np.float64).mean(axis=1)
    Z = (Z - fitted.state["mu"]) / fitted.state["sigma"]
    # ours: mean log-loss + lam/2 |w|^2; scikit-learn: C * sum log-loss + 1/2 |w|^2
    sk = LogisticRegression(C=1 / (lam * len(ytr)), tol=1e-10, max_iter=10_000).fit(Z, ytr)
    np.testing.assert_allclose(fitted.state["head.fc.weight"][0], sk.coef_[0], rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(fitted.state["head.fc.bias"], sk.intercept_, rtol=2e-3, atol=2e-4)


def test_l2_is_chosen_on_val_select(data):
    fits = _fit(data, HeadConfig(agg="max"), dataclasses.replace(FAST, l2=(1e-4, 1e-1, 10.0)), (0,))
    h = fits[0].history
    scores = {float(k): v for k, v in h["l2_scores"].items()}
    assert h["l2"] == min(scores, key=scores.get)
    assert h["best_val_score"] == pytest.approx(min(scores.values()))
    assert scores[10.0] > min(scores.values())  # a heavy penalty underfits


@pytest.mark.parametrize("agg", ["global", "mean", "max", "topk"])
def test_numpy_predictions_equal_the_torch_model(data, agg):
    import torch

    (fitted,) = _fit(data, HeadConfig(agg=agg, k=3), FAST, (0,))
    X = data["val_test"][0]
    ours = predict_view_linear(fitted.state, X, agg=agg, k=3)
    model = fitted.module(X.shape[1])
    with torch.no_grad():
        out = model(torch.from_numpy(X.astype(np.float32)), view_logits=True)
    np.testing.assert_allclose(ours["logit"], out["logit"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours["view_logits"], out["view_logits"].numpy(), rtol=1e-5, atol=1e-5)


def test_stacked_folds_equal_separate_fold_fits(data):
    # fold models never see the held-out rows: not their labels, not their feature statistics
    (Xtr, ytr, ids), (Xva, yva, _) = data["train"], data["val_select"]
    head = HeadConfig(agg="mean")
    # no checks on val_select before the end: both sides return their converged optimum
    train = dataclasses.replace(FAST, l2=(1e-2,), max_iter=400, eval_every=10_000)
    oof = out_of_fold(Xtr, ytr, ids, Xva, yva, head, train, k=3)
    folds = fold_ids(ids, ytr, 3, seed=train.seed)
    for f in range(3):
        held, kept = folds == f, folds != f
        (alone,) = fit_heads(RowView(Xtr, np.flatnonzero(kept)), ytr[kept], Xva, yva, head, train)
        np.testing.assert_allclose(oof["prob"][held], alone.predict(Xtr[held])["prob"], rtol=0, atol=2e-3)


def test_row_view_reads_like_the_rows():
    X = np.arange(60, dtype=np.float16).reshape(10, 3, 2)
    rows = np.array([7, 2, 2, 9])
    v = RowView(X, rows)
    assert v.shape == (4, 3, 2) and len(v) == 4
    assert np.array_equal(v[1:3], X[rows[1:3]]) and np.array_equal(v[:, :1], X[rows][:, :1])
    assert np.array_equal(np.asarray(v, dtype=np.float32), X[rows].astype(np.float32))


def test_minimize_lbfgs_members_are_independent():
    rng = np.random.default_rng(0)
    A = [np.diag(rng.uniform(0.5, 20, 6)) for _ in range(3)]
    c = rng.normal(size=(3, 6))

    def fun(x):
        f = np.array([0.5 * xi @ Ai @ xi - ci @ xi for xi, Ai, ci in zip(x, A, c)])
        return f, np.stack([Ai @ xi - ci for xi, Ai, ci in zip(x, A, c)])

    res = minimize_lbfgs(fun, np.zeros((3, 6)), gtol=1e-10, ftol=0.0)
    for i in range(3):
        np.testing.assert_allclose(res.x[i], np.linalg.solve(A[i], c[i]), rtol=1e-6)
        alone = minimize_lbfgs(lambda x, i=i: tuple(a[i:i + 1] for a in fun(np.repeat(x, 3, 0))),
                               np.zeros((1, 6)), gtol=1e-10, ftol=0.0)
        np.testing.assert_allclose(alone.x[0], res.x[i], rtol=1e-12)
        assert alone.n_iter[0] == res.n_iter[i]
    assert res.converged.all()


def test_a_member_stopped_by_the_callback_keeps_its_iterate():
    def fun(x):
        return 0.5 * (x**2).sum(1), x

    res = minimize_lbfgs(fun, np.ones((2, 3)), callback=lambda it, x, f: np.array([True, False]))
    assert res.n_iter[0] == 1 and res.n_iter[1] >= 1
    assert not res.converged[0]


def test_view_linear_fit_does_not_import_torch(tmp_path):
    path = make_synthetic_cache(tmp_path, n=200, n_views=3, dim=8)
    code = ("import sys; from natix.heads.runs import fit_run; from natix.heads.config import HeadConfig; "
            f"fit_run({str(path)!r}, {str(tmp_path / 'run')!r}, head=HeadConfig(agg='max'), oof_folds=2); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_builtin_names_match_the_registry():
    assert sorted(BUILTIN_HEADS) == list_heads()
    assert sorted(BUILTIN_AGGREGATORS) == list_aggregators()


def test_limit_threads_sets_and_restores():
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    with limit_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kwargs,match", [
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
    ({"l2": ()}, "l2 must be one or more"),
    ({"l2": (-1.0,)}, "l2 must be one or more"),
    ({"threads": -1}, "threads must be >= 0"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"weight_decay": float("nan")}, "weight decay must be a finite number >= 0, got nan"),
    ({"weight_decay": float("inf")}, "weight decay must be a finite number >= 0, got inf"),
    ({"l2": (float("inf"),)}, "l2 must be one or more"),
])
def test_bad_train_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"gate_lambda": float("nan")}, "gate lambda must be a finite number >= 0, got nan"),
    ({"gate_lambda": float("inf")}, "gate lambda must be a finite number >= 0, got inf"),
    ({"dropout": float("nan")}, "dropout must be in"),
    ({"coverage": float("nan")}, "gate coverage must be in"),
])
def test_bad_head_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        HeadConfig(**kwargs)


@pytest.mark.parametrize("head", [HeadConfig(agg="topk", k=5), HeadConfig(head="mlp", agg="topk", k=5)],
                         ids=["lbfgs", "adamw"])
def test_topk_with_more_views_than_the_features_have_is_refused(data, head):
    with pytest.raises(ConfigError, match=r"--k 5 is more than the 4 views of the features: pass --k <= 4"):
        _fit(data, head, FAST, (0,))
    assert _fit(data, dataclasses.replace(head, k=4), dataclasses.replace(FAST, max_epochs=1), (0,))


def test_out_of_fold_refuses_more_folds_than_a_class_has_rows(data):
    (Xtr, ytr, ids), (Xva, yva, _) = data["train"], data["val_select"]
    fewest = int(np.bincount(ytr).min())
    smallest = int(np.argmin(np.bincount(ytr)))
    for k in (fewest + 1, len(ytr) + 1, 10_000):
        with pytest.raises(ConfigError, match=rf"--oof-folds {k} is more than the {fewest} training images of class "
                                              rf"{smallest}: pass --oof-folds <= {fewest}"):
            out_of_fold(Xtr, ytr, ids, Xva, yva, HeadConfig(), FAST, k=k)
    with pytest.raises(ConfigError, match="--oof-folds must be >= 2, got 1"):
        out_of_fold(Xtr, ytr, ids, Xva, yva, HeadConfig(), FAST, k=1)


def test_lbfgs_refuses_heads_it_cannot_fit():
    with pytest.raises(ConfigError, match="--optimizer lbfgs fits linear heads"):
        TrainConfig(optimizer="lbfgs").engine(HeadConfig(head="mlp"))
    assert TrainConfig().engine(HeadConfig(agg="topk")) == "lbfgs"
    assert TrainConfig().engine(HeadConfig(agg="attention")) == "adamw"
    assert TrainConfig(optimizer="adamw").engine(HeadConfig(agg="max")) == "adamw"


@pytest.mark.parametrize("jobs,threads,match", [
    (3, 0, "--jobs 3 exceeds the 2 core"),
    (2, 2, r"--threads 2 x --jobs 2 = 4 exceeds the 2 core\(s\) this process may use: pass --threads 1"),
])
def test_ablate_never_oversubscribes(monkeypatch, tmp_path, jobs, threads, match):
    from natix.heads import config
    from natix.heads.ablate import ablate

    monkeypatch.setattr(config, "available_cores", lambda: 2)
    with pytest.raises(ConfigError, match=match):  # refused before the (missing) cache is read
        ablate(tmp_path / "missing.h5", tmp_path / "ab", jobs=jobs, train_cfg=TrainConfig(threads=threads),
               progress=False)


def test_ablate_gives_each_job_its_share(monkeypatch):
    from natix.heads import config
    from natix.heads.ablate import job_threads

    monkeypatch.setattr(config, "available_cores", lambda: 8)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # a parent that has not started torch
    assert job_threads(1, 0) == 8 and job_threads(2, 0) == 4 and job_threads(3, 0) == 2
    assert job_threads(2, 3) == 3


def test_adamw_divergence_is_one_line_naming_the_fix():
    from natix.errors import ConfigError
    from natix.heads.config import HeadConfig, TrainConfig
    from natix.heads.fitting import fit_heads

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 2, 4)).astype(np.float32)
    y = (X[:, 0, 0] > 0).astype(np.int64)
    with pytest.raises(ConfigError, match="training diverged: the loss became .*: lower --lr or --weight-decay"):
        fit_heads(X, y, X, y, HeadConfig(head="mlp", agg="mean"),
                  TrainConfig(optimizer="adamw", lr=1e30, max_epochs=3, threads=1))
