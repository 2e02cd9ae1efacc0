import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from natix.cache.synthetic import make_synthetic_cache
from natix.calibrate.apply import calibrate_run
from natix.calibrate.report import PLOTS, write_report
from natix.cli import cli
from natix.errors import ConfigError, DataError
from natix.heads.runs import fit_run
from natix.heads.train import HeadConfig, TrainConfig


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cal")
    cache = make_synthetic_cache(root / "cache", n=1600, n_views=3, dim=16, strength=2.5, seed=0)
    fit_run(cache, root / "run", head=HeadConfig(agg="max"), train=TrainConfig(lr=1e-2, batch_size=64, max_epochs=15))
    # Make the stored probabilities over-confident, so calibration has something to fix.
    for split in ("val_calib", "val_test"):
        path = root / "run" / "predictions" / f"{split}.npz"
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        data["prob"] = 1 / (1 + np.exp(-3.0 * data["logit"].astype(np.float64)))
        np.savez(path, **data)
    return root / "run"


@pytest.mark.parametrize("exit_rule", [None, "ltt", "crc", "scrc"])
@pytest.mark.parametrize("method", ["temperature", "platt", "beta", "isotonic"])
def test_calibrate_run_writes_files_and_improves_calibration(run_dir, method, exit_rule):
    res = calibrate_run(run_dir, method=method, exit=exit_rule, alpha=0.15, delta=0.2)
    cal = json.loads((run_dir / "calibration.json").read_text())
    thr = json.loads((run_dir / "thresholds.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert cal["method"] == method and thr["exit"] == exit_rule and thr["folds"]["fit"] + thr["folds"]["certify"] > 0
    if exit_rule is None:  # nothing to certify: the calibrator uses all of val_calib
        assert thr["folds"]["certify"] == 0 and "fold" not in res.guarantee
    else:
        assert "fold A" in res.guarantee and "fold B" in res.guarantee and thr["folds"]["certify"] > 0
    t = res.table
    assert t["after"]["ece"] < t["before"]["ece"]  # the stored probabilities are over-confident
    if method != "isotonic":  # isotonic may output 0 or 1, which NLL punishes without bound
        assert t["after"]["nll"] < t["before"]["nll"]
    assert 0 < t["coverage"] <= 1 and t["n"] == pytest.approx(t["accepted"] / t["coverage"])
    if exit_rule is None:
        assert t["coverage"] == 1 and "bound" not in t
    else:
        assert t["bound"]["level"] == 0.15
    with np.load(run_dir / "predictions" / "val_test_calibrated.npz") as z:
        assert z["prob"].shape == z["accept"].shape and z["accept"].mean() == pytest.approx(t["coverage"])


def test_ltt_with_an_impossible_alpha_defers_everything_and_says_so(run_dir):
    res = calibrate_run(run_dir, method="platt", exit="ltt", alpha=0.001, delta=0.05)
    assert res.thresholds["certified"] is False and res.table["coverage"] == 0
    assert "every image defers" in res.guarantee


@pytest.mark.parametrize("kwargs, err, match", [
    ({"method": "sigmoid"}, ConfigError, "unknown calibration method"),
    ({"exit": "maybe"}, ConfigError, "unknown exit rule"),
    ({"exit": "ltt", "alpha": 1.5}, ConfigError, "alpha must be in \\(0, 1\\)"),
    ({"exit": "scrc", "delta": 0.0}, ConfigError, "delta must be in \\(0, 1\\)"),
    ({"exit": "scrc", "alpha": 0.001}, DataError, "needs at least"),
])
def test_bad_calibration_requests(run_dir, kwargs, err, match):
    with pytest.raises(err, match=match):
        calibrate_run(run_dir, **kwargs)


def test_missing_val_calib_and_not_a_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "predictions" / "val_calib.npz").unlink()
    with pytest.raises(DataError, match="no predictions for split 'val_calib'"):
        calibrate_run(copy)
    with pytest.raises(DataError, match="not a natix run"):
        calibrate_run(tmp_path / "nothing")


def test_report_writes_pngs_and_markdown(run_dir, tmp_path):
    calibrate_run(run_dir, method="beta", exit="scrc", alpha=0.15)
    md = write_report(run_dir, tmp_path / "rep")
    pngs = sorted(p.name for p in md.parent.glob("*.png"))
    assert pngs == ["confidence_histogram.png", "generalized_risk_coverage.png", "reliability.png",
                    "risk_coverage.png"] == sorted(PLOTS)
    assert all((md.parent / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    text = md.read_text()
    assert all(f"({p})" in text for p in pngs) and "exit rule: scrc" in text


def test_cli_calibrate_report_and_scrc_policy(run_dir, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["calibrate", str(run_dir), "--method", "platt", "--exit", "ltt", "--alpha", "0.2"])
    assert r.exit_code == 0, r.output
    assert "before" in r.output and "certified bound: selective_risk <= 0.2" in r.output and "guarantee" in r.output
    r = runner.invoke(cli, ["calibrate", str(run_dir), "--json"])
    assert json.loads(r.stdout)["calibration"]["method"] == "platt"
    r = runner.invoke(cli, ["calibrate", str(run_dir), "--exit", "ltt", "--alpha", "2"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "'2' is out of range: pass a number in (0, 1)" in r.output
    r = runner.invoke(cli, ["report", str(run_dir), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0 and "4 plots" in r.output
    cache = next((run_dir.parent / "cache").glob("*.h5"))
    r = runner.invoke(cli, ["fit-head", str(cache), "--policy", "scrc", "--alpha", "0.2", "--max-epochs", "5",
                            "--out", str(tmp_path / "scrc-run")])
    assert r.exit_code == 0, r.output
    assert "SCRC" in r.output and "SCRC-I" in r.output
    assert json.loads((tmp_path / "scrc-run" / "thresholds.json").read_text())["exit"] == "scrc"


def test_crc_served_decisions_match_the_crc_rule_at_ties(run_dir, tmp_path):
    import shutil

    from natix import metrics as M
    from natix.calibrate.calibrators import CALIBRATORS, DecisionThreshold
    from natix.calibrate.conformal import ConformalRiskControl

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for split in ("val_calib", "val_test"):  # coarse probabilities: many exact ties
        path = copy / "predictions" / f"{split}.npz"
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        data["prob"] = np.round(data["prob"], 1)
        np.savez(path, **data)
    res = calibrate_run(copy, method="isotonic", exit="crc", alpha=0.1)
    with np.load(copy / "predictions" / "val_test_calibrated.npz") as z:
        served = z["prob"]
    # Recompute the pre-CRC scores and apply CRC's own rule: served decisions must agree.
    cal = np.load(copy / "predictions" / "val_calib.npz")
    test = np.load(copy / "predictions" / "val_test.npz")
    from natix.calibrate.apply import certify_fold

    b = certify_fold(cal["ids"])
    c = CALIBRATORS["isotonic"]().fit(cal["prob"][~b], cal["labels"][~b])
    d = DecisionThreshold(objective="mcc").fit(c.transform(cal["prob"][~b]), cal["labels"][~b])
    q_cal, q_test = d.transform(c.transform(cal["prob"])), d.transform(c.transform(test["prob"]))
    crc = ConformalRiskControl(loss="fnr", alpha=0.1).fit(q_cal[b], cal["labels"][b])
    np.testing.assert_array_equal(M.predictions(served), crc.predict(q_test))
    assert res.thresholds["certified"] is True


def test_json_outputs_are_strict_and_levels_are_checked(run_dir):
    runner = CliRunner()
    r = runner.invoke(cli, ["calibrate", str(run_dir), "--exit", "ltt", "--alpha", "0.001", "--json"])
    assert r.exit_code == 0 and "NaN" not in r.output and "Infinity" not in r.output
    json.loads(r.stdout)
    json.loads((run_dir / "thresholds.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    for flag, value in (("--alpha", "nan"), ("--delta", "inf"), ("--acceptance", "-3")):
        r = runner.invoke(cli, ["calibrate", str(run_dir), flag, value])
        # refused while the options are parsed (exit 2), before the run is read
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert "is not a finite number" in r.output or "out of range: pass a number in (0, 1)" in r.output


def test_scrc_bound_is_reported_on_the_quantity_it_certifies(run_dir):
    res = calibrate_run(run_dir, method="platt", exit="scrc", alpha=0.2)
    assert res.table["bound"]["quantity"] == "error_among_selected"


@pytest.mark.parametrize("damage, match", [
    (lambda d: d.pop("prob"), "lack prob"),
    (lambda d: d.update(labels=d["labels"][:-1]), "expected"),
    (lambda d: d.update(labels=d["labels"] * 2), "labels other than 0/1"),
    (lambda d: d.update(prob=np.stack([1 - d["prob"], d["prob"]], 1)), "expected"),
])
def test_damaged_prediction_files_are_one_line_errors(run_dir, tmp_path, damage, match):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = copy / "predictions" / "val_test.npz"
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    damage(data)
    np.savez(path, **data)
    with pytest.raises(DataError, match=match):
        calibrate_run(copy)


def test_report_refuses_a_stale_calibration_and_survives_undefined_metrics(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    calibrate_run(copy, method="platt")
    path = copy / "predictions" / "val_test.npz"
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["ids"] = data["ids"][::-1].copy()
    np.savez(path, **data)
    with pytest.raises(DataError, match="earlier fit"):
        write_report(copy)
    (copy / "predictions" / "val_test_calibrated.npz").unlink()
    data["prob"] = data["labels"].astype(float) * 0.8 + 0.1  # every answer right: AUROC_f undefined
    np.savez(path, **data)
    md = write_report(copy)  # AUROC_f is undefined here: the plot says nan instead of failing
    assert "accuracy 1.0000" in md.read_text() and (md.parent / "confidence_histogram.png").is_file()


def test_budget_exit_end_to_end_defers_at_most_its_fraction_of_fold_b(run_dir):
    from natix.calibrate.apply import certify_fold

    res = calibrate_run(run_dir, method="platt", exit="budget", budget=0.2)
    thr = json.loads((run_dir / "thresholds.json").read_text())
    assert thr["exit"] == "budget" and thr["certified"] is False and thr["bound"] is None
    assert "no guarantee" in res.guarantee and "fitted on the disjoint fold B" in res.guarantee
    assert "bound" not in res.table  # nothing is certified, so no bound is claimed
    fitted = thr["budget"]
    assert fitted == res.thresholds["budget"] and fitted["budget"] == 0.2
    assert fitted["deferred_fraction_"] <= 0.2 and fitted["threshold_"] == thr["exit_threshold"]
    # Recompute fold B's confidences from the served map: at most 20% of them fall below the threshold.
    from natix.calibrate.apply import calibration_from_json
    from natix.rundir import Run

    cal = Run(run_dir).predictions("val_calib")
    fold_b = certify_fold(cal["ids"])
    q = calibration_from_json(res.calibration)(cal["prob"][fold_b])
    assert np.mean(np.maximum(q, 1 - q) < fitted["threshold_"]) <= 0.2
    with np.load(run_dir / "predictions" / "val_test_calibrated.npz") as z:
        np.testing.assert_array_equal(z["accept"], z["confidence"] >= fitted["threshold_"])
        assert 0.6 < z["accept"].mean() < 1  # about 80% of val_test answered, not a guarantee


def test_written_json_holds_null_where_a_value_is_nan(run_dir):
    from natix.jsonio import dumps

    res = calibrate_run(run_dir, method="platt", exit="ltt", alpha=0.001, delta=0.05)
    text = (run_dir / "thresholds.json").read_text()
    thr = json.loads(text, parse_constant=lambda c: pytest.fail(c))
    assert '"nan"' not in text and "NaN" not in text
    assert None in thr["ltt"]["p_values_"]  # NaN: candidates too small to test
    assert thr["ltt"]["threshold_"] == "inf" and thr["exit_threshold"] == "inf"  # inf keeps its string
    assert np.isnan(res.table["selective_risk"])  # nothing accepted on val_test
    assert json.loads(dumps(res.table))["selective_risk"] is None


# Files in the layout natix wrote before estimators saved their own state: they must load unchanged.
OLD_STEPS = ["calibrator", "decision_threshold"]
OLD_FILES = {
    "temperature": {"method": "temperature", "state": {"temperature_": 1.7320508}, "decision_threshold": 0.4375,
                    "order": OLD_STEPS},
    "platt": {"method": "platt", "state": {"coef_": 0.3547471585538487, "intercept_": -0.3963295539941345},
              "decision_threshold": 0.37172320232095757, "order": OLD_STEPS},
    "beta": {"method": "beta", "state": {"a_": 0.81, "c_": 1.24, "d_": 0.125}, "decision_threshold": 0.52,
             "order": OLD_STEPS},
    "isotonic": {"method": "isotonic", "state": {"isotonic_": {"x": [0.05, 0.3, 0.3000001, 0.71, 0.98],
                                                               "y": [0.0, 0.25, 0.5, 0.875, 1.0]}},
                 "decision_threshold": 0.61, "order": OLD_STEPS},
    "platt+crc": {"method": "platt", "state": {"coef_": 1.25, "intercept_": 0.5}, "decision_threshold": 0.5,
                  "order": [*OLD_STEPS, "crc_recentre_below"]},
}
OLD_THRESHOLDS = {"platt+crc": {"crc_recentre_below": 0.6180339887498948, "exit": "crc", "certified": True}}


def _old_map(name, p):
    """What the files above mean, from the estimators' formulas with hand-set parameters."""
    from natix.calibrate.calibrators import CALIBRATORS, recentre

    cal = OLD_FILES[name]
    if cal["method"] == "isotonic":
        table = cal["state"]["isotonic_"]
        q = np.clip(np.interp(p, table["x"], table["y"]), 0.0, 1.0)
    else:
        est = CALIBRATORS[cal["method"]]()
        for key, value in cal["state"].items():
            setattr(est, key, value)
        q = est.transform(p)
    q = recentre(q, cal["decision_threshold"])
    if name in OLD_THRESHOLDS:
        q = recentre(q, OLD_THRESHOLDS[name]["crc_recentre_below"])
    return q


@pytest.mark.parametrize("name", list(OLD_FILES))
def test_calibration_files_written_before_still_load_with_identical_results(name, tmp_path):
    from natix.calibrate.apply import calibration_from_json

    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(OLD_FILES[name], indent=2))
    p = np.concatenate([np.random.default_rng(0).random(2000), [0.0, 0.05, 0.3, 0.5, 0.61, 0.98, 1.0]])
    fn = calibration_from_json(json.loads(path.read_text()), thresholds=OLD_THRESHOLDS.get(name))
    np.testing.assert_array_equal(fn(p), _old_map(name, p))


def test_a_crc_threshold_of_zero_serves_everything_positive():
    from natix.calibrate.apply import calibration_from_json
    from natix.calibrate.calibrators import ABOVE_HALF

    cal = {**OLD_FILES["platt+crc"]}
    fn = calibration_from_json(cal, thresholds={"crc_recentre_below": -5e-324})
    q = fn(np.linspace(0, 1, 101))
    assert np.all(q >= ABOVE_HALF) and np.all(np.round(q) == 1)


def test_report_prints_the_ece_metrics_json_computes_and_bins_as_it(run_dir, tmp_path):
    import shutil

    from natix import metrics as M
    from natix.metrics.inputs import ECE_BINS

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("calibration.json", "thresholds.json", "predictions/val_test_calibrated.npz"):
        (copy / name).unlink(missing_ok=True)
    text = write_report(copy, tmp_path / "rep").read_text()
    with np.load(copy / "predictions" / "val_test.npz") as z:
        ece = M.split_metrics(z["labels"], z["prob"], names=("ece",))["ece"]  # as in metrics.json
    assert f"ECE {ece:.4f} ({ECE_BINS} bins)" in text
    calibrate_run(copy, method="beta")
    text = write_report(copy, tmp_path / "rep2").read_text()
    with np.load(copy / "predictions" / "val_test_calibrated.npz") as z:
        ece = M.ece(z["labels"], z["prob"], n_bins=ECE_BINS)
        mean_p, freq, counts = M.reliability_curve(z["labels"], z["prob"], n_bins=ECE_BINS)
    assert f"ECE {ece:.4f} ({ECE_BINS} bins)" in text
    assert ece == pytest.approx(np.sum(counts * np.abs(freq - mean_p)) / counts.sum())  # the plotted bins
