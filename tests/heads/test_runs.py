"""Run directories (fit_run / evaluate_run / load_dataset) and the ablation."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from natix import metrics as M
from natix.cache.store import CacheWriter, Rows
from natix.cache.synthetic import make_synthetic_cache
from natix.errors import ConfigError, DataError
from natix.heads.ablate import ablate
from natix.heads.fitting import fit_heads
from natix.heads.runs import CI_METRICS, evaluate_run, fit_run, load_dataset, resolve_splits
from natix.heads.splits import SPLITS, Splits
from natix.heads.train import HeadConfig, TrainConfig, predict
from natix.jsonio import dumps, jsonable
from natix.metrics import METRIC_NAMES
from natix.rundir import Run, confidence

TRAIN = TrainConfig(lr=1e-2, batch_size=64, max_epochs=10, patience=5)
HEAD = HeadConfig(hidden=16, attn_hidden=16)



@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("cache"), n=300, n_views=3, dim=16, strength=4.0, seed=0)


@pytest.fixture(scope="module")
def other_cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("other"), n=300, n_views=3, dim=16, strength=4.0, seed=1)


@pytest.fixture(scope="module")
def gate_run(cache, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "gate"
    head = dataclasses.replace(HEAD, agg="attention", policy="gate")
    return fit_run(cache, out, head=head, train=TRAIN, oof_folds=2)


@pytest.fixture(scope="module")
def plain_run(cache, tmp_path_factory):
    torch.set_num_threads(1)
    return fit_run(cache, tmp_path_factory.mktemp("runs") / "plain", head=HEAD, train=TRAIN)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- fit_run


def test_fit_run_writes_the_run_directory(gate_run, cache):
    out = gate_run.out
    for name in ("config.json", "model.safetensors", "splits.json", "metrics.json"):
        assert (out / name).is_file(), name
    stems = sorted(p.stem for p in (out / "predictions").glob("*.npz"))
    assert stems == sorted([*SPLITS, "train_oof"])
    config = Run(out).config
    data = load_dataset(cache)
    assert config["cache"]["fingerprint"] == data.fingerprint
    assert (config["cache"]["n_views"], config["cache"]["dim"]) == (3, 16)
    assert config["head"]["agg"] == "attention" and config["head"]["policy"] == "gate"
    assert config["oof_folds"] == 2
    splits = Splits.load(out / "splits.json", fingerprint=data.fingerprint)
    assert config["splits"]["digest"] == splits.digest
    assert config["splits"]["sizes"] == {k: len(v) for k, v in splits.ids.items()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {*SPLITS, "train_oof"}
    assert set(METRIC_NAMES) <= set(metrics["val_test"])
    assert metrics == jsonable(gate_run.metrics)  # NaN (undefined) is written as null


@pytest.mark.parametrize("split", [*SPLITS, "train_oof"])
def test_predictions_are_plain_numpy(gate_run, cache, split):
    path = gate_run.out / "predictions" / f"{split}.npz"
    with np.load(path, allow_pickle=False) as z:
        pred = {k: z[k] for k in z.files}
    assert {"ids", "labels", "logit", "prob", "view_logits", "gate", "aux_logit", "attention"} <= set(pred)
    n = len(pred["ids"])
    assert pred["labels"].shape == pred["logit"].shape == pred["prob"].shape == pred["gate"].shape == (n,)
    assert pred["view_logits"].shape == pred["attention"].shape == (n, 3)
    np.testing.assert_allclose(pred["prob"], 1 / (1 + np.exp(-pred["logit"].astype(np.float64))), rtol=1e-6)
    assert ((pred["gate"] > 0) & (pred["gate"] < 1)).all()
    # ids are this split's ids and labels are the cache's labels for them
    splits = Splits.load(gate_run.out / "splits.json")
    want = splits.ids["train" if split == "train_oof" else split]
    assert pred["ids"].tolist() == want
    data = load_dataset(cache)
    label_of = dict(zip(data.ids.tolist(), data.labels.tolist()))
    assert pred["labels"].tolist() == [label_of[i] for i in want]
    if split == "train_oof":
        assert set(pred["fold"].tolist()) == {0, 1}
    for k, v in Run(gate_run.out).predictions(split).items():
        assert np.array_equal(v, pred[k])


def test_softmax_mean_run_has_no_gate_or_attention(plain_run):
    pred = Run(plain_run.out).predictions("val_test")
    assert {"ids", "labels", "logit", "prob", "view_logits"} <= set(pred)
    assert not {"gate", "aux_logit", "attention"} & set(pred)
    assert not (plain_run.out / "predictions" / "train_oof.npz").exists()
    assert plain_run.metrics["val_test"]["auroc"] >= 0.9


def test_saved_weights_reproduce_the_predictions(gate_run):
    from safetensors.torch import load_file

    config = Run(gate_run.out).config
    model = HeadConfig(**config["head"]).build(config["cache"]["dim"], config["cache"]["n_views"])
    model.load_state_dict(load_file(gate_run.out / "model.safetensors"))
    data = load_dataset(config["cache"]["path"])
    rows = Splits.load(gate_run.out / "splits.json").rows(data.ids)
    pred = predict(model, data.X[rows["val_test"]])
    stored = Run(gate_run.out).predictions("val_test")
    for key in ("logit", "gate", "attention"):
        np.testing.assert_allclose(pred[key], stored[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("run", ["gate_run", "plain_run"])
def test_evaluate_run_recomputes_the_stored_metrics(request, run):
    result = request.getfixturevalue(run)
    stored = json.loads((result.out / "metrics.json").read_text())["val_test"]
    ev = evaluate_run(result.out, "val_test", n_boot=50)
    assert ev["split"] == "val_test"
    for name in METRIC_NAMES:
        assert _same(ev["metrics"][name], stored[name]), name
    assert ev["metrics"]["n"] == stored["n"]
    for name, (lo, hi) in ev["ci"].items():
        assert lo <= ev["metrics"][name] + 1e-9 and ev["metrics"][name] <= hi + 1e-9, name


def test_gate_run_uses_the_gate_as_confidence(gate_run):
    pred = Run(gate_run.out).predictions("val_test")
    np.testing.assert_array_equal(confidence(pred), pred["gate"].astype(np.float64))
    stored = json.loads((gate_run.out / "metrics.json").read_text())["val_test"]
    errors = (M.predictions(pred["prob"]) != pred["labels"]).astype(int)
    assert stored["augrc"] == pytest.approx(M.augrc(errors, pred["gate"]))


def test_evaluate_run_bad_inputs(gate_run, tmp_path):
    with pytest.raises(DataError, match="no predictions for split 'nope' \\(it has: .*val_test"):
        evaluate_run(gate_run.out, "nope")
    with pytest.raises(DataError, match="is not a natix run"):
        evaluate_run(tmp_path, "val_test")
    with pytest.raises(DataError, match="no config.json"):
        Run(tmp_path)


def test_evaluate_run_is_plain_data_for_strict_json(gate_run, tmp_path):
    """What the CLI prints: str, int and float values only, undefined metrics (NaN) written as null."""
    ev = evaluate_run(gate_run.out, "val_test", n_boot=20)
    assert (ev["run"], ev["split"]) == (str(gate_run.out), "val_test")
    assert set(ev["ci"]) == set(CI_METRICS)
    assert all(type(v) is float for k, v in ev["metrics"].items() if k != "n") and type(ev["metrics"]["n"]) is int
    assert all(type(v) is float for lo_hi in ev["ci"].values() for v in lo_hi)
    assert json.loads(dumps(ev)) == jsonable(ev)
    # a split with one class: AUROC and MCC and their CIs are undefined, and still strict JSON
    out = tmp_path / "one-class"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"head": {}, "cache": {"path": "x"}}))
    (out / "predictions").mkdir()
    np.savez(out / "predictions" / "val_test.npz", ids=np.array(["a", "b", "c"]), labels=np.ones(3, int),
             prob=np.array([0.9, 0.8, 0.3]))
    ev = evaluate_run(out, "val_test", n_boot=20)
    assert math.isnan(ev["metrics"]["auroc"]) and all(math.isnan(v) for v in ev["ci"]["auroc"])
    assert ev["metrics"]["accuracy"] == pytest.approx(2 / 3)
    text = dumps(ev)
    assert "NaN" not in text and json.loads(text)["metrics"]["auroc"] is None


def test_reusing_the_split_file_gives_the_same_splits(plain_run, cache, tmp_path):
    again = fit_run(cache, tmp_path / "again", head=HEAD, train=dataclasses.replace(TRAIN, max_epochs=2),
                    splits_path=plain_run.out / "splits.json", split_seed=99, ratios=(0.4, 0.2, 0.2, 0.2))
    assert Run(again.out).config["splits"]["digest"] == Run(plain_run.out).config["splits"]["digest"]
    assert Splits.load(again.out / "splits.json") == Splits.load(plain_run.out / "splits.json")


def test_a_split_file_from_another_cache_is_refused(plain_run, other_cache, tmp_path):
    with pytest.raises(DataError, match="made for cache"):
        fit_run(other_cache, tmp_path / "x", head=HEAD, train=TRAIN, splits_path=plain_run.out / "splits.json")
    assert not (tmp_path / "x").exists()


def test_fit_run_refuses_a_foreign_directory(cache, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a natix run"):
        fit_run(cache, out, head=HEAD, train=TRAIN)
    assert (out / "notes.txt").read_text() == "mine"


def test_load_dataset_without_labels(tmp_path):
    identity = {"extractor_version": 0, "test": "unlabeled"}
    table = [{"name": "global", "box": [0.0, 0.0, 1.0, 1.0], "flip": False}]
    with CacheWriter(tmp_path, identity, table, dim=8) as writer:
        writer.add_part(np.zeros((4, 1, 8), np.float16),
                        Rows([f"u{i}" for i in range(4)], [f"p{i}.jpg" for i in range(4)], [-1] * 4, [""] * 4,
                             [(224, 224)] * 4), [])
        path = writer.commit()
    with pytest.raises(DataError, match="has no labeled images"):
        load_dataset(path)


def test_load_dataset_keeps_labeled_rows_in_stored_dtype(cache):
    data = load_dataset(cache)
    assert data.X.shape == (300, 3, 16) and data.X.dtype == np.float16
    assert set(np.unique(data.labels)) == {0, 1}
    assert len(data.ids) == len(set(data.ids)) == 300
    assert data.view_names[0] == "global"


def _damage_h5(path, name, index, value):
    import h5py

    with h5py.File(path, "r+") as f:
        f[name][index] = value


def _nan_under_a_recomputed_checksum(path):
    import h5py

    from natix.cache.store import features_digest, open_cache

    _damage_h5(path, "features", (0, 0, 0), np.nan)
    with open_cache(path) as c:
        digest = features_digest(c)
    with h5py.File(path, "r+") as f:
        f.attrs["features_sha256"] = digest


def _invert(path):
    import h5py

    with h5py.File(path, "r+") as f:
        f["labels"][...] = 1 - f["labels"][()]


def _duplicate_id(path):
    import h5py

    with h5py.File(path, "r+") as f:
        ids = f["ids"][()]
        ids[3] = ids[2]
        f["ids"][...] = ids


TRAINING_DAMAGE = {
    "flipped feature": (lambda p: _damage_h5(p, "features", (5, 1, 2), 42), "features checksum differs"),
    "NaN feature": (_nan_under_a_recomputed_checksum, "NaN or inf"),
    "label of 7": (lambda p: _damage_h5(p, "labels", 4, 7), r"labels outside \{-1, 0, 1\}"),
    "inverted labels": (_invert, "labels, paths or groups differ from their checksum"),
    "duplicate id": (_duplicate_id, "image ids are not unique"),
    "renamed view": (lambda p: _damage_h5(p, "views/name", 0, "x"), "view table differs"),
}


@pytest.mark.parametrize("kind", TRAINING_DAMAGE)
def test_load_dataset_refuses_a_damaged_cache_in_one_line(tmp_path, kind):
    from natix.errors import CacheError

    path = make_synthetic_cache(tmp_path, n=60, n_views=2, dim=4)
    damage, says = TRAINING_DAMAGE[kind]
    damage(path)
    with pytest.raises(CacheError, match=rf"cache file '{path}' is damaged \(.*{says}.*\): see `natix cache verify "
                                         rf"{path}`") as info:
        load_dataset(path)
    assert "\n" not in str(info.value)
    with pytest.raises(CacheError, match="is damaged"):
        fit_run(path, tmp_path / "run", head=HEAD, train=TRAIN)
    assert not (tmp_path / "run" / "config.json").exists()


def test_load_dataset_can_skip_the_features_checksum_and_says_so(tmp_path, caplog):
    from natix.errors import CacheError

    path = make_synthetic_cache(tmp_path, n=60, n_views=2, dim=4)
    clean = load_dataset(path)
    _damage_h5(path, "features", (5, 1, 2), 42)
    with caplog.at_level("WARNING", logger="natix.heads.runs"):
        data = load_dataset(path, verify=False)
    assert any("not verifying the features checksum" in m and str(path) in m for m in caplog.messages)
    assert data.X.shape == clean.X.shape
    run = fit_run(path, tmp_path / "run", head=HEAD, train=TRAIN, verify=False)
    assert (run.out / "config.json").is_file()
    # What stays checked without the checksum: labels, ids, the view table, finiteness of labeled rows.
    for kind in ("NaN feature", "label of 7", "inverted labels", "duplicate id"):
        path = make_synthetic_cache(tmp_path / kind, n=60, n_views=2, dim=4)
        TRAINING_DAMAGE[kind][0](path)
        with pytest.raises(CacheError, match="is damaged"):
            load_dataset(path, verify=False)


def _conflicted_cache(root, n=80):
    """A labeled cache in which two images were listed twice with opposite labels."""
    identity = {"extractor_version": 0, "test": "conflicts"}
    table = [{"name": "global", "box": [0.0, 0.0, 1.0, 1.0], "flip": False}]
    ids = [f"{i:064x}" for i in range(n)]
    rng = np.random.default_rng(0)
    with CacheWriter(root, identity, table, dim=4) as w:
        w.add_part(rng.standard_normal((n, 1, 4)).astype(np.float16),
                   Rows(ids, [f"/img/{i}.jpg" for i in range(n)], [i % 2 for i in range(n)], [""] * n,
                        [(10, 10)] * n), [])
        w.set_conflicts(ids, {ids[0]: [("/img/0.jpg", 0), ("/img/copy-0.jpg", 1)],
                              ids[7]: [("/img/7.jpg", 1), ("/img/copy-7.jpg", 0)]})
        return w.commit(), {ids[0], ids[7]}


def test_images_with_conflicting_labels_are_held_out_of_every_split(tmp_path):
    path, conflicted = _conflicted_cache(tmp_path)
    data = load_dataset(path)
    assert data.held_out == frozenset(conflicted) and len(data.ids) == 80
    splits = resolve_splits(data, ratios=(0.5, 0.2, 0.15, 0.15))
    assert not conflicted & {i for v in splits.ids.values() for i in v}
    assert sum(len(v) for v in splits.ids.values()) == 78
    # A split file made before the conflict was known names one of them: refused with the fix.
    from natix.heads.splits import make_splits

    stale = make_splits(data.ids, data.labels, ratios=(0.5, 0.2, 0.15, 0.15), fingerprint=data.fingerprint)
    stale.save(tmp_path / "splits.json")
    with pytest.raises(DataError, match=r"split file .* puts 2 image\(s\) listed with conflicting labels .*drop "
                                        r"--splits"):
        resolve_splits(data, splits_path=tmp_path / "splits.json")


# --------------------------------------------------------------------------- split metrics


def test_split_metrics_perfect_and_inverted():
    y = np.array([0, 1] * 20)
    good = M.split_metrics(y, np.where(y == 1, 0.9, 0.1))
    assert good["accuracy"] == 1 and good["mcc"] == pytest.approx(1) and good["auroc"] == 1
    assert good["balanced_accuracy"] == 1
    assert good["nll"] == pytest.approx(-np.log(0.9))
    assert good["brier"] == pytest.approx(0.01)
    assert good["n"] == 40
    bad = M.split_metrics(y, np.where(y == 1, 0.2, 0.8))
    assert bad["accuracy"] == 0 and bad["mcc"] == pytest.approx(-1) and bad["auroc"] == 0
    # one class only: AUROC and MCC are undefined (NaN), accuracy is not
    one = M.split_metrics(np.ones(10, dtype=int), np.full(10, 0.9))
    assert one["accuracy"] == 1 and math.isnan(one["auroc"])


# --------------------------------------------------------------------------- ablate


@pytest.mark.parametrize("metric,baseline", [("mcc", None), ("nll", "mlp/max/softmax")])
def test_ablate_leaderboard(cache, tmp_path, metric, baseline):
    train = dataclasses.replace(TRAIN, max_epochs=6)
    result = ablate(cache, tmp_path / "ab", heads=("linear", "mlp"), aggs=("mean", "max"), policies=("softmax",),
                    seeds=2, metric=metric, baseline=baseline, head_cfg=HEAD, train_cfg=train, n_boot=50,
                    progress=False)
    board = result.rows
    assert result.out == tmp_path / "ab" and result.meta["seeds"] == 2
    arms = {"linear/mean/softmax", "linear/max/softmax", "mlp/mean/softmax", "mlp/max/softmax"}
    baseline = baseline or "linear/mean/softmax"
    assert [r["arm"] for r in board] and {r["arm"] for r in board} == arms and len(board) == 4
    values = [r[metric] for r in board]
    assert values == sorted(values, reverse=metric == "mcc")
    base = next(r for r in board if r["arm"] == baseline)
    assert base["diff"] == 0 and base["diff_ci"] == [0.0, 0.0]
    assert all(r["seeds"] == 2 for r in board)
    for r in board:
        lo, hi = r[f"{metric}_ci"]
        assert lo <= hi

    with open(tmp_path / "ab" / "leaderboard.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["arm"] for r in rows] == [r["arm"] for r in board]
    assert float(next(r for r in rows if r["arm"] == baseline)[f"diff_vs_baseline_{metric}"]) == 0
    md = (tmp_path / "ab" / "leaderboard.md").read_text()
    assert result.markdown == md
    table = [line for line in md.splitlines() if line.startswith("| ") and "/softmax" in line]
    assert [line.split(" | ")[0][2:] for line in table] == [r["arm"] for r in board]
    assert f"Sorted by {metric}" in md and f"`{baseline}`" in md
    js = json.loads((tmp_path / "ab" / "leaderboard.json").read_text())
    assert [r["arm"] for r in js["rows"]] == [r["arm"] for r in board]
    assert js["meta"]["seeds"] == 2

    # a row is the mean over its seeds of the per-seed val_test metrics
    data = load_dataset(cache)
    r = resolve_splits(data).rows(data.ids)  # ablate uses the default splits
    assert js["meta"]["split_digest"] == resolve_splits(data).digest
    head, agg, _ = baseline.split("/")
    y = data.labels[r["val_test"]]
    probs = []
    for seed in (train.seed, train.seed + 1):  # each seed alone: the same model as in the stacked fit
        (fitted,) = fit_heads(data.X[r["train"]], data.labels[r["train"]], data.X[r["val_select"]],
                              data.labels[r["val_select"]], dataclasses.replace(HEAD, head=head, agg=agg), train,
                              seeds=(seed,))
        probs.append(fitted.predict(data.X[r["val_test"]])["prob"])
    assert base[metric] == pytest.approx(np.mean([M.split_metrics(y, p)[metric] for p in probs]))
    # the CI is a CI of that same mean, so it holds the row's own value
    lo, hi = base[f"{metric}_ci"]
    assert lo <= base[metric] <= hi


@pytest.mark.parametrize("kwargs,match", [
    ({"metric": "f1"}, "unknown metric 'f1': pass one of accuracy"),
    ({"baseline": "svm/mean/softmax"}, "baseline 'svm/mean/softmax' is not an arm: pass one of linear/mean/softmax"),
    ({"heads": ("linear", "svm")}, "unknown head 'svm'"),
    ({"policies": ("softmax", "abstain")}, "unknown policy 'abstain'"),
    ({"seeds": 0}, "--seeds and --jobs must be >= 1"),
])
def test_ablate_bad_options_fail_before_training(tmp_path, kwargs, match):
    # the cache path does not exist: a ConfigError proves the check ran before loading or training
    with pytest.raises(ConfigError, match=match):
        ablate(tmp_path / "missing.h5", tmp_path / "ab", progress=False, **kwargs)
    assert not (tmp_path / "ab").exists()


def test_ablate_parallel_jobs_match_serial(cache, tmp_path):
    # one thread per fit on both sides: the same arithmetic, so the same leaderboard bit for bit
    kwargs = dict(heads=("linear", "mlp"), aggs=("mean",), seeds=2, head_cfg=HEAD,
                  train_cfg=dataclasses.replace(TRAIN, max_epochs=4, threads=1), n_boot=50, progress=False)
    serial = ablate(cache, tmp_path / "serial", jobs=1, **kwargs)
    parallel = ablate(cache, tmp_path / "parallel", jobs=2, **kwargs)
    assert dumps(serial.rows) == dumps(parallel.rows)


def test_refitting_a_run_removes_what_the_old_model_derived(cache, tmp_path):
    out = tmp_path / "run"
    fit_run(cache, out, head=HEAD, train=TRAIN, oof_folds=2)
    (out / "calibration.json").write_text("{}")
    (out / "report").mkdir()
    (out / "report" / "x.png").write_bytes(b"")
    fit_run(cache, out, head=HEAD, train=TRAIN)
    assert not (out / "calibration.json").exists() and not (out / "report").exists()
    assert not (out / "predictions" / "train_oof.npz").exists() and (out / "predictions" / "val_test.npz").exists()


def test_too_many_oof_folds_are_refused_before_the_main_fit(cache, tmp_path, monkeypatch):
    from natix.heads import runs

    monkeypatch.setattr(runs, "_fit_and_predict", lambda *a, **k: pytest.fail("fitted before refusing"))
    with pytest.raises(ConfigError, match="--oof-folds 1000 is more than the"):
        fit_run(cache, tmp_path / "run", oof_folds=1000)
    assert not (tmp_path / "run").exists()
