"""Cascade commands: `fit-failure`, `tune-gatekeeper`, `cascade`."""

from __future__ import annotations

from pathlib import Path

import click

from natix.cli.common import (
    COUNT,
    LEVEL,
    SEED,
    THREADS,
    Number,
    Numbers,
    comma_names,
    echo_result,
    force_option,
    json_option,
    opened,
    renamed_option,
    take_renamed,
    under_line,
    under_option,
)
from natix.cli.group import cli, library_errors

FAILURE_COLUMNS = ("auroc_f", "fpr_at_95_tpr", "augrc")
# natix.cascade.failure.MODELS, named here because that module imports scikit-learn (too slow for --help);
# tests/test_cli_consistency.py keeps the two equal.
FAILURE_MODELS = ("xgboost", "mlp")
# Gatekeeper loss weights α weigh the cross-entropy on correct answers (1 − α the KL on wrong ones): (0, 1].
LOSS_WEIGHTS = Numbers(Number(min=0, max=1, min_open=True), what="comma-separated Gatekeeper loss weights",
                       example="0.1,0.5,0.9")


def failure_table(run, model: str, res: dict) -> str:
    """`natix fit-failure` as text: each confidence's failure-detection metrics with 95% CIs."""
    lines = [f"{run}: failure predictor ({model}) -> failure.json, failure.safetensors; val_test, "
             f"{res['n']} rows, error rate {res['error_rate']:.4f} (95% bootstrap CIs, fractions)",
             *under_line(res.get("under")),
             f"{'confidence':<28}{'AUROC_f':>26}{'FPR@95%TPR':>26}{'AUGRC':>26}"]
    for name, m in res["confidences"].items():
        cells = "".join(f"{m[k]['estimate']:>9.4f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]" for k in FAILURE_COLUMNS)
        lines.append(f"{name:<28}{cells}")
    return "\n".join(lines)


@cli.command("fit-failure")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--model", type=click.Choice(FAILURE_MODELS), default="xgboost", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--threads", type=THREADS, default=0, show_default=True,
              help="CPU threads (torch, BLAS and XGBoost); 0 = every available core.")
@under_option("Calibrate and compare on this cache of the run's images (e.g. validator-e1 draws); the predictor "
              "still trains on the run's stored out-of-fold predictions.")
@json_option
@library_errors
def fit_failure(run, model, seed, threads, under, as_json) -> None:
    """Train a failure predictor on a run's out-of-fold predictions; compare it on val_test."""
    from natix.cascade.failure import fit_failure_run

    res = fit_failure_run(opened(run, under), model=model, seed=seed, threads=threads)
    echo_result(as_json, res, lambda res: failure_table(run, model, res))


def gatekeeper_table(run, rows: list[dict]) -> str:
    """`natix tune-gatekeeper` as text: one line per loss weight (`alpha` of the rows)."""
    lines = [f"Gatekeeper on {run} (val_test; recalibrated with Platt on val_calib; fractions)",
             f"{'weight':>6}{'accuracy':>10}{'AUROC_f':>9}{'overlap':>9}{'s_d':>8}  run"]
    for r in rows:
        sd = "-" if r["s_d"] is None or r["s_d"] != r["s_d"] else f"{r['s_d']:.4f}"  # None or NaN: undefined
        lines.append(f"{r['alpha']:>6.2f}{r['accuracy']:>10.4f}{r['auroc_f']:>9.4f}{r['overlap']:>9.4f}{sd:>8}  "
                     f"{r['out']}")
    return "\n".join(lines)


@cli.command("tune-gatekeeper")
@click.argument("run", type=click.Path(file_okay=False))
@renamed_option("--alpha", "--loss-weights", LOSS_WEIGHTS)
@click.option("--loss-weights", type=LOSS_WEIGHTS, default="0.1,0.3,0.5,0.7,0.9", show_default=True,
              callback=take_renamed,
              help="Comma-separated Gatekeeper loss weights α: α weighs the cross-entropy on correct answers, "
                   "1 − α the KL to uniform on wrong ones; one tuned run each (alpha-<α>, 'alpha' in --json).")
@click.option("--stage2", type=click.Path(file_okay=False), default=None, help="A stronger run, for s_d.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for the tuned runs "
              "[default: RUN-gatekeeper].")
@click.option("--epochs", type=COUNT, default=30, show_default=True)
@click.option("--threads", type=THREADS, default=0, show_default=True,
              help="CPU threads (torch and BLAS); 0 = every available core.")
@json_option
@library_errors
def tune_gatekeeper(run, loss_weights, stage2, out, epochs, threads, as_json) -> None:
    """Fine-tune a run's head with the Gatekeeper loss for each loss weight; save each as a new run."""
    from natix.cascade.gatekeeper import tune_gatekeeper_grid

    out = out or f"{str(run).rstrip('/')}-gatekeeper"
    rows = tune_gatekeeper_grid(run, out, loss_weights, stage2=stage2, epochs=epochs, threads=threads)
    echo_result(as_json, rows, lambda rows: gatekeeper_table(run, rows))


def cascade_text(res: dict) -> str:
    """`natix cascade` as text, from what `cascade_run` returns."""
    from natix.calibrate.report import rounded

    gf = res["compute"].get("expected_gflops")
    compute = (f"{gf:.3f} GFLOPs (expected over the routing)" if isinstance(gf, (int, float))
               else "unknown (synthetic or unrecognised backbone)")
    return "\n".join([
        f"cascade ({res['mode']}) -> {res['out']}/cascade.json, cascade_curve.csv, cascade_curve.png",
        "thresholds per stage: " + ", ".join(rounded(t) for t in res["thresholds"]),
        f"val_test ({res['n']} images; fractions): accuracy {res['accuracy']:.4f}, MCC {res['mcc']:.4f}, "
        f"reward_ordered {res['reward_ordered']:.4f} (validator windows over val_test in stored order)",
        "reaching stage 2, 3, ...: " + ", ".join(f"{d:.4f}" for d in res["deferral"]),
        f"compute per image: {compute}",
        f"guarantee: {res['calibration']['guarantee']}",
        *under_line(res["document"]["under"][0])])


@cli.command("cascade")
@click.option("--stage1", required=True, type=click.Path(file_okay=False), help="Cheap run (always runs).")
@click.option("--stage2", required=True, type=click.Path(file_okay=False), help="Stronger run.")
@click.option("--stage3", default=None,
              help="External model as module:function (images -> probabilities), found in the current folder or on "
                   "PYTHONPATH.")
@renamed_option("--target-risk", "--alpha", LEVEL)
@click.option("--alpha", type=LEVEL, default=None, callback=take_renamed,
              help="Risk level: certified selective risk per stage (LTT), as calibrate's --alpha.")
@click.option("--delta", type=LEVEL, default=0.1, show_default=True, help="LTT failure probability.")
@click.option("--budget", type=LEVEL, default=None, help="Max fraction deferred past each stage (best reward).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="[default: STAGE1/cascade]")
@force_option("natix cascade")
@click.option("--under", default=None,
              help="Two caches, comma-separated: stage 1's and stage 2's caches of the same images under the same "
                   "challenge (same recipe, seed and draws); thresholds are certified on those scores.")
@json_option
@library_errors
def cascade(stage1, stage2, stage3, alpha, delta, budget, out, force, under, as_json) -> None:
    """Choose exit thresholds for a 2-3 stage cascade on val_calib; report it on val_test."""
    from natix.cascade.evaluation import cascade_run
    from natix.rundir import check_replace

    if (alpha is None) == (budget is None):  # named as this command spells them (the library says target_risk)
        raise click.UsageError(f"pass exactly one of --alpha (certified thresholds) or --budget (a deferral budget), "
                               f"got {'both' if alpha is not None else 'neither'}")
    out = out or str(Path(stage1) / "cascade")
    check_replace(out, force=force, what="natix cascade", ours=lambda p: (p / "cascade.json").is_file())

    if under is not None:
        caches = comma_names(under)
        if len(caches) != 2:
            raise click.BadParameter(f"needs two caches (stage 1's,stage 2's), got {len(caches)}", param_hint="--under")
        stage1, stage2 = opened(stage1, caches[0]), opened(stage2, caches[1])
    res = cascade_run(stage1, stage2, stage3=stage3, target_risk=alpha, delta=delta, budget=budget, out=out)
    # --json: exactly the cascade.json the run wrote
    echo_result(as_json, res["document"], lambda _: cascade_text(res))
