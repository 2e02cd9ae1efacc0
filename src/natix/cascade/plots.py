"""The cascade's deferral curve as a table and a figure (the only module that imports matplotlib)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from natix.errors import DataError

__all__ = ["CURVE_COLUMNS", "save_curve"]

CURVE_COLUMNS = ("threshold", "deferral_ratio", "joint_accuracy", "random_accuracy", "ideal_accuracy")


def save_curve(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``cascade_curve.csv`` and ``cascade_curve.png`` (joint, random and ideal accuracy vs deferral).

    Parameters
    ----------
    result : a :func:`natix.cascade.evaluation.evaluate_cascade` dict (its ``curve``, ``deferral``,
        ``accuracy``, ``mode``, ``stages`` and ``split`` are shown)
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
    _figure(result, curve).savefig(png_path, dpi=120)
    return csv_path, png_path


def _figure(result: dict, curve: dict):
    """The deferral figure: the three curves and the router's operating point."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    r = curve["deferral_ratio"]
    ax.plot(r, curve["joint_accuracy"], color="C0", label="cascade (defer least confident)")
    ax.plot(r, curve["random_accuracy"], color="C7", linestyle="--", label="random deferral")
    ax.plot(r, curve["ideal_accuracy"], color="C2", linestyle=":", label="ideal deferral")
    if result.get("deferral"):
        what = "" if len(result.get("stages", ())) <= 2 else f", {len(result['stages'])}-stage accuracy"
        ax.plot([result["deferral"][0]], [result["accuracy"]], "o", color="C3",
                label=f"router ({result.get('mode', '?')}{what})")
    ax.set_xlabel("deferral ratio (fraction of images sent to stage 2)")
    ax.set_ylabel(f"accuracy ({result.get('split', 'val_test')})")
    s_d = curve.get("s_d")
    defined = s_d is not None and not math.isnan(s_d)
    ax.set_title("cascade deferral" + (f"  (s_d = {s_d:.3f})" if defined else "  (s_d undefined)"))
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
