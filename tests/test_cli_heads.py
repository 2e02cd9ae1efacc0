"""Tier-2 CLI verbs: `natix fit-head`, `natix evaluate`, `natix ablate` (CliRunner, CPU, tiny caches)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import natix.heads.modules  # noqa: F401  (fills the head/aggregator registries)
from natix.cache.store import CacheWriter, Rows
from natix.cache.synthetic import make_synthetic_cache
from natix.cli import cli
from natix.heads.modules import POLICIES
from natix.heads.registry import list_aggregators, list_heads
from natix.heads.runs import load_dataset
from natix.heads.splits import SPLITS, make_splits
from natix.metrics import METRIC_NAMES

FAST = ["--max-epochs", "2", "--head", "linear"]
ABLATE = ["--head", "linear,mlp", "--agg", "mean,max", "--policy", "softmax", "--seeds", "2", "--max-epochs", "5",
          "--metric", "auroc", "-q"]
ARMS = {f"{h}/{a}/softmax" for h, a in itertools.product(["linear", "mlp"], ["mean", "max"])}


def run(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _one_line_error(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # status lines ("loading ...") may come first
    return errors[0]


def _same(a, b) -> bool:
    """Equal floats, NaN equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def _metrics_table(output: str) -> dict[str, dict[str, float]]:
    """Parse fit-head's table: split -> column -> value."""
    lines = output.splitlines()
    [start] = [i for i, line in enumerate(lines) if line.split()[:1] == ["split"]]
    cols = lines[start].split()[1:]
    table = {}
    for line in lines[start + 1:]:
        if not line.strip():  # the reward definitions follow the table
            break
        name, *values = line.split()
        table[name] = dict(zip(cols, map(float, values), strict=True))
    return table


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models thrash with several threads; module scope so the module fixtures train on one too."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("cache"), n=400, n_views=3, dim=16, strength=4.0)


@pytest.fixture(scope="module")
def other_cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("other"), n=400, n_views=3, dim=16, strength=4.0, seed=1)


@pytest.fixture(scope="module")
def fitted(cache, tmp_path_factory):
    """The fit-head happy path: (CliRunner result, run directory)."""
    out = tmp_path_factory.mktemp("runs") / "gate"
    r = run("fit-head", cache, "--head", "mlp", "--agg", "attention", "--policy", "gate", "--max-epochs", "5",
            "--out", out)
    return r, out


@pytest.fixture(scope="module")
def ablations(cache, tmp_path_factory):
    """Three ablations of the same 4 arms: default baseline, another baseline, two jobs."""
    root = tmp_path_factory.mktemp("ablate")
    return {name: (run("ablate", cache, *ABLATE, *extra, "--out", root / name), root / name)
            for name, extra in [("jobs1", ["--threads", "1"]), ("baseline", ["--baseline", "linear/max/softmax"]),
                                ("jobs2", ["--jobs", "2", "--threads", "1"])]}


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("cmd, option", [("fit-head", "--oof-folds"), ("evaluate", "--split"),
                                         ("ablate", "--baseline")])
def test_help(cmd, option):
    r = run(cmd, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output and option in r.output, r.output


# --------------------------------------------------------------------------- fit-head


def test_fit_head_happy_path(fitted):
    r, out = fitted
    _ok(r)
    assert str(out) in r.output
    assert "fractions (not x1000)" in r.output and "gate score g" in r.output
    for name in ["config.json", "model.safetensors", "splits.json", "metrics.json", "predictions/val_test.npz"]:
        assert (out / name).is_file(), name
    assert not (out / "predictions" / "train_oof.npz").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(SPLITS)
    # The printed table is metrics.json rounded to 4 decimals, one row per split.
    table = _metrics_table(r.output)
    assert set(table) == set(SPLITS)
    for split, row in table.items():
        assert {"n", "accuracy", "mcc", "auroc", "nll"} <= set(row)
        for col, value in row.items():
            assert value == pytest.approx(metrics[split][col], abs=5e-5, nan_ok=True), (split, col)
    config = json.loads((out / "config.json").read_text())
    assert (config["head"]["head"], config["head"]["agg"], config["head"]["policy"]) == ("mlp", "attention", "gate")
    assert config["train"]["max_epochs"] == 5 and 1 <= config["history"]["epochs"] <= 5
    assert config["cache"]["n_views"] == 3 and config["cache"]["dim"] == 16
    assert sum(config["splits"]["sizes"].values()) == 400
    with np.load(out / "predictions" / "val_test.npz") as z:
        assert len(z["prob"]) == len(z["labels"]) == config["splits"]["sizes"]["val_test"] == metrics["val_test"]["n"]
        assert "gate" in z.files
    # The synthetic signal is strong: a working pipeline separates the classes on held-out data.
    assert metrics["val_test"]["auroc"] > 0.75


@pytest.mark.parametrize("oof", [False, True], ids=["plain", "oof"])
def test_fit_head_json(cache, tmp_path, oof):
    out = tmp_path / "run"
    r = _ok(run("fit-head", cache, *FAST, "--out", out, "--json", *(["--oof-folds", "2"] if oof else [])))
    result = json.loads(r.stdout)
    expected = set(SPLITS) | ({"train_oof"} if oof else set())
    assert result["out"] == str(out) and set(result["metrics"]) == expected and result["seconds"] >= 0
    stored = json.loads((out / "metrics.json").read_text())
    for split in expected:
        assert set(result["metrics"][split]) == set(METRIC_NAMES) | {"n"}
        assert all(_same(result["metrics"][split][m], stored[split][m]) for m in stored[split])
    assert (out / "predictions" / "train_oof.npz").is_file() == oof
    if oof:
        assert result["metrics"]["train_oof"]["n"] == result["metrics"]["train"]["n"]


def test_fit_head_reuses_a_split_file(fitted, cache, tmp_path):
    _ok(fitted[0])
    run_dir = fitted[1]
    digest = json.loads((run_dir / "config.json").read_text())["splits"]["digest"]
    # Another seed and other ratios would make other splits; the split file wins over both.
    other = ["--split-seed", "7", "--ratios", "0.25,0.25,0.25,0.25"]
    _ok(run("fit-head", cache, *FAST, *other, "--out", tmp_path / "fresh"))
    assert json.loads((tmp_path / "fresh" / "config.json").read_text())["splits"]["digest"] != digest
    _ok(run("fit-head", cache, *FAST, *other, "--splits", run_dir / "splits.json", "--out", tmp_path / "reused"))
    config = json.loads((tmp_path / "reused" / "config.json").read_text())
    assert config["splits"]["digest"] == digest
    assert (tmp_path / "reused" / "splits.json").read_text() == (run_dir / "splits.json").read_text()


# --------------------------------------------------------------------------- fit-head: bad inputs


def _unlabeled_cache(root):
    identity = {"extractor_version": 1, "backbone": {"weights_sha256": "1" * 64}, "store_dtype": "float16"}
    table = [{"name": "global", "box": [0, 0, 1, 1], "flip": False},
             {"name": "tile", "box": [0, 0, 0.5, 0.5], "flip": False}]
    ids = [f"{i:064x}" for i in range(6)]
    with CacheWriter(root, identity, table, dim=4, source={"backbone": "test"}) as w:
        w.add_part(np.random.default_rng(0).normal(size=(6, 2, 4)).astype(np.float16),
                   Rows(ids, [f"/img/{i}.jpg" for i in range(6)], [-1] * 6, [""] * 6, [(10, 20)] * 6), [])
        return w.commit()


@pytest.fixture(scope="module")
def bad_files(cache, other_cache, tmp_path_factory):
    import h5py

    root = tmp_path_factory.mktemp("bad")
    foreign = root / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    other = load_dataset(other_cache)
    other_splits = make_splits(other.ids, other.labels, other.groups, fingerprint=other.fingerprint)
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "notes.txt").write_text("mine")
    return {"CACHE": cache, "MISSING": root / "missing.h5", "FOREIGN": foreign,
            "OTHER_SPLITS": other_splits.save(root / "other-splits.json"),
            "UNLABELED": _unlabeled_cache(root / "unlabeled"), "NOT_A_RUN": root / "not-a-run"}


@pytest.mark.parametrize("args, code, match", [
    (["MISSING"], 1, "does not exist"),
    (["FOREIGN"], 1, "not a natix feature cache"),
    (["UNLABELED"], 1, "no labeled images"),
    (["CACHE", "--head", "resnet"], 2, "--head.*'resnet' is not one of 'linear', 'mlp'"),
    (["CACHE", "--agg", "sum"], 2, "--agg.*'sum' is not one of 'global', 'mean'"),
    (["CACHE", "--policy", "vote"], 2, "--policy.*'vote' is not one of 'softmax', 'gate', 'scrc'"),
    (["CACHE", "--ratios", "0.5,0.2,0.2,0.2"], 1, r"four positive fractions summing to 1, got \(0.5, 0.2, 0.2, 0.2\)"),
    (["CACHE", "--ratios", "a,b"], 2, r"--ratios.*'a,b' is not four comma-separated fractions"),
    (["CACHE", "--stop-metric", "auc"], 2, r"--stop-metric.*'auc' is not one of"),
    (["CACHE", "--splits", "OTHER_SPLITS"], 1, "was made for cache"),
    (["CACHE", "--oof-folds", "1"], 1, "--oof-folds must be 0 \\(off\\) or >= 2"),
    (["CACHE", "--out", "NOT_A_RUN"], 1, "exists and is not a natix run"),
], ids=["missing", "foreign-hdf5", "unlabeled", "head", "agg", "policy", "ratios-sum", "ratios-text", "stop-metric",
        "other-cache-splits", "oof-folds", "out-not-a-run"])
def test_fit_head_bad_inputs(bad_files, tmp_path, args, code, match):
    out = tmp_path / "run"
    args = [bad_files.get(a, a) for a in args]
    if "--out" not in args:
        args += ["--out", out]
    line = _one_line_error(run("fit-head", *args, "--max-epochs", "2"), code)
    assert re.search(match, line), line
    assert not (out / "config.json").exists() and not (bad_files["NOT_A_RUN"] / "config.json").exists()


@pytest.mark.parametrize("option, names", [("--head", list_heads()), ("--agg", list_aggregators()),
                                           ("--policy", list(POLICIES))])
def test_unknown_names_list_the_valid_ones(cache, tmp_path, option, names):
    """The registries' names, checked when the command line is parsed: a usage error (exit 2)."""
    assert len(names) >= 2
    line = _one_line_error(run("fit-head", cache, option, "nope", "--out", tmp_path / "run"), 2)
    listed = line.split("is not one of", 1)[1]
    assert all(f"'{n}'" in listed for n in names), line
    assert not (tmp_path / "run").exists()


def test_other_cache_split_file_names_both_caches(bad_files, other_cache, cache, tmp_path):
    line = _one_line_error(run("fit-head", cache, "--splits", bad_files["OTHER_SPLITS"], "--out", tmp_path / "r"), 1)
    assert load_dataset(other_cache).fingerprint[:16] in line and load_dataset(cache).fingerprint[:16] in line


# --------------------------------------------------------------------------- evaluate


def test_evaluate_prints_metrics_with_cis(fitted):
    _ok(fitted[0])
    out = fitted[1]
    r = _ok(run("evaluate", out))  # the result on stdout; status lines (progress) go to stderr
    stored = json.loads((out / "metrics.json").read_text())["val_test"]
    assert "split val_test" in r.stdout.splitlines()[0] and "95% bootstrap CI" in r.stdout
    ci_line = re.compile(r"^\s+(\w+)\s+(-?[\d.]+|nan)\s+\[(-?[\d.]+|nan), (-?[\d.]+|nan)\]$")
    with_ci = {}
    body = r.stdout.split("\n\n")[0].splitlines()[1:]  # the reward definitions follow a blank line
    assert "reward_expected: " in r.stdout
    for line in body:
        name, value = line.split()[:2]
        assert float(value) == pytest.approx(stored[name], abs=5e-5, nan_ok=True), line
        if m := ci_line.match(line):
            with_ci[m[1]] = (float(m[3]), float(m[4]))
    assert {"accuracy", "mcc", "auroc", "nll"} <= set(with_ci)
    assert all(lo <= hi for lo, hi in with_ci.values())
    assert {line.split()[0] for line in body} == set(stored)


def test_evaluate_train_split(fitted):
    _ok(fitted[0])
    r = _ok(run("evaluate", fitted[1], "--split", "train"))
    stored = json.loads((fitted[1] / "metrics.json").read_text())["train"]
    assert "split train" in r.stdout.splitlines()[0]
    [n_line] = [line for line in r.stdout.splitlines() if line.split()[:1] == ["n"]]
    assert int(n_line.split()[1]) == stored["n"]


def test_evaluate_json_matches_metrics_json(fitted):
    _ok(fitted[0])
    result = json.loads(_ok(run("evaluate", fitted[1], "--json")).stdout)
    stored = json.loads((fitted[1] / "metrics.json").read_text())["val_test"]
    assert result["split"] == "val_test" and set(result["metrics"]) == set(stored)
    assert all(_same(result["metrics"][k], stored[k]) for k in stored), (result["metrics"], stored)
    assert {"accuracy", "mcc", "auroc", "nll"} <= set(result["ci"])
    assert all(len(ci) == 2 for ci in result["ci"].values())


def test_evaluate_json_is_strict_when_a_metric_is_undefined(fitted, tmp_path):
    """A val_test of one class leaves AUROC undefined (NaN): --json prints null, never a bare NaN."""
    import shutil

    from natix.rundir import write_predictions

    _ok(fitted[0])
    run_dir = shutil.copytree(fitted[1], tmp_path / "one-class")
    with np.load(run_dir / "predictions" / "val_test.npz") as z:
        pred = {k: z[k] for k in z.files}
    write_predictions(run_dir, "val_test", pred.pop("ids"), np.ones_like(pred.pop("labels")), pred)
    out = _ok(run("evaluate", run_dir, "--json")).stdout
    assert "NaN" not in out
    result = json.loads(out)
    assert result["metrics"]["auroc"] is None and result["metrics"]["n"] == len(pred["prob"])
    assert result["metrics"]["accuracy"] == pytest.approx(float(np.mean(pred["prob"] > 0.5)))
    text = _ok(run("evaluate", run_dir)).stdout
    assert re.search(r"^\s+auroc\s+nan\b", text, re.MULTILINE), text


def test_evaluate_bad_split_and_bad_run(fitted, tmp_path):
    _ok(fitted[0])
    line = _one_line_error(run("evaluate", fitted[1], "--split", "nope"), 1)
    assert "'nope'" in line and all(s in line for s in SPLITS), line
    (tmp_path / "empty").mkdir()
    for not_a_run in (tmp_path / "empty", tmp_path / "missing"):
        line = _one_line_error(run("evaluate", not_a_run), 1)
        assert "not a natix run" in line and str(not_a_run) in line, line


# --------------------------------------------------------------------------- calibrate


def test_calibrate_budget_exit(fitted, tmp_path):
    import shutil

    _ok(fitted[0])
    run_dir = shutil.copytree(fitted[1], tmp_path / "budget")
    out = _ok(run("calibrate", run_dir, "--exit", "budget", "--budget", "0.3", "--json")).output
    res = json.loads(out)
    thr = res["thresholds"]
    assert thr["exit"] == "budget" and thr["certified"] is False and thr["budget"]["budget"] == 0.3
    assert thr["budget"]["deferred_fraction_"] <= 0.3 and "bound" not in res["val_test"]
    assert res["guarantee"].startswith("budget: no guarantee")
    text = _ok(run("calibrate", run_dir, "--exit", "budget", "--budget", "0.3")).output
    assert "exit budget" in text and "guarantee: budget: no guarantee" in text
    assert "certified bound" not in text
    line = _one_line_error(run("calibrate", run_dir, "--exit", "budget", "--budget", "1.5"), 2)  # refused at parse time
    assert "budget" in line, line
    # Names are the library's registries, checked at parse time: a usage line listing them, before any write.
    before = sorted(p.name for p in Path(run_dir).iterdir())
    line = _one_line_error(run("calibrate", run_dir, "--exit", "maybe"), 2)
    assert "'maybe' is not one of 'none', 'ltt', 'crc', 'scrc', 'budget'" in line, line
    line = _one_line_error(run("calibrate", run_dir, "--method", "dirichlet"), 2)
    assert "'dirichlet' is not one of" in line and "'platt'" in line, line
    assert sorted(p.name for p in Path(run_dir).iterdir()) == before


def test_cascade_prints_what_the_library_wrote(fitted, cache, tmp_path):
    """`cascade --json` prints the document cascade_run returns, which is the cascade.json it wrote."""
    _ok(fitted[0])
    _ok(run("fit-head", cache, *FAST, "--out", tmp_path / "s1"))
    args = ["cascade", "--stage1", tmp_path / "s1", "--stage2", fitted[1], "--budget", "0.5",
            "--out", tmp_path / "casc"]
    res = json.loads(_ok(run(*args, "--json")).output)
    doc = json.loads((tmp_path / "casc" / "cascade.json").read_text())
    assert res == doc and doc["mode"] == "budget" and doc["router"]["budget"] == 0.5
    line = _one_line_error(run(*args), 1)  # the cascade is there now: replaced only with --force
    assert "already holds a natix cascade" in line and "--force" in line, line
    text = _ok(run(*args, "--force")).output
    assert f"accuracy {doc['metrics']['accuracy']:.4f}" in text and doc["calibration"]["guarantee"] in text


# --------------------------------------------------------------------------- tier 1 -> tier 2


def test_fit_head_on_an_extracted_cache(demo_images, tiny_backbone, tmp_path):
    cache_dir = tmp_path / "cache"
    _ok(run("extract", demo_images, "--backbone", tiny_backbone, "--views", "10", "--cache", cache_dir,
            "--workers", "0", "-q"))
    [h5] = cache_dir.glob("*.h5")
    # 12 images, 6 per class: the default ratios leave val_select without any image.
    line = _one_line_error(run("fit-head", h5, "--out", tmp_path / "default", "--max-epochs", "2"), 1)
    assert re.search(r"split \w+ would get \d+ roadwork and \d+ no_roadwork images \(need >= 1", line), line
    assert not (tmp_path / "default" / "config.json").exists()
    out = tmp_path / "run"
    r = _ok(run("fit-head", h5, "--ratios", "0.25,0.25,0.25,0.25", "--head", "mlp", "--agg", "attention",
                "--policy", "gate", "--max-epochs", "3", "--out", out))
    assert str(out) in r.output and set(_metrics_table(r.output)) == set(SPLITS)
    config = json.loads((out / "config.json").read_text())
    info = json.loads(_ok(run("cache", "info", h5, "--json")).output)
    assert config["cache"]["fingerprint"] == info["fingerprint"]
    assert (config["cache"]["n_views"], config["cache"]["dim"]) == (10, 32)
    assert config["cache"]["view_names"] == [v["name"] for v in info["view_table"]]
    sizes = config["splits"]["sizes"]
    assert sum(sizes.values()) == 12 and min(sizes.values()) >= 2
    assert json.loads(_ok(run("evaluate", out, "--json")).stdout)["metrics"]["n"] == sizes["val_test"]


# --------------------------------------------------------------------------- ablate


def _board(out):
    return json.loads((out / "leaderboard.json").read_text())["rows"]


def test_ablate_happy_path(ablations):
    r, out = ablations["jobs1"]
    _ok(r)
    md = (out / "leaderboard.md").read_text()
    assert r.output == md + "\n"
    assert re.search(r"^\| arm \|.*\| auroc 95% CI \| Δauroc vs baseline \|$", md, re.MULTILINE), md
    rows = _board(out)
    assert {row["arm"] for row in rows} == ARMS and len(rows) == 4
    assert all(row["seeds"] == 2 for row in rows)
    aurocs = [row["auroc"] for row in rows]
    assert aurocs == sorted(aurocs, reverse=True)  # sorted by --metric, best first
    md_rows = [line for line in md.splitlines() if line.startswith("| ") and "/" in line.split("|")[1]]
    assert [line.split("|")[1].strip() for line in md_rows] == [row["arm"] for row in rows]
    with open(out / "leaderboard.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [row["arm"] for row in csv_rows] == [row["arm"] for row in rows]
    assert all(float(c["auroc"]) == pytest.approx(j["auroc"]) for c, j in zip(csv_rows, rows))
    # Default baseline: the first arm in --head x --agg x --policy order.
    [base] = [row for row in rows if row["diff"] == 0.0 and row["diff_ci"] == [0.0, 0.0]]
    assert base["arm"] == "linear/mean/softmax"


def test_ablate_baseline(ablations):
    r, out = ablations["baseline"]
    _ok(r)
    rows = {row["arm"]: row for row in _board(out)}
    assert rows["linear/max/softmax"]["diff"] == 0.0
    assert all(row["diff"] != 0.0 for arm, row in rows.items() if arm != "linear/max/softmax")
    [md_row] = [line for line in r.output.splitlines() if line.startswith("| linear/max/softmax |")]
    assert md_row.split("|")[-2].strip().startswith("+0.0000 [+0.0000, +0.0000]"), md_row
    assert "`linear/max/softmax`" in r.output


def test_ablate_jobs_2_gives_the_same_leaderboard(ablations):
    (r1, out1), (r2, out2) = ablations["jobs1"], ablations["jobs2"]
    _ok(r1), _ok(r2)
    rows1, rows2 = _board(out1), _board(out2)
    assert [row["arm"] for row in rows1] == [row["arm"] for row in rows2]
    for a, b in zip(rows1, rows2):
        for key in METRIC_NAMES:
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12, nan_ok=True), (a["arm"], key)
        assert b["auroc_ci"] == pytest.approx(a["auroc_ci"]) and b["diff"] == pytest.approx(a["diff"])


@pytest.mark.parametrize("extra, code, match", [
    (["--metric", "nope"], 2, "'nope' is not one of"),
    (["--baseline", "nope"], 1, "baseline 'nope' is not an arm: pass one of"),
], ids=["metric", "baseline"])
def test_ablate_bad_options(cache, tmp_path, extra, code, match):
    out = tmp_path / "board"
    args = ["--head", "linear,mlp", "--agg", "mean,max", "--policy", "softmax", "--max-epochs", "2", "-q"]
    line = _one_line_error(run("ablate", cache, *args, *extra, "--out", out), code)
    assert match in line, line
    if extra[0] == "--metric":
        assert all(f"'{m}'" in line for m in METRIC_NAMES), line
    if extra[0] == "--baseline":
        assert all(arm in line for arm in ARMS), line
    assert not out.exists()


# --------------------------------------------------------------------------- config file


def test_config_file_supplies_fit_head_defaults(cache, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("fit-head: {head: mlp, max-epochs: 3}\n")
    _ok(run("--config", cfg, "fit-head", cache, "--out", tmp_path / "a"))
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["head"]["head"] == "mlp" and config["train"]["max_epochs"] == 3
    assert config["history"]["epochs"] <= 3
    _ok(run("--config", cfg, "fit-head", cache, "--head", "linear", "--out", tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "config.json").read_text())["head"]["head"] == "linear"
    cfg.write_text("fit-head: {hed: mlp}\n")
    line = _one_line_error(run("--config", cfg, "fit-head", cache, "--out", tmp_path / "c"), 2)
    assert "unknown option(s) hed" in line and "'fit-head'" in line, line
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- edge cases


def test_ablate_empty_arm_list_is_a_one_line_error(cache, tmp_path):
    line = _one_line_error(run("ablate", cache, "--head", "", "--out", tmp_path / "board"), 2)
    assert "--head" in line and "names none: pass one or more of linear, mlp" in line, line


def test_ablate_repeated_arm(cache, tmp_path):
    out = tmp_path / "board"
    r = run("ablate", cache, "--head", "linear,linear", "--agg", "mean", "--policy", "softmax", "--seeds", "1",
            "--max-epochs", "2", "-q", "--out", out)
    if r.exit_code == 1:  # refusing repeated names is fine too
        assert "linear" in _one_line_error(r, 1)
        return
    _ok(r)
    rows = _board(out)
    assert [row["arm"] for row in rows] == ["linear/mean/softmax"] and rows[0]["seeds"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_head_cuda_without_gpu_is_a_one_line_error(cache, tmp_path):
    line = _one_line_error(run("fit-head", cache, "--device", "cuda", "--out", tmp_path / "run"), 1)
    assert "cuda" in line.lower()


# --------------------------------------------------------------------------- numbers at parse time

# Every numeric option of the tier-2 commands refuses NaN, ±inf and out-of-range values when the
# command line is parsed: one usage line, exit status 2, before any file is read or written.
NUMERIC_BAD = [
    ("fit-head", "--lr", "nan"), ("fit-head", "--lr", "inf"), ("fit-head", "--lr", "0"),
    ("fit-head", "--weight-decay", "nan"), ("fit-head", "--weight-decay", "-1"),
    ("fit-head", "--dropout", "1"), ("fit-head", "--dropout", "nan"), ("fit-head", "--view-dropout", "-0.1"),
    ("fit-head", "--coverage", "0"), ("fit-head", "--coverage", "inf"), ("fit-head", "--hidden", "0"),
    ("fit-head", "--depth", "-1"), ("fit-head", "--k", "0"), ("fit-head", "--batch-size", "-2"),
    ("fit-head", "--max-epochs", "0"), ("fit-head", "--patience", "0"), ("fit-head", "--threads", "-1"),
    ("fit-head", "--alpha", "nan"), ("fit-head", "--delta", "1"), ("fit-head", "--acceptance", "inf"),
    ("fit-head", "--oof-folds", "-1"), ("fit-head", "--ratios", "nan,0.1,0.15,0.15"),
    ("fit-head", "--ratios", "0.6,0.1,0.15,inf"), ("fit-head", "--l2", "1e-3,nan"), ("fit-head", "--l2", "-1"),
    ("fit-head", "--seed", "1.5"), ("fit-head", "--split-seed", "x"),
    ("ablate", "--seeds", "0"), ("ablate", "--jobs", "0"), ("ablate", "--lr", "nan"), ("ablate", "--ratios", "inf"),
    ("calibrate", "--alpha", "0"), ("calibrate", "--delta", "nan"), ("calibrate", "--target-fnr", "1"),
    ("calibrate", "--acceptance", "-inf"), ("calibrate", "--budget", "inf"),
]


@pytest.mark.parametrize("command, option, value", NUMERIC_BAD, ids=lambda v: str(v))
def test_numeric_options_are_checked_at_parse_time(cache, tmp_path, command, option, value):
    out = tmp_path / "out"
    target = {"calibrate": [tmp_path / "run"]}.get(command, [cache, "--out", out])
    line = _one_line_error(run(command, *target, option, value), 2)
    assert f"'{option}'" in line and f"'{value}'" in line and "pass " in line, line
    assert not out.exists() and not (tmp_path / "run").exists()


TIER2_COMMANDS = ("fit-head", "evaluate", "ablate", "calibrate", "report", "fit-failure", "tune-gatekeeper",
                  "cascade")


@pytest.mark.parametrize("command", TIER2_COMMANDS)
def test_every_numeric_option_has_the_checked_type(command):
    import click

    from natix.cli.common import Number, Numbers

    for p in cli.commands[command].params:
        if getattr(p, "count", False) or getattr(p, "hidden", False):  # -v: a count of flags; old spellings
            continue
        assert not isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)), (command, p.name)
        if isinstance(p.default, (int, float)) and not isinstance(p.default, bool) and not p.count:
            assert isinstance(p.type, Number), (command, p.name)
        if isinstance(p.type, Numbers):
            assert p.type.convert(p.default, p, None)  # the default passes its own check


def test_a_nan_in_the_config_file_is_refused_like_one_on_the_command_line(cache, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("fit-head: {lr: .nan}\n")
    line = _one_line_error(run("--config", cfg, "fit-head", cache, "--out", tmp_path / "run"), 2)
    assert "'--lr'" in line and "'nan' is not a finite number" in line, line
    cfg.write_text("fit-head: {ratios: [0.6, 0.1, 0.15, 0.15], max-epochs: 2}\n")
    _ok(run("--config", cfg, "fit-head", cache, "--out", tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["splits"]["ratios"] == [0.6, 0.1, 0.15, 0.15]


# --------------------------------------------------------------------------- what the data makes impossible


@pytest.mark.parametrize("args, match", [
    (["--agg", "topk", "--k", "4"], "--k 4 is more than the 3 views of the features: pass --k <= 3"),
    (["--agg", "topk", "--k", "4", "--head", "mlp"], "--k 4 is more than the 3 views of the features"),
    (["--oof-folds", "1000"], r"--oof-folds 1000 is more than the \d+ training images of class \d: pass "
                              r"--oof-folds <= \d+"),
], ids=["topk-linear", "topk-mlp", "oof-folds"])
def test_fit_head_refuses_what_the_data_makes_impossible(cache, tmp_path, args, match):
    out = tmp_path / "run"
    line = _one_line_error(run("fit-head", cache, *args, "--max-epochs", "2", "--out", out), 1)
    assert re.search(match, line), line
    assert not out.exists()


def test_fit_head_out_that_cannot_be_created(cache, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _one_line_error(run("fit-head", cache, "--out", blocker / "run", "--max-epochs", "2"), 1)
    assert f"cannot create '{blocker / 'run'}': '{blocker}' is not a directory" in line, line


def test_fit_head_out_under_a_read_only_directory(cache, tmp_path):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("this user writes into read-only directories (root)")
        line = _one_line_error(run("fit-head", cache, "--out", ro / "run", "--max-epochs", "2"), 1)
        assert f"cannot write '{ro / 'run'}': '{ro}' is not writable" in line, line
        assert not (ro / "run").exists()
    finally:
        ro.chmod(0o755)


def test_check_out_refuses_a_directory_it_cannot_write(tmp_path, monkeypatch):
    """The read-only case for a user who can write anywhere (root): the permission check is os.access."""
    import os

    from natix.errors import ConfigError
    from natix.rundir import check_out

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    with pytest.raises(ConfigError, match=re.escape(f"cannot write '{ro / 'a' / 'b'}': '{ro}' is not writable")):
        check_out(ro / "a" / "b")
    with pytest.raises(ConfigError, match=re.escape(f"cannot write '{ro}': '{ro}' is not writable")):
        check_out(ro)
    assert check_out(tmp_path / "new" / "run") == tmp_path / "new" / "run"  # to be created: fine
    assert not (tmp_path / "new").exists()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=re.escape(f"'{tmp_path / 'dangling'}' is not a directory")):
        check_out(tmp_path / "dangling" / "run")
    (tmp_path / "file").write_text("")
    assert check_out(tmp_path / "existing-folder-is-fine", run=False)
    with pytest.raises(ConfigError, match=re.escape(f"cannot create '{tmp_path / 'file'}'")):
        check_out(tmp_path / "file", run=False)


@pytest.mark.parametrize("flag, value", [("--lr", "1e308"), ("--weight-decay", "1e308"), ("--hidden", "1000000000000"),
                                         ("--depth", "100")])
def test_absurd_sizes_and_rates_are_refused_at_parse_time(cache, tmp_path, flag, value):
    line = _one_line_error(run("fit-head", cache, "--head", "mlp", flag, value, "--out", tmp_path / "run"), 2)
    assert f"'{value}' is out of range" in line, line
    assert not (tmp_path / "run").exists()
