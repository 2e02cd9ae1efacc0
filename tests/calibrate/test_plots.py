"""`natix report`'s plots show the tables' numbers: one ECE binning, the risk–coverage references,
data-adaptive confidence bins, rounded thresholds (each plot's NAME.json holds what it drew)."""

from __future__ import annotations

import inspect
import json
import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from natix import metrics as M
from natix.cache.synthetic import make_synthetic_cache
from natix.calibrate.apply import calibrate_run
from natix.calibrate.report import PLOTS, histogram_edges, plot_confidence, rounded, write_report
from natix.cli import cli
from natix.heads.runs import evaluate_run, fit_run
from natix.heads.train import HeadConfig, TrainConfig

# A number printed with more than 5 decimals (float noise such as 0.30000000000000004).
LONG_NUMBER = re.compile(r"\d\.\d{6,}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plots")
    cache = make_synthetic_cache(root / "cache", n=1200, n_views=3, dim=16, strength=2.0, seed=1)
    fit_run(cache, root / "run", head=HeadConfig(agg="mean"), train=TrainConfig(lr=1e-2, batch_size=64, max_epochs=8))
    return root / "run"


@pytest.fixture
def run(run_dir, tmp_path):
    """A fresh, uncalibrated copy of the run."""
    return shutil.copytree(run_dir, tmp_path / "run")


def _drawn(folder, png: str) -> dict:
    return json.loads((folder / png).with_suffix(".json").read_text())


def _table_value(output: str, name: str) -> str:
    """The value column of `name`'s row in a CLI table."""
    return next(line.split()[1] for line in output.splitlines() if line.split()[:1] == [name])


# --------------------------------------------------------------------------- one ECE binning


def test_ece_functions_share_one_bin_count():
    for fn in (M.ece, M.reliability_curve):
        params = inspect.signature(fn).parameters
        assert params["n_bins"].default == M.ECE_BINS and params["strategy"].default == "uniform"
    assert M.ece_binning(n_bins=M.ECE_BINS) == f"{M.ECE_BINS} equal-width bins"
    assert M.ece_binning(n_bins=1, strategy="quantile") == "1 equal-mass bin"
    with pytest.raises(ValueError, match="strategy must be"):
        M.ece_binning(strategy="kmeans")


def test_reliability_ece_is_the_ece_of_metrics_json_and_natix_evaluate(run, tmp_path):
    out = tmp_path / "rep"
    write_report(run, out)
    drawn = _drawn(out, "reliability.png")
    assert drawn["n_bins"] == M.ECE_BINS and drawn["binning"] == f"{M.ECE_BINS} equal-width bins"
    model = drawn["curves"]["model"]
    table = json.loads((run / "metrics.json").read_text())["val_test"]["ece"]
    assert model["ece"] == table == evaluate_run(run, "val_test", n_boot=20)["metrics"]["ece"]
    r = CliRunner().invoke(cli, ["evaluate", str(run), "--skip-checksum"])
    assert r.exit_code == 0, r.output
    shown = _table_value(r.output, "ece")
    assert shown == f"{table:.4f}"
    assert f"model: ECE ({M.ECE_BINS} equal-width bins) {shown}" in drawn["legend"]
    # the drawn bins are the ECE's: their count-weighted gap is the ECE
    counts, freq, mean_p = (np.asarray(model[k]) for k in ("counts", "frequency", "mean_prob"))
    assert len(counts) <= M.ECE_BINS and counts.sum() == json.loads((run / "metrics.json").read_text())["val_test"]["n"]
    assert np.sum(counts * np.abs(freq - mean_p)) / counts.sum() == pytest.approx(table, abs=1e-12)


def test_reliability_before_and_after_are_the_calibrate_table(run, tmp_path):
    r = CliRunner().invoke(cli, ["calibrate", str(run), "--method", "platt"])
    assert r.exit_code == 0, r.output
    assert f"ECE over {M.ECE_BINS} equal-width bins" in r.output
    before, after = (v for v in r.output.splitlines() if v.startswith("ece")).__next__().split()[1:3]
    res = calibrate_run(run, method="platt")  # the same fit again: the table's numbers as floats
    write_report(run, tmp_path / "rep")
    drawn = _drawn(tmp_path / "rep", "reliability.png")
    assert drawn["curves"]["before calibration"]["ece"] == res.table["before"]["ece"]
    assert drawn["curves"]["after calibration"]["ece"] == res.table["after"]["ece"]
    assert [f"{res.table[k]['ece']:.4f}" for k in ("before", "after")] == [before, after]
    binning = f"ECE ({M.ECE_BINS} equal-width bins)"
    assert {f"before calibration: {binning} {before}", f"after calibration: {binning} {after}"} <= set(drawn["legend"])


# --------------------------------------------------------------------------- risk–coverage


@pytest.mark.parametrize("png, generalized", [("risk_coverage.png", False), ("generalized_risk_coverage.png", True)])
def test_risk_coverage_references_end_where_they_must(run, tmp_path, png, generalized):
    out = tmp_path / "rep"
    write_report(run, out)
    metrics = json.loads((run / "metrics.json").read_text())["val_test"]
    err, n = 1.0 - metrics["accuracy"], metrics["n"]
    curves = {k: {a: np.asarray(v) for a, v in c.items()} for k, c in _drawn(out, png)["curves"].items()}
    assert set(curves) == {"model", "random", "oracle"}
    for c in curves.values():  # at full coverage every curve is the overall risk
        assert c["coverage"][-1] == 1.0 and c["risk"][-1] == pytest.approx(err)
        assert c["coverage"][0] == 0.0
    oracle = curves["oracle"]
    n_correct = round((1 - err) * n)
    at = np.flatnonzero(np.isclose(oracle["coverage"], n_correct / n))
    assert len(at) == 1 and oracle["risk"][at[0]] == 0.0 and oracle["risk"][at[0] + 1] > 0
    assert np.all(oracle["risk"][: at[0] + 1] == 0.0)
    random = curves["random"]
    expected = random["coverage"] * err if generalized else np.full(len(random["coverage"]), err)
    np.testing.assert_allclose(random["risk"], expected)
    # the model's drawn curve is the one the table's area integrates
    area = metrics["augrc" if generalized else "aurc"]
    assert M.trapezoid(curves["model"]["coverage"], curves["model"]["risk"]) == pytest.approx(area, abs=1e-12)
    assert np.all(curves["model"]["risk"] >= oracle["risk"].min())


def test_exit_threshold_and_coverage_on_the_plots_are_the_tables(run, tmp_path):
    r = CliRunner().invoke(cli, ["calibrate", str(run), "--method", "platt", "--exit", "budget", "--budget", "0.3"])
    assert r.exit_code == 0, r.output
    thresholds = json.loads((run / "thresholds.json").read_text())
    text = rounded(thresholds["exit_threshold"])
    assert f"exit confidence >= {text}" in r.output
    coverage = next(v.split()[1] for v in r.output.splitlines() if v.startswith("coverage "))
    md = write_report(run, tmp_path / "rep")
    with np.load(run / "predictions" / "val_test_calibrated.npz") as z:
        table_coverage = float(z["accept"].mean())
    assert f"{table_coverage:.4f}" == coverage
    for png in ("risk_coverage.png", "generalized_risk_coverage.png", "confidence_histogram.png"):
        drawn = _drawn(tmp_path / "rep", png)
        assert drawn["exit"] == {"threshold": thresholds["exit_threshold"], "text": text, "coverage": table_coverage}
        assert any(f"exit: confidence >= {text}" in label for label in drawn["legend"])
    assert f"at confidence >= {text} (coverage {coverage})" in md.read_text()
    assert f"(coverage {coverage})" in " ".join(_drawn(tmp_path / "rep", "risk_coverage.png")["legend"])


# --------------------------------------------------------------------------- confidence histogram


def test_gate_scores_in_a_narrow_range_get_many_bars(run, tmp_path, rng):
    path = run / "predictions" / "val_test.npz"
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    n = len(data["ids"])
    data["gate"] = (0.71 + 0.004 * rng.random(n)).astype(np.float32)  # a gate squeezed into [0.71, 0.714]
    np.savez(path, **data)
    assert np.count_nonzero(np.histogram(data["gate"], bins=np.linspace(0.5, 1, 26))[0]) == 1  # fixed bins: one bar
    write_report(run, tmp_path / "rep")
    drawn = _drawn(tmp_path / "rep", "confidence_histogram.png")
    edges = np.asarray(drawn["edges"])
    assert drawn["confidence"] == "gate" and len(edges) - 1 >= 10
    assert edges[0] == pytest.approx(float(data["gate"].min())) and edges[-1] == pytest.approx(float(data["gate"].max()))
    both = np.asarray(drawn["correct"]) + np.asarray(drawn["wrong"])
    assert np.count_nonzero(both) > 1 and both.sum() == n


def test_histogram_bins_follow_the_data_and_mark_the_threshold(tmp_path, rng):
    conf = 0.9990 + 0.0009 * rng.random(500)
    errors = (rng.random(500) < 0.2).astype(np.int64)
    edges = histogram_edges(conf)
    assert edges[0] == conf.min() and edges[-1] == conf.max() and 10 <= len(edges) - 1 <= 50
    tau = float(np.quantile(conf, 0.3))
    drawn = plot_confidence(errors, conf, tmp_path / "h.png", exit_rule={"threshold": tau, "text": rounded(tau),
                                                                           "coverage": float(np.mean(conf >= tau))})
    assert np.count_nonzero(drawn["correct"]) > 1 and np.count_nonzero(drawn["wrong"]) > 1
    assert f"exit: confidence >= {rounded(tau)}" in drawn["legend"] and rounded(tau) != "1"
    assert json.loads((tmp_path / "h.json").read_text())["edges"] == pytest.approx(list(edges))
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- rounded thresholds


@pytest.mark.parametrize("value, text", [
    (0.1 + 0.2, "0.3"), (0.7345678, "0.735"), (0.99951, "0.99951"), (0.000123456, "0.000123"), (0.5, "0.5"),
    (1.0, "1"), (0.0, "0"), (12.3456, "12.3"), (-0.123456, "-0.123"), (float("inf"), "inf"), (float("-inf"), "-inf"),
    (None, "none"), (np.float32(0.2), "0.2"),
])
def test_rounded(value, text):
    assert rounded(value) == text


def test_every_plot_prints_rounded_numbers(run, tmp_path):
    calibrate_run(run, method="platt", exit="budget", budget=0.1 + 0.2)
    write_report(run, tmp_path / "rep")
    for png in PLOTS:
        legend = _drawn(tmp_path / "rep", png)["legend"]
        assert legend and not any(LONG_NUMBER.search(label) for label in legend), legend
    assert "alpha = " not in " ".join(_drawn(tmp_path / "rep", "risk_coverage.png")["legend"])  # budget: no level
    res = calibrate_run(run, method="platt", exit="ltt", alpha=0.1 + 0.2)
    write_report(run, tmp_path / "rep")
    assert "certified level alpha = 0.3" in _drawn(tmp_path / "rep", "risk_coverage.png")["legend"]
    from natix.cli.calibrate import calibration_summary

    text = calibration_summary(res)
    assert "selective_risk <= 0.3;" in text and not LONG_NUMBER.search(text.split("guarantee:")[0]), text
