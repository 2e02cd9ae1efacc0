"""Tier-2 head commands: `fit-head`, `evaluate`, `ablate`."""

from __future__ import annotations

from pathlib import Path

import click

from natix.cli.calibrate import calibration_summary
from natix.cli.common import (
    AGGREGATOR,
    COUNT,
    HEAD,
    LEVEL,
    METRIC,
    POLICY,
    SEED,
    THREADS,
    LazyChoice,
    Names,
    Number,
    Numbers,
    comma_names,
    echo_json,
    echo_result,
    force_option,
    json_option,
    names_in,
)
from natix.cli.group import cli, library_errors

TABLE_METRICS = ("n", "accuracy", "mcc", "auroc", "nll", "ece", "augrc", "reward_ordered", "reward_expected")
TABLE_SPLITS = ("train", "val_select", "val_calib", "val_test", "train_oof")
RATE = Number(min=0, max=1, max_open=True)  # dropout
L2 = Numbers(Number(min=0), what="comma-separated L2 penalties", example="1e-3,1e-2")
RATIOS = Numbers(Number(min=0, max=1, min_open=True), count=4, what="four comma-separated fractions",
                 example="0.6,0.1,0.15,0.15")
# fit-head's policies: the heads' own, and scrc (a softmax head, then Platt and an SCRC exit).
FIT_POLICY = LazyChoice(lambda: [*POLICY.choices, "scrc"])


def head_options(fn):
    """Options shared by fit-head and ablate: the model's hyperparameters and the training."""
    opts = [
        click.option("--hidden", type=Number(min=1, max=65536, integer=True), default=256, show_default=True,
                     help="MLP width."),
        click.option("--depth", type=Number(min=0, max=64, integer=True), default=1, show_default=True,
                     help="MLP hidden layers."),
        click.option("--dropout", type=RATE, default=0.1, show_default=True),
        click.option("--k", "topk", type=COUNT, default=2, show_default=True,
                     help="Views averaged by the topk aggregator (at most the views of the cache)."),
        click.option("--view-embedding/--no-view-embedding", default=False, show_default=True,
                     help="Learned view-position embedding."),
        click.option("--view-dropout", type=RATE, default=0.0, show_default=True, help="Training-time view dropout."),
        click.option("--coverage", type=Number(min=0, max=1, min_open=True), default=0.8, show_default=True,
                     help="Gate policy: target coverage."),
        click.option("--optimizer", type=names_in("natix.heads.config", "OPTIMIZERS"), default="auto", show_default=True,
                     help="auto: full-batch L-BFGS (numpy) for linear heads on global/mean/max/topk, AdamW otherwise."),
        click.option("--l2", type=L2, default="1e-4,1e-3,1e-2,1e-1,1", show_default=True,
                     help="L-BFGS: L2 penalties tried together; the best on val_select is kept."),
        click.option("--lr", type=Number(min=0, max=10, min_open=True), default=None,
                     help="AdamW learning rate [default: 1e-2 for linear heads, 1e-3 for mlp]."),
        click.option("--weight-decay", type=Number(min=0, max=100), default=1e-4, show_default=True,
                     help="AdamW weight decay."),
        click.option("--batch-size", type=Number(min=0, integer=True), default=256, show_default=True,
                     help="AdamW batch; 0 = full batch."),
        click.option("--max-epochs", type=COUNT, default=100, show_default=True, help="AdamW epochs."),
        click.option("--patience", type=COUNT, default=None,
                     help="Epochs (AdamW) or iterations (L-BFGS) without improvement on val_select "
                          "[default: 2 epochs, 8 iterations]."),
        click.option("--precision", type=names_in("natix.heads.config", "PRECISIONS"), default="auto", show_default=True,
                     help="AdamW training forward; auto = bf16 autocast where the CPU/GPU multiplies bf16 natively."),
        click.option("--threads", type=THREADS, default=0, show_default=True,
                     help="CPU threads (torch and BLAS); 0 = every available core, divided by --jobs."),
        click.option("--stop-metric", type=names_in("natix.heads.config", "STOP_METRICS"), default="nll", show_default=True,
                     help="Early stopping on val_select."),
        click.option("--class-weights", is_flag=True, help="Weight classes to equal total weight."),
        click.option("--ratios", type=RATIOS, default="0.6,0.1,0.15,0.15", show_default=True,
                     help="train,val_select,val_calib,val_test fractions."),
        click.option("--split-seed", type=SEED, default=0, show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--skip-checksum", is_flag=True,
                     help="Do not re-read the cache's features to check their checksum (huge caches); ids, labels, "
                          "the view table and finiteness are still checked."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def head_configs(head, agg, policy, seed, o):
    """`HeadConfig` and `TrainConfig` from the options of :func:`head_options` (`o`)."""
    from natix.heads.config import HeadConfig, TrainConfig

    hc = HeadConfig(head=head, agg=agg, policy=policy, hidden=o["hidden"], depth=o["depth"], dropout=o["dropout"],
                    k=o["topk"], view_embedding=o["view_embedding"], view_dropout=o["view_dropout"],
                    coverage=o["coverage"])
    tc = TrainConfig(optimizer=o["optimizer"], l2=o["l2"], lr=o["lr"],
                     weight_decay=o["weight_decay"], batch_size=o["batch_size"], max_epochs=o["max_epochs"],
                     patience=o["patience"], stop_metric=o["stop_metric"], class_weights=o["class_weights"], seed=seed,
                     device=o["device"], threads=o["threads"], precision=o["precision"])
    tc.engine(hc)  # an optimizer that cannot fit this head fails before any data is read
    return hc, tc


def metrics_table(metrics: dict) -> str:
    """One row per split of a run's metrics (fractions, 4 decimals)."""
    names = [n for n in TABLE_METRICS if any(n in m for m in metrics.values())]  # runs fitted before a metric existed
    lines = [f"{'split':<11}" + "".join(f"{n:>16}" for n in names)]
    for split in TABLE_SPLITS:
        if split in metrics:
            m = metrics[split]
            lines.append(f"{split:<11}" + "".join(f"{m[n]:>16}" if n == "n" else f"{m.get(n, float('nan')):>16.4f}"
                                                  for n in names))
    return "\n".join(lines + [""] + reward_notes(names))


def fit_summary(r, head_name: str, seed: int, policy: str) -> str:
    """What `natix fit-head` prints for a `RunResult`: the run, how it was fitted, its metrics."""
    h = r.history
    if h.get("engine") == "lbfgs":
        fit_info = (f"L-BFGS {h['iterations']} iterations, {h['members']} members in {h['passes']} passes, "
                    f"l2 {h['l2']:g} chosen on val_select")
    else:
        fit_info = f"AdamW {h['epochs']} epochs, best {h['best_epoch'] + 1}"
    confidence = "gate score g" if policy == "gate" else "max(p, 1-p)"
    return "\n".join([f"run       {r.out}  ({head_name}, seed {seed}, {fit_info}; {r.seconds:.1f} s)",
                      f"metrics are fractions (not x1000); confidence = {confidence}",
                      metrics_table(r.metrics)])


@cli.command("fit-head")
@click.argument("features", type=click.Path(dir_okay=False))
@click.option("--head", type=HEAD, default="linear", show_default=True, help="A registered head.")
@click.option("--agg", type=AGGREGATOR, default="mean", show_default=True, help="A registered view aggregator.")
@click.option("--policy", type=FIT_POLICY, default="softmax", show_default=True,
              help="scrc: a softmax head, then Platt calibration and an SCRC exit.")
@click.option("--alpha", type=LEVEL, default=0.1, show_default=True, help="scrc: risk level.")
@click.option("--delta", type=LEVEL, default=0.1, show_default=True, help="scrc: failure probability.")
@click.option("--acceptance", type=LEVEL, default=0.8, show_default=True, help="scrc: target acceptance rate.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@force_option("natix run")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--splits", "splits_path", type=click.Path(dir_okay=False), help="Reuse a splits.json.")
@click.option("--oof-folds", type=Number(min=0, integer=True), default=0, show_default=True,
              help="Cross-fit K models for out-of-fold train predictions (0: off; at most the rows of a class).")
@click.option("--also", default=None,
              help="Comma-separated caches of the same images (e.g. validator-e1 draws) whose train rows join training.")
@json_option
@head_options
@library_errors
def fit_head(features, head, agg, policy, alpha, delta, acceptance, out, force, seed, splits_path, oof_folds, also,
             as_json, **o) -> None:
    """Train a head on a feature cache and write a run directory."""
    from natix.heads.runs import fit_run
    from natix.rundir import check_replace

    check_replace(out, force=force)  # a run there is replaced (written over) only with --force

    scrc = policy == "scrc"  # train a softmax head, then calibrate and certify with SCRC (levels checked at parse)
    hc, tc = head_configs(head, agg, "softmax" if scrc else policy, seed, o)
    r = fit_run(features, out, head=hc, train=tc, splits_path=splits_path, ratios=o["ratios"],
                split_seed=o["split_seed"], oof_folds=oof_folds, verify=not o["skip_checksum"],
                also=comma_names(also) if also else ())
    cal = None
    if scrc:
        from natix.calibrate.apply import calibrate_run

        cal = calibrate_run(out, method="platt", exit="scrc", alpha=alpha, delta=delta, acceptance=acceptance)
    if as_json:
        payload = {"out": r.out, "metrics": r.metrics, "seconds": r.seconds}
        if cal is not None:
            payload["scrc"] = {"val_test": cal.table, "thresholds": cal.thresholds, "guarantee": cal.guarantee}
        echo_json(payload)
        return
    click.echo(fit_summary(r, hc.name, seed, policy))
    if cal is not None:
        click.echo("SCRC: Platt calibration + selective conformal risk control")
        click.echo(calibration_summary(cal))


def evaluation_text(res: dict) -> str:
    """`natix evaluate` as text: each metric of the split with its 95% bootstrap CI, and under a
    challenge cache one row per validator level."""
    unit = " over images, all draws of one together" if res.get("ci_unit", "row") != "row" else ""
    lines = [f"{res['run']}  split {res['split']}  (fractions, not x1000; 95% bootstrap CI{unit})"]
    if "under" in res:
        u = res["under"]
        lines.append(f"  judged under {u['path']} ({u['challenge']}, {u['draws']} draw(s) per image, "
                     f"fingerprint {u['fingerprint'][:16]})")
    for name, value in res["metrics"].items():
        if name == "n":
            lines.append(f"  {name:<18} {value}")
            continue
        ci = res["ci"].get(name)
        extra = f"  [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        lines.append(f"  {name:<18} {value:.4f}{extra}")
    if res.get("levels"):
        from natix.heads.under import LEVEL_METRICS

        cols = ("n", *LEVEL_METRICS)
        lines += ["", "  by validator level:", "  level " + " ".join(f"{c:>15}" for c in cols)]
        for level, m in res["levels"].items():
            lines.append(f"  {level:>5} " + " ".join(f"{m[c]:>15}" if c == "n" else f"{m[c]:>15.4f}" for c in cols))
    return "\n".join(lines + [""] + reward_notes(res["metrics"]))


def reward_notes(names) -> list[str]:
    """One line per reward metric among `names`, saying which definition it is."""
    from natix.metrics import REWARD_DEFINITIONS

    return [f"  {k}: {text}" for k, text in REWARD_DEFINITIONS.items() if k in names]


@cli.command("evaluate")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--split", default="val_test", show_default=True)
@click.option("--under", type=click.Path(dir_okay=False),
              help="Judge the run's head on this cache of the same images instead (e.g. validator-e1 draws).")
@click.option("--skip-checksum", is_flag=True, help="With --under: do not check that cache's features checksum.")
@json_option
@library_errors
def evaluate(run, split, under, skip_checksum, as_json) -> None:
    """Recompute a run's metrics from its stored predictions, or judge it under another cache."""
    from natix.heads.runs import evaluate_run

    res = evaluate_run(run, split, under=under, verify=not skip_checksum)
    echo_result(as_json, res, evaluation_text)


@cli.command("ablate")
@click.argument("features")
@click.option("--head", "heads", type=Names(HEAD), default="linear,mlp", show_default=True,
              help="Comma-separated heads.")
@click.option("--agg", "aggs", type=Names(AGGREGATOR), default="global,mean,max,attention", show_default=True,
              help="Comma-separated view aggregators.")
@click.option("--policy", "policies", type=Names(POLICY), default="softmax,gate", show_default=True,
              help="Comma-separated policies.")
@click.option("--seeds", type=COUNT, default=3, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the leaderboard.")
@force_option("natix leaderboard")
@click.option("--jobs", type=COUNT, default=1, show_default=True, help="Arms trained in parallel processes.")
@click.option("--metric", type=METRIC, default="mcc", show_default=True, help="Sort and compare by this metric.")
@click.option("--baseline", default=None, help="Arm to compare against, e.g. linear/mean/softmax [default: first].")
@click.option("--under", type=click.Path(dir_okay=False), default=None,
              help="Judge every arm on this cache's val_test rows (e.g. validator-e1 draws of the same images).")
@json_option
@head_options
@library_errors
def ablate(features, heads, aggs, policies, seeds, out, force, jobs, metric, baseline, under, as_json, **o) -> None:
    """Train every head x aggregator x policy x seed arm on FEATURES (a cache, or comma-separated caches of the
    same images, optionally named as NAME=PATH: the cache becomes a factor); write a leaderboard."""
    from natix.heads.ablate import ablate as run_ablate
    from natix.rundir import check_replace

    check_replace(out, force=force, what="natix leaderboard", ours=is_leaderboard)
    hc, tc = head_configs("linear", "mean", "softmax", 0, o)
    board = run_ablate(_ablate_caches(features), out, heads=heads, aggs=aggs, policies=policies,
                       seeds=seeds, metric=metric, baseline=baseline, jobs=jobs, head_cfg=hc, train_cfg=tc,
                       ratios=o["ratios"], split_seed=o["split_seed"],
                       verify=not o["skip_checksum"], under=under)
    echo_result(as_json, {"out": board.out, "rows": board.rows, "meta": board.meta}, lambda _: board.markdown)


def is_leaderboard(path: Path) -> bool:
    """Whether `path` holds a leaderboard `natix ablate` wrote (--force writes over its three files only)."""
    return any((path / f"leaderboard.{ext}").is_file() for ext in ("json", "md", "csv"))


def _ablate_caches(features: str):
    """FEATURES of `ablate`: one path, a list of paths, or {name: path} when written NAME=PATH,..."""
    caches = comma_names(features)
    named = ["=" in c and not Path(c).exists() for c in caches]
    if not any(named):
        return caches if len(caches) > 1 else caches[0]
    if not all(named):
        raise click.UsageError("name every cache or none: e.g. frozen=A.h5,lora=B.h5")
    pairs = [c.split("=", 1) for c in caches]
    if len({n for n, _ in pairs}) < len(pairs):
        raise click.UsageError(f"cache names repeat in '{features}': give each cache its own name")
    return {n.strip(): p.strip() for n, p in pairs}
