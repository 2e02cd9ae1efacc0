"""The ablation leaderboard's statistics, on synthetic per-seed probabilities (no training)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from natix import metrics as M
from natix.heads.ablate import CI_METRICS, Arm, leaderboard, write_leaderboard

N = 120
BASELINE = "linear/mean/softmax"
# ECE is left out of the containment check: binned ECE is biased upward under resampling (a
# resample's duplicated rows make the bins noisier), so on 120 rows almost every resample's
# ECE exceeds the plug-in value and neither a percentile nor a BCa interval need contain it.
CONTAINED = tuple(m for m in CI_METRICS if m != "ece")


def _labels(seed=0):
    return np.random.default_rng(seed).integers(0, 2, N)


def _probs(y, strength, *, seeds=3, bias=0.0, seed=1):
    """Per-seed probabilities [seeds, N]: a shared signal, seed noise and per-seed biases in
    [-bias, bias] (seeds that disagree on where the 0.5 boundary falls)."""
    rng = np.random.default_rng(seed)
    logits = strength * (2 * y - 1) + rng.normal(0, 1, (seeds, len(y)))
    logits += bias * np.linspace(-1, 1, seeds)[:, None]
    return 1 / (1 + np.exp(-logits))


def _results(probs):
    return [{"prob": p, "conf": np.maximum(p, 1 - p), "epochs": 3} for p in probs]


def _arms(results):
    return [Arm(*name.split("/")) for name in results]


def _demo(y):
    """Four arms with distinct values, one of them degenerate: two seeds predict class 0 for
    every row (MCC 0) and one is slightly anti-correlated, so its row MCC is just below 0."""
    rng = np.random.default_rng(2)
    flat = 0.2 + 0.01 * rng.random((2, N))  # so the seed average stays below 0.5 everywhere
    anti = 1 / (1 + np.exp(-(-0.4 * (2 * y - 1) + rng.normal(0, 1, N))))
    return {BASELINE: _results(_probs(y, 1.5)), "mlp/mean/softmax": _results(_probs(y, 2.0, seed=3)),
            "linear/max/softmax": _results(_probs(y, 0.7, seed=4)),
            "mlp/max/softmax": _results(np.vstack([flat, anti]))}


@pytest.mark.parametrize("metric", CONTAINED)
def test_ci_contains_the_row_value_and_delta_is_the_row_difference(metric):
    y = _labels()
    results = _demo(y)
    board = leaderboard(_arms(results), results, y, metric, BASELINE, 300, 0)
    rows = {r["arm"]: r for r in board}
    base = rows[BASELINE]
    for r in board:
        # the row value is the mean over seeds of the per-seed metric
        per_seed = [M.split_metrics(y, s["prob"], s["conf"])[metric] for s in results[r["arm"]]]
        assert r[metric] == pytest.approx(np.mean(per_seed))
        lo, hi = r[f"{metric}_ci"]
        assert lo <= r[metric] <= hi, (r["arm"], r[metric], lo, hi)
        assert r["diff"] == r[metric] - base[metric]
        assert np.sign(r["diff"]) == np.sign(r[metric] - base[metric])
        dlo, dhi = r["diff_ci"]
        assert dlo <= r["diff"] <= dhi, (r["arm"], r["diff"], dlo, dhi)
        assert r["ci_method"] == "bca"  # 120 rows: "auto" picks BCa
    assert base["diff"] == 0.0 and base["diff_ci"] == [0.0, 0.0]
    diffs = [r["diff"] for r in board]
    assert len(set(np.round(diffs, 12))) == len({round(r[metric], 12) for r in board}) == 4


def test_degenerate_arm_mcc_sits_inside_its_ci():
    # The reported bug: a row read MCC -0.067 next to a CI of [0, 0] (the CI was of the
    # seed-averaged probabilities, whose decisions are all class 0).
    y = _labels()
    results = _demo(y)
    row = next(r for r in leaderboard(_arms(results), results, y, "mcc", BASELINE, 300, 0)
               if r["arm"] == "mlp/max/softmax")
    assert M.mcc(y, np.mean([s["prob"] for s in results["mlp/max/softmax"]], axis=0)) == 0.0
    assert row["mcc"] < 0
    lo, hi = row["mcc_ci"]
    assert lo < row["mcc"] <= hi and hi - lo > 0.05


@pytest.mark.parametrize("metric", ["mcc", "accuracy", "balanced_accuracy", "nll", "brier"])
def test_ci_widens_when_seeds_disagree(metric):
    # Same noise, same rows; only the seeds' spread of decision biases grows. The row-only
    # spread stays about the same, so the growth is the seed variance being counted.
    y = _labels()
    widths = []
    for bias in (0.0, 2.0):
        results = {BASELINE: _results(_probs(y, 1.5, seeds=4)),
                   "mlp/mean/softmax": _results(_probs(y, 1.5, seeds=4, bias=bias, seed=5))}
        rows = {r["arm"]: r for r in leaderboard(_arms(results), results, y, metric, BASELINE, 300, 0)}
        lo, hi = rows["mlp/mean/softmax"][f"{metric}_ci"]
        widths.append(hi - lo)
    assert widths[1] > 1.5 * widths[0], widths


def test_identical_seeds_give_the_row_bootstrap():
    y = _labels()
    p = _probs(y, 1.0, seeds=1)[0]
    results = {BASELINE: _results([p, p, p])}
    [row] = leaderboard(_arms(results), results, y, "auroc", BASELINE, 200, 3)
    _, lo, hi = M.bootstrap_ci(M.auroc, y, p, n_boot=200, seed=3)
    assert row["auroc_ci"] == pytest.approx([lo, hi], abs=1e-12)


def test_undefined_metric_gives_nan_cis(tmp_path):
    y = np.zeros(N, int)  # one class: AUROC is undefined
    results = {BASELINE: _results(_probs(y, 1.0)), "mlp/mean/softmax": _results(_probs(y, 1.0, seed=2))}
    board = leaderboard(_arms(results), results, y, "auroc", BASELINE, 50, 0)
    for r in board:
        assert np.isnan(r["auroc"]) and np.isnan(r["auroc_ci"]).all() and np.isnan(r["diff_ci"]).all()
        assert r["ci_method"] is None
    # leaderboard.json is strict JSON: undefined values are null, never a bare NaN
    meta = {"seeds": 3, "n_val_test": N, "cache": "c.h5", "fingerprint": "f" * 32, "split_digest": "d" * 16,
            "seconds": 1.0}
    write_leaderboard(board, tmp_path, "auroc", BASELINE, meta)
    text = (tmp_path / "leaderboard.json").read_text()
    assert "NaN" not in text
    rows = json.loads(text)["rows"]
    assert all(r["auroc"] is None and r["auroc_ci"] == [None, None] for r in rows)


@pytest.mark.parametrize("seeds", [1, 3])
def test_written_header_says_what_the_ci_and_delta_are(tmp_path, seeds):
    y = _labels()
    results = {name: rows[:seeds] for name, rows in _demo(y).items()}
    board = leaderboard(_arms(results), results, y, "mcc", BASELINE, 100, 0)
    meta = {"seeds": seeds, "n_val_test": N, "cache": "c.h5", "fingerprint": "f" * 32, "split_digest": "d" * 16,
            "seconds": 1.0}
    markdown = write_leaderboard(board, tmp_path, "mcc", BASELINE, meta)
    md = (tmp_path / "leaderboard.md").read_text()
    assert markdown == md
    assert "mcc 95% CI: BCa bootstrap of that same seed mean" in md
    assert f"Δ: the row's mcc minus that of `{BASELINE}`" in md
    assert ("seed i paired with the baseline's seed i" in md) == (seeds > 1)
    assert ("val_test rows and seeds, both with replacement" in md) == (seeds > 1)
    with open(tmp_path / "leaderboard.csv", newline="") as fh:
        csv_rows = {r["arm"]: r for r in csv.DictReader(fh)}
    for r in board:
        assert float(csv_rows[r["arm"]]["diff_vs_baseline_mcc"]) == pytest.approx(r["diff"])
        assert float(csv_rows[r["arm"]]["mcc_ci_low"]) == pytest.approx(r["mcc_ci"][0])
    js = json.loads((tmp_path / "leaderboard.json").read_text())
    assert [r["ci_method"] for r in js["rows"]] == ["bca"] * 4


def test_ablate_refuses_an_out_it_cannot_write_before_any_training(tmp_path, monkeypatch):
    from natix.cache.synthetic import make_synthetic_cache
    from natix.errors import ConfigError
    from natix.heads import ablate as ablate_module

    cache = make_synthetic_cache(tmp_path / "cache", n=60, n_views=2, dim=4, seed=0)
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(ablate_module, "load_dataset", lambda *_: pytest.fail("read the cache"))
    with pytest.raises(ConfigError, match="'.*file' is not a directory: pass an --out in a directory"):
        ablate_module.ablate(cache, tmp_path / "file" / "x")
