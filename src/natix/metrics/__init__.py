"""Pure metric functions: binary classification, calibration, NATIX reward, selective
classification, cascade deferral and bootstrap confidence intervals.

Every function takes numpy-like arrays and returns a float (or a tuple of arrays). Nothing here
does I/O or logging, and nothing imports from the rest of natix, so the package is usable from a
notebook on a bare numpy install.

Conventions
-----------
* ``y_true`` holds binary labels in {0, 1} (bool, int or float 0.0/1.0).
* ``y_prob`` is P(class 1) in [0, 1]; ``y_score`` is any finite real score (higher = more
  positive).
* Hard decisions are ``y_prob > threshold``. With the default threshold 0.5 this is exactly the
  NATIX validator's ``np.round(p)`` on [0, 1] (numpy rounds half to even, so p = 0.5 is class 0).
* The NATIX reward (:mod:`natix.metrics.reward`): :func:`validator_rewards` is the validator's
  exact per-answer sequence, :func:`ordered_rewards` the same with every invalid answer counted as
  a wrong decision, :func:`expected_reward` its expectation over random challenge streams;
  :data:`REWARD_DEFINITIONS` says which definition each reported reward key uses.
* Selective classification: ``errors`` is the 0/1 loss per sample, ``confidence`` any finite real;
  a sample is accepted when ``confidence >= tau``. Risks and areas are fractions (not x1000).
* ECE and the reliability curve bin by :data:`ECE_BINS` = 15 equal-width bins unless told
  otherwise; :func:`ece_binning` says the binning in words for labels.
* Bootstrap intervals resample rows (and, in :func:`seed_bootstrap_ci`, training seeds too);
  ``method="auto"`` is BCa below ``AUTO_BCA_BELOW`` = 500 rows and percentile from there on.
* Bad input raises :class:`ValueError` with a one-line message. A metric that is mathematically
  undefined for otherwise valid input (AUROC with one class present, ...) raises
  :class:`UndefinedMetricError`, a ``ValueError`` subclass that the bootstrap treats as "skip this
  resample".
"""


from __future__ import annotations

from natix.metrics.bootstrap import (
    AUTO_BCA_BELOW,
    BOOTSTRAP_METHODS,
    SeedBootstrap,
    bootstrap_ci,
    bootstrap_method,
    paired_bootstrap_diff,
    seed_bootstrap_ci,
)
from natix.metrics.classification import (
    accuracy,
    auprc,
    auroc,
    balanced_accuracy,
    brier,
    ece,
    ece_binning,
    mcc,
    nll,
    predictions,
    reliability_curve,
)
from natix.metrics.deferral import (
    DeferralCurve,
    confidence,
    decision_errors,
    deferral_curve,
    deferred_counts,
)
from natix.metrics.inputs import (
    ECE_BINS,
    UndefinedMetricError,
    trapezoid,
)
from natix.metrics.reward import (
    REWARD_DEFINITIONS,
    RewardEstimate,
    expected_reward,
    ordered_rewards,
    validator_rewards,
)
from natix.metrics.selective import (
    augrc,
    aurc,
    aurc_minus_tied_oracle,
    auroc_failure,
    coverage_at_risk,
    e_augrc,
    e_aurc,
    fpr_at_95_tpr,
    optimal_aurc,
    risk_at_coverage,
    risk_coverage_curve,
)
from natix.metrics.summary import (
    LOWER_IS_BETTER,
    METRIC_NAMES,
    split_metrics,
)

__all__ = [
    "AUTO_BCA_BELOW",
    "BOOTSTRAP_METHODS",
    "ECE_BINS",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "REWARD_DEFINITIONS",
    "DeferralCurve",
    "RewardEstimate",
    "SeedBootstrap",
    "UndefinedMetricError",
    "accuracy",
    "augrc",
    "auprc",
    "aurc",
    "aurc_minus_tied_oracle",
    "auroc",
    "auroc_failure",
    "balanced_accuracy",
    "bootstrap_ci",
    "bootstrap_method",
    "brier",
    "confidence",
    "coverage_at_risk",
    "decision_errors",
    "deferral_curve",
    "deferred_counts",
    "e_augrc",
    "e_aurc",
    "ece",
    "ece_binning",
    "expected_reward",
    "fpr_at_95_tpr",
    "mcc",
    "nll",
    "optimal_aurc",
    "ordered_rewards",
    "paired_bootstrap_diff",
    "predictions",
    "reliability_curve",
    "risk_at_coverage",
    "risk_coverage_curve",
    "seed_bootstrap_ci",
    "split_metrics",
    "trapezoid",
    "validator_rewards",
]
