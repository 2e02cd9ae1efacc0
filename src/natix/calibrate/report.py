"""`natix report`: PNG plots of a run's calibration and selective behaviour, plus a summary.

Plots (val_test; calibrated probabilities when the run has been calibrated):
reliability diagram with bin counts, risk–coverage and generalized-risk–coverage curves with the
exit threshold marked, and histograms of the confidence of correct vs wrong answers. The
reliability diagram bins as the ECE it prints (:func:`natix.metrics.reliability_curve` and
:func:`natix.metrics.ece` with ``ECE_BINS`` bins, the ECE of metrics.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.jsonio import number
from natix.metrics.inputs import ECE_BINS
from natix.rundir import Run, confidence

# The metrics report.md prints (fractions), each computed once by M.split_metrics.
REPORT_METRICS = ("accuracy", "mcc", "ece", "nll", "aurc", "augrc", "auroc_f")
# The plots every report has, next to report.md.
PLOTS = ("reliability.png", "risk_coverage.png", "generalized_risk_coverage.png", "confidence_histogram.png")


def _series(run: Run) -> dict:
    """Labels, probabilities and confidence to plot: calibrated when available, raw otherwise."""
    raw = run.predictions("val_test")
    calibrated = run.calibrated_predictions()
    out = {"y": raw["labels"].astype(np.int64), "p_raw": raw["prob"].astype(np.float64),
           "calibrated": calibrated is not None}
    if calibrated is None:
        out.update(p=out["p_raw"], conf=confidence(raw))
    else:
        out.update(p=calibrated["prob"].astype(np.float64), conf=calibrated["confidence"].astype(np.float64))
    return out


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the PNGs and `report.md` into `out` (default RUN/report); return the markdown path."""
    run = Run(run)
    out = Path(out) if out else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    s = _series(run)
    thresholds = run.calibration()[1] or {}
    errors = M.decision_errors(s["y"], s["p"])
    summary = M.split_metrics(s["y"], s["p"], s["conf"], names=REPORT_METRICS)
    plt = _pyplot()
    _plot_reliability(plt, s, summary["ece"], out / "reliability.png")
    _plot_risk_coverage(plt, errors, s["conf"], summary, thresholds, out)
    _plot_confidence(plt, errors, s["conf"], summary["auroc_f"], thresholds, out / "confidence_histogram.png")
    return _write_markdown(run, s, summary, thresholds, out / "report.md")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reliability_line(ax, y: np.ndarray, p: np.ndarray, label: str, ece: float):
    """One reliability curve (ECE_BINS uniform bins, the bins of `ece`); returns its points and counts."""
    mean_p, freq, counts = M.reliability_curve(y, p, n_bins=ECE_BINS)
    ax.plot(mean_p, freq, "o-", label=f"{label} (ECE {ece:.3f})")
    return mean_p, freq, counts


def _plot_reliability(plt, s: dict, ece: float, path: Path) -> None:
    """The reliability diagram: after calibration (and before, when calibrated), images per bin."""
    y = s["y"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    if s["calibrated"]:
        _reliability_line(ax, y, s["p_raw"], "before", M.ece(y, s["p_raw"], n_bins=ECE_BINS))
    points = _reliability_line(ax, y, s["p"], "after calibration" if s["calibrated"] else "model", ece)
    for c, f, n in zip(*points):
        ax.annotate(str(n), (c, f), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("predicted probability of roadwork")
    ax.set_ylabel("observed frequency of roadwork")
    ax.set_title(f"Reliability (val_test; {ECE_BINS} bins; numbers = images per bin)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    _save(plt, fig, path)


def _plot_risk_coverage(plt, errors: np.ndarray, conf: np.ndarray, summary: dict, thresholds: dict,
                        out: Path) -> None:
    """Selective and generalized risk against coverage, the exit threshold and the certified level marked."""
    cov, sr, gr, _ = M.risk_coverage_curve(errors, conf)
    tau, level = _exit_threshold(thresholds), _risk_level(thresholds)
    for name, risk, ylabel, area in (("risk_coverage.png", sr, "selective risk (error rate of accepted)",
                                      f"AURC {summary['aurc']:.4f}"),
                                     ("generalized_risk_coverage.png", gr, "generalized risk (errors / all images)",
                                      f"AUGRC {summary['augrc']:.4f}")):
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        ax.plot(cov, risk, lw=1.5, label=area)
        if tau is not None and np.isfinite(tau):
            c = float(np.mean(conf >= tau))
            ax.axvline(c, color="C3", ls="--", lw=1, label=f"exit (conf >= {tau:.3f}, coverage {c:.2f})")
        if level is not None and name == "risk_coverage.png":
            ax.axhline(level, color="gray", ls=":", lw=1, label=f"alpha = {level}")
        ax.set_xlabel("coverage (fraction of images accepted)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.set_title(name.removesuffix(".png").replace("_", " ") + " (val_test)")
        ax.legend(fontsize=8)
        _save(plt, fig, out / name)


def _plot_confidence(plt, errors: np.ndarray, conf: np.ndarray, auroc_f: float, thresholds: dict,
                     path: Path) -> None:
    """Histograms of the confidence of correct and wrong answers."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    bins = np.linspace(min(conf.min(), 0.5), 1, 26)
    ax.hist(conf[errors == 0], bins=bins, alpha=0.6, label=f"correct ({int((errors == 0).sum())})")
    ax.hist(conf[errors == 1], bins=bins, alpha=0.6, label=f"wrong ({int(errors.sum())})")
    ax.set_xlabel("confidence (" + thresholds.get("confidence", "max(p, 1-p)") + ")")
    ax.set_ylabel("images")
    ax.set_title(f"Confidence of correct vs wrong (AUROC_f {auroc_f:.3f})")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def _write_markdown(run: Run, s: dict, summary: dict, thresholds: dict, path: Path) -> Path:
    m = summary
    which = "after calibration" if s["calibrated"] else "of the model"
    lines = [f"# Report: {run.path.name}", "",
             f"val_test, {len(s['y'])} images; probabilities {which}. Metrics are fractions (not x1000).", "",
             f"- accuracy {m['accuracy']:.4f}, MCC {m['mcc']:.4f}, ECE {m['ece']:.4f} ({ECE_BINS} bins), "
             f"NLL {m['nll']:.4f}, AURC {m['aurc']:.4f}, AUGRC {m['augrc']:.4f}"]
    if thresholds:
        lines.append(f"- exit rule: {thresholds.get('exit') or 'none'}; {thresholds.get('guarantee', '')}")
    lines += ["", "![reliability](reliability.png)", "![risk-coverage](risk_coverage.png)",
              "![generalized risk-coverage](generalized_risk_coverage.png)",
              "![confidence histogram](confidence_histogram.png)", ""]
    path.write_text("\n".join(lines))
    return path


def _exit_threshold(thresholds: dict) -> float | None:
    """The confidence threshold the exit rule accepts at, if any (older files: the LTT/SCRC state)."""
    if "exit_threshold" in thresholds:
        return None if thresholds["exit_threshold"] is None else number(thresholds["exit_threshold"])
    for key in ("ltt", "scrc"):
        state = thresholds.get(key)
        if state and state.get("threshold_") is not None:
            return number(state["threshold_"])
    return None


def _risk_level(thresholds: dict) -> float | None:
    """The certified risk level to mark (older files, without 'bound': alpha)."""
    if "bound" in thresholds:
        return None if thresholds["bound"] is None else float(thresholds["bound"]["level"])
    return thresholds.get("alpha")
