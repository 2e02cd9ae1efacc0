"""Selective classification: risk-coverage curves, their areas and failure detection."""

from __future__ import annotations

import numpy as np

from natix.metrics.classification import auroc
from natix.metrics.inputs import (
    UndefinedMetricError,
    check_unit_interval,
    curve_counts,
    selective_inputs,
    trapezoid,
)

# Selective classification
# --------------------------------------------------------------------------------------------


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
    e, g = selective_inputs(errors, confidence)
    accepted, accepted_errors, thresholds = curve_counts(e, g)
    n = len(e)
    return accepted / n, accepted_errors / accepted, accepted_errors / n, thresholds


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
    return trapezoid(np.r_[0.0, cov], np.r_[sr[0], sr])


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
    return trapezoid(np.r_[0.0, cov], np.r_[0.0, gr])


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
    err = check_unit_interval(err, "err")
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
    e, g = selective_inputs(errors, confidence)
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
    e, g = selective_inputs(errors, confidence)
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
    e, g = selective_inputs(errors, confidence)
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
    e, g = selective_inputs(errors, confidence)
    coverage = check_unit_interval(coverage, "coverage", open_low=True)
    accepted, accepted_errors, _ = curve_counts(e, g)
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
    risk = check_unit_interval(risk, "risk")
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
    e, g = selective_inputs(errors, confidence)
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
    e, g = selective_inputs(errors, confidence)
    tpr = check_unit_interval(tpr, "tpr", open_low=True)
    n_err = int(e.sum())
    n_ok = len(e) - n_err
    if n_err == 0 or n_ok == 0:
        raise UndefinedMetricError("FPR@TPR is undefined when all samples are correct or all wrong")
    accepted, accepted_errors, _ = curve_counts(e, g)
    accepted_ok = accepted - accepted_errors
    k = int(np.searchsorted(accepted_ok, tpr * n_ok - 1e-9, side="left"))
    return float(accepted_errors[k] / n_err)


