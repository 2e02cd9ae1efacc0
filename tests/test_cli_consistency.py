"""What every natix command does alike: choices from the registries (listed in --help, checked at
parse time, completed by the shell), --json on every command that prints a result, --force
before replacing a run, a leaderboard or a bundle, Ctrl-C as exit status 130 with one line saying
what was kept, and renamed options that keep their old spelling for one release."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from natix.cli import cli
from natix.cli.common import BUILTIN_CALIBRATORS, BUILTIN_EXIT_RULES, LazyChoice, Names

# Every command that prints a result: each takes --json (tests elsewhere parse the output of the
# older ones; the newer ones are parsed below).
RESULT_COMMANDS = [["extract"], ["cache", "ls"], ["cache", "info"], ["cache", "verify"], ["fit-head"], ["evaluate"],
                   ["ablate"], ["calibrate"], ["report"], ["fit-failure"], ["tune-gatekeeper"], ["cascade"],
                   ["export"], ["predict"], ["finetune"]]


def run(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _one_line_error(result, code, prefix="Error: "):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # status lines may come first
    return errors[0]


def _commands():
    """(path, command) of every natix command, sub-commands of `natix cache` included."""
    out = []
    for name, cmd in sorted(cli.commands.items()):
        if isinstance(cmd, click.Group):
            out += [([name, sub], c) for sub, c in sorted(cmd.commands.items())]
        else:
            out.append(([name], cmd))
    return out


def _choice_options():
    """(command path, option, its choices, whether it takes comma-separated names) of every option
    whose values are a fixed list."""
    found = []
    for path, cmd in _commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden and isinstance(p.type, (click.Choice, Names)):
                choice = p.type.choice if isinstance(p.type, Names) else p.type
                found.append((path, p.opts[0], list(choice.choices), isinstance(p.type, Names)))
    return found


CHOICES = _choice_options()
CHOICE_IDS = [" ".join([*path, option]) for path, option, _, _ in CHOICES]


def test_the_registries_are_choices_everywhere():
    options = {(" ".join(path), opt) for path, opt, _, _ in CHOICES}
    assert {("fit-head", "--head"), ("fit-head", "--agg"), ("fit-head", "--policy"), ("ablate", "--head"),
            ("ablate", "--agg"), ("ablate", "--policy"), ("ablate", "--metric"), ("calibrate", "--method"),
            ("calibrate", "--exit"), ("finetune", "--head"), ("finetune", "--agg"), ("finetune", "--challenge"),
            ("extract", "--challenge"), ("fit-failure", "--model")} <= options


@pytest.mark.parametrize("path, option, choices, listed", CHOICES, ids=CHOICE_IDS)
def test_help_lists_the_values_of_every_choice(path, option, choices, listed):
    out = _ok(run(*path, "--help")).output
    assert f"{option} [{'|'.join(choices)}]" + (",..." if listed else "") in out, out


@pytest.mark.parametrize("path, option, choices, listed", CHOICES, ids=CHOICE_IDS)
def test_a_value_outside_the_choices_is_one_usage_line(path, option, choices, listed, tmp_path):
    cmd = cli.commands[path[0]] if len(path) == 1 else cli.commands[path[0]].commands[path[1]]
    args = [str(tmp_path / "x") for p in cmd.params if isinstance(p, click.Argument)]
    bad = f"{choices[0]},nope" if listed else "nope"
    line = _one_line_error(run(*path, *args, option, bad), 2)
    assert f"'{option}'" in line and "'nope'" in line and "is not one of" in line, line
    assert all(f"'{c}'" in line for c in choices), line
    assert not (tmp_path / "x").exists()


def test_the_names_listed_without_scikit_learn_are_the_registries():
    """calibrate's --help must not import scikit-learn, so the CLI names the built-in calibrators
    and exit rules itself: they must be exactly what natix.calibrate registers."""
    from natix.calibrate import CALIBRATORS, EXIT_RULES
    from natix.cascade.failure import MODELS
    from natix.cli.cascade import FAILURE_MODELS

    assert list(BUILTIN_CALIBRATORS) == list(CALIBRATORS) and list(BUILTIN_EXIT_RULES) == list(EXIT_RULES)
    assert set(FAILURE_MODELS) == set(MODELS)


def test_a_name_registered_at_run_time_is_a_valid_choice(monkeypatch):
    """A head or exit rule a user registers before calling the CLI is listed and accepted."""
    import natix.calibrate.exits  # noqa: F401  (loaded: its registry is read, not the built-in names alone)
    from natix.registry import Registry

    heads, exits = Registry("head"), Registry("exit rule")
    for registry, name in ((heads, "mine"), (exits, "my-exit")):
        registry.register(name)(lambda: None)
    monkeypatch.setattr("natix.heads.registry.HEADS", heads)
    monkeypatch.setattr("natix.calibrate.exits.EXIT_RULES", exits)
    head = next(p.type for p in cli.commands["fit-head"].params if p.name == "head")
    exit_rule = next(p.type for p in cli.commands["calibrate"].params if p.name == "exit_rule")
    assert head.choices == ("linear", "mlp", "mine") and head.convert("mine", None, None) == "mine"
    assert exit_rule.choices == ("none", *BUILTIN_EXIT_RULES, "my-exit")


def test_lazy_choice_reads_its_names_when_asked():
    names = ["a"]
    choice = LazyChoice(lambda: names)
    names.append("b")
    assert choice.choices == ("a", "b") and choice.convert("b", None, None) == "b"
    with pytest.raises(click.BadParameter, match="'c' is not one of 'a', 'b'"):
        choice.convert("c", None, None)


def test_names_convert_check_and_complete():
    names = Names(LazyChoice(lambda: ["linear", "mlp", "max"]))
    assert names.convert("linear, mlp", None, None) == ("linear", "mlp")
    assert names.convert(["mlp", "linear"], None, None) == ("mlp", "linear")  # a list from a --config file
    for bad, why in (("linear,cnn", "'cnn' in 'linear,cnn' is not one of 'linear', 'mlp', 'max'"),
                     (" , ", "names none: pass one or more of linear, mlp, max")):
        with pytest.raises(click.BadParameter, match=why):
            names.convert(bad, None, None)
    assert [c.value for c in names.shell_complete(None, None, "linear,m")] == ["linear,mlp", "linear,max"]
    assert [c.value for c in names.shell_complete(None, None, "")] == ["linear", "mlp", "max"]


def test_shell_completion_offers_the_registry_names():
    from click.shell_completion import ShellComplete

    complete = ShellComplete(cli, {}, "natix", "_NATIX_COMPLETE")
    assert [c.value for c in complete.get_completions(["fit-head", "--agg"], "g")] == ["global", "gated-attention"]
    assert [c.value for c in complete.get_completions(["calibrate", "--method"], "")] == list(BUILTIN_CALIBRATORS)
    assert [c.value for c in complete.get_completions(["ablate", "--head"], "linear,")] == ["linear,linear",
                                                                                           "linear,mlp"]


# --------------------------------------------------------------------------- --json


@pytest.mark.parametrize("path", RESULT_COMMANDS, ids=" ".join)
def test_every_command_that_prints_a_result_takes_json(path):
    cmd = cli.commands[path[0]] if len(path) == 1 else cli.commands[path[0]].commands[path[1]]
    assert any("--json" in getattr(p, "opts", ()) for p in cmd.params)
    assert "--json" in _ok(run(*path, "--help")).output


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A synthetic cache and a run fitted on it."""
    from natix.cache.synthetic import make_synthetic_cache

    root = tmp_path_factory.mktemp("consistency")
    cache = make_synthetic_cache(root / "cache", n=200, n_views=2, dim=8, strength=4.0)
    _ok(run("fit-head", cache, "--max-epochs", "2", "--out", root / "run", "--threads", "1"))
    return cache, root / "run"


def test_report_and_cache_verify_print_json(fitted, tmp_path):
    cache, run_dir = fitted
    res = json.loads(_ok(run("report", run_dir, "--out", tmp_path / "report", "--json")).stdout)
    assert Path(res["report"]).is_file() and len(res["plots"]) == 4
    assert all(Path(p["png"]).is_file() and Path(p["numbers"]).is_file() for p in res["plots"])
    res = json.loads(_ok(run("cache", "verify", cache, "--json")).stdout)
    assert res["ok"] is True and res["problems"] == [] and res["images"] == 200


def test_cache_verify_json_of_a_damaged_cache_exits_1(fitted, tmp_path):
    import shutil

    import h5py

    damaged = Path(shutil.copy(fitted[0], tmp_path / fitted[0].name))
    with h5py.File(damaged, "r+") as f:
        f["features"][0, 0, 0] = np.float16(np.nan)
    r = run("cache", "verify", damaged, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["ok"] is False
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr


# --------------------------------------------------------------------------- --force


def test_fit_head_refuses_an_existing_run_without_force(fitted, tmp_path):
    import shutil

    cache, original = fitted
    out = Path(shutil.copytree(original, tmp_path / "run"))
    before = (out / "model.safetensors").read_bytes()
    line = _one_line_error(run("fit-head", cache, "--out", out, "--max-epochs", "2", "--seed", "7"), 1)
    assert f"'{out}' already holds a natix run: pass --force to replace it, or a new --out" in line, line
    assert (out / "model.safetensors").read_bytes() == before
    res = json.loads(_ok(run("fit-head", cache, "--out", out, "--max-epochs", "2", "--seed", "7", "--force",
                             "--json")).stdout)
    assert res["out"] == str(out) and json.loads((out / "config.json").read_text())["train"]["seed"] == 7


def test_force_never_replaces_what_natix_did_not_write(fitted, tmp_path):
    cache, run_dir = fitted
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for args in (["fit-head", cache], ["ablate", cache, "--head", "linear", "--agg", "mean", "--policy", "softmax"],
                 ["cascade", "--stage1", run_dir, "--stage2", run_dir, "--budget", "0.5"]):
        line = _one_line_error(run(*args, "--out", foreign, "--force"), 1)
        assert f"'{foreign}' exists and is not a natix" in line and "--force replaces only" in line, line
        assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_ablate_json_and_force(fitted, tmp_path):
    cache, _ = fitted
    args = ["ablate", cache, "--head", "linear", "--agg", "mean,max", "--policy", "softmax", "--seeds", "1",
            "--max-epochs", "2", "--threads", "1", "-q", "--out", tmp_path / "board"]
    res = json.loads(_ok(run(*args, "--json")).stdout)
    assert {r["arm"] for r in res["rows"]} == {"linear/mean/softmax", "linear/max/softmax"}
    assert res["meta"]["seeds"] == 1 and Path(res["out"]) == tmp_path / "board"
    line = _one_line_error(run(*args), 1)
    assert "already holds a natix leaderboard: pass --force" in line, line
    _ok(run(*args, "--metric", "auroc", "--force"))
    assert json.loads((tmp_path / "board" / "leaderboard.json").read_text())["rows"][0]["auroc_ci"]


# --------------------------------------------------------------------------- finetune --out


@pytest.fixture
def fake_finetune(monkeypatch):
    """natix.finetune.train.finetune replaced by a stub that records --out's content when called."""
    calls = []

    def finetune(data, backbone, out, **kwargs):
        calls.append(sorted(p.name for p in Path(out).iterdir()) if Path(out).is_dir() else None)
        raise KeyboardInterrupt

    monkeypatch.setattr("natix.finetune.train.finetune", finetune)
    return calls


def _finetune(out, *extra):
    return run("finetune", "data", "--backbone", "bb", "--out", out, *extra)


def test_finetune_out_rules(fake_finetune, tmp_path):
    done, stopped, foreign = tmp_path / "done", tmp_path / "stopped", tmp_path / "foreign"
    for folder, name in ((done, "config.json"), (stopped, "checkpoint.pt"), (foreign, "notes.txt")):
        folder.mkdir()
        (folder / name).write_text("{}")
    assert "already holds a natix fine-tuning run: pass --force" in _one_line_error(_finetune(done), 1)
    line = _one_line_error(_finetune(stopped), 1)
    assert "checkpoint of an interrupted run: pass --resume to continue it, --force to start over" in line, line
    assert "exists and is not a natix fine-tuning run" in _one_line_error(_finetune(foreign, "--force"), 1)
    assert "pass one of them" in _one_line_error(_finetune(stopped, "--force", "--resume"), 2)
    assert fake_finetune == []  # nothing started
    _finetune(done, "--force")
    _finetune(stopped, "--resume")
    assert fake_finetune == [[], ["checkpoint.pt"]]  # --force removed the old run; --resume keeps the checkpoint
    assert (foreign / "notes.txt").read_text() == "{}"


def test_ctrl_c_in_finetune_says_how_to_continue(fake_finetune, tmp_path):
    r = _finetune(tmp_path / "new")
    line = _one_line_error(r, 130, prefix="Interrupted: ")
    assert f"no checkpoint was written yet in {tmp_path / 'new'}: rerun to start again" in line
    (tmp_path / "new").mkdir(exist_ok=True)
    (tmp_path / "new" / "checkpoint.pt").write_bytes(b"")
    line = _one_line_error(_finetune(tmp_path / "new", "--resume"), 130, prefix="Interrupted: ")
    assert "the last checkpoint in" in line and "with --resume to continue" in line, line


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("natix.heads.runs.evaluate_run", stopped)
    line = _one_line_error(run("evaluate", tmp_path), 130, prefix="Interrupted: ")
    assert line == "Interrupted: natix evaluate stopped by Ctrl-C"


def test_ctrl_c_in_extract_counts_the_images_kept_for_the_rerun(monkeypatch, tmp_path):
    from natix.cache.store import CacheWriter, Rows

    identity = {"extractor_version": 1, "backbone": {"weights_sha256": "0" * 64}, "store_dtype": "float16"}
    table = [{"name": "global", "box": [0, 0, 1, 1], "flip": False}]
    root = tmp_path / "caches"

    def rows(start, n):
        ids = [f"{i:064x}" for i in range(start, start + n)]
        return Rows(ids, [f"/img/{i}.jpg" for i in ids], [1] * n, [""] * n, [(10, 20)] * n)

    def chunks(ident, starts):
        with CacheWriter(root, ident, table, dim=3) as w:
            for start, n in starts:
                w.add_part(np.zeros((n, 1, 3), np.float16), rows(start, n), [])
            return w.path

    # Another cache, interrupted long ago: its chunks are not this run's.
    other = chunks({**identity, "extractor_version": 2}, [(900, 4)])
    old = time.time() - 3600
    os.utime(other.with_name(other.name + ".lock"), (old, old))

    def interrupted(*args, **kwargs):
        chunks(identity, [(0, 3), (10, 2)])  # two finished chunks, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr("natix.extract.extractor.extract", interrupted)
    r = run("extract", tmp_path / "images", "--backbone", "bb", "--cache", root)
    line = _one_line_error(r, 130, prefix="Interrupted: ")
    assert line.startswith("Interrupted: rerun the same command to resume (5 images kept in finished chunks of ")
    assert other.name not in line


def test_ctrl_c_in_extract_before_any_chunk(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("natix.extract.extractor.extract", interrupted)
    r = run("extract", tmp_path / "images", "--backbone", "bb", "--cache", tmp_path / "none")
    assert _one_line_error(r, 130, prefix="Interrupted: ") == ("Interrupted: rerun the same command to resume "
                                                               "(0 images kept)")
