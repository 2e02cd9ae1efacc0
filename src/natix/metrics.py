"""Pure metric functions: binary classification, calibration, NATIX reward, selective
classification and bootstrap confidence intervals.

Every function takes numpy-like arrays and returns a float (or a tuple of arrays). Nothing here
does I/O or logging, and nothing imports from the rest of natix, so the module is usable from a
notebook on a bare numpy install.

Conventions
-----------
* ``y_true`` holds binary labels in {0, 1} (bool, int or float 0.0/1.0).
* ``y_prob`` is P(class 1) in [0, 1]; ``y_score`` is any finite real score (higher = more
  positive).
* Hard decisions are ``y_prob > threshold``. With the default threshold 0.5 this is exactly the
  NATIX validator's ``np.round(p)`` on [0, 1] (numpy rounds half to even, so p = 0.5 is class 0).
* Selective classification: ``errors`` is the 0/1 loss per sample, ``confidence`` any finite real;
  a sample is accepted when ``confidence >= tau``. Risks and areas are fractions (not x1000).
* Bad input raises :class:`ValueError` with a one-line message. A metric that is mathematically
  undefined for otherwise valid input (AUROC with one class present, ...) raises
  :class:`UndefinedMetricError`, a ``ValueError`` subclass that the bootstrap treats as "skip this
  resample".
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "UndefinedMetricError",
    "predictions",
    "accuracy",
    "balanced_accuracy",
    "mcc",
    "auroc",
    "auprc",
    "nll",
    "brier",
    "ece",
    "natix_reward",
    "natix_reward_windows",
    "risk_coverage_curve",
    "aurc",
    "augrc",
    "e_aurc",
    "e_augrc",
    "risk_at_coverage",
    "coverage_at_risk",
    "auroc_failure",
    "fpr_at_95_tpr",
    "bootstrap_ci",
    "paired_bootstrap_diff",
]


class UndefinedMetricError(ValueError):
    """The metric is undefined for this (valid) input, e.g. AUROC when only one class is present."""


# --------------------------------------------------------------------------------------------
# Input validation (internal)
# --------------------------------------------------------------------------------------------


def _as_1d(x, name: str) -> np.ndarray:
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


def _labels(y, name: str = "y_true") -> np.ndarray:
    """Return binary labels as an int array or raise ValueError."""
    arr = _as_1d(y, name)
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise ValueError(f"{name} must contain only 0 and 1, found {arr[bad][0]!r}")
    return arr.astype(np.int64)


def _probs(p, name: str = "y_prob") -> np.ndarray:
    """Return probabilities in [0, 1] or raise ValueError (NaN is out of range too)."""
    arr = _as_1d(p, name)
    bad = ~((arr >= 0.0) & (arr <= 1.0))
    if bad.any():
        raise ValueError(f"{name} must lie in [0, 1], found {arr[bad][0]!r}")
    return arr


def _scores(s, name: str) -> np.ndarray:
    """Return finite real scores or raise ValueError."""
    arr = _as_1d(s, name)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, found {arr[~np.isfinite(arr)][0]!r}")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    """Raise ValueError unless all arrays have the same length."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(f"inputs must have the same length, got {desc}")


def _unit_interval(value: float, name: str, *, open_low: bool = False) -> float:
    """Validate a scalar in [0, 1] (or (0, 1] with ``open_low``)."""
    value = float(value)
    low_ok = value > 0.0 if open_low else value >= 0.0
    if not (low_ok and value <= 1.0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def _binary_inputs(y_true, y_prob, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Validated labels and hard decisions."""
    y = _labels(y_true)
    p = _probs(y_prob)
    _same_length(y_true=y, y_prob=p)
    return y, predictions(p, threshold=threshold)


def _mcc_from_counts(tp, tn, fp, fn):
    """Matthews correlation from confusion counts (arrays allowed); 0 where undefined."""
    tp, tn, fp, fn = (np.asarray(c, dtype=float) for c in (tp, tn, fp, fn))
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    num = tp * tn - fp * fn
    safe = np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, num / np.sqrt(safe), 0.0)


def _average_ranks(x: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Binary classification
# --------------------------------------------------------------------------------------------


def predictions(y_prob, *, threshold: float = 0.5) -> np.ndarray:
    """Hard decisions ``y_prob > threshold``.

    With ``threshold=0.5`` this equals the NATIX validator's ``np.round(p)`` for p in [0, 1]:
    numpy rounds half to even, so p = 0.5 is class 0 ("no roadwork").

    Parameters
    ----------
    y_prob : array of shape (n,)
        P(class 1), in [0, 1].
    threshold : float in [0, 1]

    Returns
    -------
    ndarray of shape (n,), int64 in {0, 1}
    """
    p = _probs(y_prob)
    threshold = _unit_interval(threshold, "threshold")
    return (p > threshold).astype(np.int64)


def accuracy(y_true, y_prob, *, threshold: float = 0.5) -> float:
    """Fraction of correct hard decisions ``y_prob > threshold`` (0.5 counts as class 0).

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), P(class 1) in [0, 1]
    threshold : float in [0, 1]

    Returns
    -------
    float in [0, 1]
    """
    y, yhat = _binary_inputs(y_true, y_prob, threshold)
    return float(np.mean(y == yhat))


def balanced_accuracy(y_true, y_prob, *, threshold: float = 0.5) -> float:
    """Mean per-class recall of the decisions ``y_prob > threshold``.

    Only classes present in ``y_true`` are averaged (as scikit-learn does), so with a single class
    it is that class's recall.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), P(class 1) in [0, 1]
    threshold : float in [0, 1]

    Returns
    -------
    float in [0, 1]
    """
    y, yhat = _binary_inputs(y_true, y_prob, threshold)
    recalls = [np.mean(yhat[y == c] == c) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(recalls))


def mcc(y_true, y_prob, *, threshold: float = 0.5) -> float:
    """Matthews correlation coefficient of the decisions ``y_prob > threshold``.

    Returns 0 when it is undefined (a row or column of the confusion matrix is empty), as
    scikit-learn and the NATIX validator do.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), P(class 1) in [0, 1]
    threshold : float in [0, 1]

    Returns
    -------
    float in [-1, 1]
    """
    y, yhat = _binary_inputs(y_true, y_prob, threshold)
    tp = np.sum((y == 1) & (yhat == 1))
    tn = np.sum((y == 0) & (yhat == 0))
    fp = np.sum((y == 0) & (yhat == 1))
    fn = np.sum((y == 1) & (yhat == 0))
    return float(_mcc_from_counts(tp, tn, fp, fn))


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); tied scores count 1/2.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_score : array of shape (n,), finite real scores, higher = more likely class 1

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    UndefinedMetricError
        If only one class is present in ``y_true``.
    """
    y = _labels(y_true)
    s = _scores(y_score, "y_score")
    _same_length(y_true=y, y_score=s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError("AUROC is undefined when y_true contains only one class")
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(y_true, y_score) -> float:
    """Average precision: sum over distinct thresholds of (R_k - R_{k-1}) * P_k.

    The step-wise (not interpolated) area of scikit-learn's ``average_precision_score``; samples
    with equal scores enter together.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_score : array of shape (n,), finite real scores

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    UndefinedMetricError
        If ``y_true`` has no positive sample (recall is undefined).
    """
    y = _labels(y_true)
    s = _scores(y_score, "y_score")
    _same_length(y_true=y, y_score=s)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise UndefinedMetricError("average precision is undefined when y_true has no positives")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]
    tps = np.cumsum(ys)[ends]
    precision = tps / (ends + 1)
    recall_gain = np.diff(np.r_[0, tps]) / n_pos
    return float(np.sum(recall_gain * precision))


def nll(y_true, y_prob, *, eps: float = 1e-12) -> float:
    """Mean binary log loss (natural log), probabilities clipped to [eps, 1 - eps].

    Clipping keeps a confident mistake (p = 0 for a positive) finite: it costs -ln(eps) ~ 27.6
    nats with the default eps = 1e-12.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), P(class 1) in [0, 1]
    eps : float in (0, 0.5)

    Returns
    -------
    float >= 0
    """
    y = _labels(y_true)
    p = _probs(y_prob)
    _same_length(y_true=y, y_prob=p)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps!r}")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier(y_true, y_prob) -> float:
    """Brier score: mean squared difference between ``y_prob`` and ``y_true``.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), P(class 1) in [0, 1]

    Returns
    -------
    float in [0, 1]
    """
    y = _labels(y_true)
    p = _probs(y_prob)
    _same_length(y_true=y, y_prob=p)
    return float(np.mean((p - y) ** 2))


def ece(y_true, y_prob, *, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Positive-class expected calibration error.

    ``sum_b (n_b / n) * |mean(y_true in b) - mean(y_prob in b)|`` over non-empty bins b.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), P(class 1) in [0, 1]
    n_bins : int >= 1
    strategy : {"uniform", "quantile"}
        ``"uniform"``: equal-width bins ``[k/B, (k+1)/B)``, the last one closed ``[1 - 1/B, 1]``.
        ``"quantile"``: equal-mass bins: the samples sorted by ``y_prob`` (stable sort) are cut
        into ``n_bins`` consecutive groups whose sizes differ by at most one (``np.array_split``);
        tied probabilities may straddle a cut. With fewer samples than bins some bins are empty
        and skipped.

    Returns
    -------
    float in [0, 1]
    """
    y = _labels(y_true)
    p = _probs(y_prob)
    _same_length(y_true=y, y_prob=p)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy == "uniform":
        inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        bins = np.searchsorted(inner_edges, p, side="right")
    elif strategy == "quantile":
        order = np.argsort(p, kind="mergesort")
        bins = np.empty(len(p), dtype=np.int64)
        for b, idx in enumerate(np.array_split(order, n_bins)):
            bins[idx] = b
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    counts = np.bincount(bins, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    nonempty = counts > 0
    gaps = np.abs(sum_y[nonempty] - sum_p[nonempty])  # = n_b * |freq_b - conf_b|
    return float(gaps.sum() / len(p))


# --------------------------------------------------------------------------------------------
# NATIX reward
# --------------------------------------------------------------------------------------------


def natix_reward_windows(
    y_true, y_prob, *, mcc_window: int = 100, acc_window: int = 10
) -> tuple[np.ndarray, float]:
    """NATIX validator reward after every step of a sequence of answers.

    At step t (1-based) the reward is
    ``(0.5 * max(0, MCC over answers max(1, t-99)..t) + 0.5 * accuracy over max(1, t-9)..t) ** 3``
    (DESIGN §6); early steps use the shorter history that exists. Decisions are ``np.round(p)``
    (0.5 is class 0). An answer that is -1, NaN or outside [0, 1] is counted as a wrong decision
    (decision = 1 - label) in both windows. MCC is 0 when undefined (e.g. the window holds one
    class only).

    Interpretation, deliberately simpler than the live validator: the live code drops -1 answers
    from its history, keeps out-of-range answers as ``np.round(p)``, and zeroes only the round
    whose answer is invalid; here every invalid answer is simply a mistake.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}, in the order the requests arrived
    y_prob : array of shape (n,), the miner's answers (any float; invalid ones count as wrong)
    mcc_window, acc_window : int >= 1

    Returns
    -------
    rewards : ndarray of shape (n,), in [0, 1]
    mean_reward : float
    """
    y = _labels(y_true)
    p = _as_1d(y_prob, "y_prob")
    _same_length(y_true=y, y_prob=p)
    for name, w in (("mcc_window", mcc_window), ("acc_window", acc_window)):
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise ValueError(f"{name} must be a positive integer, got {w!r}")
    valid = (p >= 0.0) & (p <= 1.0)  # False for -1, NaN and out-of-range answers
    yhat = np.where(valid, np.round(np.where(valid, p, 0.0)), 1 - y).astype(np.int64)

    def window_sums(x: np.ndarray, w: int) -> np.ndarray:
        c = np.r_[0.0, np.cumsum(x, dtype=float)]
        t = np.arange(1, len(x) + 1)
        return c[t] - c[np.maximum(t - w, 0)]

    t = np.arange(1, len(y) + 1)
    acc = window_sums(y == yhat, acc_window) / np.minimum(t, acc_window)
    tp = window_sums((y == 1) & (yhat == 1), mcc_window)
    tn = window_sums((y == 0) & (yhat == 0), mcc_window)
    fp = window_sums((y == 0) & (yhat == 1), mcc_window)
    fn = window_sums((y == 1) & (yhat == 0), mcc_window)
    m = _mcc_from_counts(tp, tn, fp, fn)
    rewards = (0.5 * np.maximum(0.0, m) + 0.5 * acc) ** 3
    return rewards, float(rewards.mean())


def natix_reward(y_true, y_prob, *, mcc_window: int = 100, acc_window: int = 10) -> float:
    """NATIX validator reward after the whole sequence: the last entry of
    :func:`natix_reward_windows` (MCC over the last 100 answers, accuracy over the last 10).

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}, in arrival order
    y_prob : array of shape (n,), answers; -1, NaN or outside [0, 1] count as wrong
    mcc_window, acc_window : int >= 1

    Returns
    -------
    float in [0, 1]
    """
    rewards, _ = natix_reward_windows(y_true, y_prob, mcc_window=mcc_window, acc_window=acc_window)
    return float(rewards[-1])


# --------------------------------------------------------------------------------------------
# Selective classification
# --------------------------------------------------------------------------------------------


def _selective_inputs(errors, confidence) -> tuple[np.ndarray, np.ndarray]:
    e = _labels(errors, "errors")
    g = _scores(confidence, "confidence")
    _same_length(errors=e, confidence=g)
    return e, g


def _curve_counts(e: np.ndarray, g: np.ndarray):
    """Accepted counts, accepted errors and thresholds, one entry per distinct confidence."""
    order = np.argsort(-g, kind="mergesort")
    gs = g[order]
    ends = np.r_[np.flatnonzero(gs[1:] != gs[:-1]), len(gs) - 1]
    accepted = ends + 1
    accepted_errors = np.cumsum(e[order])[ends]
    return accepted, accepted_errors, gs[ends]


def risk_coverage_curve(
    errors, confidence
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Risk-coverage curve with one point per distinct confidence value.

    Point k uses the threshold ``tau_k`` = the k-th largest distinct confidence; every sample with
    ``confidence >= tau_k`` is accepted, so tied samples enter together. The curve has no
    coverage-0 point; :func:`aurc` and :func:`augrc` add their own start point.

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence

    Returns
    -------
    coverage : ndarray of shape (k,), increasing, ending at 1
    selective_risk : ndarray of shape (k,), accepted errors / accepted samples
    generalized_risk : ndarray of shape (k,), accepted errors / n
    thresholds : ndarray of shape (k,), decreasing distinct confidence values
    """
    e, g = _selective_inputs(errors, confidence)
    accepted, accepted_errors, thresholds = _curve_counts(e, g)
    n = len(e)
    return accepted / n, accepted_errors / accepted, accepted_errors / n, thresholds


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def aurc(errors, confidence) -> float:
    """Area under the selective-risk / coverage curve (trapezoid), as a fraction.

    The curve of :func:`risk_coverage_curve` is extended to coverage 0 with the selective risk of
    its first point (the highest-confidence group), i.e. the risk is held flat as coverage -> 0.
    Within a tie group the risk is interpolated linearly.

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence

    Returns
    -------
    float in [0, 1]
    """
    cov, sr, _, _ = risk_coverage_curve(errors, confidence)
    return _trapezoid(np.r_[0.0, cov], np.r_[sr[0], sr])


def augrc(errors, confidence) -> float:
    """Area under the generalized-risk / coverage curve (Traub et al., NeurIPS 2024).

    Trapezoid over :func:`risk_coverage_curve` started at (coverage 0, GR 0). Linear
    interpolation across a tie group gives tied correct/wrong pairs half credit, so for 0/1 loss
    ``augrc = (1 - auroc_f) * acc * (1 - acc) + (1 - acc)**2 / 2`` holds exactly.

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence

    Returns
    -------
    float in [0, 1/2]
    """
    cov, _, gr, _ = risk_coverage_curve(errors, confidence)
    return _trapezoid(np.r_[0.0, cov], np.r_[0.0, gr])


def e_aurc(errors, confidence) -> float:
    """Excess AURC: :func:`aurc` minus the AURC of the oracle confidence ``1 - errors``.

    The oracle puts all correct samples (tied) above all errors (tied); with this module's curve
    conventions its AURC is ``err**2 / 2`` (err = mean error), which is the minimum of
    :func:`aurc` over all confidence assignments, so ``e_aurc >= 0``. A perfect ranking with
    distinct confidences scores slightly above 0 (the per-sample curve is concave above the
    oracle's straight segment).

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence

    Returns
    -------
    float >= 0
    """
    e, g = _selective_inputs(errors, confidence)
    return aurc(e, g) - aurc(e, 1.0 - e)


def e_augrc(errors, confidence) -> float:
    """Excess AUGRC: ``augrc - err**2 / 2`` = ``(1 - auroc_f) * acc * err`` >= 0.

    Zero for any confidence that ranks every correct sample strictly above every error.

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence

    Returns
    -------
    float >= 0
    """
    e, g = _selective_inputs(errors, confidence)
    err = float(e.mean())
    return augrc(e, g) - 0.5 * err**2


def risk_at_coverage(errors, confidence, coverage: float) -> float:
    """Selective risk at the first curve point whose coverage reaches ``coverage``.

    That is the most confident threshold that accepts at least ``coverage * n`` samples (ties
    enter together, so the achieved coverage may exceed the target; a 1e-9 slack absorbs float
    noise in ``coverage * n``).

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence
    coverage : float in (0, 1]

    Returns
    -------
    float in [0, 1]
    """
    e, g = _selective_inputs(errors, confidence)
    coverage = _unit_interval(coverage, "coverage", open_low=True)
    accepted, accepted_errors, _ = _curve_counts(e, g)
    k = int(np.searchsorted(accepted, coverage * len(e) - 1e-9, side="left"))
    return float(accepted_errors[k] / accepted[k])


def coverage_at_risk(errors, confidence, risk: float) -> float:
    """Largest coverage over curve points whose selective risk is <= ``risk``; 0 if none.

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence
    risk : float in [0, 1]

    Returns
    -------
    float in [0, 1]
    """
    risk = _unit_interval(risk, "risk")
    cov, sr, _, _ = risk_coverage_curve(errors, confidence)
    ok = sr <= risk
    return float(cov[ok].max()) if ok.any() else 0.0


def auroc_failure(errors, confidence) -> float:
    """AUROC_f: probability that a correct sample has higher confidence than a wrong one
    (ties 1/2).

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    UndefinedMetricError
        If all samples are correct or all are wrong.
    """
    e, g = _selective_inputs(errors, confidence)
    if e.min() == e.max():
        raise UndefinedMetricError("AUROC_f is undefined when all samples are correct or all wrong")
    return auroc(1 - e, g)


def fpr_at_95_tpr(errors, confidence, *, tpr: float = 0.95) -> float:
    """Fraction of errors accepted at the threshold that first accepts >= ``tpr`` of the correct
    samples.

    Correct samples are the positives, ranked by confidence. Thresholds are the distinct
    confidence values (ties enter together); the most confident one whose true-positive rate
    (accepted correct / all correct) reaches ``tpr`` is used, and its false-positive rate
    (accepted errors / all errors) is returned. A 1e-9 slack absorbs float noise in
    ``tpr * n_correct``.

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence
    tpr : float in (0, 1]

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    UndefinedMetricError
        If all samples are correct or all are wrong.
    """
    e, g = _selective_inputs(errors, confidence)
    tpr = _unit_interval(tpr, "tpr", open_low=True)
    n_err = int(e.sum())
    n_ok = len(e) - n_err
    if n_err == 0 or n_ok == 0:
        raise UndefinedMetricError("FPR@TPR is undefined when all samples are correct or all wrong")
    accepted, accepted_errors, _ = _curve_counts(e, g)
    accepted_ok = accepted - accepted_errors
    k = int(np.searchsorted(accepted_ok, tpr * n_ok - 1e-9, side="left"))
    return float(accepted_errors[k] / n_err)


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _bootstrap_setup(
    arrays, n_boot: int, alpha: float, seed
) -> tuple[list[np.ndarray], np.ndarray]:
    """Validate bootstrap arguments and draw all resample index sets at once."""
    if not arrays:
        raise ValueError("bootstrap needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrs):
        if a.ndim == 0 or len(a) == 0:
            raise ValueError(f"array {i} must be a non-empty sequence, got shape {a.shape}")
    _same_length(**{f"array_{i}": a for i, a in enumerate(arrs)})
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arrs[0]), size=(n_boot, len(arrs[0])))
    return arrs, idx


def _or_nan(metric_fn: Callable[..., float], *args) -> float:
    """Metric value, or NaN when the metric is undefined on this resample."""
    try:
        return float(metric_fn(*args))
    except UndefinedMetricError:
        return float("nan")


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        raise UndefinedMetricError("the metric is undefined on every bootstrap resample")
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of ``metric_fn(*arrays)``.

    Rows are resampled jointly (the same indices for every array). Resamples on which the metric
    is undefined (it raises :class:`UndefinedMetricError` or returns NaN, e.g. AUROC with one
    class) are skipped; the percentiles are taken over the remaining resamples. Any other error
    propagates.

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(*arrays) -> float``, e.g. ``auroc`` or ``augrc``.
    *arrays : arrays of shape (n, ...)
        Same first dimension.
    n_boot : int >= 1
    alpha : float in (0, 1)
        The interval is [alpha/2, 1 - alpha/2].
    seed : int or None
        Seed of ``np.random.default_rng``.

    Returns
    -------
    estimate : float
        ``metric_fn`` on the full data.
    low, high : float

    Raises
    ------
    UndefinedMetricError
        If the metric is undefined on the full data or on every resample.
    """
    arrs, idx = _bootstrap_setup(arrays, n_boot, alpha, seed)
    estimate = float(metric_fn(*arrs))
    values = np.array([_or_nan(metric_fn, *(a[rows] for a in arrs)) for rows in idx])
    low, high = _percentile_interval(values, alpha)
    return estimate, low, high


def paired_bootstrap_diff(
    metric_fn: Callable[..., float],
    y_true,
    score_a,
    score_b,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Paired percentile bootstrap of ``metric_fn(y_true, score_a) - metric_fn(y_true, score_b)``.

    Both arms are evaluated on the same resampled rows, so shared noise cancels; identical arms
    give exactly (0, 0, 0). A resample on which either arm is undefined is skipped (see
    :func:`bootstrap_ci`).

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(y_true, score) -> float``.
    y_true, score_a, score_b : arrays of shape (n,)
    n_boot : int >= 1
    alpha : float in (0, 1)
    seed : int or None

    Returns
    -------
    diff : float
        Difference on the full data (a minus b).
    low, high : float
    """
    (y, a, b), idx = _bootstrap_setup((y_true, score_a, score_b), n_boot, alpha, seed)
    diff = float(metric_fn(y, a)) - float(metric_fn(y, b))
    values = np.array(
        [
            _or_nan(metric_fn, y[rows], a[rows]) - _or_nan(metric_fn, y[rows], b[rows])
            for rows in idx
        ]
    )
    low, high = _percentile_interval(values, alpha)
    return diff, low, high
