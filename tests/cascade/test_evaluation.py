"""Cascade evaluation: the external stage in a run, the deferral curve and s_d, the files written."""

from __future__ import annotations

import csv
import json
import math
import shutil
import textwrap

import numpy as np
import pytest

from natix import metrics as M
from natix.cache.store import open_cache
from natix.cascade.evaluation import cascade_run, deferral_table, evaluate_cascade
from natix.cascade.gatekeeper import deferral_metrics, tune_gatekeeper
from natix.cascade.router import Router
from natix.errors import ConfigError, DataError
from natix.rundir import Run


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def _calibrated_pool(rng, n):
    """Stage-1 probabilities that are calibrated: y ~ Bernoulli(p), so P(error | g) = 1 - g."""
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.int64)
    return p, y


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



# --------------------------------------------------------------------------- curve and files


def test_deferral_table_ends_at_each_stage_alone_and_ideal_dominates():
    rng = np.random.default_rng(4)
    p1, y = _calibrated_pool(rng, 400)
    p2 = np.clip(np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.25, 400), 0, 1)
    c = deferral_table(y, p1, M.confidence(p1), p2)
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
    assert {"accuracy", "mcc", "reward_ordered", "deferral"} <= set(doc["metrics"])
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


# --------------------------------------------------------------------------- one s_d


def test_deferral_table_scores_tied_confidences_exactly():
    """Two tied groups of four: the s_d of the exact curve, not of the points sampled for the plot.

    Stage 1 is wrong on 2 of the 4 least confident images (all tied), stage 2 always right;
    acc1 = 3/4, acc2 = 1, r = k/8. Deferring k <= 4 of the tied group fixes k/2 errors in
    expectation: joint − random = k/32 up to k = 4 (1/8), then down to 0 at k = 8, area 1/16.
    Ideal fixes both errors first: ideal − random = 3/32, 6/32 at k = 1, 2, then down to 0, area
    3/32. s_d = (1/16) / (3/32) = 2/3. Sampling the curve at the thresholds only (k = 0, 4, 8)
    sees ideal − random = 1/8 at k = 4 and gives area 1/16 for both: s_d = 1, the old value.
    """
    y = np.ones(8, dtype=np.int64)
    prob1 = np.array([0.3, 0.3, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7])
    conf1 = np.array([0.6] * 4 + [0.9] * 4)
    prob2 = np.full(8, 0.9)
    table = deferral_table(y, prob1, conf1, prob2)
    assert table["s_d"] == pytest.approx(2 / 3, rel=1e-12)
    assert table["deferral_ratio"] == [0.0, 0.5, 1.0]  # the thresholds see only k = 0, 4, 8
    assert table["joint_accuracy"] == pytest.approx([0.75, 1.0, 1.0])
    assert table["ideal_accuracy"] == pytest.approx([0.75, 1.0, 1.0])
    correct1 = 1 - M.decision_errors(y, prob1)
    assert table["s_d"] == deferral_metrics(correct1, conf1, stage2_correct=np.ones(8, dtype=int))["s_d"]


def test_tune_gatekeeper_and_cascade_report_the_same_s_d(runs, tmp_path):
    """One pair of runs, one score: the s_d of tune-gatekeeper and of cascade agree to the last digit."""
    res = tune_gatekeeper(runs["stage1"], tmp_path / "gk", alpha=0.3, stage2=runs["stage2"], lr=1e-2,
                          batch_size=64, epochs=3, threads=1)
    base = cascade_run(runs["stage1"], runs["stage2"], budget=0.3, out=tmp_path / "c-base")
    tuned = cascade_run(res.out, runs["stage2"], budget=0.3, out=tmp_path / "c-tuned")
    assert not math.isnan(base["curve"]["s_d"]) and not math.isnan(tuned["curve"]["s_d"])
    assert res.base_deferral["s_d"] == base["curve"]["s_d"]
    assert res.deferral["s_d"] == tuned["curve"]["s_d"]
    # deferral_metrics of run 1 vs run 2, joined by image id here, is the same number again.
    one, two = Run(runs["stage1"]), Run(runs["stage2"])
    p1, p2 = one.predictions("val_test"), two.predictions("val_test")
    row = {i: r for r, i in enumerate(p2["ids"].tolist())}
    rows = np.array([row[i] for i in p1["ids"].tolist()])
    correct2 = 1 - M.decision_errors(p2["labels"][rows], p2["prob"][rows])
    d = deferral_metrics(1 - M.decision_errors(p1["labels"], p1["prob"]), one.confidence("val_test"),
                         stage2_correct=correct2)
    assert d["s_d"] == base["curve"]["s_d"]
    # and the files say what the calls returned
    saved = json.loads((res.out / "deferral.json").read_text())
    assert saved["base"]["s_d"] == json.loads((tmp_path / "c-base" / "cascade.json").read_text())["s_d"]
    assert saved["tuned"]["s_d"] == json.loads((tmp_path / "c-tuned" / "cascade.json").read_text())["s_d"]


def test_undefined_s_d_is_null_in_cascade_json(runs, tmp_path):
    """Stage 2 = a copy of stage 1: deferring can neither help nor hurt, so s_d is undefined."""
    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    twin = _copy_run(runs["stage1"], tmp_path / "twin")
    res = cascade_run(runs["stage1"], twin, budget=0.3, out=tmp_path / "c")
    assert math.isnan(res["curve"]["s_d"])
    doc = json.loads((tmp_path / "c" / "cascade.json").read_text(), parse_constant=no_constants)
    assert doc["s_d"] is None

