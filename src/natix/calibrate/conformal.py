"""Distribution-free calibration: split conformal sets, conformal risk control, Learn-then-Test.

Three estimators, each fitted on a calibration fold that the model never trained on:

- :class:`SplitConformal` — prediction sets with marginal (or per-class, or per-group) coverage,
  built from a nonconformity *score class* (:class:`LAC`, :class:`APS`), the split MAPIE uses.
- :class:`ConformalRiskControl` — a decision threshold whose *expected* loss (e.g. the
  false-negative rate) is at most ``alpha`` (Angelopoulos et al., "Conformal Risk Control").
- :class:`LearnThenTest` — an exit threshold ``tau`` on any confidence ``g`` whose selective risk
  ``P(error | g >= tau)`` is at most ``alpha`` *with probability* ``1 - delta`` over the
  calibration draw (Angelopoulos et al., "Learn then Test"); modelled on MAPIE's
  ``BinaryClassificationController``.

All guarantees assume the calibration and test points are exchangeable (i.i.d. is enough).

Chaining certified steps
------------------------
Each guarantee holds for *one* procedure run on data that nothing else was fitted on. Chaining
steps on the same calibration rows (e.g. fit a calibrator, then CRC on the calibrated scores, then
LTT on the same rows) breaks that: the second step sees data already used to choose the first.
Split the calibration set into disjoint folds (:func:`calibration_folds`), one per step, and say
so in the output; every estimator records ``n_calibration_`` for that purpose.

Only numpy and scipy do the work; ``sklearn.base.BaseEstimator`` supplies ``get_params``,
``clone`` and the repr.
"""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real

import numpy as np
from scipy.stats import binom
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from natix import metrics as M
from natix.calibrate.checks import binary_labels, choice, finite_scores, positive_proba, two_column, unit_open
from natix.calibrate.state import Stateful
from natix.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "APS",
    "LAC",
    "ConformalRiskControl",
    "LearnThenTest",
    "SplitConformal",
    "binomial_p_value",
    "calibration_folds",
    "confidence_and_errors",
    "conformal_quantile",
    "conformal_rank",
    "hoeffding_bentkus_p_value",
    "ltt_start",
]

# Relative slack for turning a float level such as (n + 1)(1 - alpha) into an integer rank: a
# product like 10 * (1 - 0.3) = 7.000000000000001 must give rank 7, not 8.
_RANK_SLACK = 1e-12


# --------------------------------------------------------------------------- pure helpers


def conformal_rank(n: int, alpha: float) -> int:
    """The split-conformal rank ``ceil((n + 1)(1 - alpha))``, robust to float round-off.

    A rank above ``n`` means the quantile is ``+inf`` (the set must contain every label).
    """
    x = (n + 1) * (1.0 - alpha)
    return math.ceil(x - _RANK_SLACK * max(1.0, x))


def conformal_quantile(scores, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``scores`` ``(n,)``; ``+inf`` if that rank exceeds n.

    With exchangeable scores, a new score is at most this value with probability at least
    ``1 - alpha`` (and at most ``1 - alpha + 1/(n + 1)`` when there are no ties).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    r = conformal_rank(len(s), alpha)
    if r > len(s):
        return float("inf")
    return float(np.partition(s, r - 1)[r - 1])


def confidence_and_errors(proba, y) -> tuple[np.ndarray, np.ndarray]:
    """The softmax confidence ``max(p, 1 - p)`` ``(n,)`` and the 0/1 errors ``(n,)`` of the decision ``p > 0.5``.

    The decision follows the validator's ``np.round(p)``: ``p = 0.5`` answers class 0. Any other
    confidence works with :class:`LearnThenTest` as well — a failure predictor's ``1 - P(fail)``,
    a margin, a Gatekeeper-tuned confidence or a learned gate score ``g``: LTT only needs a
    score that is larger when the answer is more likely right, and the errors of the decision
    being certified.
    """
    p = positive_proba(proba, "proba")
    y = binary_labels(y, len(p), both_classes=False)
    return M.confidence(p), M.decision_errors(y, p)


def calibration_folds(y, n_folds: int = 2, *, random_state=None) -> list[np.ndarray]:
    """Disjoint, label-stratified index folds ``[(n_k,), ...]`` of a calibration set.

    Use one fold per certified step when chaining steps (calibrator, CRC, LTT), so each
    guarantee is computed on data no earlier step has seen.
    """
    y = binary_labels(y, both_classes=False)
    if not isinstance(n_folds, Integral) or isinstance(n_folds, bool) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if len(y) < n_folds:
        raise DataError(f"{len(y)} calibration points cannot make {n_folds} folds: pass at least {n_folds}")
    rng = np.random.default_rng(random_state)
    fold = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        # continue the round-robin across classes so fold sizes differ by at most one
        fold[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return [np.flatnonzero(fold == k) for k in range(n_folds)]


def _proba(scores, name: str = "proba") -> np.ndarray:
    """``(n,)`` or ``(n, 1)`` P(class 1), or ``(n, 2)`` probabilities whose rows sum to one → ``(n,)`` P(class 1)."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.size and np.all(np.isfinite(arr)):
        worst = float(np.abs(arr.sum(axis=1) - 1.0).max())
        if worst > 1e-6:
            raise DataError(f"{name} rows must sum to 1 (worst row is off by {worst:.3g}): "
                            "pass probabilities, or P(class 1) as a 1-D array")
    return positive_proba(arr, name)


def _check_real(value, name: str, *, low: float, low_open: bool = True) -> float:
    """A finite real number above ``low`` (or at least ``low``)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v < low or (low_open and v == low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    return v


def _check_int(value, name: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- score classes


class LAC(BaseEstimator):
    """Least-ambiguous set-valued classifier score (Sadinle et al. 2019): ``s(x, y) = 1 - p_y``.

    Sets ``{k : 1 - p_k <= qhat}`` are the smallest on average among sets with the same coverage.
    """

    def class_scores(self, proba2: np.ndarray) -> np.ndarray:
        """The score of every candidate label, ``(n, 2)`` for ``proba2`` ``(n, 2)``."""
        return 1.0 - np.asarray(proba2, dtype=np.float64)

    def score(self, proba2: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Nonconformity of the true labels: ``(n,)`` for ``proba2`` ``(n, 2)`` and ``y`` ``(n,)``."""
        return np.take_along_axis(self.class_scores(proba2), np.asarray(y)[:, None], axis=1)[:, 0]

    def set_from_threshold(self, proba2: np.ndarray, qhat) -> np.ndarray:
        """Prediction sets ``{k : s(x, k) <= qhat}`` as a boolean ``(n, 2)``.

        ``qhat`` is a scalar or anything that broadcasts to ``(n, 2)`` (one threshold per row,
        per class, or both).
        """
        return self.class_scores(proba2) <= np.asarray(qhat, dtype=np.float64)


class APS(LAC):
    """Adaptive prediction sets score (Romano, Sesia & Candès 2020).

    ``s(x, y)`` = the total probability of the labels ranked at least as high as ``y``
    (``sum_k p_k 1[p_k >= p_y]``), i.e. the mass the sorted set must reach to include ``y``.

    Parameters
    ----------
    randomized : bool, default=False
        ``False`` (the default) uses the deterministic score above: sets are nested and
        reproducible, coverage is still at least ``1 - alpha``, but the score has ties (in the
        binary case every label ranked second scores exactly 1), so the upper coverage bound
        ``1 - alpha + 1/(n + 1)`` does not hold. ``True`` uses Romano et al.'s randomized score
        ``sum_k p_k 1[p_k > p_y] + U p_y`` with ``U ~ Uniform(0, 1)`` drawn once per row: scores
        are continuous, so coverage is also at most ``1 - alpha + 1/(n + 1)``, at the price of
        random sets.
    allow_empty : bool or None, default=None
        Whether a set may be empty. The deterministic score gives an empty set whenever the top
        label's own mass exceeds ``qhat`` (in the binary case: every row more confident than
        ``qhat``, once ``qhat < 1``), which says nothing useful. ``False`` always adds the
        top-ranked label (every label tied for the top), the usual non-empty variant of APS: sets
        only grow, so coverage stays at least ``1 - alpha``. ``True`` keeps the empty sets; the
        randomized score needs them for its upper bound ``1 - alpha + 1/(n + 1)``. ``None`` means
        ``False`` for the deterministic score and ``True`` for the randomized one.
    random_state : int, numpy Generator or None, default=None
        Seed of the uniform draws when ``randomized``; the generator advances with every call,
        so calibration and test rows get independent draws.
    """

    def __init__(self, *, randomized: bool = False, allow_empty: bool | None = None, random_state=None):
        self.randomized = randomized
        self.allow_empty = allow_empty
        self.random_state = random_state

    def _uniform(self, n: int) -> np.ndarray:
        if getattr(self, "_rng", None) is None:
            self._rng = np.random.default_rng(self.random_state)
        return self._rng.uniform(size=n)

    def _empty_allowed(self) -> bool:
        if self.allow_empty is None:
            return bool(self.randomized)
        if not isinstance(self.allow_empty, (bool, np.bool_)):
            raise ConfigError(f"allow_empty must be True, False or None, got {self.allow_empty!r}")
        return bool(self.allow_empty)

    def class_scores(self, proba2: np.ndarray) -> np.ndarray:
        """The score of every candidate label, ``(n, 2)`` for ``proba2`` ``(n, 2)``."""
        self._empty_allowed()  # reject a bad option in fit, not first at prediction time
        p = np.asarray(proba2, dtype=np.float64)
        # above[i, k, j] = label j is ranked strictly above label k in row i
        above = p[:, None, :] > p[:, :, None]
        mass_above = np.einsum("ikj,ij->ik", above, p)
        if self.randomized:
            return mass_above + self._uniform(len(p))[:, None] * p
        ties = p[:, None, :] == p[:, :, None]  # includes k itself
        return mass_above + np.einsum("ikj,ij->ik", ties, p)

    def set_from_threshold(self, proba2: np.ndarray, qhat) -> np.ndarray:
        """Sets ``{k : s(x, k) <= qhat}`` as a boolean ``(n, 2)``, plus the top label unless empty sets are allowed."""
        sets = super().set_from_threshold(proba2, qhat)
        if self._empty_allowed():
            return sets
        p = np.asarray(proba2, dtype=np.float64)
        return sets | (p == p.max(axis=1, keepdims=True))


_SCORES = {"lac": LAC, "aps": APS}


def _resolve_score(score) -> LAC:
    if isinstance(score, LAC):
        return clone(score)  # fresh random state; the hyperparameter itself is never mutated
    if isinstance(score, str) and score in _SCORES:
        return _SCORES[score]()
    raise ConfigError(f"unknown conformity score {score!r}: pass one of {', '.join(_SCORES)} "
                      "or an LAC/APS instance")


# --------------------------------------------------------------------------- split conformal


class SplitConformal(BaseEstimator):
    """Split-conformal prediction sets for a binary classifier.

    Fits ``qhat`` = the ``ceil((n + 1)(1 - alpha))``-th smallest calibration score (``+inf`` when
    that rank exceeds ``n``: every set is then ``{0, 1}``), and predicts
    ``C(x) = {k : s(x, k) <= qhat}`` (by default the deterministic APS also adds the top label, so
    its sets are never empty: :class:`APS`).

    Guarantee: for a test point exchangeable with the calibration points,
    ``1 - alpha <= P(y in C(x)) <= 1 - alpha + 1/(n + 1)``; the upper bound needs scores without
    ties and no label added to the sets (LAC on continuous probabilities, APS with
    ``randomized=True``). With ``mondrian=True`` the same holds *conditionally on each class* with
    ``n`` = that class's calibration count; with ``groups`` it holds within each group (and within
    each group and class when both are used).

    Parameters
    ----------
    score : {"lac", "aps"} or LAC/APS instance, default="lac"
        The nonconformity score; pass ``APS(randomized=True)`` for the randomized APS.
    alpha : float in (0, 1), default=0.1
        Miscoverage level.
    mondrian : bool, default=False
        One ``qhat`` per class (class-conditional coverage; needs both classes).

    Attributes
    ----------
    score_ : LAC or APS
        The score object used.
    quantile_ : float
        ``qhat`` of all calibration scores pooled (what ``predict_set`` uses without Mondrian or
        groups).
    quantiles_ : dict or None
        Per-stratum ``qhat``: keyed by class (Mondrian), by group value (``groups``) or by
        ``(group, class)`` (both); ``None`` when neither is used.
    counts_ : dict or None
        Calibration points per stratum, same keys as ``quantiles_``.
    groups_ : ndarray or None
        The group values seen in ``fit``.
    coverage_bounds_ : tuple of float
        ``(1 - alpha, min(1, 1 - alpha + 1/(m + 1)))`` with ``m`` the smallest stratum size
        (``m = n`` without strata). Marginal coverage lies within these bounds (the upper one
        without ties).
    n_calibration_ : int
    """

    def __init__(self, *, score="lac", alpha: float = 0.1, mondrian: bool = False):
        self.score = score
        self.alpha = alpha
        self.mondrian = mondrian

    def fit(self, proba, y, groups=None) -> SplitConformal:
        """Compute ``qhat`` from calibration probabilities ``(n,)``/``(n, 2)``, labels ``(n,)``, groups ``(n,)``
        (optional)."""
        alpha = unit_open(self.alpha, "alpha")
        score = _resolve_score(self.score)
        p = _proba(proba)
        y = binary_labels(y, len(p), both_classes=bool(self.mondrian))
        s = score.score(two_column(p), y)

        if groups is not None:
            g = self._check_groups(groups, len(p))
            self.groups_, g_idx = np.unique(g, return_inverse=True)
        else:
            self.groups_, g_idx = None, np.zeros(len(p), dtype=np.int64)
        n_groups = 1 if self.groups_ is None else len(self.groups_)

        # table[g, k] = qhat used for candidate label k in group g
        table = np.empty((n_groups, 2))
        quantiles, counts = {}, {}
        for gi in range(n_groups):
            in_g = g_idx == gi
            gkey = None if self.groups_ is None else self.groups_[gi].item()
            if self.mondrian:
                for c in (0, 1):
                    m = in_g & (y == c)
                    table[gi, c] = conformal_quantile(s[m], alpha)
                    key = c if gkey is None else (gkey, c)
                    quantiles[key], counts[key] = float(table[gi, c]), int(m.sum())
            else:
                table[gi, :] = conformal_quantile(s[in_g], alpha)
                if gkey is not None:
                    quantiles[gkey], counts[gkey] = float(table[gi, 0]), int(in_g.sum())

        self.score_ = score
        self.quantile_ = conformal_quantile(s, alpha)
        self.quantiles_ = quantiles or None
        self.counts_ = counts or None
        self._table = table
        smallest = min(counts.values()) if counts else len(p)
        self.coverage_bounds_ = (1.0 - alpha, min(1.0, 1.0 - alpha + 1.0 / (smallest + 1)))
        self.n_calibration_ = len(p)
        if np.isinf(table).any():
            need = math.ceil((1.0 - alpha) / alpha - _RANK_SLACK)  # rank <= n  <=>  n >= 1/alpha - 1
            logger.warning("split conformal: a stratum has fewer than %d calibration points at alpha=%g, so its "
                           "sets contain both labels", need, alpha)
        return self

    @staticmethod
    def _check_groups(groups, n: int) -> np.ndarray:
        g = np.asarray(groups)
        if g.ndim != 1 or len(g) != n:
            raise DataError(f"groups must be 1-D with one value per score ({n}), got shape {g.shape}")
        return g

    def predict_set(self, proba, groups=None) -> np.ndarray:
        """Prediction sets as a boolean ``(n, 2)``: column ``k`` is True when label ``k`` is in the set."""
        check_is_fitted(self, "quantile_")
        p2 = two_column(_proba(proba))
        if self.groups_ is None:
            if groups is not None:
                raise DataError("groups were passed to predict_set but not to fit: refit with groups")
            qhat = self._table[0][None, :]
        else:
            if groups is None:
                raise DataError("this SplitConformal was fitted per group: pass groups to predict_set")
            g = self._check_groups(groups, len(p2))
            idx = np.searchsorted(self.groups_, g)
            idx = np.minimum(idx, len(self.groups_) - 1)
            unseen = self.groups_[idx] != g
            if unseen.any():
                raise DataError(f"groups {sorted(set(g[unseen].tolist()))[:5]} were not in the calibration data: "
                                "calibrate every group you predict for")
            qhat = self._table[idx]
        return self.score_.set_from_threshold(p2, qhat)


# --------------------------------------------------------------------------- conformal risk control


class ConformalRiskControl(Stateful, BaseEstimator):
    """Conformal risk control (Angelopoulos, Bates, Fisch, Lei & Schuster 2022) for a binary decision.

    The decision is "positive when ``p >= 1 - lambda``" (``threshold_ = 1 - lambda_``): larger
    ``lambda`` predicts more positives. For per-sample losses ``L_i(lambda)`` in ``[0, B]`` that
    are non-increasing in ``lambda``,

        ``lambda_hat = inf{lambda : (n / (n + 1)) R_hat(lambda) + B / (n + 1) <= alpha}``

    guarantees ``E[L_test(lambda_hat)] <= alpha``; when the losses are continuous in ``lambda``
    with no ties (FNR with continuous scores), also ``E[L_test] >= alpha - 2B/(n + 1)``.

    Parameters
    ----------
    loss : "fnr" or callable, default="fnr"
        ``"fnr"``: the miss indicator of a positive, ``L_i = 1[p_i < 1 - lambda]``, calibrated on the
        positives only, so ``n`` is the number of positives and the guarantee is on the expected
        false-negative rate. ``lambda_hat`` is found exactly (no grid): ``threshold_`` is the
        ``(m + 1)``-th smallest positive score with ``m = floor(alpha (n + 1) - B)`` misses allowed.
        A callable ``loss(lambdas, p, y) -> (n, n_lambda)`` gets the grid ``lambdas``
        ``(n_lambda,)``, P(class 1) ``(n,)`` and labels ``(n,)``; it must describe the same
        decision rule, lie in ``[0, bound]`` and be non-increasing in ``lambda`` for every row.
    alpha : float in (0, 1), default=0.1
        Risk level.
    bound : float > 0, default=1.0
        ``B``, the largest value the loss can take. ``n`` must satisfy ``B/(n + 1) <= alpha``,
        i.e. ``n >= B/alpha - 1``.
    lambdas : array or None, default=None
        Increasing grid for a callable loss; ``None`` means 201 points in ``[0, 1]``. Unused by
        ``"fnr"``.

    Attributes
    ----------
    lambda_ : float
    threshold_ : float
        ``1 - lambda_``: ``predict`` answers 1 when ``p >= threshold_``.
    empirical_risk_ : float
        ``R_hat(lambda_)`` on the calibration points.
    n_calibration_ : int
        Points the risk was averaged over (positives only for ``"fnr"``).
    """

    STATE = ("threshold_", "lambda_", "empirical_risk_", "n_calibration_")

    def __init__(self, *, loss="fnr", alpha: float = 0.1, bound: float = 1.0, lambdas=None):
        self.loss = loss
        self.alpha = alpha
        self.bound = bound
        self.lambdas = lambdas

    def fit(self, proba, y) -> ConformalRiskControl:
        """Find ``lambda_hat`` from calibration probabilities ``(n,)``/``(n, 2)`` and labels ``(n,)``."""
        alpha = unit_open(self.alpha, "alpha")
        bound = _check_real(self.bound, "bound", low=0.0)
        if not (self.loss == "fnr" or callable(self.loss)):
            raise ConfigError(f"unknown loss {self.loss!r}: pass 'fnr' or a callable loss(lambdas, p, y)")
        p = _proba(proba)
        y = binary_labels(y, len(p), both_classes=False)

        if self.loss == "fnr":
            if bound < 1.0:
                raise ConfigError(f"the FNR loss takes the value 1, so bound must be >= 1, got {bound}")
            pos = np.sort(p[y == 1])
            n = len(pos)
            if n == 0:
                raise DataError("FNR control calibrates on positives only and the calibration data has none: "
                                "pass examples of class 1")
            self._check_n(n, alpha, bound, what="positive calibration points")
            # (k + B) / (n + 1) <= alpha  <=>  k <= alpha (n + 1) - B misses allowed
            x = alpha * (n + 1) - bound
            m = math.floor(x + _RANK_SLACK * max(1.0, abs(x)))
            threshold = float(pos[m])  # misses #{pos < pos[m]} <= m; any higher threshold misses m + 1
            self.threshold_ = threshold
            self.lambda_ = 1.0 - threshold
            self.empirical_risk_ = float(np.mean(pos < threshold))
            self.n_calibration_ = n
            return self

        lambdas = self._grid()
        n = len(p)
        self._check_n(n, alpha, bound, what="calibration points")
        losses = np.asarray(self.loss(lambdas, p, y), dtype=np.float64)
        if losses.shape != (n, len(lambdas)):
            raise DataError(f"the loss returned shape {losses.shape}, expected (n, n_lambda) = {(n, len(lambdas))}")
        if not np.all(np.isfinite(losses)) or losses.min() < 0 or losses.max() > bound:
            raise DataError(f"the loss must take finite values in [0, bound={bound}]: raise bound or fix the loss")
        if np.any(np.diff(losses, axis=1) > 1e-12):
            raise DataError("the loss must be non-increasing in lambda for every sample (CRC's monotonicity "
                            "assumption): reverse the grid or the rule")
        ok = losses.sum(axis=0) + bound <= alpha * (n + 1) * (1 + _RANK_SLACK)
        if not ok.any():
            worst = (losses[:, -1].sum() + bound) / (n + 1)
            raise DataError(f"CRC cannot reach alpha={alpha}: even at lambda={lambdas[-1]:.4g} the bound is "
                            f"{worst:.4g}; extend the grid, raise alpha, or add calibration data")
        k = int(np.argmax(ok))
        self.lambda_ = float(lambdas[k])
        self.threshold_ = 1.0 - self.lambda_
        self.empirical_risk_ = float(losses[:, k].mean())
        self.n_calibration_ = n
        return self

    def _grid(self) -> np.ndarray:
        if self.lambdas is None:
            return np.linspace(0.0, 1.0, 201)
        lam = np.asarray(self.lambdas, dtype=np.float64)
        if lam.ndim != 1 or lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(np.diff(lam) <= 0):
            raise ConfigError("lambdas must be a non-empty, finite, strictly increasing 1-D grid")
        return lam

    @staticmethod
    def _check_n(n: int, alpha: float, bound: float, *, what: str) -> None:
        if bound / (n + 1) > alpha * (1 + _RANK_SLACK):
            need = max(1, math.ceil(bound / alpha - 1 - _RANK_SLACK))
            raise DataError(f"CRC at alpha={alpha} needs at least {need} {what} (B/(n+1) <= alpha, B={bound:g}), "
                            f"got {n}: add calibration data or raise alpha")

    def predict(self, proba) -> np.ndarray:
        """Decisions ``(n,)`` in {0, 1}: 1 when ``p >= threshold_``."""
        check_is_fitted(self, "threshold_")
        return (_proba(proba) >= self.threshold_).astype(np.int64)


# --------------------------------------------------------------------------- learn then test


def _kl_bernoulli(r: np.ndarray, a: float) -> np.ndarray:
    """KL(Bernoulli(r) || Bernoulli(a)) elementwise, with 0 log 0 = 0."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(r > 0, r * np.log(r / a), 0.0)
        t2 = np.where(r < 1, (1 - r) * np.log((1 - r) / (1 - a)), 0.0)
    return t1 + t2


def binomial_p_value(k, n, alpha: float) -> np.ndarray:
    """Exact p-value ``P(Bin(n, alpha) <= k)`` of H0: risk > alpha, for ``k`` errors in ``n`` 0/1 losses."""
    return binom.cdf(np.asarray(k), np.asarray(n), alpha)


def hoeffding_bentkus_p_value(k, n, alpha: float) -> np.ndarray:
    """Hoeffding–Bentkus p-value of H0: risk > alpha (Bates et al. 2021; LTT eq. 7).

    ``min(exp(-n h(min(r_hat, alpha), alpha)), e P(Bin(n, alpha) <= ceil(n r_hat)))`` with
    ``r_hat = k / n`` and ``h`` the Bernoulli KL divergence; valid for any loss in [0, 1], looser
    than :func:`binomial_p_value` for 0/1 losses.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.minimum(np.where(n > 0, k / np.maximum(n, 1), 0.0), alpha)
    hoeffding = np.exp(-n * _kl_bernoulli(r, alpha))
    bentkus = np.e * binom.cdf(k, n, alpha)  # k is an integer count, so ceil(n r_hat) = k exactly
    return np.minimum(1.0, np.minimum(hoeffding, bentkus))


_P_VALUES = {"binomial": binomial_p_value, "hb": hoeffding_bentkus_p_value}
_RISKS = ("selective", "generalized")


def _fixed_sequence(p_values: np.ndarray, tested: np.ndarray, delta: float) -> np.ndarray:
    """Rejections ``(m,)`` of fixed-sequence testing in array order: tested entries up to the first ``p > delta``."""
    certified = np.zeros(len(p_values), dtype=bool)
    idx = np.flatnonzero(tested)
    fails = np.flatnonzero(p_values[idx] > delta)
    certified[idx[:fails[0] if len(fails) else len(idx)]] = True
    return certified


# LearnThenTest's automatic start: the fraction of alpha that must pass from the first test on.
_START_RISK = 0.5


def ltt_start(alpha: float, delta: float, *, p_value: str = "binomial") -> int:
    """Learn-then-Test's automatic start ``n0``: from ``n0`` accepted points on, risk ``<= alpha / 2`` always passes.

    The smallest ``n0`` such that, for every ``n >= n0``, ``floor(n alpha / 2)`` errors among ``n``
    give ``p <= delta`` (p-values are non-decreasing in the errors, so fewer errors pass too).
    A function of ``alpha``, ``delta`` and the p-value only; :class:`LearnThenTest` starts its
    selective-risk sequence there with ``min_accepted="auto"``.
    """
    alpha, delta = unit_open(alpha, "alpha"), unit_open(delta, "delta")
    choice(p_value, _P_VALUES, "p_value")
    r = _START_RISK * alpha
    # Both p-values are at most the Chernoff bound exp(-n KL(k/n || alpha)) <= exp(-n KL(r || alpha))
    # for k/n <= r < alpha, which is <= delta from n_max on: only counts below n_max can fail.
    n_max = math.ceil(math.log(1.0 / delta) / float(_kl_bernoulli(r, alpha))) + 1
    n = np.arange(1, n_max + 1)
    x = r * n
    k = np.floor(x + _RANK_SLACK * np.maximum(1.0, x))
    fails = np.flatnonzero(_P_VALUES[p_value](k, n, alpha) > delta)
    return int(n[fails[-1]]) + 1 if len(fails) else 1


class LearnThenTest(Stateful, BaseEstimator):
    """A certified exit threshold ``tau`` on a confidence ``g``: answer when ``g >= tau``, defer otherwise.

    Learn-then-Test (Angelopoulos, Bates, Candès, Jordan & Lei 2021) with fixed-sequence testing.
    Candidates ``tau`` are ``n_thresholds`` quantiles of the calibration confidences. For each,
    H0(tau): ``R(tau) > alpha`` is tested with a p-value from ``n(tau)`` and ``k(tau)``:

    - ``risk="selective"``: ``R(tau) = P(error | g >= tau)``, ``n(tau)`` = accepted count,
      ``k(tau)`` = errors among them;
    - ``risk="generalized"``: ``R(tau) = P(error and g >= tau)``, ``n`` = all points.

    Hypotheses are tested from the most conservative ``tau`` (highest) downward, rejecting while
    ``p <= delta`` and stopping at the first failure; ``threshold_`` is the lowest rejected
    ``tau``. Fixed-sequence testing controls the family-wise error at ``delta``, so

        ``P(R(threshold_) <= alpha) >= 1 - delta``   (over the calibration draw).

    Where the sequence starts decides its power. It stops at its first failure, and the highest
    candidates accept so few points that a good threshold fails there by chance: 25 accepted
    points pass at ``alpha = delta = 0.1`` only without a single error. Candidates accepting
    fewer than ``min_accepted`` points are therefore not tested (p-value NaN). With
    ``min_accepted="auto"`` that count is ``n0``, the smallest count from which on *every*
    candidate whose empirical risk is at most ``alpha / 2`` is rejected by the chosen p-value at
    level ``delta``: 65 for ``"binomial"`` at ``alpha = delta = 0.1`` (121 for ``"hb"``, 132 at
    ``alpha = 0.05``). A threshold whose empirical risk stays below ``alpha / 2`` then passes from
    the first test on; the price is that no threshold accepting fewer than ``n0`` points can be
    certified. ``n0`` is a function of ``alpha``, ``delta`` and the p-value, and which candidates
    reach it depends on the confidences alone, never on the errors, so the start keeps the
    guarantee. Candidates so small that even zero errors could not give ``p <= delta``
    (``(1 - alpha)^n > delta``: 22 points at ``alpha = delta = 0.1``) are not tested either; with
    ``"auto"`` they already lie above the start. As ``n(tau)`` is non-increasing in ``tau``, the
    untested candidates are exactly the highest ones, so skipping them never interrupts the
    sequence. With ``risk="generalized"`` every p-value uses all ``n`` points and can only grow
    along the sequence, so the start does not matter and ``"auto"`` tests every candidate
    (``n0 = 1``).

    ``g`` can be any score that is larger when the answer is more likely right: the softmax
    confidence ``max(p, 1 - p)`` (:func:`confidence_and_errors`), a gate score, ``1 - P(fail)``
    of a failure predictor. The certificate is about the ``errors`` passed to ``fit``.
    The candidate grid depends on the calibration confidences (never on the errors); the
    resulting validity is checked by simulation in the tests.

    Parameters
    ----------
    risk : {"selective", "generalized"}, default="selective"
    alpha : float in (0, 1), default=0.1
        Risk level.
    delta : float in (0, 1), default=0.1
        Allowed probability that the certified threshold violates ``alpha``.
    p_value : {"binomial", "hb"}, default="binomial"
        ``"binomial"``: exact ``P(Bin(n, alpha) <= k)`` (0/1 losses). ``"hb"``: Hoeffding–Bentkus
        ``min(exp(-n h(r_hat, alpha)), e P(Bin(n, alpha) <= ceil(n r_hat)))``, ``h`` the Bernoulli
        KL divergence (valid for bounded losses, more conservative).
    min_accepted : "auto" or int >= 1, default="auto"
        Accepted points a candidate needs to be tested: where the sequence starts (see above).
    n_thresholds : int >= 2, default=200

    Attributes
    ----------
    thresholds_ : ndarray (n_candidates,)
        Candidates, highest first (the testing order).
    n_accepted_ : ndarray (n_candidates,)
        Calibration points with ``g >= tau``.
    risks_ : ndarray (n_candidates,)
        Empirical risk per candidate (NaN when nothing is accepted).
    p_values_ : ndarray (n_candidates,)
        NaN for untested candidates.
    certified_mask_ : ndarray of bool (n_candidates,)
        Rejected nulls (a prefix of the tested candidates).
    threshold_ : float
        Most permissive certified ``tau``; ``inf`` when none is certified (everything defers).
    certified_ : bool
    coverage_ : float
        Fraction of calibration points accepted at ``threshold_``.
    min_accepted_ : int
        The start count used (``n0`` under ``"auto"``).
    n_calibration_ : int
    """

    STATE = ("thresholds_", "n_accepted_", "risks_", "p_values_", "certified_mask_", "certified_", "threshold_",
             "coverage_", "min_accepted_", "n_calibration_")

    def __init__(self, *, risk: str = "selective", alpha: float = 0.1, delta: float = 0.1,
                 p_value: str = "binomial", min_accepted: int | str = "auto", n_thresholds: int = 200):
        self.risk = risk
        self.alpha = alpha
        self.delta = delta
        self.p_value = p_value
        self.min_accepted = min_accepted
        self.n_thresholds = n_thresholds

    def fit(self, confidence, errors) -> LearnThenTest:
        """Certify ``threshold_`` from calibration confidences ``(n,)`` and 0/1 errors ``(n,)``."""
        alpha, delta = unit_open(self.alpha, "alpha"), unit_open(self.delta, "delta")
        choice(self.risk, _RISKS, "risk")
        choice(self.p_value, _P_VALUES, "p_value")
        min_accepted = self._min_accepted(alpha, delta)
        n_thresholds = _check_int(self.n_thresholds, "n_thresholds", low=2)
        g = finite_scores(confidence, "confidence")
        e = binary_labels(errors, len(g), both_classes=False, name="errors")

        order = np.argsort(g, kind="stable")
        g_sorted = g[order]
        err_before = np.concatenate([[0], np.cumsum(e[order])])  # errors among the i lowest
        cand = np.unique(np.quantile(g, np.linspace(0.0, 1.0, n_thresholds)))[::-1]
        first = np.searchsorted(g_sorted, cand, side="left")  # index of the first g >= tau
        n_acc = len(g) - first
        k = err_before[-1] - err_before[first]
        n_test = n_acc if self.risk == "selective" else np.full_like(n_acc, len(g))
        with np.errstate(invalid="ignore", divide="ignore"):
            risks = np.where(n_test > 0, k / np.maximum(n_test, 1), np.nan)

        pfun = _P_VALUES[self.p_value]
        # Untested: above the start, or so few points that even zero errors could not reject H0.
        # Both depend on the confidences only (never on the errors), so skipping keeps validity.
        tested = (n_acc >= min_accepted) & (pfun(np.zeros_like(n_test), n_test, alpha) <= delta)
        pv = np.full(len(cand), np.nan)
        if tested.any():
            pv[tested] = pfun(k[tested], n_test[tested], alpha)
        else:
            need = max(min_accepted, math.ceil(math.log(delta) / math.log1p(-alpha) - _RANK_SLACK))
            logger.warning("learn then test: no threshold can be tested on %d calibration points at alpha=%g, "
                           "delta=%g (the sequence starts at %d), so nothing is certified: add calibration data",
                           len(g), alpha, delta, need)
        certified = _fixed_sequence(pv, tested, delta)

        self.thresholds_ = cand
        self.n_accepted_ = n_acc
        self.risks_ = risks
        self.p_values_ = pv
        self.certified_mask_ = certified
        self.certified_ = bool(certified.any())
        if self.certified_:
            last = int(np.flatnonzero(certified)[-1])
            self.threshold_ = float(cand[last])
            self.coverage_ = float(n_acc[last] / len(g))
        else:
            self.threshold_ = float("inf")
            self.coverage_ = 0.0
        self.min_accepted_ = min_accepted
        self.n_calibration_ = len(g)
        return self

    def _min_accepted(self, alpha: float, delta: float) -> int:
        """The start count: ``min_accepted`` itself, or ``n0`` for ``"auto"`` (1 for the generalized risk)."""
        if isinstance(self.min_accepted, str) and self.min_accepted == "auto":
            return 1 if self.risk == "generalized" else ltt_start(alpha, delta, p_value=self.p_value)
        if isinstance(self.min_accepted, bool) or not isinstance(self.min_accepted, Integral) or self.min_accepted < 1:
            raise ConfigError(f"min_accepted must be 'auto' or an integer >= 1, got {self.min_accepted!r}")
        return int(self.min_accepted)

    def accept(self, confidence) -> np.ndarray:
        """Boolean ``(n,)``: True where ``g >= threshold_`` (answer now); all False when nothing was certified."""
        check_is_fitted(self, "threshold_")
        return finite_scores(confidence, "confidence") >= self.threshold_
