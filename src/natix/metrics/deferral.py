"""What one stage of a cascade decides and how well a confidence decides what to defer.

These are the single definitions every command uses: the confidence a stage reports, the
errors of the validator's decision ``p > 0.5``, and the deferral curve with its score s_d.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from natix.metrics.classification import predictions
from natix.metrics.inputs import (
    check_1d,
    check_labels,
    check_same_length,
    check_scores,
    trapezoid,
)

__all__ = ["DeferralCurve", "confidence", "decision_errors", "deferral_curve", "deferred_counts"]


def confidence(y_prob, gate=None) -> np.ndarray:
    """The confidence a stage reports: its gate score when it has one, else ``max(p, 1 - p)``.

    Parameters
    ----------
    y_prob : array of shape (n,), P(class 1) in [0, 1]
    gate : array of shape (n,), optional, a learned confidence (any finite real)

    Returns
    -------
    ndarray of shape (n,), float64
    """
    if gate is not None:
        return np.asarray(gate, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    return np.maximum(p, 1.0 - p)


def decision_errors(y_true, y_prob, *, threshold: float = 0.5) -> np.ndarray:
    """0/1 errors of the decision ``y_prob > threshold`` (the validator's rounding at 0.5).

    Returns
    -------
    ndarray of shape (n,), int64 in {0, 1}
    """
    y = check_labels(y_true)
    yhat = predictions(y_prob, threshold=threshold)
    check_same_length(y_true=y, y_prob=yhat)
    return (yhat != y).astype(np.int64)


class DeferralCurve(NamedTuple):
    """Joint accuracy of two stages when stage 1 defers its k least confident samples.

    Arrays have shape (n + 1,), one entry per deferral count k = 0..n (``ratio = k / n``).
    """

    ratio: np.ndarray
    joint: np.ndarray  # stage 1 on the kept samples, stage 2 on the deferred ones
    random: np.ndarray  # (1 - r)·acc1 + r·acc2: deferring at random
    ideal: np.ndarray  # the best order: what stage 2 fixes first, what it breaks last
    s_d: float  # ∫(joint − random) / ∫(ideal − random); NaN when ideal == random

    def at(self, k) -> dict:
        """The curve at deferral counts ``k`` (int array): ratio, joint, random and ideal accuracy."""
        k = np.asarray(k, dtype=np.int64)
        return {"deferral_ratio": self.ratio[k], "joint_accuracy": self.joint[k],
                "random_accuracy": self.random[k], "ideal_accuracy": self.ideal[k]}


def deferral_curve(correct1, correct2, confidence) -> DeferralCurve:
    """The deferral curve of a stage-1 confidence and its score s_d.

    Deferring the k least confident samples to stage 2 gives the joint accuracy ``joint(k/n)``;
    samples of equal confidence enter in expectation over their order, so the curve is exact and
    does not depend on how ties are sorted. ``s_d = ∫(joint − random) dr / ∫(ideal − random) dr``
    (trapezoid over the n + 1 points, exact for these piecewise-linear curves): 1 is the ideal
    order, 0 no better than random, negative worse.

    Parameters
    ----------
    correct1, correct2 : arrays of shape (n,), 1 where stage 1 (stage 2) is right
    confidence : array of shape (n,), finite stage-1 confidence (low = deferred first)

    Returns
    -------
    DeferralCurve
    """
    c1 = check_labels(correct1, "correct1")
    c2 = check_labels(correct2, "correct2")
    g = check_scores(confidence, "confidence")
    check_same_length(correct1=c1, correct2=c2, confidence=g)
    n = len(c1)
    ratio = np.arange(n + 1) / n
    acc1, acc2 = c1.mean(), c2.mean()
    gain = (c2 - c1).astype(np.float64)  # what deferring one sample changes, × n
    joint = acc1 + _tie_averaged_cumsum(gain, g) / n
    ideal = acc1 + np.concatenate([[0.0], np.cumsum(np.sort(gain)[::-1])]) / n
    random = (1 - ratio) * acc1 + ratio * acc2
    den = trapezoid(ratio, ideal - random)
    s_d = trapezoid(ratio, joint - random) / den if den > 1e-12 else float("nan")
    return DeferralCurve(ratio, joint, random, ideal, float(s_d))


def deferred_counts(confidence, thresholds) -> np.ndarray:
    """How many samples each threshold defers (``confidence < tau``), int64 of len(thresholds)."""
    g = np.sort(check_1d(confidence, "confidence"))
    return np.searchsorted(g, np.asarray(thresholds, dtype=np.float64), side="left").astype(np.int64)


def _tie_averaged_cumsum(gain: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """``[0, Σ gain of the k least confident]`` for k = 0..n, ties averaged over their orders.

    Within a run of equal confidences every order is equally likely, so the expected sum is
    linear in k between the run's ends.
    """
    order = np.argsort(confidence, kind="mergesort")
    g, s = gain[order], confidence[order]
    cum = np.concatenate([[0.0], np.cumsum(g)])
    ends = np.concatenate([[0], np.flatnonzero(s[1:] != s[:-1]) + 1, [len(s)]])  # run boundaries in k
    return np.interp(np.arange(len(s) + 1), ends, cum[ends])

