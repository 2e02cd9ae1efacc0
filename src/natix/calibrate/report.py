"""`natix report`: PNG plots of a run's calibration and selective behaviour, plus a summary.

Plots (val_test; calibrated probabilities when the run has been calibrated): a reliability
diagram with bin counts, risk–coverage and generalized-risk–coverage curves with the random and
oracle references and the exit threshold marked, and histograms of the confidence of correct vs
wrong answers on data-adaptive bins.

Every natix plot follows the conventions of this module, so a plot shows the table's numbers:

* its numbers come from the call the tables use (the reliability diagram bins as
  :func:`natix.metrics.ece`, :data:`natix.metrics.ECE_BINS` equal-width bins, and says so);
* :func:`save_plot` writes ``NAME.png`` and, next to it, ``NAME.json``: the numbers drawn;
* thresholds are printed with :func:`rounded` (in tables too); legends sit outside the axes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.jsonio import number, write_json
from natix.rundir import Run, confidence

__all__ = ["HIST_BINS", "PLOTS", "REPORT_METRICS", "THRESHOLD_DIGITS", "histogram_edges", "new_figure",
           "outside_legend", "plot_confidence", "plot_reliability", "plot_risk_coverage", "risk_references", "rounded",
           "save_plot", "write_report"]

# The metrics report.md prints (fractions), each computed once by M.split_metrics.
REPORT_METRICS = ("accuracy", "mcc", "ece", "nll", "aurc", "augrc", "auroc_f")
# The plots every report has, next to report.md (each with its NAME.json of drawn numbers).
PLOTS = ("reliability.png", "risk_coverage.png", "generalized_risk_coverage.png", "confidence_histogram.png")
THRESHOLD_DIGITS = 3  # significant digits of a printed threshold
HIST_BINS = (10, 50)  # fewest and most bars of a confidence histogram (numpy's 'auto' picks in between)


# --------------------------------------------------------------------------- conventions


def rounded(value: float | None, digits: int = THRESHOLD_DIGITS) -> str:
    """A threshold as tables and plots print it: ``digits`` significant digits, never float noise.

    Inside (0, 1) the digits count from the nearer end of the interval, so a confidence threshold
    close to 1 keeps what tells it from 1 (0.99951 stays 0.99951; 0.30000000000000004 is 0.3).
    None prints as ``none``; infinities as ``inf``/``-inf``.
    """
    if value is None:
        return "none"
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if 0.0 < x < 1.0:
        decimals = max(digits - 1 - math.floor(math.log10(min(x, 1.0 - x))), 0)
        return f"{x:.{decimals}f}".rstrip("0").rstrip(".")
    return f"{x:.{digits}g}"


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, without pyplot (no global backend or figure state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def outside_legend(ax) -> None:
    """The legend right of the axes, where it hides no curve or point."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)


def save_plot(fig, path: str | Path, drawn: dict) -> dict:
    """Write the figure to ``path`` (PNG) and ``drawn`` (the numbers it shows) to the same name with ``.json``."""
    path = Path(path)
    fig.savefig(path, dpi=110)
    write_json(path.with_suffix(".json"), drawn)
    return drawn


# --------------------------------------------------------------------------- the report


def _series(run: Run) -> dict:
    """Labels, probabilities, confidence and accepted images to plot: calibrated when available."""
    raw = run.predictions("val_test")
    calibrated = run.calibrated_predictions()
    out = {"y": raw["labels"].astype(np.int64), "p_raw": raw["prob"].astype(np.float64),
           "calibrated": calibrated is not None, "accept": None,
           "what": "gate" if "gate" in raw else "max(p, 1-p)"}  # the rule of natix.rundir.confidence
    if calibrated is None:
        out.update(p=out["p_raw"], conf=confidence(raw))
    else:
        out.update(p=calibrated["prob"].astype(np.float64), conf=calibrated["confidence"].astype(np.float64))
        if "accept" in calibrated:
            out["accept"] = calibrated["accept"].astype(bool)
    return out


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the PNGs (each with its JSON of drawn numbers) and `report.md` into `out` (default
    RUN/report); return the markdown path."""
    run = Run(run)
    out = Path(out) if out else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    s = _series(run)
    thresholds = run.calibration()[1] or {}
    errors = M.decision_errors(s["y"], s["p"])
    summary = M.split_metrics(s["y"], s["p"], s["conf"], names=REPORT_METRICS)
    exit_rule = _exit_rule(thresholds, s["conf"], s["accept"])
    plot_reliability(s["y"], s["p"], out / "reliability.png", before=s["p_raw"] if s["calibrated"] else None)
    for name, generalized in (("risk_coverage.png", False), ("generalized_risk_coverage.png", True)):
        plot_risk_coverage(errors, s["conf"], out / name, generalized=generalized, exit_rule=exit_rule,
                           level=None if generalized else _risk_level(thresholds))
    plot_confidence(errors, s["conf"], out / "confidence_histogram.png", exit_rule=exit_rule, what=s["what"])
    return _write_markdown(run, s, summary, thresholds, exit_rule, out / "report.md")


def _exit_rule(thresholds: dict, conf: np.ndarray, accept: np.ndarray | None) -> dict | None:
    """The exit threshold and the val_test coverage it gives (the stored decisions when calibrated)."""
    tau = _exit_threshold(thresholds)
    if tau is None or not np.isfinite(tau):
        return None
    coverage = float(accept.mean()) if accept is not None else float(np.mean(conf >= tau))
    return {"threshold": tau, "text": rounded(tau), "coverage": coverage}


# --------------------------------------------------------------------------- the plots


def plot_reliability(y: np.ndarray, p: np.ndarray, path: Path, *, before: np.ndarray | None = None) -> dict:
    """The reliability diagram of ``p`` (and of ``before``, uncalibrated) with images per bin.

    Each curve's points and its ECE come from :func:`natix.metrics.reliability_curve` and
    :func:`natix.metrics.ece` with :data:`natix.metrics.ECE_BINS` equal-width bins: the ECE of
    metrics.json, ``natix evaluate`` and ``natix calibrate``. Returns the numbers drawn.
    """
    binning = M.ece_binning(n_bins=M.ECE_BINS)
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    series = {"model": p} if before is None else {"before calibration": before, "after calibration": p}
    curves = {}
    for name, q in series.items():
        mean_p, freq, counts = M.reliability_curve(y, q, n_bins=M.ECE_BINS)
        ece = M.ece(y, q, n_bins=M.ECE_BINS)
        ax.plot(mean_p, freq, "o-", label=f"{name}: ECE ({binning}) {ece:.4f}")
        curves[name] = {"ece": ece, "mean_prob": mean_p, "frequency": freq, "counts": counts}
    judged = curves[list(series)[-1]]  # the probabilities the report's metrics judge
    for c, f, n in zip(judged["mean_prob"], judged["frequency"], judged["counts"]):
        ax.annotate(str(n), (c, f), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("predicted probability of roadwork")
    ax.set_ylabel("observed frequency of roadwork")
    ax.set_title(f"Reliability (val_test; {binning}; numbers = images per bin)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    outside_legend(ax)
    return save_plot(fig, path, {"binning": binning, "n_bins": M.ECE_BINS, "strategy": "uniform", "curves": curves,
                                 "legend": [t.get_text() for t in ax.get_legend().get_texts()]})


def _from_zero(coverage: np.ndarray, risk: np.ndarray, generalized: bool) -> tuple[np.ndarray, np.ndarray]:
    """A risk–coverage curve started at coverage 0 as the areas start it (:func:`natix.metrics.aurc`
    holds the selective risk flat, :func:`natix.metrics.augrc` starts at 0)."""
    return np.r_[0.0, coverage], np.r_[0.0 if generalized else risk[0], risk]


def risk_references(errors: np.ndarray) -> dict:
    """The random and oracle risk–coverage curves of 0/1 ``errors`` (shape (n,)), from
    :func:`natix.metrics.risk_coverage_curve`.

    Random: one confidence for every image (selective risk = the error rate at every coverage).
    Oracle: every correct image above every error (errors are deferred first; risk 0 up to
    coverage ``1 - error rate``). Returns ``{"random"|"oracle": (coverage, selective, generalized)}``.
    """
    n = len(errors)
    oracle = (1 - errors) + np.arange(n) / (2.0 * n)  # distinct: one point per image, correct ones first
    return {name: M.risk_coverage_curve(errors, g)[:3] for name, g in (("random", np.zeros(n)), ("oracle", oracle))}


def plot_risk_coverage(errors: np.ndarray, conf: np.ndarray, path: Path, *, generalized: bool = False,
                       exit_rule: dict | None = None, level: float | None = None) -> dict:
    """Selective (or generalized) risk against coverage, with the random and oracle references.

    The model's curve is the one :func:`natix.metrics.aurc` (``augrc``) integrates, so the area in
    the legend is the table's. ``exit_rule``: ``threshold``, ``text`` and ``coverage`` of the
    exit, marked; ``level``: a certified risk level, marked. Returns the numbers drawn.
    """
    area_name, area = ("AUGRC", M.augrc(errors, conf)) if generalized else ("AURC", M.aurc(errors, conf))
    k = 2 if generalized else 1
    curves = {"model": M.risk_coverage_curve(errors, conf)[:3], **risk_references(errors)}
    labels = {"model": f"model ({area_name} {area:.4f})", "random": "random (one confidence for all)",
              "oracle": "oracle (errors deferred first)"}
    styles = {"model": {"lw": 1.5, "color": "C0"}, "random": {"ls": "--", "color": "C7"},
              "oracle": {"ls": ":", "color": "C2"}}
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    drawn = {"quantity": "generalized_risk" if generalized else "selective_risk", "area": {area_name: area},
             "curves": {}, "exit": exit_rule, "level": level}
    for name, curve in curves.items():
        cov, risk = _from_zero(curve[0], curve[k], generalized)
        ax.plot(cov, risk, label=labels[name], **styles[name])
        drawn["curves"][name] = {"coverage": cov, "risk": risk}
    if exit_rule is not None:
        ax.axvline(exit_rule["coverage"], color="C3", ls="--", lw=1,
                   label=f"exit: confidence >= {exit_rule['text']} (coverage {exit_rule['coverage']:.4f})")
    if level is not None:
        ax.axhline(level, color="gray", ls=":", lw=1, label=f"certified level alpha = {rounded(level)}")
    ax.set_xlabel("coverage (fraction of images accepted)")
    ax.set_ylabel("generalized risk (errors / all images)" if generalized else "selective risk (error rate of accepted)")
    ax.set_xlim(0, 1)
    ax.set_title(("generalized risk coverage" if generalized else "risk coverage") + " (val_test)", fontsize=9)
    outside_legend(ax)
    drawn["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
    return save_plot(fig, path, drawn)


def histogram_edges(values: np.ndarray) -> np.ndarray:
    """Bin edges over the data's own range, as many as numpy's 'auto' rule asks (within :data:`HIST_BINS`).

    Gate scores often sit in a narrow range; fixed bins on [0.5, 1] would draw them as one bar.
    """
    auto = len(np.histogram_bin_edges(values, bins="auto")) - 1
    return np.histogram_bin_edges(values, bins=int(np.clip(auto, *HIST_BINS)))


def plot_confidence(errors: np.ndarray, conf: np.ndarray, path: Path, *, exit_rule: dict | None = None,
                    what: str = "max(p, 1-p)") -> dict:
    """Histograms of the confidence of correct and wrong answers (:func:`histogram_edges`), the exit
    threshold marked with its value. Returns the numbers drawn."""
    edges = histogram_edges(conf)
    counts = {"correct": np.histogram(conf[errors == 0], bins=edges)[0],
              "wrong": np.histogram(conf[errors == 1], bins=edges)[0]}
    try:
        auroc_f = M.auroc_failure(errors, conf)
    except M.UndefinedMetricError:  # every answer right (or wrong): nothing to separate
        auroc_f = float("nan")
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    for i, (name, c) in enumerate(counts.items()):
        ax.stairs(c, edges, fill=True, alpha=0.55, color=f"C{i}", label=f"{name} ({int(c.sum())})")
    if exit_rule is not None:
        ax.axvline(exit_rule["threshold"], color="C3", ls="--", lw=1.2,
                   label=f"exit: confidence >= {exit_rule['text']}")
    ax.set_xlabel(f"confidence ({what}); {len(edges) - 1} bins over its range")
    ax.set_ylabel("images")
    ax.set_title(f"Confidence of correct vs wrong (val_test; AUROC_f {auroc_f:.4f})", fontsize=9)
    outside_legend(ax)
    return save_plot(fig, path, {"confidence": what, "edges": edges, **counts, "exit": exit_rule,
                                 "auroc_f": auroc_f, "legend": [t.get_text() for t in ax.get_legend().get_texts()]})


# --------------------------------------------------------------------------- report.md


def _write_markdown(run: Run, s: dict, summary: dict, thresholds: dict, exit_rule: dict | None, path: Path) -> Path:
    m = summary
    which = "after calibration" if s["calibrated"] else "of the model"
    lines = [f"# Report: {run.path.name}", "",
             f"val_test, {len(s['y'])} images; probabilities {which}. Metrics are fractions (not x1000); the ECE "
             f"bins as metrics.json and every natix table: {M.ece_binning(n_bins=M.ECE_BINS)}.", "",
             f"- accuracy {m['accuracy']:.4f}, MCC {m['mcc']:.4f}, ECE {m['ece']:.4f} ({M.ECE_BINS} bins), "
             f"NLL {m['nll']:.4f}, AURC {m['aurc']:.4f}, AUGRC {m['augrc']:.4f}"]
    if thresholds:
        at = "" if exit_rule is None else (f" at confidence >= {exit_rule['text']} "
                                           f"(coverage {exit_rule['coverage']:.4f})")
        lines.append(f"- exit rule: {thresholds.get('exit') or 'none'}{at}; {thresholds.get('guarantee', '')}")
    lines += ["", "![reliability](reliability.png)", "![risk-coverage](risk_coverage.png)",
              "![generalized risk-coverage](generalized_risk_coverage.png)",
              "![confidence histogram](confidence_histogram.png)", "",
              "Each PNG has a JSON file of the same name holding the numbers it draws.", ""]
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
