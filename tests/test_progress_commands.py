"""Feedback of the long tier-2 commands when stderr is not a terminal (CliRunner's is not).

Each command says what it is about to do (status lines) and counts its work (progress lines,
one per update here: ``natix.progress.EVERY`` is 0); ``-q`` leaves the result alone and removes
both; ``--json`` keeps stdout one JSON document, whatever stderr says.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from natix import progress as P
from natix.cache.synthetic import make_synthetic_cache
from natix.cli import cli
from natix.heads.runs import fit_run
from natix.heads.train import HeadConfig, TrainConfig

# "desc: n/total unit (p %), r unit/s, t s", or "desc: n unit, r unit/s, t s" without a total
LINE = r"{desc}: [\d,]+{of} {unit}{pct}, [\d,.]+ {unit}/s, [\d,]+ s"


def progress_line(desc: str, unit: str, total: int | None = None, n: int | str | None = None) -> re.Pattern:
    """A log line of `natix.progress.Progress` counting `unit`s under `desc` (at count `n` if given)."""
    if total is None:
        text = LINE.format(desc=re.escape(desc), of="", unit=unit, pct="")
    else:
        text = LINE.format(desc=re.escape(desc), of=f"/{total:,}", unit=unit, pct=r" \(\d+ %\)")
    if n is not None:
        text = text.replace(r"[\d,]+", re.escape(f"{n:,}" if isinstance(n, int) else n), 1)
    return re.compile(f"^{text}$", re.MULTILINE)


@pytest.fixture(autouse=True)
def _a_line_per_update(monkeypatch):
    """Every update writes its log line and every cache read is said (as a big one is); each test
    starts and ends at normal verbosity (-q sets it for the whole process)."""
    from natix.heads import runs

    monkeypatch.setattr(P, "EVERY", 0.0)
    monkeypatch.setattr(runs, "SAY_READ_VALUES", 0)
    P.set_verbosity(P.NORMAL)
    yield
    P.set_verbosity(P.NORMAL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small cache, a linear run with out-of-fold predictions and a stronger run on it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("progress-runs")
    cache = make_synthetic_cache(root / "cache", n=600, n_views=3, dim=16, strength=2.0, seed=3)
    train = TrainConfig(lr=1e-2, batch_size=64, max_epochs=4, threads=1)
    fit_run(cache, root / "stage1", head=HeadConfig(agg="mean"), train=train, oof_folds=2, progress=False)
    fit_run(cache, root / "stage2", head=HeadConfig(agg="max"), train=train, progress=False)
    yield {"root": root, "cache": cache, "stage1": root / "stage1", "stage2": root / "stage2"}
    torch.set_num_threads(old)


def invoke(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r


def check_feedback(args, lines, result: str, out=None):
    """`args` run three ways: its stderr holds every pattern of `lines`, with -q none of them while
    stdout still holds `result`, and with --json stdout is one JSON document, which is returned.
    With `out` (a folder) each run writes to its own ``--out`` below it."""
    def run(name, *extra):
        return invoke(*args, *extra, *(("--out", out / name) if out is not None else ()))

    r = run("text")
    for pattern in lines:
        assert pattern.search(r.stderr), (pattern.pattern, r.stderr)
        assert not pattern.search(r.stdout), r.stdout  # feedback never mixes with the result
    assert result in r.stdout
    quiet = run("quiet", "-q")
    assert result in quiet.stdout
    for pattern in lines:
        assert not pattern.search(quiet.stderr), quiet.stderr
    as_json = run("json", "--json")
    assert all(pattern.search(as_json.stderr) for pattern in lines), as_json.stderr
    return json.loads(as_json.stdout)


# --------------------------------------------------------------------------- fit-head


def test_fit_head_counts_epochs_and_oof_folds(runs, tmp_path):
    status = [r"^reading 600 labeled images x 3 views x 16 dims from .* \(checking the features checksum\)$",
              r"^fitting linear-attention-softmax on \d+ training images \(AdamW\), early stopping on \d+ val_select",
              r"^cross-fitting 2 folds of \d+ training rows for out-of-fold predictions$"]
    counts = [progress_line("fit-head", "epoch", 3, 1), progress_line("oof", "fold", 2, 1),
              progress_line("oof", "fold", 2, 2)]
    args = ["fit-head", runs["cache"], "--agg", "attention", "--max-epochs", "3", "--oof-folds", "2", "--threads", "1"]
    res = check_feedback(args, [re.compile(s, re.M) for s in status] + counts, "train_oof", out=tmp_path)
    assert "train_oof" in res["metrics"]


def test_fit_head_counts_lbfgs_iterations_of_the_fit_and_of_the_folds(runs, tmp_path):
    r = invoke("fit-head", runs["cache"], "--agg", "max", "--oof-folds", "2", "--threads", "1", "--out", tmp_path / "r")
    iterations = json.loads((tmp_path / "r" / "config.json").read_text())["history"]["iterations"]
    shown = progress_line("fit-head", "it").findall(r.stderr)
    assert shown and int(shown[-1].split()[1].replace(",", "")) >= iterations, r.stderr  # the longest member's
    assert progress_line("oof (2 folds)", "it").search(r.stderr) and "(L-BFGS)" in r.stderr, r.stderr


# --------------------------------------------------------------------------- tune-gatekeeper


def test_tune_gatekeeper_says_each_weight_and_counts_its_epochs(runs, tmp_path):
    alphas = ("0.1", "0.3", "0.5", "0.7", "0.9")  # the default loss weights
    status = [re.compile(rf"^gatekeeper: tuning alpha={a} \({i + 1} of 5\) into .*alpha-{a}$", re.M)
              for i, a in enumerate(alphas)]
    counts = [progress_line(f"gatekeeper alpha={a}", "epoch", 2, 1) for a in alphas]
    args = ["tune-gatekeeper", runs["stage1"], "--epochs", "2", "--threads", "1", "--stage2", runs["stage2"]]
    rows = check_feedback(args, [re.compile("^reading 600 labeled", re.M), *status, *counts], "alpha-0.9",
                          out=tmp_path)
    assert [row["alpha"] for row in rows] == [float(a) for a in alphas]


# --------------------------------------------------------------------------- fit-failure


@pytest.mark.parametrize("model, unit", [("xgboost", "round"), ("mlp", "epoch")])
def test_fit_failure_counts_the_fit_and_the_bootstrap(runs, model, unit):
    status = [rf"^training the failure predictor \({model}\) on \d+ out-of-fold train predictions",
              r"^comparing 2 confidences on \d+ val_test images \(1,000 bootstrap resamples\)$"]
    counts = [progress_line("fit-failure", unit, 200, 1), progress_line("fit-failure", unit, 200, 200),
              progress_line("bootstrap", "confidence", 2, 2)]
    res = check_feedback(["fit-failure", runs["stage1"], "--model", model, "--threads", "1"],
                         [re.compile(s, re.M) for s in status] + counts, f"failure predictor ({model})")
    assert set(res["confidences"]) == {"max probability", f"failure predictor ({model})"}


# --------------------------------------------------------------------------- calibrate


def test_calibrate_says_what_it_fits_with_verbose_only(runs, tmp_path):
    """Calibrating takes well under a second: the line is a detail (-v), absent by default and with -q."""
    import shutil

    run = shutil.copytree(runs["stage1"], tmp_path / "run")
    line = re.compile(r"^calibrating .*run: platt and the decision threshold on (\d+) val_calib images, the scrc exit "
                      r"rule on the other (\d+)$", re.M)
    plain = invoke("calibrate", run, "--exit", "scrc")
    assert not line.search(plain.stderr) and "thresholds:" in plain.stdout
    res = check_feedback(["calibrate", run, "--exit", "scrc", "-v"], [line], "thresholds:")
    assert res["thresholds"]["exit"] == "scrc"
    fold_a, fold_b = map(int, line.search(invoke("calibrate", run, "--exit", "scrc", "-v").stderr).groups())
    assert fold_a + fold_b == sum(res["thresholds"]["folds"].values())


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, demo_images, tiny_backbone):
    """The demo images → a 10-view cache → a linear run → a bundle."""
    from natix.config import RunOptions
    from natix.extract.extractor import extract
    from natix.serve import export_bundle

    root = tmp_path_factory.mktemp("progress-serve")
    res = extract(demo_images, str(tiny_backbone), cache_root=root / "cache",
                  options=RunOptions(batch_size=4, workers=0, progress=False))
    fit_run(res.cache_file, root / "run", ratios=(0.25, 0.25, 0.25, 0.25), progress=False)
    return export_bundle(root / "run", root / "bundle")


def test_predict_counts_images_over_several_batches(bundle, demo_images):
    images = sorted(str(p) for p in demo_images.rglob("*.jpg"))
    assert len(images) == 12
    counts = [progress_line("predict", "img", 12, n) for n in (4, 8, 12)]
    loading = re.compile(r"^loading backbone .* and checking its weights hash$", re.M)
    rows = check_feedback(["predict", bundle, *images, "--batch-size", "4"], counts, images[0])
    assert [row["path"] for row in rows] == images
    assert loading.search(invoke("predict", bundle, *images[:1]).stderr)  # said before the slow step
    assert not loading.search(invoke("predict", bundle, *images[:1], "-q").stderr)
    one_batch = invoke("predict", bundle, *images, "--batch-size", "16")  # one batch: a request, not a job
    assert "predict:" not in one_batch.stderr


# --------------------------------------------------------------------------- the library


def test_library_calls_show_feedback_unless_told_not_to(runs, tmp_path, capsys, monkeypatch):
    from natix.heads import runs as run_module

    fit_run(runs["cache"], tmp_path / "a", head=HeadConfig(agg="max"), train=TrainConfig(threads=1))
    err = capsys.readouterr().err
    assert "reading 600 labeled images" in err and progress_line("fit-head", "it").search(err), err
    fit_run(runs["cache"], tmp_path / "b", head=HeadConfig(agg="max"), train=TrainConfig(threads=1), progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(run_module, "SAY_READ_VALUES", 600 * 3 * 16 + 1)  # a read below it is quick: not said
    fit_run(runs["cache"], tmp_path / "c", head=HeadConfig(agg="max"), train=TrainConfig(threads=1))
    err = capsys.readouterr().err
    assert "reading" not in err and progress_line("fit-head", "it").search(err), err


def test_ablate_counts_arms_not_the_fits_inside_them(runs, tmp_path, capsys):
    """Heads fitted inside a loop (an ablation's arms) stay silent: one count, of arms."""
    from natix.heads.ablate import ablate

    ablate(runs["cache"], tmp_path / "board", aggs=("mean", "max"), train_cfg=TrainConfig(threads=1))
    err = capsys.readouterr().err
    assert progress_line("ablate", "arm", 2, 2).search(err) and "fit-head:" not in err and "oof" not in err, err
