"""Every metric natix reports for one split, by name."""

from __future__ import annotations

import numpy as np

from natix.metrics import classification as C
from natix.metrics import reward as R
from natix.metrics import selective as S
from natix.metrics.deferral import confidence as stage_confidence
from natix.metrics.deferral import decision_errors

__all__ = ["LOWER_IS_BETTER", "METRIC_NAMES", "split_metrics"]

# Each reported metric: its function and whether it reads the confidence (the selective metrics,
# on the errors of p > 0.5) or the probability. The order is the order of every table.
_METRICS = {
    "accuracy": (C.accuracy, False), "balanced_accuracy": (C.balanced_accuracy, False), "mcc": (C.mcc, False),
    "auroc": (C.auroc, False), "auprc": (C.auprc, False), "nll": (C.nll, False), "brier": (C.brier, False),
    "ece": (C.ece, False), "ece_mass": (lambda y, p: C.ece(y, p, strategy="quantile"), False),
    "aurc": (S.aurc, True), "augrc": (S.augrc, True), "e_augrc": (S.e_augrc, True), "auroc_f": (S.auroc_failure, True),
    "reward_ordered": (lambda y, p: R.ordered_rewards(y, p)[1], False),
    "reward_expected": (lambda y, p: R.expected_reward(y, p, seed=0).mean, False),
}
METRIC_NAMES = tuple(_METRICS)
LOWER_IS_BETTER = frozenset({"nll", "brier", "ece", "ece_mass", "aurc", "augrc", "e_augrc"})


def split_metrics(y_true, y_prob, confidence=None, *, names=METRIC_NAMES) -> dict:
    """The metrics `names` of one split as floats (NaN where undefined), plus ``n``.

    Parameters
    ----------
    y_true : array of shape (n,), labels in {0, 1}
    y_prob : array of shape (n,), P(class 1)
    confidence : array of shape (n,), optional; default ``max(p, 1 - p)``. The selective metrics
        (aurc, augrc, e_augrc, auroc_f) rank the errors of ``y_prob > 0.5`` by it.
    names : metric names from :data:`METRIC_NAMES`

    Returns
    -------
    dict name → float, and ``"n"`` → int
    """
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}: pass names from {', '.join(METRIC_NAMES)}")
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(y_prob, dtype=np.float64)
    conf = stage_confidence(p) if confidence is None else np.asarray(confidence, dtype=np.float64)
    errors = None
    out = {}
    for name in names:
        fn, selective = _METRICS[name]
        try:
            if selective:
                errors = decision_errors(y, p) if errors is None else errors
                out[name] = float(fn(errors, conf))
            else:
                out[name] = float(fn(y, p))
        except ValueError:
            out[name] = float("nan")
    out["n"] = len(y)
    return out
