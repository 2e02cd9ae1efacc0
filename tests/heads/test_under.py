"""Challenge caches in tier 2: splits by image id, training on draws, judging a run under another
cache (per level), and ablate / calibrate / fit-failure / cascade under a cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natix import metrics as M
from natix.cache.store import open_cache
from natix.cache.synthetic import make_synthetic_cache
from natix.errors import ConfigError, DataError
from natix.heads.ablate import ablate
from natix.heads.runs import evaluate_run, fit_run, load_dataset, resolve_splits
from natix.heads.under import load_head, predict_under, under_run
from natix.rundir import Run

N, V, D, K = 600, 2, 16, 3


@pytest.fixture
def caches(tmp_path):
    """A clean cache and a 3-draw challenge-style cache of the same 600 images."""
    root = tmp_path / "cache"
    clean = make_synthetic_cache(root, n=N, n_views=V, dim=D, seed=3)
    drawn = make_synthetic_cache(root, n=N, n_views=V, dim=D, seed=3, draws=K)
    return clean, drawn


@pytest.fixture
def clean_run(tmp_path, caches):
    return fit_run(caches[0], tmp_path / "clean-run").out


def test_draws_of_an_image_share_a_split_and_the_clean_cache_splits(caches):
    clean, drawn = (load_dataset(c) for c in caches)
    s_clean, s_drawn = resolve_splits(clean), resolve_splits(drawn)
    assert s_clean.ids == s_drawn.ids  # keyed by image id: the same images, the same assignment
    rows = s_drawn.rows(drawn.images)
    for name, r in rows.items():
        assert len(r) == K * len(s_drawn.ids[name])
        assert set(drawn.images[r]) == set(s_drawn.ids[name])
    seen = np.concatenate(list(rows.values()))
    assert len(seen) == len(set(seen.tolist())) == len(drawn.ids)


def test_fit_head_on_draws_keeps_every_draw_and_groups_oof_folds(tmp_path, caches):
    res = fit_run(caches[1], tmp_path / "drawn", oof_folds=3)
    run = Run(res.out)
    test = run.predictions("val_test")
    assert len(test["ids"]) == K * len(json.loads(run.splits_file.read_text())["ids"]["val_test"])
    assert all(":" in i for i in test["ids"].tolist())  # row ids carry the draw
    oof = run.predictions("train_oof")
    images = np.char.partition(oof["ids"].astype(str), ":")[:, 0]
    for image in np.unique(images)[:50]:
        assert len(set(oof["fold"][images == image].tolist())) == 1  # no draw judged by a model that saw another


def test_fit_head_on_clean_plus_draws_trains_on_both_and_judges_the_clean_rows(tmp_path, caches):
    res = fit_run(caches[0], tmp_path / "both", also=[caches[1]])
    run = Run(res.out)
    split = json.loads(run.splits_file.read_text())["ids"]
    train = run.predictions("train")
    assert len(train["ids"]) == (1 + K) * len(split["train"])  # the clean rows and every draw of them
    assert len(run.predictions("val_test")["ids"]) == len(split["val_test"])  # judged on the first cache
    assert run.config["also"] == [str(caches[1].resolve())]
    wide = make_synthetic_cache(tmp_path / "wide", n=N, n_views=V + 1, dim=D, seed=3, draws=2)
    with pytest.raises(DataError, match="same backbone and --views"):
        fit_run(caches[0], tmp_path / "bad", also=[wide])


def test_evaluate_under_scores_the_run_head_on_the_draws_by_level(clean_run, caches):
    res = evaluate_run(clean_run, under=caches[1], n_boot=50)
    pred = predict_under(clean_run, caches[1], splits=("val_test",))["val_test"]
    # independent: the head applied by hand to the cache's val_test rows
    data = load_dataset(caches[1])
    splits = json.loads(Run(clean_run).splits_file.read_text())["ids"]["val_test"]
    keep = np.isin(data.images, splits)
    head = load_head(Run(clean_run))
    prob = head.predict(data.X[keep])["prob"]
    assert sorted(pred["ids"].tolist()) == sorted(data.ids[keep].tolist())
    order = np.argsort(pred["ids"])
    np.testing.assert_allclose(pred["prob"][order], prob[np.argsort(data.ids[keep])], rtol=1e-6)
    assert res["metrics"]["n"] == keep.sum()
    assert res["metrics"]["mcc"] == pytest.approx(M.mcc(data.labels[keep], prob), abs=1e-9)
    assert res["under"]["challenge"] == "synthetic-validator" and res["under"]["draws"] == K
    assert res["ci_unit"].startswith("image")  # whole images resampled: their draws are not independent
    groups = np.char.partition(pred["ids"].astype(str), ":")[:, 0]
    _, lo, hi = M.bootstrap_ci(M.mcc, pred["labels"], pred["prob"], n_boot=50, seed=0, groups=groups)
    assert res["ci"]["mcc"] == [lo, hi]
    assert set(res["levels"]) == {"0", "1", "2", "3"}
    assert sum(m["n"] for m in res["levels"].values()) == keep.sum()
    for level, m in res["levels"].items():
        rows = pred["levels"] == int(level)
        assert m["accuracy"] == pytest.approx(M.accuracy(pred["labels"][rows], pred["prob"][rows]))
    # the shift grows with the level: a clean-trained head does worst at level 3
    assert res["levels"]["3"]["accuracy"] < res["levels"]["0"]["accuracy"]


def test_evaluate_under_refuses_a_cache_of_other_images_or_views(tmp_path, clean_run):
    other = make_synthetic_cache(tmp_path / "other", n=N, n_views=V, dim=D, seed=4, draws=2)
    with pytest.raises(DataError, match="lacks .* split images of run .*same image source"):
        evaluate_run(clean_run, under=other)
    for split in ("train_oof", "bogus"):
        with pytest.raises(DataError, match=f"split '{split}' cannot be judged under another cache"):
            evaluate_run(clean_run, split, under=other)
    narrow = make_synthetic_cache(tmp_path / "narrow", n=N, n_views=1, dim=D, seed=3, draws=2)
    with pytest.raises(DataError, match=r"needs \['global', 'tile_1'\].*--views 2"):
        evaluate_run(clean_run, under=narrow)
    wide = make_synthetic_cache(tmp_path / "wide", n=N, n_views=V + 1, dim=D, seed=3, draws=2)
    assert evaluate_run(clean_run, under=wide, n_boot=10)["metrics"]["n"] > 0  # the run's views, picked by name


def test_ablate_compares_clean_and_draw_training_under_the_draws(tmp_path, caches):
    board = ablate(list(caches), tmp_path / "board", heads=("linear",), aggs=("mean",), seeds=1, metric="mcc",
                   under=caches[1], n_boot=200, progress=False)
    names = [r["arm"] for r in board.rows]
    assert sorted(names) == ["clean:linear/mean/softmax", "synthetic-validator:linear/mean/softmax"]
    by = {r["cache"]: r for r in board.rows}
    drawn, clean = by["synthetic-validator"], by["clean"]
    assert drawn["mcc"] > clean["mcc"]  # trained under the conditions it is judged in
    assert clean["diff"] == 0.0 and drawn["diff"] == pytest.approx(drawn["mcc"] - clean["mcc"])
    assert drawn["diff_ci"][0] > 0  # the paired CI on the same val_test rows excludes 0
    assert board.meta["judged_on"]["rows"] == K * board.meta["judged_on"]["images"]
    assert "judged on" in board.markdown and "reward_expected:" in board.markdown


def test_ablate_refuses_caches_with_other_views(tmp_path, caches):
    wide = make_synthetic_cache(tmp_path / "wide", n=N, n_views=V + 1, dim=D, seed=3)
    with pytest.raises(ConfigError, match="same backbone and --views"):
        ablate([caches[0], wide], tmp_path / "b", heads=("linear",), aggs=("mean",), progress=False)


def test_calibrate_under_records_the_cache_and_keeps_draws_in_one_fold(clean_run, caches):
    from natix.calibrate.apply import calibrate_run, certify_fold

    res = calibrate_run(under_run(clean_run, caches[1]), method="platt", exit="ltt", alpha=0.3)
    cal = json.loads((Run(clean_run).path / "calibration.json").read_text())
    assert cal["under"]["challenge"] == "synthetic-validator"
    assert "judged under synthetic-validator" in res.guarantee and "not independent" in res.guarantee
    ids = predict_under(clean_run, caches[1], splits=("val_calib",))["val_calib"]["ids"]
    fold = certify_fold(ids)
    images = np.char.partition(ids.astype(str), ":")[:, 0]
    assert all(len(set(fold[images == i].tolist())) == 1 for i in np.unique(images))
    assert 0.4 < fold.mean() < 0.6


def test_cascade_and_fit_failure_under_caches(tmp_path, caches, clean_run):
    from natix.cascade.evaluation import cascade_run
    from natix.cascade.failure import fit_failure_run

    root = tmp_path / "cache"
    strong = make_synthetic_cache(root, n=N, n_views=V, dim=D, seed=3, strength=5.0)
    strong_drawn = make_synthetic_cache(root, n=N, n_views=V, dim=D, seed=3, strength=5.0, draws=K)
    stage2 = fit_run(strong, tmp_path / "strong").out
    res = cascade_run(under_run(clean_run, caches[1]), under_run(stage2, strong_drawn), budget=0.3,
                      out=tmp_path / "cascade")
    assert res["n"] == len(predict_under(clean_run, caches[1], splits=("val_test",))["val_test"]["ids"])
    assert [u["challenge"] for u in res["document"]["under"]] == ["synthetic-validator"] * 2
    other_seed = make_synthetic_cache(root, n=N, n_views=V, dim=D, seed=3, strength=5.0, draws=K + 1)
    with pytest.raises(ConfigError, match="judged under different conditions"):
        cascade_run(under_run(clean_run, caches[1]), under_run(stage2, other_seed), budget=0.3, out=tmp_path / "c2")
    with pytest.raises(ConfigError, match="judged under different conditions"):
        cascade_run(under_run(clean_run, caches[1]), stage2, budget=0.3, out=tmp_path / "c3")
    with pytest.raises(ConfigError, match="external stage 3 answers image files"):
        cascade_run(under_run(clean_run, caches[1]), under_run(stage2, strong_drawn), budget=0.3,
                    stage3=lambda paths: [0.5] * len(paths), out=tmp_path / "c4")
    run = fit_run(caches[0], tmp_path / "oof-run", oof_folds=3).out
    out = fit_failure_run(under_run(run, caches[1]), model="mlp", n_boot=20, threads=1)
    assert out["n"] == len(predict_under(run, caches[1], splits=("val_test",))["val_test"]["ids"])
    assert json.loads((run / "failure.json").read_text())["under"]["draws"] == K


def test_cache_reader_gives_image_ids_draws_and_levels(caches):
    with open_cache(caches[1]) as c:
        assert c.draws[0] == {"draw": 0, "source_size": [224, 224], "params": {"level": int(c.levels[0])}}
        assert (c.image_ids[::K] == c.image_ids[1::K]).all()
    with open_cache(caches[0]) as c:
        assert c.draws is None and (c.levels == -1).all() and (c.image_ids == c.ids).all()


def test_caches_of_another_feature_extractor_are_refused(tmp_path, caches, clean_run):
    import h5py

    from natix.cache.fingerprint import fingerprint

    other = tmp_path / "other.h5"
    other.write_bytes(caches[1].read_bytes())
    with h5py.File(other, "r+") as f:  # the same rows, as if another backbone had made them
        identity = {**json.loads(f.attrs["identity"]), "backbone": {"weights_sha256": "f" * 64}}
        f.attrs["identity"] = json.dumps(identity)
        f.attrs["fingerprint"] = fingerprint(identity)
    with pytest.raises(DataError, match="different feature extractors \\(backbone differ\\)"):
        evaluate_run(clean_run, under=other)
    with pytest.raises(DataError, match="different feature extractors"):
        fit_run(caches[0], tmp_path / "mixed", also=[other])
    with pytest.raises(DataError, match="different feature extractors"):
        ablate([caches[0], other], tmp_path / "board", heads=("linear",), aggs=("mean",), progress=False,
               under=caches[1])


def test_ablate_across_feature_extractors_judges_each_arm_on_its_own_cache(tmp_path, caches):
    import h5py

    from natix.cache.fingerprint import fingerprint

    adapted = tmp_path / "adapted.h5"  # the clean cache's images, as if an adapter had made their features
    adapted.write_bytes(make_synthetic_cache(tmp_path / "a", n=N, n_views=V, dim=D, seed=3, strength=6.0).read_bytes())
    with h5py.File(adapted, "r+") as f:
        identity = {**json.loads(f.attrs["identity"]), "backbone": {"weights_sha256": "0" * 64,
                                                                     "adapter": {"weights_sha256": "ab" * 32}}}
        f.attrs["identity"] = json.dumps(identity)
        f.attrs["fingerprint"] = fingerprint(identity)
    board = ablate([caches[0], adapted], tmp_path / "board", heads=("linear",), aggs=("mean",), n_boot=200,
                   progress=False)
    by = {r["cache"]: r for r in board.rows}
    assert set(by) == {"clean/weights-none", "clean/adapter-abababab"}
    assert board.meta["judged_on"]["cache"] == "each arm's own cache"
    frozen, tuned = by["clean/weights-none"], by["clean/adapter-abababab"]
    assert tuned["mcc"] > frozen["mcc"] and tuned["diff_ci"][0] > 0  # paired on the same val_test images
    with pytest.raises(ConfigError, match="hold different val_test rows"):
        ablate([caches[1], adapted], tmp_path / "b2", heads=("linear",), aggs=("mean",), progress=False)

    named = ablate({"frozen": caches[0], "lora": adapted}, tmp_path / "named", heads=("linear",), aggs=("mean",),
                   n_boot=200, progress=False)  # names label the arms; the numbers are the same
    assert {r["cache"]: r["mcc"] for r in named.rows} == {"frozen": frozen["mcc"], "lora": tuned["mcc"]}
    assert named.meta["caches"] == {"frozen": str(caches[0]), "lora": str(adapted)}
    with pytest.raises(ConfigError, match="is not a plain name"):
        ablate({"my cache": caches[0], "lora": adapted}, tmp_path / "b3", heads=("linear",), aggs=("mean",),
               progress=False)


def test_ablate_cli_reads_named_caches(tmp_path, caches):
    from click.testing import CliRunner

    from natix.cli import cli

    args = ["--head", "linear", "--agg", "mean", "--policy", "softmax", "--seeds", "1", "-q"]
    r = CliRunner().invoke(cli, ["ablate", f"clean={caches[0]},draws={caches[1]}", "--out", str(tmp_path / "b"),
                                 *args])
    assert r.exit_code == 0, r.output
    assert "| clean:linear/mean/softmax |" in r.output and "| draws:linear/mean/softmax |" in r.output
    for bad, message in [(f"clean={caches[0]},{caches[1]}", "name every cache or none"),
                         (f"a={caches[0]},a={caches[1]}", "cache names repeat")]:
        r = CliRunner().invoke(cli, ["ablate", bad, "--out", str(tmp_path / "x"), *args])
        assert r.exit_code != 0 and message in r.output, r.output


def test_oof_folds_are_counted_in_images_not_draws(tmp_path):
    small = make_synthetic_cache(tmp_path / "small", n=40, n_views=V, dim=D, seed=1, draws=3)
    data = load_dataset(small)
    train = resolve_splits(data).ids["train"]
    fewest = min(np.bincount(data.labels[np.isin(data.images, train)][::3]))  # images per class
    with pytest.raises(ConfigError, match=f"more than the {fewest} training images"):
        fit_run(small, tmp_path / "run", oof_folds=fewest + 1)
