"""The cascade's deferral curve as a table and a figure (the only cascade module that draws).

The figure follows the conventions of :mod:`natix.calibrate.report`: ``cascade_curve.json`` next
to the PNG holds the numbers drawn, thresholds print with :func:`~natix.calibrate.report.rounded`,
and the legend sits outside the axes, so it never hides the router's point.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from natix.calibrate.report import new_figure, outside_legend, rounded, save_plot
from natix.errors import DataError

__all__ = ["CURVE_COLUMNS", "curve_figure", "gflops_axis", "save_curve"]

CURVE_COLUMNS = ("threshold", "deferral_ratio", "joint_accuracy", "random_accuracy", "ideal_accuracy")


def save_curve(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``cascade_curve.csv``, ``cascade_curve.png`` and ``cascade_curve.json`` (the numbers drawn).

    Parameters
    ----------
    result : a :func:`natix.cascade.evaluation.evaluate_cascade` dict (its ``curve``, ``deferral``,
        ``accuracy``, ``mode``, ``thresholds``, ``compute``, ``stages`` and ``split`` are shown)
    out_dir : the folder to write into (created)

    Returns
    -------
    the paths of the CSV and the PNG; the title's s_d is the curve's (the value the JSON reports)
    """
    curve = result.get("curve")
    if not curve:
        raise DataError("the result has no deferral curve: it needs two run stages")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "cascade_curve.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CURVE_COLUMNS)
        for row in zip(*(curve[c] for c in CURVE_COLUMNS)):
            w.writerow([repr(float(x)) for x in row])
    png_path = out_dir / "cascade_curve.png"
    fig, drawn = curve_figure(result)
    save_plot(fig, png_path, drawn)
    return csv_path, png_path


def gflops_axis(compute: dict | None) -> tuple[float, float] | None:
    """Expected backbone GFLOPs per image at deferral ratio r as ``(at r = 0, per unit r)``: stage 1's
    marginal cost plus r times stage 2's. None when either is unknown or stage 2 adds nothing (the
    axis would not be a scale)."""
    marginal = (compute or {}).get("marginal_gflops") or []
    if len(marginal) < 2 or marginal[0] is None or marginal[1] is None or not marginal[1] > 0:
        return None
    return float(marginal[0]), float(marginal[1])


def curve_figure(result: dict) -> tuple[object, dict]:
    """The deferral figure and the numbers it draws: the three curves, the router's operating point
    (``result['deferral'][0]``, ``result['accuracy']``) and a GFLOPs axis when the cost is known."""
    curve = result["curve"]
    fig = new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    r = curve["deferral_ratio"]
    ax.plot(r, curve["joint_accuracy"], color="C0", label="cascade (defer least confident)")
    ax.plot(r, curve["random_accuracy"], color="C7", linestyle="--", label="random deferral")
    ax.plot(r, curve["ideal_accuracy"], color="C2", linestyle=":", label="ideal deferral")
    router = None
    if result.get("deferral"):
        router = {"deferral": result["deferral"][0], "accuracy": result["accuracy"],
                  "expected_gflops": (result.get("compute") or {}).get("expected_gflops"),
                  "thresholds": [rounded(t) for t in result.get("thresholds", ())]}
        what = "" if len(result.get("stages", ())) <= 2 else f", {len(result['stages'])}-stage accuracy"
        gf = router["expected_gflops"]
        ax.plot([router["deferral"]], [router["accuracy"]], "o", color="C3", markersize=7, zorder=3,
                label=f"router ({result.get('mode', '?')}{what}; thresholds {', '.join(router['thresholds'])}):\n"
                      f"deferral {router['deferral']:.4f}, accuracy {router['accuracy']:.4f}"
                      + ("" if gf is None else f", {gf:.3f} GFLOPs"))
    axis = gflops_axis(result.get("compute"))
    note = _gflops_scale(ax, axis)
    ax.set_xlabel("deferral ratio (fraction of images sent to stage 2)")
    ax.set_ylabel(f"accuracy ({result.get('split', 'val_test')})")
    s_d = curve.get("s_d")
    defined = s_d is not None and not math.isnan(s_d)
    ax.set_title("cascade deferral" + (f"  (s_d = {s_d:.4f})" if defined else "  (s_d undefined)") + note,
                 fontsize=9)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    outside_legend(ax)
    drawn = {"curve": {c: curve[c] for c in CURVE_COLUMNS}, "s_d": s_d, "router": router,
             "gflops_axis": None if axis is None else {"at_no_deferral": axis[0], "per_deferral": axis[1]},
             "legend": [t.get_text() for t in ax.get_legend().get_texts()]}
    return fig, drawn


def _gflops_scale(ax, axis: tuple[float, float] | None) -> str:
    """A top x-axis in expected GFLOPs per image; without one, the title's note saying why."""
    if axis is None:
        return "\nGFLOPs per image unknown (synthetic or unrecognised backbone, or stage 2 adds no cost)"
    base, slope = axis
    top = ax.secondary_xaxis("top", functions=(lambda r: base + slope * r, lambda g: (g - base) / slope))
    top.set_xlabel("expected backbone GFLOPs per image (stages 1 + 2)", fontsize=8)
    return ""
