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
* Bootstrap intervals resample rows (and, in :func:`seed_bootstrap_ci`, training seeds too);
  ``method="auto"`` is BCa below ``AUTO_BCA_BELOW`` = 500 rows and percentile from there on.
* Bad input raises :class:`ValueError` with a one-line message. A metric that is mathematically
  undefined for otherwise valid input (AUROC with one class present, ...) raises
  :class:`UndefinedMetricError`, a ``ValueError`` subclass that the bootstrap treats as "skip this
  resample".
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable, NamedTuple

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
    "optimal_aurc",
    "e_aurc",
    "aurc_minus_tied_oracle",
    "e_augrc",
    "risk_at_coverage",
    "coverage_at_risk",
    "auroc_failure",
    "fpr_at_95_tpr",
    "BOOTSTRAP_METHODS",
    "AUTO_BCA_BELOW",
    "bootstrap_method",
    "bootstrap_ci",
    "paired_bootstrap_diff",
    "SeedBootstrap",
    "seed_bootstrap_ci",
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


_NLL_EPS = 1e-12
_ECE_BINS = 15


def _log_loss(y: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    """Per-sample binary log loss, probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(p, eps, 1.0 - eps)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def _uniform_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: [k/B, (k+1)/B), the last one closed."""
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner_edges, p, side="right")


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


def nll(y_true, y_prob, *, eps: float = _NLL_EPS) -> float:
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
    return float(np.mean(_log_loss(y, p, eps)))


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


def ece(y_true, y_prob, *, n_bins: int = _ECE_BINS, strategy: str = "uniform") -> float:
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
        bins = _uniform_bins(p, n_bins)
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


def optimal_aurc(err: float) -> float:
    """AURC* = ``err + (1 - err) * ln(1 - err)``: the AURC of a perfect ranking at error rate err.

    Geifman et al. (ICLR 2019) take the continuous limit of the selective risk of a confidence
    that ranks every correct sample above every error: risk 0 up to coverage ``1 - err``, then
    ``(c - (1 - err)) / c``. At ``err = 1`` the value is the limit, 1.

    Parameters
    ----------
    err : float in [0, 1]
        The error rate (mean of the 0/1 errors).

    Returns
    -------
    float in [0, 1]
    """
    err = _unit_interval(err, "err")
    correct = 1.0 - err
    return err + (correct * np.log(correct) if correct > 0.0 else 0.0)


def e_aurc(errors, confidence) -> float:
    """Excess AURC (Geifman et al., ICLR 2019): ``aurc - optimal_aurc(err)``, err = mean error.

    The published E-AURC. The reference :func:`optimal_aurc` is a continuous limit, so on n
    samples the value can dip slightly below 0: a perfect ranking with distinct confidences
    scores ``-O(1 / n**2)`` (the trapezoid under-estimates the concave optimal curve; the
    O(1/n) terms cancel), and confidences that tie every correct sample (this module
    interpolates linearly across a tie group) reach ``err**2 / 2 - optimal_aurc(err)``, which
    is what :func:`aurc_minus_tied_oracle` measures from.

    Parameters
    ----------
    errors : array of shape (n,), 0/1 loss per sample
    confidence : array of shape (n,), finite real confidence

    Returns
    -------
    float in [err**2 / 2 - optimal_aurc(err), 1]
    """
    e, g = _selective_inputs(errors, confidence)
    return aurc(e, g) - optimal_aurc(float(e.mean()))


def aurc_minus_tied_oracle(errors, confidence) -> float:
    """:func:`aurc` minus the AURC of the tied oracle confidence ``1 - errors``.

    The tied oracle puts all correct samples (tied) above all errors (tied); with this module's
    curve conventions its curve is the straight segment from (1 - err, 0) to (1, err), so its
    AURC is ``err**2 / 2`` (1 when every sample is an error). That is the minimum of
    :func:`aurc` over all confidence assignments, so the value is >= 0, and 0 for the oracle. A
    perfect ranking with distinct confidences scores slightly above 0 (its per-sample curve is
    concave above the oracle's segment). Not the published E-AURC: see :func:`e_aurc`.

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

BOOTSTRAP_METHODS = ("percentile", "bca", "auto")
# ``method="auto"`` uses BCa below this many rows and the percentile interval from it on.
AUTO_BCA_BELOW = 500
_CHUNK = 1 << 21  # elements of one [resamples, n] weight block (16 MB of float64)
_NORMAL = NormalDist()


def bootstrap_method(method: str, n: int) -> str:
    """The interval a bootstrap over ``n`` rows computes: ``"bca"`` or ``"percentile"``.

    ``"auto"`` is BCa when ``n < AUTO_BCA_BELOW`` (500) and percentile otherwise. At small n the
    percentile interval under-covers because the bootstrap distribution is biased and skewed
    (AUROC 0.96 at n = 60: coverage 0.89 instead of 0.95; BCa 0.94). BCa corrects both, at the
    price of a jackknife: n more evaluations of the metric, batched for the metrics listed in
    :func:`bootstrap_ci`, so its cost grows like n**2. The gap closes like 1/sqrt(n): at
    n = 500 the same AUROC's percentile interval covers about 0.935 and BCa's lower end sits
    some 7 % of the interval's width lower. Pass ``"bca"`` to pay for it at any n.

    Parameters
    ----------
    method : {"percentile", "bca", "auto"}
    n : int, number of rows resampled

    Returns
    -------
    {"percentile", "bca"}
    """
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {', '.join(BOOTSTRAP_METHODS)}, got {method!r}")
    if method == "auto":
        return "bca" if n < AUTO_BCA_BELOW else "percentile"
    return method


def _bootstrap_setup(arrays, n_boot: int, alpha: float, method: str, seed):
    """Validate bootstrap arguments; draw all resample row indices [n_boot, n] at once.

    Returns the arrays, the indices, the generator (for further draws) and the resolved method.
    """
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
    method = bootstrap_method(method, len(arrs[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arrs[0]), size=(n_boot, len(arrs[0])))
    return arrs, idx, rng, method


def _or_nan(metric_fn: Callable[..., float], *args) -> float:
    """Metric value, or NaN when the metric is undefined on this resample."""
    try:
        return float(metric_fn(*args))
    except UndefinedMetricError:
        return float("nan")


def _defined(value: float) -> float:
    """``value``, or UndefinedMetricError if it is NaN."""
    if np.isnan(value):
        raise UndefinedMetricError("the metric is undefined on the full data")
    return value


# Weighted forms: a resample is the data with integer row weights w (how often each row was
# drawn; 0 for the left-out row of a jackknife sample), so one [k, n] weight matrix evaluates k
# resamples at once. Each takes validated float arrays and returns [k] values equal to the plain
# metric on the repeated rows (NaN where it is undefined).


def _confusion_w(y, p, w):
    """Weighted confusion counts (tp, tn, fp, fn), each [k], of the decisions p > 0.5."""
    yhat = predictions(p).astype(bool)
    pos = y == 1
    return tuple(w @ m.astype(float) for m in (pos & yhat, ~pos & ~yhat, ~pos & yhat, pos & ~yhat))


def _accuracy_w(y, p, w):
    tp, tn, fp, fn = _confusion_w(y, p, w)
    return (tp + tn) / (tp + tn + fp + fn)


def _balanced_accuracy_w(y, p, w):
    tp, tn, fp, fn = _confusion_w(y, p, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        recalls = np.stack([tn / (tn + fp), tp / (tp + fn)])
    return np.nanmean(recalls, axis=0)  # the classes present; a resample always has one


def _mcc_w(y, p, w):
    return _mcc_from_counts(*_confusion_w(y, p, w))


def _nll_w(y, p, w):
    return (w @ _log_loss(y, p, _NLL_EPS)) / w.sum(axis=1)


def _brier_w(y, p, w):
    return (w @ (p - y) ** 2) / w.sum(axis=1)


def _ece_w(y, p, w):
    gaps = np.zeros((len(p), _ECE_BINS))
    gaps[np.arange(len(p)), _uniform_bins(p, _ECE_BINS)] = y - p
    return np.abs(w @ gaps).sum(axis=1) / w.sum(axis=1)


def _auroc_w(y, s, w):
    order = np.argsort(s, kind="mergesort")
    ss, ys, ws = s[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    pos = ws * ys
    neg = ws - pos
    if len(starts) < len(ss):  # merge tied scores into groups [k, tie groups]
        pos = np.add.reduceat(pos, starts, axis=1)
        neg = np.add.reduceat(neg, starts, axis=1)
    u = np.sum(pos * (np.cumsum(neg, axis=1) - 0.5 * neg), axis=1)  # ties count 1/2
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    return np.where(defined, u / np.where(defined, n_pos * n_neg, 1.0), np.nan)


def _auprc_w(y, s, w):
    order = np.argsort(-s, kind="mergesort")
    ss, ys, ws = s[order], y[order], w[:, order]
    ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]
    tps = np.cumsum(ws * ys, axis=1)[:, ends]
    accepted = np.cumsum(ws, axis=1)[:, ends]
    precision = np.divide(tps, accepted, out=np.zeros_like(tps), where=accepted > 0)
    n_pos = tps[:, -1]
    area = np.sum(np.diff(tps, axis=1, prepend=0.0) * precision, axis=1)
    return np.where(n_pos > 0, area / np.where(n_pos > 0, n_pos, 1.0), np.nan)


def _auroc_failure_w(e, g, w):
    return _auroc_w(1.0 - e, g, w)


def _e_augrc_w(e, g, w):
    acc = (w @ (1.0 - e)) / w.sum(axis=1)
    # (1 - AUROC_f) * acc * err; AUROC_f is undefined exactly when acc * err = 0
    auroc_f = np.nan_to_num(_auroc_failure_w(e, g, w), nan=1.0)
    return (1.0 - auroc_f) * acc * (1.0 - acc)


def _augrc_w(e, g, w):
    err = (w @ e) / w.sum(axis=1)
    return _e_augrc_w(e, g, w) + 0.5 * err**2


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Row weights [k, n] of k resamples given as row indices [k, n]."""
    k = len(idx)
    flat = (idx + n * np.arange(k)[:, None]).ravel()
    return np.bincount(flat, minlength=k * n).reshape(k, n).astype(float)


def _leave_one_out(start: int, stop: int, n: int) -> np.ndarray:
    """Row weights [stop - start, n] of the jackknife samples that leave out rows start..stop-1."""
    w = np.ones((stop - start, n))
    w[np.arange(stop - start), np.arange(start, stop)] = 0.0
    return w


def _weighted_form(metric_fn, datasets):
    """``metric_fn``'s weighted form, if it has one and every dataset is two 1-D arrays."""
    weighted = next((w for f, w in _WEIGHTED if f is metric_fn), None)
    if weighted is None or any(len(d) != 2 or any(a.ndim != 1 for a in d) for d in datasets):
        return None
    return weighted


def _replicates(metric_fn, datasets, idx) -> np.ndarray:
    """``metric_fn`` on each bootstrap resample of each dataset, or on each jackknife sample.

    ``datasets`` is a list of tuples of same-length arrays; ``idx`` holds resample row indices
    [m, n], or is None for the n leave-one-out samples. Returns [m, len(datasets)], NaN where the
    metric is undefined. Metrics with a weighted form run in blocks of resamples; any other
    metric is called once per resample and dataset.
    """
    n = len(datasets[0][0])
    m = n if idx is None else len(idx)
    weighted = _weighted_form(metric_fn, datasets)
    if weighted is None:
        rows = (np.delete(np.arange(n), i) for i in range(n)) if idx is None else idx
        values = [[_or_nan(metric_fn, *(a[r] for a in d)) for d in datasets] for r in rows]
        return np.array(values, dtype=float).reshape(m, len(datasets))
    floats = [tuple(np.asarray(a, dtype=float) for a in d) for d in datasets]
    out = np.empty((m, len(datasets)))
    step = max(1, _CHUNK // n)
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, m, step):
            stop = min(m, start + step)
            w = _leave_one_out(start, stop, n) if idx is None else _counts(idx[start:stop], n)
            for j, (x, z) in enumerate(floats):
                out[start:stop, j] = weighted(x, z, w)
    return out


def _acceleration(jackknife: np.ndarray) -> float:
    """BCa acceleration from jackknife values (NaN ones dropped): skewness of their influence."""
    jackknife = jackknife[~np.isnan(jackknife)]
    if jackknife.size < 2:
        return 0.0
    d = jackknife.mean() - jackknife
    ss = float(np.sum(d**2))
    return float(np.sum(d**3)) / (6.0 * ss**1.5) if ss > 0.0 else 0.0


def _bca_levels(values: np.ndarray, estimate: float, jackknife: np.ndarray, alpha: float):
    """The two quantile levels of the BCa interval (Efron 1987; Efron & Tibshirani 1993, 14.3).

    The bias correction z0 counts bootstrap values equal to the estimate as half below (a
    discrete metric such as accuracy ties it often; "equal" allows for rounding, as a resample's
    value and the estimate may be summed in different orders), and the fraction below is kept
    within [1/(2B), 1 - 1/(2B)] so that z0 stays finite.
    """
    b = len(values)
    tie = np.abs(values - estimate) <= 1e-10 * max(1.0, abs(estimate))
    below = (np.sum((values < estimate) & ~tie) + 0.5 * np.sum(tie)) / b
    z0 = _NORMAL.inv_cdf(min(max(below, 0.5 / b), 1.0 - 0.5 / b))
    a = _acceleration(jackknife)
    levels = []
    for z in (_NORMAL.inv_cdf(alpha / 2.0), _NORMAL.inv_cdf(1.0 - alpha / 2.0)):
        t = z0 + z
        denom = 1.0 - a * t
        # the adjusted level tends to 0 or 1 as denom -> 0+; past that the formula folds back
        levels.append(_NORMAL.cdf(z0 + t / denom) if denom > 0.0 else float(t > 0.0))
    return levels


def _interval(values, alpha: float, method: str, estimate: float, jackknife) -> tuple[float, float]:
    """Percentile or BCa interval over the defined bootstrap values; ``jackknife()`` gives the
    jackknife values (only BCa calls it)."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        raise UndefinedMetricError("the metric is undefined on every bootstrap resample")
    if method == "bca":
        levels = _bca_levels(finite, estimate, jackknife(), alpha)
    else:
        levels = [alpha / 2.0, 1.0 - alpha / 2.0]
    low, high = np.quantile(finite, levels)
    return float(low), float(high)


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays,
    n_boot: int = 1000,
    alpha: float = 0.05,
    method: str = "auto",
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Bootstrap confidence interval of ``metric_fn(*arrays)``, percentile or BCa.

    Rows are resampled jointly (the same indices for every array). Resamples on which the metric
    is undefined (it raises :class:`UndefinedMetricError` or returns NaN, e.g. AUROC with one
    class) are skipped; the interval is taken over the remaining resamples. Any other error
    propagates.

    BCa (bias-corrected and accelerated, Efron 1987) shifts the percentile levels by the median
    bias of the bootstrap distribution and by the skewness of the jackknife (leave-one-row-out
    values, those where the metric is undefined dropped). It is second-order accurate; the
    percentile interval is first-order and under-covers at small n.

    These metrics, called with their default options, are evaluated for all resamples at once
    (as weighted sums over the rows): :func:`accuracy`, :func:`balanced_accuracy`, :func:`mcc`,
    :func:`auroc`, :func:`auprc`, :func:`nll`, :func:`brier`, :func:`ece`, :func:`augrc`,
    :func:`e_augrc`, :func:`auroc_failure`. Any other callable is called once per resample (and
    once per row for the BCa jackknife).

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(*arrays) -> float``, e.g. ``auroc`` or ``augrc``.
    *arrays : arrays of shape (n, ...)
        Same first dimension.
    n_boot : int >= 1
    alpha : float in (0, 1)
        Two-sided level: the interval aims at coverage 1 - alpha.
    method : {"auto", "percentile", "bca"}
        ``"auto"``: BCa when n < ``AUTO_BCA_BELOW`` (500), percentile otherwise (see
        :func:`bootstrap_method`).
    seed : int or None
        Seed of ``np.random.default_rng``; the resample rows are the same for every method.

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
    arrs, idx, _, method = _bootstrap_setup(arrays, n_boot, alpha, method, seed)
    estimate = _defined(float(metric_fn(*arrs)))
    values = _replicates(metric_fn, [arrs], idx)[:, 0]
    low, high = _interval(values, alpha, method, estimate,
                          lambda: _replicates(metric_fn, [arrs], None)[:, 0])
    return estimate, low, high


def paired_bootstrap_diff(
    metric_fn: Callable[..., float],
    y_true,
    score_a,
    score_b,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    method: str = "auto",
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap of ``metric_fn(y_true, score_a) - metric_fn(y_true, score_b)``.

    Both arms are evaluated on the same resampled rows, so shared noise cancels; identical arms
    give exactly (0, 0, 0). A resample on which either arm is undefined is skipped; the interval
    (percentile or BCa, see :func:`bootstrap_ci`) is that of the difference.

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(y_true, score) -> float``.
    y_true, score_a, score_b : arrays of shape (n,)
    n_boot : int >= 1
    alpha : float in (0, 1)
    method : {"auto", "percentile", "bca"}
    seed : int or None

    Returns
    -------
    diff : float
        Difference on the full data (a minus b).
    low, high : float
    """
    arrays = (y_true, score_a, score_b)
    (y, a, b), idx, _, method = _bootstrap_setup(arrays, n_boot, alpha, method, seed)
    diff = _defined(float(metric_fn(y, a)) - float(metric_fn(y, b)))
    datasets = [(y, a), (y, b)]

    def differences(rows):
        values = _replicates(metric_fn, datasets, rows)
        return values[:, 0] - values[:, 1]

    low, high = _interval(differences(idx), alpha, method, diff, lambda: differences(None))
    return diff, low, high


class SeedBootstrap(NamedTuple):
    """Result of :func:`seed_bootstrap_ci`; the ``diff`` fields are None without a reference."""

    estimate: float
    low: float
    high: float
    diff: float | None
    diff_low: float | None
    diff_high: float | None
    method: str


def _seed_matrix(scores, name: str) -> np.ndarray:
    """Scores as a non-empty [S, n] array (a 1-D array is one seed)."""
    arr = np.asarray(scores)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have shape (seeds, n) with seeds, n >= 1, got {arr.shape}")
    return arr


def _seed_mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per resample, the mean of the per-seed values [m, S] weighted by seed counts [m, S],
    over the seeds where the value is defined; NaN where none is."""
    defined = ~np.isnan(values)
    c = np.where(defined, counts, 0.0)
    total = c.sum(axis=1)
    weighted = np.sum(np.where(defined, values, 0.0) * c, axis=1)
    return np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)


def seed_bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    scores,
    *,
    reference=None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    method: str = "auto",
    seed: int | None = 0,
) -> SeedBootstrap:
    """Bootstrap CI of the mean over training seeds of a per-seed metric on shared rows.

    The estimate is ``nanmean_s metric_fn(y_true, scores[s])``: the metric of each seed's
    predictions, averaged over the seeds where it is defined. Each resample draws n rows with
    replacement and, when there are >= 2 seeds, S seeds with replacement, recomputes the per-seed
    metric on the drawn rows and averages it over the drawn seeds; so the interval reflects both
    the finite evaluation set and the seed-to-seed spread of training. With ``reference`` (same
    shape, e.g. a baseline trained with the same seeds) the difference estimate - reference
    estimate gets an interval from the same row and seed resamples for both, seed i paired with
    reference seed i, so shared noise cancels.

    BCa (see :func:`bootstrap_ci`) takes its acceleration from the leave-one-row-out jackknife of
    the seed mean (all seeds kept). With one seed the result equals :func:`bootstrap_ci` and
    :func:`paired_bootstrap_diff` with the same seed.

    Parameters
    ----------
    metric_fn : callable
        ``metric_fn(y_true, score) -> float``, e.g. ``mcc`` or ``auroc``.
    y_true : array of shape (n,)
    scores : array of shape (S, n), or (n,) for one seed
        One row of predictions per seed, on the same n rows.
    reference : array of shape (S, n), optional
    n_boot : int >= 1
    alpha : float in (0, 1)
    method : {"auto", "percentile", "bca"}
        ``"auto"``: BCa when n < ``AUTO_BCA_BELOW`` (500), percentile otherwise.
    seed : int or None
        Seed of ``np.random.default_rng``.

    Returns
    -------
    SeedBootstrap
        ``estimate, low, high``, then ``diff, diff_low, diff_high`` (None without
        ``reference``) and the ``method`` used ("bca" or "percentile").

    Raises
    ------
    UndefinedMetricError
        If the metric is undefined for every seed, or on every resample.
    """
    s = _seed_matrix(scores, "scores")
    ref = None if reference is None else _seed_matrix(reference, "reference")
    if ref is not None and ref.shape != s.shape:
        raise ValueError(f"reference must have the shape of scores {s.shape} (seed i is paired "
                         f"with seed i), got {ref.shape}")
    (y, _), idx, rng, method = _bootstrap_setup((y_true, s[0]), n_boot, alpha, method, seed)
    n_seeds = len(s)
    arms = [s] if ref is None else [s, ref]
    datasets = [(y, row) for arm in arms for row in arm]
    if n_seeds > 1:
        seed_counts = _counts(rng.integers(0, n_seeds, size=(n_boot, n_seeds)), n_seeds)
    else:
        seed_counts = np.ones((n_boot, 1))

    def seed_means(rows, counts):
        values = _replicates(metric_fn, datasets, rows)
        per_arm = np.split(values, len(arms), axis=1)  # [m, S] per arm
        return [_seed_mean(v, counts) for v in per_arm]

    full = np.array([[_or_nan(metric_fn, y, row) for row in arm] for arm in arms])
    estimates = [_defined(float(v)) for v in _seed_mean(full, np.ones_like(full))]
    boot = seed_means(idx, seed_counts)
    jack_cache: list = []

    def jackknife():
        if not jack_cache:
            jack_cache.extend(seed_means(None, np.ones((len(y), n_seeds))))
        return jack_cache

    low, high = _interval(boot[0], alpha, method, estimates[0], lambda: jackknife()[0])
    if ref is None:
        return SeedBootstrap(estimates[0], low, high, None, None, None, method)
    diff = estimates[0] - estimates[1]
    d_low, d_high = _interval(boot[0] - boot[1], alpha, method, diff,
                              lambda: jackknife()[0] - jackknife()[1])
    return SeedBootstrap(estimates[0], low, high, diff, d_low, d_high, method)


_WEIGHTED = (
    (accuracy, _accuracy_w),
    (balanced_accuracy, _balanced_accuracy_w),
    (mcc, _mcc_w),
    (auroc, _auroc_w),
    (auprc, _auprc_w),
    (nll, _nll_w),
    (brier, _brier_w),
    (ece, _ece_w),
    (augrc, _augrc_w),
    (e_augrc, _e_augrc_w),
    (auroc_failure, _auroc_failure_w),
)
