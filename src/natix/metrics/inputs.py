"""Input checks and small numeric helpers shared by the metric modules."""

from __future__ import annotations

import numpy as np


class UndefinedMetricError(ValueError):
    """The metric is undefined for this (valid) input, e.g. AUROC when only one class is present."""


# --------------------------------------------------------------------------------------------
# Input validation (internal)
# --------------------------------------------------------------------------------------------


def check_1d(x, name: str) -> np.ndarray:
    """Return ``x`` as a non-empty 1-D float array or raise ValueError."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def check_labels(y, name: str = "y_true") -> np.ndarray:
    """Return binary labels as an int array or raise ValueError."""
    arr = check_1d(y, name)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise ValueError(f"{name} must contain only 0 and 1, found {arr[bad][0]!r}")
    return arr.astype(np.int64)


def check_probs(p, name: str = "y_prob") -> np.ndarray:
    """Return probabilities in [0, 1] or raise ValueError (NaN is out of range too)."""
    arr = check_1d(p, name)
    bad = ~((arr >= 0.0) & (arr <= 1.0))
    if bad.any():
        raise ValueError(f"{name} must lie in [0, 1], found {arr[bad][0]!r}")
    return arr


def check_scores(s, name: str) -> np.ndarray:
    """Return finite real scores or raise ValueError."""
    arr = check_1d(s, name)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, found {arr[~np.isfinite(arr)][0]!r}")
    return arr


def check_same_length(**arrays: np.ndarray) -> None:
    """Raise ValueError unless all arrays have the same length."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(f"inputs must have the same length, got {desc}")


def check_unit_interval(value: float, name: str, *, open_low: bool = False) -> float:
    """Validate a scalar in [0, 1] (or (0, 1] with ``open_low``)."""
    value = float(value)
    low_ok = value > 0.0 if open_low else value >= 0.0
    if not (low_ok and value <= 1.0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def mcc_from_counts(tp, tn, fp, fn):
    """Matthews correlation from confusion counts (arrays allowed); 0 where undefined."""
    tp, tn, fp, fn = (np.asarray(c, dtype=float) for c in (tp, tn, fp, fn))
    denom = np.asarray((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    num = np.asarray(tp * tn - fp * fn)
    defined = denom > 0
    # in place: the reward computes this over (streams, steps) arrays
    return np.divide(num, np.sqrt(denom, out=denom, where=defined), out=np.zeros_like(num), where=defined)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata(method='average')``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions starts+1 .. ends
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


NLL_EPS = 1e-12
# The one number of ECE bins: metrics.json, every table and the reliability diagram use it.
ECE_BINS = 15


def log_loss(y: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    """Per-sample binary log loss, probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(p, eps, 1.0 - eps)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def uniform_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: [k/B, (k+1)/B), the last one closed."""
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner_edges, p, side="right")


def selective_inputs(errors, confidence) -> tuple[np.ndarray, np.ndarray]:
    e = check_labels(errors, "errors")
    g = check_scores(confidence, "confidence")
    check_same_length(errors=e, confidence=g)
    return e, g


def curve_counts(e: np.ndarray, g: np.ndarray):
    """Accepted counts, accepted errors and thresholds, one entry per distinct confidence."""
    order = np.argsort(-g, kind="mergesort")
    gs = g[order]
    ends = np.r_[np.flatnonzero(gs[1:] != gs[:-1]), len(gs) - 1]
    accepted = ends + 1
    accepted_errors = np.cumsum(e[order])[ends]
    return accepted, accepted_errors, gs[ends]


def trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


