"""Every metric natix reports for one split, by name."""

from __future__ import annotations

import numpy as np

from natix.metrics import classification as C
from natix.metrics import selective as S
from natix.metrics.deferral import confidence as stage_confidence
from natix.metrics.deferral import decision_errors

__all__ = ["LOWER_IS_BETTER", "METRIC_NAMES", "split_metrics"]

METRIC_NAMES = ("accuracy", "balanced_accuracy", "mcc", "auroc", "auprc", "nll", "brier", "ece", "ece_mass",
                "aurc", "augrc", "e_augrc", "auroc_f", "natix_reward")
LOWER_IS_BETTER = frozenset({"nll", "brier", "ece", "ece_mass", "aurc", "augrc", "e_augrc"})

_BY_PROBABILITY = {
    "accuracy": C.accuracy, "balanced_accuracy": C.balanced_accuracy, "mcc": C.mcc, "auroc": C.auroc,
    "auprc": C.auprc, "nll": C.nll, "brier": C.brier, "ece": C.ece,
    "ece_mass": lambda y, p: C.ece(y, p, strategy="quantile"),
    "natix_reward": lambda y, p: C.natix_reward_windows(y, p)[1],
}
_BY_CONFIDENCE = {"aurc": S.aurc, "augrc": S.augrc, "e_augrc": S.e_augrc, "auroc_f": S.auroc_failure}


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
        try:
            if name in _BY_CONFIDENCE:
                errors = decision_errors(y, p) if errors is None else errors
                out[name] = float(_BY_CONFIDENCE[name](errors, conf))
            else:
                out[name] = float(_BY_PROBABILITY[name](y, p))
        except ValueError:
            out[name] = float("nan")
    out["n"] = len(y)
    return out
