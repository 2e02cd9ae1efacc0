"""Binary classification and calibration error."""

from __future__ import annotations

import numpy as np

from natix.metrics.inputs import (
    ECE_BINS,
    NLL_EPS,
    UndefinedMetricError,
    average_ranks,
    check_labels,
    check_probs,
    check_same_length,
    check_scores,
    check_unit_interval,
    log_loss,
    mcc_from_counts,
    uniform_bins,
)


def _binary_inputs(y_true, y_prob, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Validated labels and hard decisions."""
    y = check_labels(y_true)
    p = check_probs(y_prob)
    check_same_length(y_true=y, y_prob=p)
    return y, predictions(p, threshold=threshold)


# Binary classification
# --------------------------------------------------------------------------------------------


def predictions(y_prob, *, threshold: float = 0.5) -> np.ndarray:
    """Hard decisions ``y_prob > threshold``.

    With ``threshold=0.5`` this equals the NATIX validator's ``np.round(p)`` for p in [0, 1]:
    numpy rounds half to even, so p = 0.5 is class 0 ("no roadwork").

    Parameters
    ----------
    y_prob : array of shape (n,), n >= 0
        P(class 1), in [0, 1].
    threshold : float in [0, 1]

    Returns
    -------
    ndarray of shape (n,), int64 in {0, 1}
    """
    threshold = check_unit_interval(threshold, "threshold")
    if np.ndim(y_prob) == 1 and np.size(y_prob) == 0:
        return np.zeros(0, dtype=np.int64)  # no images, no decisions (a batch may be empty)
    return (check_probs(y_prob) > threshold).astype(np.int64)


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
    return float(mcc_from_counts(tp, tn, fp, fn))


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
    y = check_labels(y_true)
    s = check_scores(y_score, "y_score")
    check_same_length(y_true=y, y_score=s)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError("AUROC is undefined when y_true contains only one class")
    ranks = average_ranks(s)
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
    y = check_labels(y_true)
    s = check_scores(y_score, "y_score")
    check_same_length(y_true=y, y_score=s)
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


def nll(y_true, y_prob, *, eps: float = NLL_EPS) -> float:
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
    y = check_labels(y_true)
    p = check_probs(y_prob)
    check_same_length(y_true=y, y_prob=p)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps!r}")
    return float(np.mean(log_loss(y, p, eps)))


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
    y = check_labels(y_true)
    p = check_probs(y_prob)
    check_same_length(y_true=y, y_prob=p)
    return float(np.mean((p - y) ** 2))


# The binning strategies of :func:`ece` and :func:`reliability_curve`, in the words a label uses.
ECE_STRATEGIES = {"uniform": "equal-width", "quantile": "equal-mass"}


def ece_binning(*, n_bins: int = ECE_BINS, strategy: str = "uniform") -> str:
    """The binning of :func:`ece` in words, for tables and plots: ``"15 equal-width bins"``.

    Parameters
    ----------
    n_bins : int >= 1
    strategy : {"uniform", "quantile"}

    Returns
    -------
    str
    """
    if strategy not in ECE_STRATEGIES:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    return f"{n_bins} {ECE_STRATEGIES[strategy]} bin" + ("" if n_bins == 1 else "s")


def ece(y_true, y_prob, *, n_bins: int = ECE_BINS, strategy: str = "uniform") -> float:
    """Positive-class expected calibration error (default: :data:`ECE_BINS` = 15 equal-width bins).

    ``sum_b (n_b / n) * |mean(y_true in b) - mean(y_prob in b)|`` over non-empty bins b. Every ECE
    natix reports (metrics.json, ``natix evaluate``, ``natix calibrate``, the reliability diagram of
    ``natix report``) uses the defaults, so they agree.

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
    counts, sum_y, sum_p = _binned(y_true, y_prob, n_bins, strategy)
    nonempty = counts > 0
    gaps = np.abs(sum_y[nonempty] - sum_p[nonempty])  # = n_b * |freq_b - conf_b|
    return float(gaps.sum() / counts.sum())


def reliability_curve(y_true, y_prob, *, n_bins: int = ECE_BINS, strategy: str = "uniform"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reliability diagram: mean probability, positive frequency and count per non-empty bin.

    Bins as :func:`ece` (``strategy`` "uniform" or "quantile"), so the ECE is the count-weighted
    mean gap between the first two arrays.

    Returns
    -------
    mean_prob, frequency : ndarrays of shape (k,), k <= n_bins non-empty bins in bin order
    counts : ndarray of shape (k,), int64
    """
    counts, sum_y, sum_p = _binned(y_true, y_prob, n_bins, strategy)
    keep = counts > 0
    return sum_p[keep] / counts[keep], sum_y[keep] / counts[keep], counts[keep]


def _binned(y_true, y_prob, n_bins, strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin sample count, sum of labels and sum of probabilities (validated inputs)."""
    y = check_labels(y_true)
    p = check_probs(y_prob)
    check_same_length(y_true=y, y_prob=p)
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy == "uniform":
        bins = uniform_bins(p, n_bins)
    elif strategy == "quantile":
        order = np.argsort(p, kind="mergesort")
        bins = np.empty(len(p), dtype=np.int64)
        for b, idx in enumerate(np.array_split(order, n_bins)):
            bins[idx] = b
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    counts = np.bincount(bins, minlength=n_bins)
    return counts, np.bincount(bins, weights=y, minlength=n_bins), np.bincount(bins, weights=p, minlength=n_bins)
