"""Selective conformal risk control (SCRC): select confident samples, then control risk on them.

Two stages, after Xu, Guo & Wei, "Selective Conformal Risk Control" (arXiv 2512.12844):

1. **Selection.** A sample passes when its confidence ``g`` is at least ``selection_threshold_``
   (τ), chosen so that a target fraction ``acceptance`` of samples passes.
2. **Risk control on the selected samples.** Conformal risk control (CRC, Angelopoulos et al.)
   on the selected calibration samples picks a second confidence threshold λ̂. In the paper's
   terms the stage-2 prediction set is ``{round(p)}`` when ``g ≥ λ̂`` and ``{0, 1}`` otherwise;
   here a two-label set means "escalate to a stronger stage", so a sample is *decided* at this
   stage when ``g ≥ threshold_ = max(τ, λ̂)`` and escalated otherwise.

The loss of a selected sample is ``1{g ≥ λ and round(p) ≠ y}`` (0/1 error of a decided sample;
an escalated sample counts as no error). It is bounded by ``B = 1`` and non-increasing in λ,
which is what CRC needs.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.stats import binom
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from natix import metrics as M
from natix.calibrate.checks import (
    ProbabilityInput,
    binary_labels,
    choice,
    finite_scores,
    positive_proba,
    two_column,
    unit_open,
)
from natix.calibrate.state import Stateful
from natix.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_MODES = ("inductive", "transductive")
_LOSSES = ("error",)
# Float slack when comparing an integer error count with alpha * (n + 1) - 1.
_EPS = 1e-9


def max_probability(proba) -> np.ndarray:
    """The default confidence ``max(p, 1 − p)`` of ``(n,)`` or ``(n, 2)`` probabilities → ``(n,)``."""
    return M.confidence(positive_proba(proba, "proba"))


def _kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest entry (1-based) in O(n)."""
    n = values.size
    return float(np.partition(values, n - k)[n - k])


def _selection_rank(n: int, acceptance: float, level: float) -> int | None:
    """Smallest k with P(Binomial(n, acceptance) ≥ k) ≤ level, or None when even k = n fails."""
    # P(Bin ≥ k) = sf(k - 1); it decreases in k, so the first k that passes is the answer.
    k0 = int(binom.ppf(1.0 - level, n, acceptance)) + 1  # ppf is rounded: check around it
    k0 = min(max(k0, 1), n)
    while k0 > 1 and binom.sf(k0 - 2, n, acceptance) <= level:
        k0 -= 1
    while k0 <= n and binom.sf(k0 - 1, n, acceptance) > level:
        k0 += 1
    return k0 if k0 <= n else None


def _min_selection_fold(acceptance: float, level: float) -> int:
    """Smallest n with acceptance**n ≤ level (the rank k = n is the last one to try)."""
    n = max(1, math.ceil(math.log(level) / math.log(acceptance) - _EPS))
    while acceptance**n > level:
        n += 1
    return n


def _min_selected(alpha: float) -> int:
    """Smallest n_a with 1 / (n_a + 1) ≤ alpha: CRC's condition at λ = +∞ (nothing decided)."""
    n = max(0, math.ceil(1.0 / alpha - 1.0 - _EPS))
    while 1.0 / (n + 1) > alpha + _EPS * alpha:
        n += 1
    return n


def _crc_threshold(g: np.ndarray, wrong: np.ndarray, alpha: float) -> tuple[float, int]:
    """CRC on selected samples → (λ̂, errors among samples with g ≥ λ̂).

    λ̂ = inf{λ : (n/(n+1)) R̂(λ) + 1/(n+1) ≤ α} with R̂(λ) = (1/n) Σ 1{g_i ≥ λ} wrong_i, searched
    over the observed confidences and +∞. ``-inf`` means every selected sample is decided.
    Searching observed values with "g ≥ λ" decides no more new samples than the exact infimum
    over real λ would (CRC needs a right-continuous loss, i.e. "g > λ"), so it is conservative.
    """
    n = g.size
    budget = alpha * (n + 1) - 1.0  # the condition reads: errors(λ) ≤ budget
    order = np.argsort(-g, kind="stable")
    gs = g[order]
    errors = np.cumsum(wrong[order])
    # Candidate λ = each distinct value; "g ≥ λ" keeps every tie, so use the last index of a run.
    ends = np.flatnonzero(np.append(gs[1:] != gs[:-1], True))
    feasible = errors[ends] <= budget + _EPS
    if feasible.all():
        return -np.inf, int(errors[-1])
    if not feasible[0]:
        return np.inf, 0
    # errors[ends] is non-decreasing, so the feasible candidates are a prefix of `ends`.
    last = ends[np.argmin(feasible) - 1]
    return float(gs[last]), int(errors[last])


def _select_transductive(g: np.ndarray, g_test: np.ndarray, acceptance: float) -> tuple[float, np.ndarray, int]:
    """SCRC-T stage 1: τ over calibration ∪ test confidences → (τ, every calibration index, pooled size)."""
    pooled = np.concatenate([g, g_test])
    k = min(pooled.size, math.ceil(acceptance * pooled.size - _EPS))
    return _kth_largest(pooled, k), np.arange(g.size), int(pooled.size)


def _control_risk(g_risk: np.ndarray, wrong_risk: np.ndarray, tau: float, alpha: float) -> tuple[float, int, int]:
    """Stage 2: CRC on the risk samples that pass selection → (λ̂, selected count n_a, errors at λ̂)."""
    selected = g_risk >= tau
    n_a = int(selected.sum())
    need = _min_selected(alpha)
    if n_a < need:
        raise DataError(f"only {n_a} of {g_risk.size} stage-2 calibration samples pass selection; alpha={alpha} "
                        f"needs at least {need}: pass more calibration data or a larger alpha")
    lam, errors = _crc_threshold(g_risk[selected], wrong_risk[selected], alpha)
    if lam == np.inf:
        logger.warning("SCRC: no selected calibration sample can be decided at alpha=%g; every sample "
                       "escalates (threshold_ = inf)", alpha)
    return lam, n_a, errors


class SCRC(ProbabilityInput, Stateful, ClassifierMixin, BaseEstimator):
    """Selective conformal risk control for binary scores: selection, then CRC on the selected.

    Parameters
    ----------
    alpha : float in (0, 1), default 0.1
        Risk level of stage 2 (see Guarantees).
    delta : float in (0, 1), default 0.1
        Failure probability budget of SCRC-I; the selection bound uses ``delta / 2``.
        SCRC-T's guarantees are exact and do not use it.
    acceptance : float in (0, 1), default 0.8
        Target fraction of samples that pass the selection stage.
    mode : {"inductive", "transductive"}, default "inductive"
        ``"inductive"`` (SCRC-I): thresholds from calibration data only; new samples are then
        accepted one at a time with :meth:`accept`. ``"transductive"`` (SCRC-T): the selection
        threshold is computed over calibration ∪ the unlabeled test batch passed to :meth:`fit`
        as ``test_confidence``; valid for that batch only (offline).
    loss : {"error"}, default "error"
        Stage-2 loss: 0/1 error of the decision ``round(p)`` (0.5 → class 0) on decided samples.
    split : float in (0, 1), default 0.5
        SCRC-I only: the fraction of calibration samples (drawn at random) that fixes the
        selection threshold; the disjoint rest is used by stage 2. SCRC-T does not split (both
        stages use every calibration sample; see Guarantees), so this value is not used there.
    random_state : int, numpy Generator or None, default 0
        Seed of the SCRC-I split.

    Attributes
    ----------
    selection_threshold_ : float
        τ: a sample passes selection when ``confidence ≥ τ``.
    stage2_threshold_ : float
        λ̂ from CRC; ``-inf`` when every selected calibration sample can be decided, ``+inf``
        when none can (then every sample escalates).
    threshold_ : float
        ``max(τ, λ̂)``: a sample is accepted (decided at this stage) when ``confidence ≥ threshold_``.
    n_selection_ : int
        Calibration samples that fixed τ (SCRC-T: calibration plus test samples pooled).
    n_risk_ : int
        Calibration samples available to stage 2.
    n_selected_ : int
        Of those, the ones that passed selection (``n_a`` in the CRC rule).
    calibration_risk_ : float
        Stage-2 empirical risk at λ̂ on the selected calibration samples.
    test_selection_rate_, test_acceptance_rate_ : float
        SCRC-T only: fraction of the test batch that passes selection / is accepted.
    guarantee_ : str
        One paragraph stating what this fit guarantees, with its numbers filled in.
    classes_ : ndarray [0, 1]
        The columns of ``predict_proba``.
    n_features_in_ : int
        1: the input feature is P(class 1), whether passed as ``(n,)``, ``(n, 1)`` or ``(n, 2)``.

    The state (``to_state``) holds every attribute above that the fit set, but ``classes_`` and
    ``n_features_in_``.

    Guarantees
    ----------
    Assume calibration and test samples are i.i.d. (SCRC-T: exchangeable). Let
    ``L = 1{g ≥ threshold_ and round(p) ≠ y}``.

    *SCRC-I.* The calibration samples are split at random into two disjoint folds, so the two
    certified steps never reuse a sample. Stage 1: τ is the k-th largest confidence of the
    selection fold (n₁ samples), with k the smallest rank such that
    ``P(Binomial(n₁, acceptance) ≥ k) ≤ delta/2``. Then, over the draw of that fold,
    ``P[ P(g ≥ τ | τ) ≥ acceptance ] ≥ 1 − delta/2`` (an exact binomial order-statistic bound;
    ties allowed). Stage 2: τ does not depend on the risk fold, so given τ the selected risk-fold
    samples and a new selected sample are i.i.d., and CRC gives ``E[L | g ≥ τ] ≤ alpha`` for
    every τ: among samples that pass selection, the probability of being decided here *and*
    wrong is at most alpha. When ``threshold_ == τ`` (stage 2 inactive) this is the error rate
    of the accepted samples. The stage-2 bound holds in expectation (over the risk fold and the
    new sample), so it spends none of delta; the other ``delta/2`` is unused.

    *SCRC-T.* τ is the ``⌈acceptance·(n+m)⌉``-th largest confidence of the n calibration and m
    test samples pooled (labels unused): at least a fraction ``acceptance`` of the pooled samples
    pass, and the expected fraction of the test batch that passes is ``≥ acceptance``. Since τ
    is a symmetric function of the pooled confidences, the selected calibration and test samples
    remain exchangeable (the paper's argument for SCRC-T), so no split is needed: CRC on all
    selected calibration samples gives ``E[L_j | j selected] ≤ alpha`` for each test sample j,
    hence an expected mean loss ``≤ alpha`` over the selected test batch.

    Examples
    --------
    >>> scrc = SCRC(alpha=0.05, acceptance=0.8).fit(p_cal, y_cal)    # doctest: +SKIP
    >>> scrc.accept(max_probability(p_new)), scrc.predict(p_new)       # doctest: +SKIP
    """

    STATE = ("selection_threshold_", "stage2_threshold_", "threshold_", "n_selection_", "n_risk_", "n_selected_",
             "calibration_risk_", "test_selection_rate_", "test_acceptance_rate_", "guarantee_")

    def __init__(self, *, alpha: float = 0.1, delta: float = 0.1, acceptance: float = 0.8,
                 mode: str = "inductive", loss: str = "error", split: float = 0.5,
                 random_state=0):
        self.alpha = alpha
        self.delta = delta
        self.acceptance = acceptance
        self.mode = mode
        self.loss = loss
        self.split = split
        self.random_state = random_state

    def fit(self, proba, y, *, confidence=None, test_confidence=None) -> SCRC:
        """Fit both thresholds on calibration data.

        Parameters
        ----------
        proba : array of shape (n,), (n, 1) or (n, 2)
            Calibration probabilities P(class 1) (or both columns).
        y : array of shape (n,)
            Calibration labels in {0, 1}. One class only is allowed: the loss is about errors.
        confidence : array of shape (n,), optional
            Selection score g (higher = more confident, e.g. a gate score); default
            ``max(p, 1 − p)``.
        test_confidence : array of shape (m,), optional
            Required in transductive mode (the unlabeled test batch's g); an error in
            inductive mode, which must not see test data.

        Returns
        -------
        self
        """
        alpha, delta, acceptance = (unit_open(self.alpha, "alpha"), unit_open(self.delta, "delta"),
                                    unit_open(self.acceptance, "acceptance"))
        self._check_mode(test_confidence)
        p = positive_proba(proba, "proba")
        y = binary_labels(y, len(p), both_classes=False)
        g = M.confidence(p) if confidence is None else finite_scores(confidence, "confidence", len(p))
        wrong = M.decision_errors(y, p)
        if self.mode == "inductive":
            tau, risk, n_selection = self._select_inductive(g, acceptance, delta)
            g_test = None
        else:
            g_test = finite_scores(test_confidence, "test_confidence")
            tau, risk, n_selection = _select_transductive(g, g_test, acceptance)
        lam, n_a, errors = _control_risk(g[risk], wrong[risk], tau, alpha)

        self.selection_threshold_ = tau
        self.stage2_threshold_ = lam
        self.threshold_ = max(tau, lam)
        self.n_selection_ = n_selection
        self.n_risk_ = int(risk.size)
        self.n_selected_ = n_a
        self.calibration_risk_ = errors / n_a
        if g_test is not None:
            self.test_selection_rate_ = float(np.mean(g_test >= tau))
            self.test_acceptance_rate_ = float(np.mean(g_test >= self.threshold_))
        self.guarantee_ = self._guarantee_text(alpha, delta, acceptance, len(p), 0 if g_test is None else g_test.size)
        self._seen_input()
        return self

    def _check_mode(self, test_confidence) -> None:
        """The mode and loss are known, and test data are given exactly when the mode uses them."""
        choice(self.mode, _MODES, "mode")
        choice(self.loss, _LOSSES, "loss")
        if self.mode == "inductive" and test_confidence is not None:
            raise ConfigError("test_confidence is for mode='transductive': inductive SCRC uses "
                              "calibration data only (drop test_confidence or switch mode)")
        if self.mode == "transductive" and test_confidence is None:
            raise ConfigError("mode='transductive' needs test_confidence (the unlabeled test batch's "
                              "confidences): pass it, or use mode='inductive'")

    def _select_inductive(self, g: np.ndarray, acceptance: float, delta: float) -> tuple[float, np.ndarray, int]:
        """SCRC-I stage 1: τ from a random selection fold → (τ, indices of the disjoint risk fold, fold size)."""
        split, n = unit_open(self.split, "split"), g.size
        n1 = round(split * n)
        if n1 < 1 or n1 > n - 1:
            raise DataError(f"split={split} of {n} calibration samples leaves a fold empty: "
                            "pass more samples or a split nearer 0.5")
        perm = np.random.default_rng(self.random_state).permutation(n)
        k = _selection_rank(n1, acceptance, delta / 2)
        if k is None:
            need = _min_selection_fold(acceptance, delta / 2)
            raise DataError(f"the selection fold has {n1} calibration samples; acceptance={acceptance} "
                            f"at delta={delta} needs at least {need}: pass more calibration data or a larger split")
        return _kth_largest(g[perm[:n1]], k), perm[n1:], n1

    def _guarantee_text(self, alpha: float, delta: float, acceptance: float, n: int, m: int) -> str:
        """The guarantee of this fit in one paragraph."""
        stage2 = (f"Stage 2 (risk control): conformal risk control on the {self.n_selected_} selected calibration "
                  f"samples{{where}} chose the threshold {self.threshold_:.6g}; with L = 1{{{{g >= threshold and "
                  f"round(p) != y}}}}, {{claim}} <= alpha = {alpha:g}: among samples that pass selection, the "
                  "probability of being decided here and wrong is at most alpha (selected samples below the "
                  "threshold escalate and count as no error; when the threshold equals the selection threshold "
                  "this is the error rate of the accepted samples). Decisions are round(p) with 0.5 -> class 0.")
        if self.mode == "inductive":
            return (f"SCRC-I (inductive; calibration data only; one image at a time). The {n} calibration samples "
                    f"were split at random into two disjoint folds (split={self.split:g}): {self.n_selection_} fix "
                    f"the selection threshold and the other {self.n_risk_} the stage-2 threshold, so the two "
                    "certified steps never reuse a sample and stage 2 is valid for whatever selection threshold "
                    f"stage 1 returned. Stage 1 (selection): the threshold {self.selection_threshold_:.6g} is an "
                    "order statistic of the selection fold chosen by an exact binomial bound, so for i.i.d. data the "
                    f"selection rate P(g >= {self.selection_threshold_:.6g}) is >= {acceptance:g} with probability "
                    f">= 1 - delta/2 = {1 - delta / 2:g} over the draw of that fold (the acceptance rate after "
                    "stage 2 is lower when stage 2 raises the threshold). "
                    + stage2.format(where=" of the other fold", claim="E[L | selected]")
                    + " The stage-2 bound holds in expectation over the calibration fold and the new sample, so "
                    "it spends none of delta; the other delta/2 is unused.")
        return (f"SCRC-T (transductive; batch/offline; valid for the {m} test samples given to fit only). The "
                f"selection threshold {self.selection_threshold_:.6g} is the ceil({acceptance:g}*(n+m))-th largest "
                f"confidence of the {n} calibration and {m} test samples pooled (labels unused), so at least a "
                f"fraction {acceptance:g} of the pooled samples pass and the expected selection rate of the test "
                "batch is >= that fraction (its acceptance rate is lower when stage 2 raises the threshold). Being "
                "a symmetric function of the pooled confidences, the selection keeps the selected calibration and "
                "test samples exchangeable, so the calibration data are not "
                "split (a joint procedure; split is not used): both stages use all calibration samples. "
                + stage2.format(where="", claim="for every selected test sample E[L | selected]")
                + " Exact finite-sample guarantees; delta is not used.")

    def accept(self, confidence):
        """Whether a sample is decided at this stage (``confidence ≥ threshold_``) or escalated.

        Parameters
        ----------
        confidence : float or array of shape (n,)
            The same score ``g`` the estimator was fitted with.

        Returns
        -------
        bool, or bool array of shape (n,)
        """
        check_is_fitted(self, "threshold_")
        g = np.asarray(confidence, dtype=np.float64)
        if g.ndim == 0:
            if not np.isfinite(g):
                raise DataError(f"confidence must be a finite number, got {float(g)}")
            return bool(g >= self.threshold_)
        return finite_scores(g, "confidence") >= self.threshold_

    def predict_proba(self, proba) -> np.ndarray:
        """Probabilities passed through unchanged: ``(n,)``, ``(n, 1)`` or ``(n, 2)`` → ``(n, 2)``."""
        check_is_fitted(self, "threshold_")
        return two_column(positive_proba(proba, "proba"))

    def predict(self, proba) -> np.ndarray:
        """Decisions at 0.5 (0.5 → class 0, as ``np.round`` does): ``(n,)`` int64."""
        return M.predictions(self.predict_proba(proba)[:, 1])
