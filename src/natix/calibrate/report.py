"""`natix report`: PNG plots of a run's calibration and selective behaviour, plus a summary.

Plots (val_test; calibrated probabilities when the run has been calibrated):
reliability diagram with bin counts, risk–coverage and generalized-risk–coverage curves with the
certified exit threshold marked, and histograms of the confidence of correct vs wrong answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.calibrate.apply import load_split
from natix.errors import DataError


def _series(run: Path) -> dict:
    """Probabilities/confidence to plot: calibrated when available, raw otherwise."""
    raw = load_split(run, "val_test")
    p_raw = raw["prob"].astype(np.float64)
    out = {"y": raw["labels"].astype(np.int64), "p_raw": p_raw, "calibrated": False,
           "conf": raw["gate"].astype(np.float64) if "gate" in raw else np.maximum(p_raw, 1 - p_raw)}
    cal_path = run / "predictions" / "val_test_calibrated.npz"
    if cal_path.is_file():
        with np.load(cal_path, allow_pickle=False) as z:
            if "ids" not in z.files or not np.array_equal(z["ids"], raw["ids"]):
                raise DataError(f"'{cal_path}' belongs to an earlier fit of this run: rerun natix calibrate")
            out.update(p=z["prob"].astype(np.float64), conf=z["confidence"].astype(np.float64), calibrated=True)
    else:
        out["p"] = p_raw
    return out


def _safe(fn, *args) -> float:
    """A metric, or NaN where it is undefined (e.g. AUROC_f with no errors)."""
    try:
        return float(fn(*args))
    except ValueError:
        return float("nan")


def _reliability(ax, y, p, label, n_bins=10):
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    centers, freq, counts = [], [], []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            centers.append(p[m].mean())
            freq.append(y[m].mean())
            counts.append(int(m.sum()))
    ax.plot(centers, freq, "o-", label=f"{label} (ECE {M.ece(y, p, n_bins=n_bins):.3f})")
    return centers, freq, counts


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the PNGs and `report.md` into `out` (default RUN/report); return the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    out = Path(out) if out else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    s = _series(run)
    y, p, conf = s["y"], s["p"], s["conf"]
    thresholds = {}
    if (run / "thresholds.json").is_file():
        try:
            thresholds = json.loads((run / "thresholds.json").read_text())
        except ValueError:
            raise DataError(f"'{run / 'thresholds.json'}' is not valid JSON: rerun natix calibrate") from None
    errors = (M.predictions(p) != y).astype(np.int64)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    if s["calibrated"]:
        _reliability(ax, y, s["p_raw"], "before")
    centers, freq, counts = _reliability(ax, y, p, "after calibration" if s["calibrated"] else "model")
    for c, f, n in zip(centers, freq, counts):
        ax.annotate(str(n), (c, f), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("predicted probability of roadwork")
    ax.set_ylabel("observed frequency of roadwork")
    ax.set_title("Reliability (val_test; numbers = images per bin)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)

    cov, sr, gr, th = M.risk_coverage_curve(errors, conf)
    tau = _exit_threshold(thresholds)
    for name, risk, ylabel, area in (("risk_coverage.png", sr, "selective risk (error rate of accepted)",
                                      f"AURC {_safe(M.aurc, errors, conf):.4f}"),
                                     ("generalized_risk_coverage.png", gr, "generalized risk (errors / all images)",
                                      f"AUGRC {_safe(M.augrc, errors, conf):.4f}")):
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        ax.plot(cov, risk, lw=1.5, label=area)
        if tau is not None and np.isfinite(tau):
            c = float(np.mean(conf >= tau))
            ax.axvline(c, color="C3", ls="--", lw=1, label=f"certified exit (conf >= {tau:.3f}, coverage {c:.2f})")
        alpha = thresholds.get("alpha")
        if alpha is not None and name == "risk_coverage.png":
            ax.axhline(alpha, color="gray", ls=":", lw=1, label=f"alpha = {alpha}")
        ax.set_xlabel("coverage (fraction of images accepted)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 1)
        ax.set_title(name.removesuffix(".png").replace("_", " ") + " (val_test)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    bins = np.linspace(min(conf.min(), 0.5), 1, 26)
    ax.hist(conf[errors == 0], bins=bins, alpha=0.6, label=f"correct ({int((errors == 0).sum())})")
    ax.hist(conf[errors == 1], bins=bins, alpha=0.6, label=f"wrong ({int(errors.sum())})")
    ax.set_xlabel("confidence (" + thresholds.get("confidence", "max(p, 1-p)") + ")")
    ax.set_ylabel("images")
    ax.set_title(f"Confidence of correct vs wrong (AUROC_f {_safe(M.auroc_failure, errors, conf):.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "confidence_histogram.png", dpi=110)
    plt.close(fig)

    lines = [f"# Report: {run.name}", "",
             f"val_test, {len(y)} images; probabilities {'after calibration' if s['calibrated'] else 'of the model'}."
             " Metrics are fractions (not x1000).", "",
             f"- accuracy {_safe(M.accuracy, y, p):.4f}, MCC {_safe(M.mcc, y, p):.4f}, "
             f"ECE {_safe(M.ece, y, p):.4f}, NLL {_safe(M.nll, y, p):.4f}, AURC {_safe(M.aurc, errors, conf):.4f}, "
             f"AUGRC {_safe(M.augrc, errors, conf):.4f}"]
    if thresholds:
        lines.append(f"- exit rule: {thresholds.get('exit') or 'none'}; {thresholds.get('guarantee', '')}")
    lines += ["", "![reliability](reliability.png)", "![risk-coverage](risk_coverage.png)",
              "![generalized risk-coverage](generalized_risk_coverage.png)",
              "![confidence histogram](confidence_histogram.png)", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    return md


def _exit_threshold(thresholds: dict) -> float | None:
    """The certified confidence threshold of an LTT/SCRC exit, if any."""
    for key, attr in (("ltt", "threshold_"), ("scrc", "threshold_")):
        state = thresholds.get(key)
        if state and state.get(attr) is not None:
            return float(state[attr])
    return None
