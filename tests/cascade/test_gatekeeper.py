"""Gatekeeper: the loss, the deferral metrics, and tuning a run end to end."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from natix import metrics as M
from natix.cache.synthetic import make_synthetic_cache
from natix.cascade.gatekeeper import (
    GatekeeperConfig,
    deferral_metrics,
    gatekeeper_loss,
    tune_gatekeeper,
    tune_gatekeeper_grid,
)
from natix.errors import ConfigError, DataError
from natix.heads.runs import evaluate_run, fit_run
from natix.heads.splits import Splits
from natix.heads.train import HeadConfig, TrainConfig, predict
from natix.rundir import Run, confidence

TRAIN = TrainConfig(lr=1e-2, batch_size=64, max_epochs=20, patience=5, threads=1)
TUNE = {"lr": 1e-2, "batch_size": 64, "epochs": 10, "threads": 1}



def _entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats, straight from the definition (float64)."""
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("alpha", [1.0, 0.7, 0.2])
def test_loss_on_correct_predictions_is_alpha_times_mean_ce(alpha):
    z = np.array([2.0, -1.5, 0.3, -4.0, 0.0])
    y = np.array([1, 0, 1, 0, 0])  # every sign agrees with its label (z = 0 predicts class 0)
    ce = np.where(y == 1, np.log1p(np.exp(-z)), np.log1p(np.exp(z)))
    loss = gatekeeper_loss(torch.tensor(z), torch.tensor(y), alpha)
    assert loss.item() == pytest.approx(alpha * ce.mean(), rel=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 0.7, 0.2])
def test_loss_on_wrong_predictions_is_kl_to_uniform(alpha):
    z = np.array([2.0, -1.5, 0.3, -4.0, 0.0])
    y = np.array([0, 1, 0, 1, 1])  # every prediction wrong
    p = _sigmoid(z)
    loss = gatekeeper_loss(torch.tensor(z), torch.tensor(y), alpha)
    assert loss.item() == pytest.approx((1 - alpha) * np.mean(math.log(2) - _entropy(p)), rel=1e-12, abs=1e-15)


def test_loss_mixes_both_terms_over_all_samples():
    z = np.array([2.0, -1.0, 1.0, -3.0])
    y = np.array([1, 0, 0, 1])  # two right, two wrong
    p = _sigmoid(z)
    ce = -np.log(np.array([p[0], 1 - p[1]]))
    kl = math.log(2) - _entropy(p[2:])
    expected = 0.4 * ce.sum() / 4 + 0.6 * kl.sum() / 4
    assert gatekeeper_loss(torch.tensor(z), torch.tensor(y), 0.4).item() == pytest.approx(expected, rel=1e-12)


def test_gradient_follows_the_masked_terms_only():
    """dL/dz = α(p − y)/N on correct samples and (1 − α)·z·p(1 − p)/N on wrong ones (dH/dz = −z p(1−p))."""
    alpha = 0.3
    z = torch.tensor([2.0, -1.0, 1.0, -3.0, 0.5], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    gatekeeper_loss(z, y, alpha).backward()
    zn, yn = z.detach().numpy(), y.numpy()
    p = _sigmoid(zn)
    correct = (zn > 0) == (yn == 1)
    expected = np.where(correct, alpha * (p - yn), (1 - alpha) * zn * p * (1 - p)) / len(zn)
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-10)
    # A mistake's gradient pushes its logit towards 0 (uniform), never across to the other class.
    assert np.all(np.sign(z.grad.numpy()[~correct]) == np.sign(zn[~correct]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_is_stable_for_large_logits(dtype):
    z = torch.tensor([50.0, -50.0, 50.0, -50.0, 100.0, -100.0], dtype=dtype, requires_grad=True)
    y = torch.tensor([1, 0, 0, 1, 0, 0], dtype=dtype)  # right, right, wrong, wrong, wrong, right
    alpha = 0.5
    loss = gatekeeper_loss(z, y, alpha)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(z.grad))
    # Confident mistakes cost the full KL = log 2 (H ≈ 0); confident right answers cost ≈ 0.
    assert loss.item() == pytest.approx((1 - alpha) * 3 * math.log(2) / 6, rel=1e-6)
    assert torch.all(z.grad.abs() < 1e-12)


# --------------------------------------------------------------------------- deferral metrics


def test_deferral_metrics_hand_checked_example():
    correct = [1, 0, 1, 0]
    conf = [0.9, 0.2, 0.6, 0.7]
    stage2 = [1, 1, 0, 1]
    d = deferral_metrics(correct, conf, stage2_correct=stage2, bins=2)
    # Correct {0.9, 0.6} vs wrong {0.2, 0.7}: 3 of 4 pairs ranked right.
    assert d["auroc_f"] == pytest.approx(0.75)
    # bins [0.2, 0.55), [0.55, 0.9]: correct (0, 1), wrong (1/2, 1/2) -> overlap 1/2.
    assert d["overlap"] == pytest.approx(0.5)
    # Deferring in confidence order gains (+1, -1, +1, 0)/4 over acc1 = 1/2: joint 1/2, 3/4, 1/2, 3/4, 3/4;
    # random 1/2 + r/4; ideal gains (+1, +1, 0, -1)/4: 1/2, 3/4, 1, 1, 3/4.
    # Areas (step 1/4, zero ends): joint − random 0.125/4, ideal − random 0.875/4 -> s_d = 1/7.
    np.testing.assert_allclose(d["curves"]["joint"], [0.5, 0.75, 0.5, 0.75, 0.75])
    np.testing.assert_allclose(d["curves"]["ideal"], [0.5, 0.75, 1.0, 1.0, 0.75])
    np.testing.assert_allclose(d["curves"]["random"], [0.5, 0.5625, 0.625, 0.6875, 0.75])
    assert d["s_d"] == pytest.approx(1 / 7)
    assert d["accuracy"] == 0.5 and d["stage2_accuracy"] == 0.75


def test_s_d_is_one_for_an_ideal_confidence(rng):
    correct = (rng.random(300) < 0.8).astype(int)
    conf = np.where(correct == 1, 0.6 + 0.4 * rng.random(300), 0.5 * rng.random(300))  # errors least confident
    stage2 = np.ones(300, dtype=int)
    d = deferral_metrics(correct, conf, stage2_correct=stage2)
    assert d["s_d"] == pytest.approx(1.0)
    assert d["auroc_f"] == 1.0 and d["overlap"] == 0.0


def test_s_d_is_about_zero_for_a_random_confidence():
    values = []
    for seed in range(200):
        r = np.random.default_rng(seed)
        correct = (r.random(200) < 0.75).astype(int)
        stage2 = (r.random(200) < 0.9).astype(int)
        values.append(deferral_metrics(correct, r.random(200), stage2_correct=stage2)["s_d"])
    assert abs(np.mean(values)) < 0.03
    assert np.std(values) > 0.01  # individual draws do vary: the average is what is ~0


def test_tied_confidences_defer_in_expectation():
    """One confidence for everyone: the expected joint accuracy is the random line exactly."""
    r = np.random.default_rng(3)
    correct, stage2 = (r.random(50) < 0.7).astype(int), (r.random(50) < 0.9).astype(int)
    d = deferral_metrics(correct, np.full(50, 0.8), stage2_correct=stage2)
    np.testing.assert_allclose(d["curves"]["joint"], d["curves"]["random"], atol=1e-12)
    assert d["s_d"] == pytest.approx(0.0, abs=1e-12)
    assert d["overlap"] == 1.0 and d["auroc_f"] == 0.5


def test_overlap_of_identical_distributions_is_one(rng):
    g = rng.random(200)
    d = deferral_metrics(np.r_[np.ones(200), np.zeros(200)], np.r_[g, g])
    assert d["overlap"] == pytest.approx(1.0)
    assert d["s_d"] is None and d["curves"] is None and d["stage2_accuracy"] is None


@pytest.mark.parametrize("kwargs, match", [
    ({"correct": [1, 0, 2], "confidence": [0.1, 0.2, 0.3]}, "0/1"),
    ({"correct": [1, 0], "confidence": [0.1, 0.2, 0.3]}, "one confidence per sample"),
    ({"correct": [1, 0, 1], "confidence": [0.1, np.nan, 0.3]}, "NaN"),
    ({"correct": [1, 0, 1], "confidence": [0.1, 0.2, 0.3], "stage2_correct": [1, 0]}, "join them by image id"),
])
def test_deferral_metrics_refuses_bad_input(kwargs, match):
    with pytest.raises(DataError, match=match):
        deferral_metrics(**kwargs)


# --------------------------------------------------------------------------- tuning a run


@pytest.fixture(scope="module")
def gk_runs(tmp_path_factory):
    """A synthetic cache, a linear/mean base run and a max-aggregator stage-2 run on it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gatekeeper")
    cache = make_synthetic_cache(root / "cache", n=800, n_views=3, dim=16, strength=2.0)
    base = fit_run(cache, root / "base", head=HeadConfig(), train=TRAIN)
    stage2 = fit_run(cache, root / "stage2", head=HeadConfig(agg="max"), train=TRAIN,
                     splits_path=root / "base" / "splits.json")
    return {"root": root, "cache": cache, "base": base.out, "stage2": stage2.out}


@pytest.fixture(scope="module")
def tuned(gk_runs):
    return {a: tune_gatekeeper(gk_runs["base"], gk_runs["root"] / f"gk-{a}", alpha=a, stage2=gk_runs["stage2"], **TUNE)
            for a in (0.3, 0.9)}


def test_tuned_run_is_a_complete_run_directory(gk_runs, tuned):
    res = tuned[0.3]
    out = res.out
    for name in ("config.json", "model.safetensors", "splits.json", "metrics.json", "deferral.json"):
        assert (out / name).is_file(), name
    config = Run(out).config
    assert config["gatekeeper"]["alpha"] == 0.3
    assert config["gatekeeper"]["base_run"] == str(gk_runs["base"].resolve())
    assert config["gatekeeper"]["recalibration"]["method"] == "platt"
    assert Splits.load(out / "splits.json").digest == Splits.load(gk_runs["base"] / "splits.json").digest
    stored = json.loads((out / "metrics.json").read_text())
    a, b = config["gatekeeper"]["recalibration"]["coef"], config["gatekeeper"]["recalibration"]["intercept"]
    for split in ("train", "val_select", "val_calib", "val_test"):
        pred = Run(out).predictions(split)
        # prob is the Platt map of raw_prob, and logit agrees with prob.
        raw = np.clip(pred["raw_prob"], 1e-12, 1 - 1e-12)
        np.testing.assert_allclose(pred["prob"], _sigmoid(a * np.log(raw / (1 - raw)) + b), rtol=1e-9)
        np.testing.assert_allclose(_sigmoid(pred["logit"]), pred["prob"], rtol=1e-9)
        np.testing.assert_allclose(_sigmoid(pred["raw_logit"].astype(np.float64)), pred["raw_prob"], rtol=1e-6)
        assert stored[split]["accuracy"] == pytest.approx(M.accuracy(pred["labels"], pred["prob"]))
    # The saved weights reproduce the raw probabilities.
    from safetensors.torch import load_file

    from natix.heads.runs import load_dataset

    data = load_dataset(gk_runs["cache"])
    model = HeadConfig(**config["head"]).build(16, 3)
    model.load_state_dict(load_file(out / "model.safetensors"))
    test = Run(out).predictions("val_test")
    rows = Splits.load(out / "splits.json").rows(data.ids)["val_test"]
    np.testing.assert_allclose(predict(model, data.X[rows])["prob"], test["raw_prob"], rtol=1e-5)
    # The weights moved away from the base run's.
    base_model = load_file(gk_runs["base"] / "model.safetensors")
    assert not torch.equal(base_model["head.fc.weight"], model.state_dict()["head.fc.weight"])
    # Every later step reads it as a run.
    assert evaluate_run(out, n_boot=5)["metrics"]["accuracy"] == pytest.approx(res.metrics["val_test"]["accuracy"])


def test_tuning_lowers_its_own_objective_and_keeps_the_ranking(gk_runs, tuned):
    """What the loss guarantees here: each tuned model beats the base on its own training objective.

    The synthetic features give a mean-pooled linear head a posterior that is already monotone in
    its logit, so no linear head can rank errors better than the base: AUROC_f may only wobble
    (by ±0.05 on 120 val_test images). It must not break, so it stays within 0.05 on train.
    """
    base = Run(gk_runs["base"]).predictions("train")
    for alpha, res in tuned.items():
        pred = Run(res.out).predictions("train")
        own = gatekeeper_loss(torch.from_numpy(pred["raw_logit"].astype(np.float64)),
                              torch.from_numpy(pred["labels"]), alpha)
        before = gatekeeper_loss(torch.from_numpy(base["logit"].astype(np.float64)),
                                 torch.from_numpy(base["labels"]), alpha)
        assert own < before, alpha
        assert res.metrics["train"]["auroc_f"] > json.loads((gk_runs["base"] / "metrics.json").read_text())[
            "train"]["auroc_f"] - 0.05


def test_lower_alpha_pulls_mistakes_towards_uniform(gk_runs):
    """Monotone in α: the smaller α, the closer the training mistakes' raw probability sits to 0.5.

    Stopping on the tuning loss with no patience cut lets every α train the same number of epochs,
    so the comparison is not confounded by early stopping picking different epochs.
    """
    mistakes = {}
    for alpha in (0.05, 0.3, 0.9):
        res = tune_gatekeeper(gk_runs["base"], gk_runs["root"] / f"mono-{alpha}", alpha=alpha, stop_metric="loss",
                              patience=TUNE["epochs"], **TUNE)
        pred = Run(res.out).predictions("train")
        wrong = M.predictions(pred["raw_prob"]) != pred["labels"]
        mistakes[alpha] = np.mean(np.maximum(pred["raw_prob"], 1 - pred["raw_prob"])[wrong])
    base = Run(gk_runs["base"]).predictions("train")
    wrong = M.predictions(base["prob"]) != base["labels"]
    base_mistakes = np.mean(np.maximum(base["prob"], 1 - base["prob"])[wrong])
    assert mistakes[0.05] < mistakes[0.3] < mistakes[0.9]
    assert mistakes[0.05] < base_mistakes


def test_stage2_deferral_is_joined_by_image_id(gk_runs, tuned):
    res = tuned[0.3]
    d = res.deferral
    assert -1.0 <= d["s_d"] <= 1.0
    # Recompute from the stored files with an independent join on shuffled stage-2 rows.
    test = Run(res.out).predictions("val_test")
    s2 = Run(gk_runs["stage2"]).predictions("val_test")
    perm = np.random.default_rng(0).permutation(len(s2["ids"]))
    by_id = {i: int(p > 0.5) == int(y) for i, p, y in zip(s2["ids"][perm], s2["prob"][perm], s2["labels"][perm])}
    c2 = np.array([by_id[i] for i in test["ids"]], dtype=int)
    again = deferral_metrics(M.predictions(test["prob"]) == test["labels"], confidence(test), stage2_correct=c2)
    assert again["s_d"] == pytest.approx(d["s_d"]) and d["stage2_accuracy"] == pytest.approx(c2.mean())
    assert res.base_deferral["s_d"] is not None
    saved = json.loads((res.out / "deferral.json").read_text())
    assert saved["tuned"]["s_d"] == pytest.approx(d["s_d"]) and "curves" not in saved["tuned"]


def test_stage2_row_order_does_not_matter(gk_runs, tuned, tmp_path):
    shuffled = tmp_path / "stage2"
    shutil.copytree(gk_runs["stage2"], shuffled)
    pred = Run(shuffled).predictions("val_test")
    perm = np.random.default_rng(1).permutation(len(pred["ids"]))
    np.savez(shuffled / "predictions" / "val_test.npz", **{k: v[perm] for k, v in pred.items()})
    res = tune_gatekeeper(gk_runs["base"], tmp_path / "out", alpha=0.3, stage2=shuffled, **TUNE)
    assert res.deferral["s_d"] == pytest.approx(tuned[0.3].deferral["s_d"])


def test_stage2_with_missing_ids_is_refused(gk_runs, tmp_path):
    broken = tmp_path / "stage2"
    shutil.copytree(gk_runs["stage2"], broken)
    pred = Run(broken).predictions("val_test")
    np.savez(broken / "predictions" / "val_test.npz", **{k: v[5:] for k, v in pred.items()})
    with pytest.raises(DataError, match=r"lacks 5 of the \d+ val_test image ids"):
        tune_gatekeeper(gk_runs["base"], tmp_path / "out", alpha=0.5, stage2=broken, **TUNE)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_grid_returns_one_row_per_alpha(gk_runs):
    rows = tune_gatekeeper_grid(gk_runs["base"], gk_runs["root"] / "grid", [0.5, 1.0], stage2=gk_runs["stage2"],
                                epochs=2, lr=1e-2, batch_size=64, threads=1)
    assert [r["alpha"] for r in rows] == [0.5, 1.0]
    for r in rows:
        assert set(r) == {"alpha", "accuracy", "auroc_f", "overlap", "s_d", "out"}
        assert Run(r["out"]).config["gatekeeper"]["alpha"] == r["alpha"]
        assert -1.0 <= r["s_d"] <= 1.0
    assert rows[0]["out"] != rows[1]["out"]


def test_moved_cache_is_named_and_can_be_overridden(gk_runs, tmp_path):
    moved = tmp_path / "moved-run"
    shutil.copytree(gk_runs["base"], moved)
    config = Run(moved).config
    config["cache"]["path"] = str(tmp_path / "gone.h5")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="gone.h5.*features="):
        tune_gatekeeper(moved, tmp_path / "out", alpha=0.5, **TUNE)
    res = tune_gatekeeper(moved, tmp_path / "out", alpha=0.5, features=gk_runs["cache"], epochs=1, threads=1)
    assert Run(res.out).config["cache"]["path"] == str(gk_runs["cache"].resolve())


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_alpha_outside_the_unit_interval_is_refused(gk_runs, tmp_path, alpha):
    with pytest.raises(ConfigError, match=r"alpha must be .*\(0, 1\]"):
        tune_gatekeeper(gk_runs["base"], tmp_path / "out", alpha=alpha)


@pytest.mark.parametrize("option, match", [
    ({"stop_metric": "nll"}, "unknown stop metric"),
    ({"recalibrate": "beta"}, "unknown recalibration"),
    ({"epochs": 0}, "epochs and patience"),
    ({"device": "tpu:x"}, "unknown device"),
    ({"threads": -1}, r"threads must be an integer >= 0, got -1: pass 0 \(every available core\)"),
    ({"threads": 2.0}, "threads must be an integer >= 0, got 2.0"),
])
def test_bad_options_are_refused(option, match):
    with pytest.raises(ConfigError, match=match):
        GatekeeperConfig(alpha=0.5, **option)


def test_threads_are_applied_during_tuning_and_change_no_result(gk_runs, tmp_path, threads_in_steps):
    from natix.heads.config import available_cores

    before = torch.get_num_threads()
    pred = {}
    for threads in (1, 0):
        threads_in_steps.clear()
        res = tune_gatekeeper(gk_runs["base"], tmp_path / f"threads-{threads}", alpha=0.5, lr=1e-2, batch_size=128,
                              epochs=2, threads=threads)
        want = threads or available_cores()
        assert threads_in_steps and set(threads_in_steps) == {(want, want)}
        assert Run(res.out).config["gatekeeper"]["threads"] == threads
        pred[threads] = Run(res.out).predictions("val_test")
    assert torch.get_num_threads() == before  # the caller's setting is restored
    np.testing.assert_allclose(pred[1]["raw_prob"], pred[0]["raw_prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred[1]["prob"], pred[0]["prob"], rtol=1e-5, atol=1e-6)


def test_grid_refuses_bad_threads_before_reading_the_run(tmp_path):
    with pytest.raises(ConfigError, match="threads must be an integer >= 0, got -1"):
        tune_gatekeeper_grid(tmp_path / "no-such-run", tmp_path / "out", [0.5], threads=-1)


def test_missing_run_and_bad_targets_are_refused(gk_runs, tmp_path):
    with pytest.raises(DataError, match="is not a natix run"):
        tune_gatekeeper(tmp_path / "nope", tmp_path / "out", alpha=0.5)
    with pytest.raises(ConfigError, match="is the base run"):
        tune_gatekeeper(gk_runs["base"], gk_runs["base"], alpha=0.5)
    gate = tmp_path / "gate-run"
    shutil.copytree(gk_runs["base"], gate)
    config = Run(gate).config
    config["head"]["policy"] = "gate"
    (gate / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="gate policy"):
        tune_gatekeeper(gate, tmp_path / "out", alpha=0.5)
