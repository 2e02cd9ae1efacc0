"""Calibration commands: `calibrate` (calibrator + certified exit rule) and `report` (plots)."""

from __future__ import annotations

import click

from natix.cli.common import (
    CALIBRATOR,
    EXIT_RULE,
    LEVEL,
    Number,
    echo_json,
    echo_result,
    json_option,
    opened,
    under_option,
)
from natix.cli.group import cli, library_errors


def bound_line(t: dict) -> str | None:
    """The certified bound of a val_test table and whether val_test kept it; None without a bound."""
    from natix.calibrate.report import rounded

    if "bound" not in t:
        return None
    bd = t["bound"]
    if t["accepted"] == 0:
        return (f"certified bound: {bd['quantity']} <= {rounded(bd['level'])}; nothing accepted on val_test, so it holds "
                "vacuously")
    verdict = ("undefined on val_test (no images it applies to)" if bd["held"] is None else "held" if bd["held"]
               else "NOT held (a guarantee holds on average/with probability, not on every test set)")
    return f"certified bound: {bd['quantity']} <= {rounded(bd['level'])}; on val_test {bd['observed']:.4f} -> {verdict}"


def threshold_line(thresholds: dict) -> str:
    """The decision and exit thresholds of a calibration, rounded as the report's plots print them."""
    from natix.calibrate.report import rounded

    tau = thresholds.get("exit_threshold")
    return (f"thresholds: decision {rounded(thresholds.get('decision_threshold'))} (on the calibrator's output, "
            f"moved to 0.5), exit " + ("none" if tau is None else f"confidence >= {rounded(tau)}"))


def calibration_summary(res) -> str:
    """A `CalibrationResult` as text: val_test before/after, thresholds, coverage, the bound, the guarantee."""
    from natix.metrics import ECE_BINS, ece_binning

    t = res.table
    b, a = t["before"], t["after"]
    lines = [f"val_test ({t['n']} images; fractions, not x1000; ECE over {ece_binning(n_bins=ECE_BINS)})",
             f"{'':<14}{'before':>10}{'after':>10}"]
    lines += [f"{k:<14}{b[k]:>10.4f}{a[k]:>10.4f}" for k in b]
    lines.append(threshold_line(res.thresholds))
    lines.append(f"coverage {t['coverage']:.4f} ({t['accepted']} accepted), selective risk {t['selective_risk']:.4f}")
    bound = bound_line(t)
    if bound is not None:
        lines.append(bound)
    lines.append(f"guarantee: {res.guarantee}")
    from natix.metrics import REWARD_DEFINITIONS

    lines += [f"{k}: {text}" for k, text in REWARD_DEFINITIONS.items() if k in b]
    return "\n".join(lines)


@cli.command("calibrate")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--method", type=CALIBRATOR, default="platt", show_default=True, help="A registered calibrator.")
@click.option("--exit", "exit_rule", type=EXIT_RULE, default=None,
              help="A registered exit rule: ltt, crc, scrc (certified), budget (defer at most --budget, no "
                   "guarantee); none: no deferral  [default: none]")
@click.option("--alpha", type=LEVEL, default=0.1, show_default=True, help="Risk level of the guarantee.")
@click.option("--delta", type=LEVEL, default=0.1, show_default=True, help="Failure probability (LTT, SCRC).")
@click.option("--target-fnr", type=Number(min=0, max=1, max_open=True), default=None,
              help="Pick the decision threshold for this FNR.")
@click.option("--acceptance", type=LEVEL, default=0.8, show_default=True, help="SCRC: target acceptance rate.")
@click.option("--budget", type=LEVEL, default=0.2, show_default=True,
              help="--exit budget: largest fraction of the calibration images deferred.")
@under_option()
@json_option
@library_errors
def calibrate(run, method, exit_rule, alpha, delta, target_fnr, acceptance, budget, under, as_json) -> None:
    """Calibrate a run on val_calib and certify an exit rule; report on val_test."""
    from natix.calibrate.apply import calibrate_run

    exit_rule = None if exit_rule == "none" else exit_rule
    res = calibrate_run(opened(run, under), method=method, exit=exit_rule, alpha=alpha, delta=delta, target_fnr=target_fnr,
                        acceptance=acceptance, budget=budget)
    if as_json:
        echo_json({"calibration": res.calibration, "thresholds": res.thresholds, "val_test": res.table,
                   "guarantee": res.guarantee})
        return
    click.echo(f"{run}: {method} calibration, exit {exit_rule or 'none'} -> calibration.json, thresholds.json")
    click.echo(calibration_summary(res))


@cli.command("report")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder [default: RUN/report].")
@json_option
@library_errors
def report(run, out, as_json) -> None:
    """Plot reliability, risk-coverage and confidence histograms of a run (PNG + markdown)."""
    from natix.calibrate.report import PLOTS, write_report

    md = write_report(run, out)
    # Each plot has the numbers it draws next to it, in a JSON file of the same name.
    written = {"report": md, "plots": [{"png": md.parent / name, "numbers": (md.parent / name).with_suffix(".json")}
                                       for name in PLOTS]}
    echo_result(as_json, written, lambda w: f"wrote {w['report']} and {len(PLOTS)} plots ({', '.join(PLOTS)})")
