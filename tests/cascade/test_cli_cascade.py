import json

import pytest
import torch
import xgboost
from click.testing import CliRunner

from natix.cache.synthetic import make_synthetic_cache
from natix.cli import cli
from natix.heads.runs import fit_run
from natix.heads.train import HeadConfig, TrainConfig


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli-cascade")
    cache = make_synthetic_cache(root / "cache", n=900, n_views=3, dim=16, strength=2.0, seed=1)
    train = TrainConfig(lr=1e-2, batch_size=64, max_epochs=8, threads=1)
    fit_run(cache, root / "stage1", head=HeadConfig(agg="mean"), train=train, oof_folds=2)
    fit_run(cache, root / "stage2", head=HeadConfig(agg="max"), train=train)
    yield root
    torch.set_num_threads(old)


@pytest.mark.parametrize("model", ["xgboost", "mlp"])
def test_fit_failure_prints_the_comparison_and_stores_the_predictor(cli_runs, model):
    r = CliRunner().invoke(cli, ["fit-failure", str(cli_runs / "stage1"), "--model", model, "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "max probability" in r.output and f"failure predictor ({model})" in r.output and "AUROC_f" in r.output
    meta = json.loads((cli_runs / "stage1" / "failure.json").read_text())
    assert meta["trained_on"] == "train_oof" and (cli_runs / "stage1" / "failure.safetensors").is_file()
    r = CliRunner().invoke(cli, ["fit-failure", str(cli_runs / "stage1"), "--model", model, "--threads", "1", "--json"])
    res = json.loads(r.stdout)
    assert set(res["confidences"]) == {"max probability", f"failure predictor ({model})"}


def test_fit_failure_without_oof_predictions_is_a_one_line_error(cli_runs):
    r = CliRunner().invoke(cli, ["fit-failure", str(cli_runs / "stage2")])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "--oof-folds" in r.output


def test_tune_gatekeeper_writes_one_run_per_loss_weight(cli_runs, tmp_path):
    r = CliRunner().invoke(cli, ["tune-gatekeeper", str(cli_runs / "stage1"), "--loss-weights", "0.3,0.9", "--epochs", "3",
                                 "--threads", "1",
                                 "--stage2", str(cli_runs / "stage2"), "--out", str(tmp_path / "gk")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "gk" / "alpha-0.3" / "model.safetensors").is_file()
    assert (tmp_path / "gk" / "alpha-0.9" / "predictions" / "val_test.npz").is_file()
    lines = [line for line in r.output.splitlines() if line.strip().startswith(("0.30", "0.90"))]
    assert len(lines) == 2 and all(-1.0 <= float(line.split()[4]) <= 1.0 for line in lines)  # s_d
    for bad in (["--loss-weights", "x"], ["--loss-weights", "1.5"]):
        r = CliRunner().invoke(cli, ["tune-gatekeeper", str(cli_runs / "stage1"), *bad, "--out", str(tmp_path / "b")])
        assert r.exit_code in (1, 2) and r.output.count("\n") == 1


def test_fit_failure_threads_reach_xgboost(cli_runs, monkeypatch):
    # The default (every core) gives the same numbers: tests/cascade/test_failure.py compares them on
    # smaller fits, since 200 trees on every core of a busy machine take seconds.
    n_jobs, fit = [], xgboost.XGBClassifier.fit

    def spy(self, *args, **kwargs):
        n_jobs.append(self.get_params()["n_jobs"])
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(xgboost.XGBClassifier, "fit", spy)
    r = CliRunner().invoke(cli, ["fit-failure", str(cli_runs / "stage1"), "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert n_jobs == [1]
    assert json.loads((cli_runs / "stage1" / "failure.json").read_text())["params"]["threads"] == 1
    assert {p.name: p.default for p in cli.commands["fit-failure"].params}["threads"] == 0  # every core


def test_tune_gatekeeper_threads_reach_torch_and_change_no_result(cli_runs, tmp_path, threads_in_steps):
    from natix.heads.config import available_cores

    rows, seen = {}, {}
    for name, extra in (("one", ["--threads", "1"]), ("default", [])):
        threads_in_steps.clear()
        r = CliRunner().invoke(cli, ["tune-gatekeeper", str(cli_runs / "stage1"), "--loss-weights", "0.5", "--epochs", "2",
                                     "--json", "--out", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        rows[name], seen[name] = json.loads(r.stdout)[0], {torch_threads for torch_threads, _ in threads_in_steps}
    assert seen == {"one": {1}, "default": {available_cores()}}
    for key in ("accuracy", "auroc_f", "overlap"):
        assert rows["one"][key] == pytest.approx(rows["default"][key], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("command", ["fit-failure", "tune-gatekeeper"])
def test_negative_threads_is_a_one_line_usage_error(cli_runs, tmp_path, command):
    out = ["--out", str(tmp_path / "out")] if command == "tune-gatekeeper" else []
    r = CliRunner().invoke(cli, [command, str(cli_runs / "stage1"), "--threads", "-1", *out])
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "'-1' is out of range: pass an integer >= 0" in r.output and "--threads" in r.output
    assert not (tmp_path / "out").exists()  # refused before any work


def _one_line_error(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # status lines ("loading ...") may come first
    return errors[0]


@pytest.mark.parametrize("stage2", ["stage1", "stage1/", "stage2/../stage1"])
def test_cascade_refuses_the_same_run_as_both_stages(cli_runs, stage2):
    out = cli_runs / "same-run"
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / stage2),
                                 "--budget", "0.2", "--out", str(out)])
    line = _one_line_error(r, 1)
    assert f"--stage1 and --stage2 are the same run '{cli_runs / 'stage1'}'" in line, line
    assert not out.exists()


def test_cascade_out_that_cannot_be_created(cli_runs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / "stage2"),
                                 "--budget", "0.2", "--out", str(blocker / "c")])
    assert f"cannot create '{blocker / 'c'}': '{blocker}' is not a directory" in _one_line_error(r, 1)


@pytest.mark.parametrize("command, option, value", [
    ("cascade", "--alpha", "nan"), ("cascade", "--alpha", "0"), ("cascade", "--delta", "inf"),
    ("cascade", "--target-risk", "nan"),  # the old spelling of --alpha is checked alike
    ("cascade", "--budget", "1"), ("fit-failure", "--seed", "0.5"), ("fit-failure", "--threads", "-1"),
    ("tune-gatekeeper", "--loss-weights", "0.5,nan"), ("tune-gatekeeper", "--loss-weights", "0,0.5"),
    ("tune-gatekeeper", "--alpha", "0,0.5"),
    ("tune-gatekeeper", "--epochs", "0"), ("tune-gatekeeper", "--threads", "-1"),
])
def test_cascade_numeric_options_are_checked_at_parse_time(cli_runs, tmp_path, command, option, value):
    out = tmp_path / "out"
    where = (["--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / "stage2")] if command == "cascade"
             else [str(cli_runs / "stage1")])
    extra = [] if command == "fit-failure" else ["--out", str(out)]
    line = _one_line_error(CliRunner().invoke(cli, [command, *where, *extra, option, value]), 2)
    assert f"'{option}'" in line and f"'{value}'" in line, line
    assert not out.exists()


# --------------------------------------------------------------------------- --stage3, --force, renamed options


def test_stage3_module_is_found_in_the_current_folder(cli_runs, tmp_path, monkeypatch):
    """`natix` (the console script) has no current folder on sys.path: --stage3 still finds a module there."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "cwd_stage", raising=False)
    (tmp_path / "cwd_stage.py").write_text("def predict(images):\n    return [0.25] * len(images)\n")
    path_before = list(sys.path)
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / "stage2"),
                                 "--stage3", "cwd_stage:predict", "--budget", "0.5", "--out", str(tmp_path / "c3"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["stages"][-1] == "cwd_stage:predict" and doc["metrics"]["deferral"][-1] > 0
    assert sys.path == path_before  # the folder was on the path for that import only
    sys.modules.pop("cwd_stage", None)
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / "stage2"),
                                 "--stage3", "no_such_stage:predict", "--budget", "0.5", "--out", str(tmp_path / "c4")])
    assert "put it in the current folder or on PYTHONPATH" in _one_line_error(r, 1)


def test_cascade_force(cli_runs, tmp_path):
    args = ["cascade", "--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / "stage2"),
            "--out", str(tmp_path / "c")]
    first = json.loads(CliRunner().invoke(cli, [*args, "--budget", "0.3", "--json"]).stdout)
    line = _one_line_error(CliRunner().invoke(cli, [*args, "--budget", "0.3"]), 1)
    assert f"'{tmp_path / 'c'}' already holds a natix cascade: pass --force to replace it" in line, line
    r = CliRunner().invoke(cli, [*args, "--budget", "0.6", "--force", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["router"]["budget"] == 0.6 != first["router"]["budget"]
    assert json.loads((tmp_path / "c" / "cascade.json").read_text())["router"]["budget"] == 0.6


def test_cascade_alpha_is_the_risk_level_and_target_risk_its_old_name(cli_runs, tmp_path):
    base = ["cascade", "--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / "stage2"), "--delta", "0.2",
            "--json"]
    new = CliRunner().invoke(cli, [*base, "--alpha", "0.2", "--out", str(tmp_path / "new")])
    old = CliRunner().invoke(cli, [*base, "--target-risk", "0.2", "--out", str(tmp_path / "old")])
    assert new.exit_code == 0 and old.exit_code == 0, old.output
    assert new.stderr == "" and old.stderr == ("Warning: --target-risk is deprecated and goes away in the next "
                                               "release: use --alpha\n")
    docs = [json.loads(r.stdout) for r in (new, old)]
    assert docs[0]["router"] == docs[1]["router"] and docs[0]["router"]["target_risk"] == 0.2
    assert "--target-risk" not in CliRunner().invoke(cli, ["cascade", "--help"]).output
    for order in (["--alpha", "0.2", "--target-risk", "0.3"], ["--target-risk", "0.3", "--alpha", "0.2"]):
        r = CliRunner().invoke(cli, [*base, *order, "--out", str(tmp_path / "both")])
        assert "--target-risk is the old name of --alpha: pass --alpha only" in _one_line_error(r, 2)
        assert not (tmp_path / "both").exists()


def test_tune_gatekeeper_alpha_is_the_old_name_of_loss_weights(cli_runs, tmp_path, monkeypatch):
    seen = []

    def grid(run, out, weights, **options):
        seen.append(tuple(weights))
        return []

    monkeypatch.setattr("natix.cascade.gatekeeper.tune_gatekeeper_grid", grid)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("tune-gatekeeper: {alpha: [0.2, 0.4]}\n")
    for args in (["--loss-weights", "0.3"], ["--alpha", "0.6,0.7"], ["--config", str(cfg)],
                 ["--config", str(cfg), "--loss-weights", "0.8"], []):
        config, rest = (args[:2], args[2:]) if args[:1] == ["--config"] else ([], args)
        r = CliRunner().invoke(cli, [*config, "tune-gatekeeper", str(cli_runs / "stage1"), *rest, "--json"])
        assert r.exit_code == 0, r.output
        assert ("deprecated" in r.stderr) == ("--alpha" in args or "--config" in args), r.stderr
    assert seen == [(0.3,), (0.6, 0.7), (0.2, 0.4), (0.8,), (0.1, 0.3, 0.5, 0.7, 0.9)]  # the flag beats the file


@pytest.mark.parametrize("extra, got", [([], "neither"), (["--alpha", "0.1", "--budget", "0.2"], "both")])
def test_cascade_needs_alpha_or_budget(cli_runs, tmp_path, extra, got):
    r = CliRunner().invoke(cli, ["cascade", "--stage1", str(cli_runs / "stage1"), "--stage2", str(cli_runs / "stage2"),
                                 "--out", str(tmp_path / "c"), *extra])
    line = _one_line_error(r, 2)
    assert f"pass exactly one of --alpha (certified thresholds) or --budget (a deferral budget), got {got}" in line
    assert not (tmp_path / "c").exists()
