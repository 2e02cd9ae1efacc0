"""Cascade router: joining runs, certified and budget thresholds, stage 3, compute, files."""

from __future__ import annotations

import csv
import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from natix import metrics as M
from natix.cache.store import CacheWriter, Rows, open_cache
from natix.cache.synthetic import make_synthetic_cache
from natix.calibrate.conformal import LearnThenTest, ltt_start
from natix.cascade.router import (
    ExternalStage,
    Router,
    cascade_run,
    deferral_curve,
    evaluate_cascade,
    expected_gflops,
    gflops_from_identity,
    gflops_per_image,
    join_stages,
    load_callable,
    load_stage,
)
from natix.errors import ConfigError, DataError
from natix.heads.runs import fit_run
from natix.heads.train import HeadConfig, TrainConfig

TRAIN = TrainConfig(lr=1e-2, batch_size=64, max_epochs=10, threads=1)



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs on one synthetic cache: stage 1 weak (global view only), stage 2 strong (max over views)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("router")
    cache = make_synthetic_cache(root / "cache", n=1500, n_views=4, dim=16, strength=2.5)
    fit_run(cache, root / "stage1", head=HeadConfig(agg="global"), train=TRAIN)
    fit_run(cache, root / "stage2", head=HeadConfig(agg="max"), train=TRAIN)
    torch.set_num_threads(old)
    return {"root": root, "cache": cache, "stage1": root / "stage1", "stage2": root / "stage2"}


def _rewrite(run, split, edit):
    """Apply `edit(dict of arrays) -> dict of arrays` to a run's predictions/<split>.npz."""
    path = run / "predictions" / f"{split}.npz"
    with np.load(path) as z:
        pred = {k: z[k] for k in z.files}
    np.savez(path, **edit(pred))


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def _calibrated_pool(rng, n):
    """Stage-1 probabilities that are calibrated: y ~ Bernoulli(p), so P(error | g) = 1 - g."""
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.int64)
    return p, y


# --------------------------------------------------------------------------- loading and joining


def test_load_stage_gives_both_splits_with_max_prob_confidence(runs):
    st = load_stage(runs["stage1"])
    assert st["confidence"] == "max_prob" and st["cache"]["path"] == str(runs["cache"].resolve())
    for split in ("val_calib", "val_test"):
        part = st[split]
        z = np.load(runs["stage1"] / "predictions" / f"{split}.npz")
        np.testing.assert_array_equal(part["ids"], z["ids"])
        np.testing.assert_allclose(part["confidence"], np.maximum(z["prob"], 1 - z["prob"]))
        assert len(part["labels"]) == len(part["prob"]) == 225


def test_join_aligns_stages_whose_rows_are_in_another_order(runs, tmp_path):
    shuffled = _copy_run(runs["stage2"], tmp_path / "shuffled")
    perm = np.random.default_rng(1).permutation(225)
    for split in ("val_calib", "val_test"):
        _rewrite(shuffled, split, lambda d: {k: v[perm] for k, v in d.items()})
    s1, s2, s2_shuffled = load_stage(runs["stage1"]), load_stage(runs["stage2"]), load_stage(shuffled)
    assert not np.array_equal(s2_shuffled["val_test"]["ids"], s1["val_test"]["ids"])  # really out of order
    joined = join_stages([s1, s2_shuffled])
    reference = join_stages([s1, s2])
    for split in ("val_calib", "val_test"):
        np.testing.assert_array_equal(joined[1][split]["ids"], s1[split]["ids"])
        for key in ("labels", "prob", "confidence"):
            np.testing.assert_array_equal(joined[1][split][key], reference[1][split][key])
        # each id keeps its own probability
        own = dict(zip(s2[split]["ids"].tolist(), s2[split]["prob"].tolist()))
        assert joined[1][split]["prob"].tolist() == [own[i] for i in s1[split]["ids"].tolist()]


def test_join_names_the_count_of_missing_ids(runs, tmp_path):
    short = _copy_run(runs["stage2"], tmp_path / "short")
    _rewrite(short, "val_test", lambda d: {k: v[5:] for k, v in d.items()})
    with pytest.raises(DataError, match="stage 2 lacks 5 of 225 val_test image ids: runs must come from caches"):
        join_stages([load_stage(runs["stage1"]), load_stage(short)])


def test_join_refuses_disagreeing_labels(runs, tmp_path):
    relabeled = _copy_run(runs["stage2"], tmp_path / "relabeled")

    def flip(d):
        d = dict(d)
        d["labels"] = d["labels"].copy()
        d["labels"][:3] = 1 - d["labels"][:3]
        return d

    _rewrite(relabeled, "val_calib", flip)
    with pytest.raises(DataError, match="labels of 3 of 225 val_calib images"):
        join_stages([load_stage(runs["stage1"]), load_stage(relabeled)])


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
    joint = router.predict_proba([c1["prob"], c2["prob"]])
    reward = M.natix_reward_windows(y, joint)[1]
    assert reward == pytest.approx(router.reward_calib_)
    assert reward >= M.natix_reward_windows(y, c1["prob"])[1]


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
    out = router.predict_proba([p1, p2])
    assert np.isfinite(out).all()
    p2[np.flatnonzero(deferred)[0]] = np.nan
    with pytest.raises(DataError, match="stage 2 answers 1 images with NaN"):
        router.predict_proba([p1, p2])
    p1_bad = p1.copy()
    p1_bad[np.flatnonzero(~deferred)[0]] = np.nan
    with pytest.raises(DataError, match="stage 1 confidence is NaN"):
        router.predict_proba([p1_bad, np.full(len(y), 0.7)])


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


# --------------------------------------------------------------------------- stage 3


ORACLE = '''
import json, pathlib
CALLS = []
LABELS = json.loads(pathlib.Path(__file__).with_name("labels.json").read_text())

def predict(images):
    CALLS.append(list(images))
    return [0.97 if LABELS[i] == 1 else 0.02 for i in images]

def minus_one(images):
    return [-1.0] * len(images)
'''


@pytest.fixture
def oracle(runs, tmp_path, monkeypatch):
    """A module `oracle_stage` on sys.path whose predict() knows every image's label by path."""
    with open_cache(runs["cache"]) as cache:
        labels = {str(p): int(y) for p, y in zip(cache.paths, cache.labels)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    (tmp_path / "oracle_stage.py").write_text(textwrap.dedent(ORACLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("oracle_stage", None)
    yield importlib.import_module("oracle_stage")
    sys.modules.pop("oracle_stage", None)


def test_three_stage_cascade_sends_the_deferred_images_to_the_external_stage(runs, oracle, tmp_path):
    res = cascade_run(runs["stage1"], runs["stage2"], stage3="oracle_stage:predict", budget=0.5,
                      out=tmp_path / "three")
    pred = res["predictions"]
    stage, prob, y = pred["stage"], pred["prob"], pred["labels"]
    assert len(prob) == len(stage) == 225 and ((prob >= 0) & (prob <= 1)).all()
    at3 = stage == 2
    assert at3.any()
    assert len(oracle.CALLS) == 1 and len(oracle.CALLS[0]) == at3.sum()
    with open_cache(runs["cache"]) as cache:
        path_of = dict(zip(cache.ids.tolist(), map(str, cache.paths)))
    assert oracle.CALLS[0] == [path_of[i] for i in pred["ids"][at3].tolist()]
    np.testing.assert_array_equal(prob[at3], np.where(y[at3] == 1, 0.97, 0.02))
    assert res["stages"][2]["accuracy_answered"] == 1.0
    assert res["deferral"][1] == pytest.approx(at3.mean())
    assert res["compute"]["expected_gflops"] is None and res["stages"][2]["gflops"] is None
    doc = json.loads((tmp_path / "three" / "cascade.json").read_text())
    assert doc["stages"][2] == "oracle_stage:predict"


def test_bad_external_module_output_stops_the_cascade(runs, oracle, tmp_path):
    with pytest.raises(DataError, match="outside \\[0, 1\\].*never -1"):
        cascade_run(runs["stage1"], runs["stage2"], stage3="oracle_stage:minus_one", budget=0.5,
                    out=tmp_path / "bad")


@pytest.mark.parametrize("fn, match", [
    (lambda imgs: [-1.0] * len(imgs), "outside \\[0, 1\\]"),
    (lambda imgs: [0.5] * (len(imgs) + 1), "shape \\(4,\\) for 3 images"),
    (lambda imgs: [0.5, float("nan"), 0.5], "NaN or inf for 1 of 3"),
    (lambda imgs: np.full((3, 1), 0.5), "shape \\(3, 1\\)"),
    (lambda imgs: ["a", "b", "c"], "not numbers"),
])
def test_external_stage_validates_its_outputs(fn, match):
    with pytest.raises(DataError, match=match):
        ExternalStage(fn)(["a.jpg", "b.jpg", "c.jpg"])


def test_external_stage_passes_valid_outputs_and_skips_empty_calls():
    calls = []

    def fn(imgs):
        calls.append(imgs)
        return torch.tensor([0.0, 1.0])

    np.testing.assert_array_equal(ExternalStage(fn)(["x", "y"]), [0.0, 1.0])
    assert ExternalStage(fn)([]).shape == (0,) and len(calls) == 1


@pytest.mark.parametrize("spec, match", [
    ("no_colon", "module:function"),
    ("a:b:c", "module:function"),
    ("natix_no_such_module_xyz:f", "cannot import module 'natix_no_such_module_xyz'"),
    ("json:no_such_function", "has no attribute 'no_such_function'"),
    ("json:__doc__", "not callable"),
])
def test_load_callable_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_callable(spec)


def test_load_callable_imports_dotted_attributes():
    assert load_callable("json:JSONDecoder.decode") is json.JSONDecoder.decode


# --------------------------------------------------------------------------- compute


def _identity(dim, depth, mlp, *, gated=False, views=None, loader="transformers"):
    views = views or {"n_views": 1, "grid": None, "overlap": None, "view_size": 224, "tile_size": None,
                      "flips": False}
    if loader == "transformers":
        arch = {"hidden_size": dim, "num_hidden_layers": depth, "intermediate_size": mlp, "patch_size": 16,
                "num_register_tokens": 4, "use_gated_mlp": gated}
    else:
        arch = {"architecture": "vit_large_patch16_dinov3", "embed_dim": dim, "depth": depth, "num_prefix_tokens": 5}
    return {"backbone": {"loader": loader, "arch": arch, "n_prefix_tokens": 5}, "views": views}


@pytest.mark.parametrize("dim, depth, mlp, gated, expected", [
    (384, 12, 1536, False, 9.4),  # DINOv3 S   (DESIGN §4)
    (768, 12, 3072, False, 35.9),  # B
    (1024, 24, 4096, False, 125.7),  # L
    (1280, 32, 5120, True, 344.2),  # H+ (SwiGLU)
])
def test_gflops_per_224_view_match_the_design_table(dim, depth, mlp, gated, expected):
    assert gflops_from_identity(_identity(dim, depth, mlp, gated=gated)) == pytest.approx(expected, rel=0.01)


def test_gflops_of_a_timm_identity_and_of_view_recipes():
    single = gflops_from_identity(_identity(1024, 24, 4096))
    assert gflops_from_identity(_identity(1024, 24, None, loader="timm")) == pytest.approx(single, rel=1e-12)
    ten = {"n_views": 10, "grid": 3, "overlap": 0.0, "view_size": 224, "tile_size": 224, "flips": False}
    twenty = {**ten, "n_views": 20, "flips": True}
    assert gflops_from_identity(_identity(1024, 24, 4096, views=ten)) == pytest.approx(10 * single)
    assert gflops_from_identity(_identity(1024, 24, 4096, views=twenty)) == pytest.approx(20 * single)
    small = gflops_from_identity(_identity(1024, 24, 4096, views={**ten, "tile_size": 112})) - single
    assert 0.24 < small / (9 * single) < 0.3  # a 112 tile costs about a quarter of a 224 view
    assert gflops_from_identity({"synthetic": {"n": 10}}) is None


def test_gflops_per_image_reads_the_cache_identity(runs, tmp_path):
    assert gflops_per_image(runs["cache"]) is None  # synthetic: unknown
    ident = {**_identity(1024, 24, 4096), "extractor_version": 0, "store_dtype": "float16"}
    table = [{"name": "global", "box": [0.0, 0.0, 1.0, 1.0], "flip": False}]
    with CacheWriter(tmp_path / "vitl", ident, table, dim=4) as w:
        w.add_part(np.zeros((2, 1, 4), np.float16), Rows(["a", "b"], ["a.jpg", "b.jpg"], [0, 1], ["", ""],
                                                         [(224, 224)] * 2), [])
        path = w.commit()
    assert gflops_per_image(path) == pytest.approx(125.7, rel=0.01)


def test_expected_gflops_weights_each_stage_by_its_reach():
    total, parts = expected_gflops([1.0, 0.25], [10.0, 40.0])
    assert total == pytest.approx(20.0) and parts == [10.0, 10.0]
    total, parts = expected_gflops([1.0, 0.25, 0.1], [10.0, 40.0, None])
    assert total is None and parts == [10.0, 10.0, None]
    assert expected_gflops([1.0, 0.0], [10.0, None])[0] == pytest.approx(10.0)  # never reached: no cost


# --------------------------------------------------------------------------- curve and files


def test_deferral_curve_ends_at_each_stage_alone_and_ideal_dominates():
    rng = np.random.default_rng(4)
    p1, y = _calibrated_pool(rng, 400)
    p2 = np.clip(np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.25, 400), 0, 1)
    c = deferral_curve(y, p1, np.maximum(p1, 1 - p1), p2)
    r, joint, ideal, rand = (np.array(c[k]) for k in ("deferral_ratio", "joint_accuracy", "ideal_accuracy",
                                                       "random_accuracy"))
    assert r[0] == 0 and r[-1] == 1 and np.all(np.diff(r) > 0)
    assert joint[0] == pytest.approx(M.accuracy(y, p1)) and joint[-1] == pytest.approx(M.accuracy(y, p2))
    assert np.all(ideal >= joint - 1e-12) and np.all(ideal >= rand - 1e-12)
    assert 0 < c["s_d"] <= 1  # calibrated confidence defers better than random


def test_cascade_run_writes_strict_json_and_the_curve(runs, tmp_path):
    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    res = cascade_run(runs["stage1"], runs["stage2"], target_risk=0.1, delta=0.1, out=tmp_path / "c")
    doc = json.loads((tmp_path / "c" / "cascade.json").read_text(), parse_constant=no_constants)
    assert doc["mode"] == "certified" and doc["router"]["target_risk"] == 0.1
    assert doc["stages"] == [str(runs["stage1"]), str(runs["stage2"])]
    assert len(doc["router"]["thresholds"]) == 1
    assert {"accuracy", "mcc", "natix_reward", "deferral"} <= set(doc["metrics"])
    assert doc["metrics"]["accuracy"] == pytest.approx(res["accuracy"])
    assert doc["compute"]["expected_gflops"] is None and "synthetic" in doc["per_stage"][0]["compute_note"]
    assert "LTT" in doc["calibration"]["procedure"]
    with (tmp_path / "c" / "cascade_curve.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["threshold", "deferral_ratio", "joint_accuracy", "random_accuracy", "ideal_accuracy"]
    assert len(rows) == len(res["curve"]["deferral_ratio"]) + 1 > 10
    assert (tmp_path / "c" / "cascade_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the default output directory is <stage1>/cascade
    stage1 = _copy_run(runs["stage1"], tmp_path / "s1")
    cascade_run(stage1, runs["stage2"], budget=0.3)
    assert (stage1 / "cascade" / "cascade.json").is_file()


def test_evaluate_refuses_a_router_fitted_for_another_cascade(runs):
    y = np.tile([0, 1], 50)
    st = {"prob": np.linspace(0.01, 0.99, 100), "labels": y}
    router = Router(budget=0.2).fit([st, st, st])
    with pytest.raises(ConfigError, match="fitted for 3 stages, but 2"):
        evaluate_cascade([runs["stage1"], runs["stage2"]], router)
