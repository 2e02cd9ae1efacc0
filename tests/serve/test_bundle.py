import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from natix.calibrate.apply import calibrate_run, calibration_from_json
from natix.errors import BackboneError, ConfigError, DataError
from natix.heads.runs import fit_run
from natix.heads.train import HeadConfig, TrainConfig
from natix.serve import export_bundle, load_bundle
from natix.serve.schema import served_calibration

SPLITS = ("train", "val_select", "val_calib", "val_test")


def stored(run: Path, name: str) -> dict:
    with np.load(run / "predictions" / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def tampered_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- reproduction


def test_served_features_equal_the_cached_ones_bit_for_bit(served):
    from natix.cache.store import open_cache

    bundle = load_bundle(served.plain)
    with open_cache(next((served.root / "cache").glob("*.h5"))) as cache:
        paths, X = list(cache.paths), cache.features(None, dtype=None)
    F = bundle.features(paths, batch_size=5)  # batches cut across the two image sizes
    assert F.dtype == np.float16 and F.shape == X.shape
    np.testing.assert_array_equal(F, X)


def test_plain_bundle_reproduces_every_split_of_the_run(served):
    bundle = load_bundle(served.plain)
    for split in SPLITS:
        pred = stored(served.run, split)
        prob = bundle.roadwork_probability([served.path_of[i] for i in pred["ids"]])
        assert prob.shape == pred["prob"].shape and prob.dtype == np.float64
        np.testing.assert_allclose(prob, pred["prob"], rtol=0, atol=1e-6)


def test_calibrated_bundle_reproduces_the_calibrated_val_test(served):
    bundle = load_bundle(served.calibrated)
    pred = stored(served.run, "val_test_calibrated")
    raw = stored(served.run, "val_test")["prob"]
    assert not np.allclose(pred["prob"], raw)  # the calibration does move these probabilities
    prob = bundle.roadwork_probability([Path(served.path_of[i]) for i in pred["ids"]])
    np.testing.assert_allclose(prob, pred["prob"], rtol=0, atol=1e-6)
    assert ((prob >= 0) & (prob <= 1)).all()


def test_paths_bytes_pil_images_and_arrays_give_the_same_answers(served):
    from PIL import Image

    bundle = load_bundle(served.calibrated)
    paths = served.paths
    by_path = bundle.roadwork_probability(paths)
    raw = [Path(p).read_bytes() for p in paths]
    pil = [Image.open(p) for p in paths]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]  # read-only arrays
    for inputs in (raw, [bytearray(b) for b in raw], pil, arrays):
        np.testing.assert_allclose(bundle.roadwork_probability(inputs, batch_size=3), by_path, rtol=0, atol=1e-9)
    assert bundle.roadwork_probability(paths[0]).shape == (1,)  # one image need not be wrapped in a list
    np.testing.assert_array_equal(bundle.predict(paths), (by_path > 0.5).astype(np.int64))


def test_predict_proba_has_scikit_learns_shape_and_column_1_is_the_roadwork_probability(served, tmp_path):
    bundle = load_bundle(served.calibrated)
    images = [*served.paths[:4], tmp_path / "missing.jpg"]  # the last is answered by the prior
    prob, stage = bundle.roadwork_probability(images, batch_size=3, return_stage=True)
    assert prob.shape == (5,) and prob[-1] == bundle.prior and stage[-1] == -1
    proba = bundle.predict_proba(images, batch_size=3)
    assert proba.shape == (5, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(proba[:, 1], prob)
    np.testing.assert_array_equal(proba[:, 0], 1.0 - prob)
    proba2, stage2 = bundle.predict_proba(images, batch_size=3, return_stage=True)
    np.testing.assert_array_equal(proba2, proba)
    np.testing.assert_array_equal(stage2, stage)
    np.testing.assert_array_equal(bundle.predict(images), (proba[:, 1] > 0.5).astype(np.int64))
    assert bundle.predict_proba(served.paths[0]).shape == (1, 2)
    assert bundle.predict_proba([]).shape == (0, 2)


def test_undecodable_images_get_the_prior_with_a_warning_and_the_rest_go_on(served, tmp_path, caplog):
    bundle = load_bundle(served.plain)
    train = stored(served.run, "train")
    assert bundle.prior == pytest.approx(np.mean(train["labels"] == 1)) and 0 < bundle.prior < 1
    good = served.paths[:2]
    truncated = Path(good[1]).read_bytes()[:300]
    inputs = [good[0], b"this is not an image", truncated, tmp_path / "missing.jpg", good[1]]
    with caplog.at_level(logging.WARNING, logger="natix.serve.bundle"):
        prob = bundle.roadwork_probability(inputs, batch_size=2)
    np.testing.assert_array_equal(prob[1:4], bundle.prior)
    np.testing.assert_allclose(prob[[0, 4]], bundle.roadwork_probability(good), rtol=0, atol=1e-12)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3
    assert "image 1" in warned[0] and "not a recognised image format" in warned[0] and "prior" in warned[0]
    assert "image 2" in warned[1] and "truncated" in warned[1]
    assert "image 3" in warned[2] and "missing.jpg" in warned[2]
    X = bundle.features(inputs)
    assert np.isnan(X[1:4].astype(np.float32)).all() and np.isfinite(X[[0, 4]].astype(np.float32)).all()
    np.testing.assert_array_equal(bundle.roadwork_probability([b""]), [bundle.prior])  # a batch of failures only
    assert bundle.roadwork_probability([]).shape == (0,)


@pytest.mark.parametrize("bad, match", [
    ([42], "image 0 is a int: pass a path"),
    ([np.zeros((8, 8, 3), dtype=np.float32)], "dtype float32: pass \\[H, W, 3\\] uint8"),
    ([np.zeros((8, 8), dtype=np.uint8)], "shape \\(8, 8\\)"),
])
def test_things_that_are_no_images_are_refused_in_one_line(served, bad, match):
    bundle = load_bundle(served.plain)
    with pytest.raises(DataError, match=match) as info:
        bundle.roadwork_probability(bad)
    assert "\n" not in str(info.value)


def test_bad_load_options_are_refused(served):
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        load_bundle(served.plain, precision="fp8")
    with pytest.raises(ConfigError, match="batch size must be >= 1"):
        load_bundle(served.plain).roadwork_probability(served.paths, batch_size=0)


# --------------------------------------------------------------------------- integrity


def _flip_head_byte(b: Path):
    data = bytearray((b / "stage0_head.safetensors").read_bytes())
    data[-1] ^= 0x01
    (b / "stage0_head.safetensors").write_bytes(bytes(data))


def _edit_manifest(b: Path):
    m = json.loads((b / "manifest.json").read_text())
    m["prior"] = 0.99
    (b / "manifest.json").write_text(json.dumps(m, indent=2))


@pytest.mark.parametrize("tamper, match", [
    (_flip_head_byte, "bundle file stage0_head.safetensors was altered"),
    (lambda b: (b / "stage0_head.safetensors").unlink(), "bundle file stage0_head.safetensors is missing"),
    (_edit_manifest, "bundle file manifest.json was altered"),
    (lambda b: (b / "manifest.json").write_text("{not json"), "manifest.json is not valid JSON"),
    (lambda b: (b / "manifest.json").unlink(), "is not a natix bundle \\(no manifest.json\\)"),
], ids=["head-byte", "head-deleted", "manifest-edited", "manifest-garbled", "manifest-deleted"])
def test_a_tampered_bundle_is_refused_naming_the_file(served, tmp_path, tamper, match):
    b = tampered_copy(served.calibrated, tmp_path / "bundle")
    load_bundle(b)  # the untouched copy loads
    tamper(b)
    with pytest.raises(DataError, match=match) as info:
        load_bundle(b)
    assert "\n" not in str(info.value)


def test_other_backbone_weights_are_refused(served, tmp_path):
    from natix.extract.backbones import save_tiny_dinov3

    other = save_tiny_dinov3(tmp_path / "seed1", seed=1)
    with pytest.raises(BackboneError, match="backbone weights hash [0-9a-f]{12} does not match the bundle's "
                                            "[0-9a-f]{12}: pass the weights the bundle was exported with"):
        load_bundle(served.plain, backbone=str(other))


def test_moved_backbone_weights_load_with_an_override(served, tiny_backbone, tmp_path, rewrite):
    b = tampered_copy(served.plain, tmp_path / "bundle")
    gone = str(tmp_path / "gone" / "model")

    def moved_away(m):  # a consistent manifest whose weights have moved away
        m["stages"][0]["backbone"].update(spec=gone, local={"spec": {"absolute": gone, "relative": "../gone/model"},
                                                            "checkpoint": None, "adapter": None})
    rewrite(b, moved_away)
    with pytest.raises(BackboneError, match="is not at '.*gone/model' nor at '.*gone/model': pass --backbone PATH "
                                            "\\(load_bundle\\(\\.\\.\\., backbone=PATH\\)\\)"):
        load_bundle(b)
    rewrite(b, lambda m: m["stages"][0]["backbone"].pop("local"))  # as bundles were written before
    with pytest.raises(BackboneError, match="pass --backbone PATH, or load_bundle\\(\\.\\.\\., backbone=PATH\\)"):
        load_bundle(b)
    moved = shutil.copytree(tiny_backbone, tmp_path / "moved")
    expected = load_bundle(served.plain).roadwork_probability(served.paths)
    np.testing.assert_array_equal(load_bundle(b, backbone=str(moved)).roadwork_probability(served.paths), expected)


def test_the_bundle_holds_json_and_safetensors_only_each_hashed(served):
    from safetensors.numpy import load_file

    for b in (served.plain, served.calibrated):
        names = sorted(p.name for p in b.iterdir())
        assert all(n.endswith((".json", ".safetensors")) for n in names), names
        for p in b.iterdir():
            assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks pickled"
        m = json.loads((b / "manifest.json").read_text())
        assert m["format"] == "natix-bundle/1" and m["natix_version"]
        assert sorted(m["files"]) == [n for n in names if n != "manifest.json"]
        for name, digest in m["files"].items():
            assert hashlib.sha256((b / name).read_bytes()).hexdigest() == digest
        assert load_file(str(b / "stage0_head.safetensors")).keys() == load_file(
            str(served.run / "model.safetensors")).keys()
        stage = m["stages"][0]
        assert stage["backbone"]["weights_sha256"] == stage["backbone"]["identity"]["weights_sha256"]
        assert stage["recipe"]["n_views"] == stage["head"]["n_views"] == 10
        assert stage["head"]["config"]["agg"] == "attention" and stage["store_dtype"] == "float16"
    plain = json.loads((served.plain / "manifest.json").read_text())["stages"][0]
    calibrated = json.loads((served.calibrated / "manifest.json").read_text())["stages"][0]
    assert plain["calibration"] is None and plain["thresholds"] is None
    assert calibrated["calibration"] == json.loads((served.run / "calibration.json").read_text())
    assert calibrated["thresholds"] == json.loads((served.run / "thresholds.json").read_text())


def test_a_failure_predictor_travels_with_the_bundle(served, tmp_path):
    from safetensors.numpy import load_file, save_file

    from natix.cascade.failure import FailurePredictor

    run = shutil.copytree(served.run, tmp_path / "run")
    rng = np.random.default_rng(0)
    X, e = rng.normal(size=(40, 3)), np.arange(40) % 3 == 0
    meta, tensors = FailurePredictor(model="mlp", epochs=5).fit(X, e.astype(int)).to_state()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(run / "failure.safetensors"))
    (run / "failure.json").write_text(json.dumps(meta))
    b = export_bundle(run, tmp_path / "bundle")
    stage = load_bundle(b).manifest["stages"][0]
    assert stage["failure"] == meta and stage["failure_file"] == "stage0_failure.safetensors"
    again = FailurePredictor.from_state(stage["failure"], load_file(str(b / stage["failure_file"])))
    np.testing.assert_allclose(again.failure_score(X), FailurePredictor.from_state(meta, tensors).failure_score(X))
    (run / "failure.safetensors").unlink()
    with pytest.raises(DataError, match="failure.json but no failure.safetensors"):
        export_bundle(run, tmp_path / "bundle2")


def test_export_refuses_what_it_cannot_freeze_and_replaces_an_old_bundle(served, tmp_path):
    with pytest.raises(DataError, match="is not a natix run"):
        export_bundle(tmp_path, tmp_path / "out")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a natix bundle"):
        export_bundle(served.run, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    b = export_bundle(served.run, tmp_path / "b")
    (b / "stage0_head.safetensors").write_bytes(b"stale")
    export_bundle(served.run, b)  # over an existing bundle: replaced whole
    load_bundle(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "foreign"]  # no temporary directories left


def test_export_needs_the_runs_cache_with_a_backbone(tmp_path):
    from natix.cache.synthetic import make_synthetic_cache

    cache = make_synthetic_cache(tmp_path / "cache", n=80, n_views=3, dim=8)
    fit_run(cache, tmp_path / "run", train=TrainConfig(max_epochs=2))
    with pytest.raises(DataError, match="not written by natix extract"):
        export_bundle(tmp_path / "run", tmp_path / "bundle")
    cache.unlink()
    with pytest.raises(DataError, match="cannot be read .*re-extract it"):
        export_bundle(tmp_path / "run", tmp_path / "bundle")


# --------------------------------------------------------------------------- calibration map


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    from natix.cache.synthetic import make_synthetic_cache

    root = tmp_path_factory.mktemp("calmap")
    cache = make_synthetic_cache(root / "cache", n=600, n_views=3, dim=8, strength=2.0, seed=1)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    fit_run(cache, root / "run", head=HeadConfig(agg="max"), train=TrainConfig(max_epochs=5))
    torch.set_num_threads(old)
    return root / "run"


@pytest.mark.parametrize("exit_rule", [None, "ltt", "crc"])
@pytest.mark.parametrize("method", ["temperature", "platt", "beta", "isotonic"])
def test_calibration_from_json_rebuilds_what_calibrate_run_applied(synthetic_run, method, exit_rule):
    calibrate_run(synthetic_run, method=method, exit=exit_rule, alpha=0.2, delta=0.2)
    cal = json.loads((synthetic_run / "calibration.json").read_text())
    thr = json.loads((synthetic_run / "thresholds.json").read_text())
    fn = calibration_from_json(cal, thresholds=thr)
    p, q = stored(synthetic_run, "val_test")["prob"], stored(synthetic_run, "val_test_calibrated")["prob"]
    np.testing.assert_array_equal(fn(p), q)
    served = served_calibration({"calibration": cal, "thresholds": thr}, "stages[0]")  # passes the bundle's probe
    np.testing.assert_array_equal(served(p), q)
    assert fn(np.array([])).shape == (0,)


def test_calibration_from_json_refuses_damaged_input(synthetic_run):
    calibrate_run(synthetic_run, method="beta", exit="crc", alpha=0.2)
    cal = json.loads((synthetic_run / "calibration.json").read_text())
    with pytest.raises(DataError, match="thresholds.json \\(crc_recentre_below\\) was not given"):
        calibration_from_json(cal)
    with pytest.raises(DataError, match="incomplete or damaged"):
        calibration_from_json({**cal, "state": {"a_": 1.0}})
    with pytest.raises(DataError, match="method 'sigmoid' is unknown"):
        calibration_from_json({**cal, "method": "sigmoid"})
    with pytest.raises(DataError, match="step 'shift' is unknown"):
        calibration_from_json({**cal, "order": ["calibrator", "shift"]})


# --------------------------------------------------------------------------- cascades


def test_cascade_bundle_reproduces_the_cascade_and_refuses_a_tampered_stage(cascade_dir, tmp_path):
    from natix.cache.store import open_cache

    root = cascade_dir
    out = export_bundle(root / "casc-bundle", tmp_path / "bundle")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["stages"]) == 2 and manifest["router"]["mode"] == "budget"
    assert len(manifest["router"]["thresholds"]) == 1 and manifest["router"]["confidence"] == ["max_prob"] * 2
    assert {"stage0_head.safetensors", "stage1_head.safetensors"} <= set(manifest["files"])
    assert manifest["stages"][0]["recipe"]["n_views"] == 1 and manifest["stages"][1]["recipe"]["n_views"] == 10

    with np.load(root / "casc-bundle" / "cascade_predictions.npz") as z:
        ids, want_prob, want_stage = z["ids"], z["prob"], z["stage"]
    [h5] = (root / "c1").glob("*.h5")
    with open_cache(h5) as c:
        path_of = dict(zip(c.ids.tolist(), c.paths.tolist()))
    paths = [path_of[i] for i in ids.tolist()]

    bundle = load_bundle(out)
    assert bundle.is_cascade and "cascade of 2 stages" in repr(bundle)
    prob, stage = bundle.roadwork_probability(paths, batch_size=3, return_stage=True)
    assert prob.dtype == np.float64 and ((prob >= 0) & (prob <= 1)).all()
    assert set(want_stage.tolist()) == {0, 1}  # both stages answer some images
    np.testing.assert_array_equal(stage, want_stage)
    np.testing.assert_allclose(prob, want_prob, rtol=0, atol=1e-5)
    bad = bundle.roadwork_probability([str(tmp_path / "missing.jpg"), paths[0]])
    assert bad[0] == bundle.prior and abs(bad[1] - want_prob[0]) < 1e-5
    proba, proba_stage = bundle.predict_proba(paths, batch_size=3, return_stage=True)
    assert proba.shape == (len(paths), 2)
    np.testing.assert_array_equal(proba[:, 1], prob)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(proba_stage, stage)

    tampered = tampered_copy(out, tmp_path / "tampered")
    (tampered / "stage1_head.safetensors").write_bytes(b"tampered")
    with pytest.raises(DataError, match="stage1_head.safetensors"):
        load_bundle(tampered)


def test_cascade_bundle_with_an_external_third_stage(cascade_dir, tmp_path, monkeypatch):
    from natix.cache.store import open_cache
    from natix.cascade.evaluation import cascade_run

    (tmp_path / "oracle_mod.py").write_text(
        "def classify(images):\n    return [0.75 for _ in images]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "casc3"
    cascade_run(stage1=cascade_dir / "s1", stage2=cascade_dir / "s2", stage3="oracle_mod:classify", budget=0.5,
                out=out)
    bundle = load_bundle(export_bundle(out, tmp_path / "b3"), external="oracle_mod:classify")
    with np.load(out / "cascade_predictions.npz") as z:
        ids, prob, stage = z["ids"], z["prob"], z["stage"]
    [h5] = (cascade_dir / "c1").glob("*.h5")
    with open_cache(h5) as c:
        path_of = dict(zip(c.ids.tolist(), c.paths.tolist()))
    got, got_stage = bundle.roadwork_probability([path_of[i] for i in ids.tolist()], return_stage=True)
    np.testing.assert_array_equal(got_stage, stage)
    np.testing.assert_allclose(got, prob, atol=1e-5)
    assert (got_stage == 2).any() and (got[got_stage == 2] == 0.75).all() and ((got >= 0) & (got <= 1)).all()


# --------------------------------------------------------------------------- format and strict JSON


def test_a_bundle_of_another_format_version_is_refused_with_the_fix(served, tmp_path, rewrite):
    b = tampered_copy(served.plain, tmp_path / "bundle")
    rewrite(b, lambda m: m.update(format="natix-bundle/2"))
    with pytest.raises(DataError, match="has format 'natix-bundle/2', not natix-bundle/1: re-export the bundle") as info:
        load_bundle(b)
    assert "\n" not in str(info.value)


def test_a_manifest_with_a_bare_nan_is_not_json(served, tmp_path):
    b = tampered_copy(served.plain, tmp_path / "bundle")
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text.replace('"prior": ', '"prior": NaN, "was": ', 1))
    with pytest.raises(DataError, match="manifest.json is not valid JSON"):
        load_bundle(b)


def test_an_infinite_router_threshold_round_trips_as_the_string_inf(cascade_dir, tmp_path, rewrite):
    casc = tmp_path / "cascade"
    casc.mkdir()
    doc = json.loads((cascade_dir / "casc-bundle" / "cascade.json").read_text())
    doc["router"]["thresholds"] = ["inf"]  # as natix.jsonio writes inf: defer every image
    (casc / "cascade.json").write_text(json.dumps(doc))
    out = export_bundle(casc, tmp_path / "bundle")
    assert json.loads((out / "manifest.json").read_text())["router"]["thresholds"] == ["inf"]
    bundle = load_bundle(out)
    assert bundle.thresholds == [float("inf")]
    [h5] = (cascade_dir / "c1").glob("*.h5")
    from natix.cache.store import open_cache

    with open_cache(h5) as c:
        paths = list(c.paths[:3])
    _, stage = bundle.roadwork_probability(paths, return_stage=True)
    np.testing.assert_array_equal(stage, [1, 1, 1])
    rewrite(out, lambda m: m["router"].update(thresholds=["abc"]))
    with pytest.raises(DataError, match="router.thresholds \\(entry 0: 'abc' is not a number, 'inf' or '-inf'\\): "
                                        "re-export the bundle"):
        load_bundle(out)
    doc["router"]["thresholds"] = [None]
    (casc / "cascade.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="cascade threshold None is not a number: rerun natix cascade"):
        export_bundle(casc, tmp_path / "bundle2")
