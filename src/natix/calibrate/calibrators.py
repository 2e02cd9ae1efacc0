"""Binary probability calibrators and the decision-threshold search (DESIGN §6, "Calibration").

Every estimator takes P(class 1) as a 1-D array, as one column ``(n, 1)``, or as an ``(n, 2)``
probability array (whose second column is used), and labels in {0, 1}. They are scikit-learn
classifiers and transformers (``clone``, pipelines, ``check_estimator`` with the expected
failures of ``tests/calibrate/test_sklearn_contract.py``):

* ``fit(scores, y)`` validates the hyperparameters and the data, learns state ending in ``_``
  (and ``classes_ = [0, 1]``, ``n_features_in_ = 1``), and returns ``self``;
* ``transform(scores)`` returns the calibrated P(class 1), shape ``(n,)`` (as scikit-learn's
  ``IsotonicRegression.transform``); ``fit_transform(scores, y)`` is ``fit`` then ``transform``;
* ``predict_proba(scores)`` returns ``(n, 2)`` columns P(0), P(1);
* ``predict(scores)`` returns ``predict_proba(scores)[:, 1] > 0.5`` as int, the NATIX
  validator's ``np.round(p)`` (0.5 counts as class 0).

The NATIX validator decides at 0.5, so only calibrators that can move 0.5 can change decisions:
temperature scaling cannot (it preserves the sign of the logit); Platt, beta and isotonic can;
:class:`DecisionThreshold` re-centres the probabilities so that a chosen threshold lands on 0.5.

The parametric calibrators are fitted by maximum likelihood (mean binary log loss, L-BFGS-B with
the analytic gradient), never with a hidden default penalty, so their parameters are unbiased
estimates of the data-generating ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.utils.validation import check_is_fitted

from natix.calibrate.checks import (
    ProbabilityInput,
    binary_labels,
    choice,
    logit,
    nonnegative_float,
    positive_int,
    positive_proba,
    sigmoid,
    two_column,
)
from natix.calibrate.state import StateError, Stateful, state_number, state_vector
from natix.errors import ConfigError, DataError
from natix.metrics import ordered_rewards, predictions
from natix.metrics.inputs import mcc_from_counts
from natix.registry import Registry

__all__ = [
    "ABOVE_HALF",
    "BinaryCalibrator",
    "CALIBRATORS",
    "BetaCalibration",
    "DecisionThreshold",
    "IsotonicCalibration",
    "PlattScaling",
    "TemperatureScaling",
    "make_calibrator",
    "register_calibrator",
    "recentre",
]

_EPS = 1e-12  # probabilities are clipped to [_EPS, 1 - _EPS] before any log
ABOVE_HALF = float(np.nextafter(0.5, 1.0))  # the smallest float the validator rounds to 1


CALIBRATORS = Registry("calibrator")  # name -> calibrator class, filled by @register_calibrator
register_calibrator = CALIBRATORS.register


class BinaryCalibrator(ProbabilityInput, Stateful, ClassifierMixin, TransformerMixin, BaseEstimator):
    """Shared fit/transform/predict/state plumbing; subclasses implement ``_fit`` and ``_transform``.

    The fitted state is the float attributes named in ``STATE``: ``to_state()`` returns them as
    plain JSON and ``from_state(state)`` rebuilds an estimator whose ``transform`` is bitwise the
    fitted one's (hyperparameters that do not enter ``transform`` keep their defaults).

    Every fitted calibrator (also one rebuilt by ``from_state``) has ``classes_ = [0, 1]``, the
    columns of ``predict_proba``, and ``n_features_in_ = 1``: its one input feature is P(class 1),
    whether passed as ``(n,)``, ``(n, 1)`` or ``(n, 2)``.
    """

    @classmethod
    def from_state(cls, state: dict):
        """A fitted estimator from what :meth:`to_state` returned (:class:`~natix.calibrate.state.StateError`
        when damaged)."""
        est = cls()
        for key in cls.STATE:
            setattr(est, key, state_number(state, key, cls.__name__))
        est._seen_input()
        return est

    def fit(self, scores, y):
        """Validate hyperparameters and data, then learn the calibration map.

        Parameters
        ----------
        scores : array of shape (n,), (n, 1) or (n, 2), probabilities in [0, 1]
        y : array of shape (n,), labels in {0, 1}; both classes must be present

        Returns
        -------
        self
        """
        self._check_params()
        p = positive_proba(scores)
        labels = binary_labels(y, len(p))
        self._fit(p, labels)
        self._seen_input()
        return self

    def fit_transform(self, scores, y) -> np.ndarray:
        """``fit(scores, y)``, then the calibrated P(class 1) of the same scores, shape ``(n,)``."""
        return self.fit(scores, y).transform(scores)

    def transform(self, scores) -> np.ndarray:
        """Calibrated P(class 1).

        Parameters
        ----------
        scores : array of shape (n,), (n, 1) or (n, 2), probabilities in [0, 1]

        Returns
        -------
        ndarray of shape (n,), in [0, 1]
        """
        check_is_fitted(self)
        return self._transform(positive_proba(scores))

    def predict_proba(self, scores) -> np.ndarray:
        """Calibrated probabilities, shape ``(n, 2)``: columns P(class 0), P(class 1)."""
        return two_column(self.transform(scores))

    def predict(self, scores) -> np.ndarray:
        """Hard decisions ``P(class 1) > 0.5`` (0.5 is class 0, as the validator's ``np.round``), shape ``(n,)``."""
        return predictions(self.predict_proba(scores)[:, 1])

    def _check_params(self) -> None:
        """Validate hyperparameters (called first thing in ``fit``)."""

    def _fit(self, p: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement _fit")

    def _transform(self, p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement _transform")


def _fit_logistic(
    X: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray,
    *,
    max_iter: int,
    bounds=None,
    reg: float = 0.0,
    reg_center: np.ndarray | None = None,
    reg_mask: np.ndarray | None = None,
    name: str,
) -> np.ndarray:
    """Minimise mean log loss of ``sigmoid(X @ w)`` (+ ``reg * ||mask * (w - center)||^2``) by L-BFGS-B."""
    yf = y.astype(np.float64)
    n = len(yf)

    def objective(w):
        u = X @ w
        loss = np.mean(np.logaddexp(0.0, u) - yf * u)
        grad = X.T @ (expit(u) - yf) / n
        if reg > 0:
            d = reg_mask * (w - reg_center)
            loss += reg * float(d @ d)
            grad = grad + 2.0 * reg * d
        return loss, grad

    res = minimize(objective, w0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-13})
    # status 1 = iteration limit. Other non-zero statuses on these smooth convex problems come
    # from the line search failing to improve at the numerical optimum, which is not a failure.
    if res.status == 1:
        warnings.warn(f"{name} did not converge in max_iter={max_iter} iterations "
                      f"({res.message}): raise max_iter or check for separable data",
                      ConvergenceWarning, stacklevel=3)
    if not np.all(np.isfinite(res.x)):
        raise DataError(f"{name} fit diverged (non-finite parameters): check the calibration data")
    return res.x


class _IterativeCalibrator(BinaryCalibrator):
    """A calibrator fitted by L-BFGS-B whose only hyperparameter is the iteration limit."""

    def __init__(self, *, max_iter: int = 100):
        self.max_iter = max_iter

    def _check_params(self) -> None:
        positive_int(self.max_iter, "max_iter")


@register_calibrator("temperature")
class TemperatureScaling(_IterativeCalibrator):
    """Temperature scaling: ``sigmoid(logit(p) / T)`` with one parameter T > 0.

    T is the maximum-likelihood temperature on the calibration data (T > 1 softens an
    over-confident model, T < 1 sharpens). Because ``logit(p) / T`` keeps the sign of
    ``logit(p)``, temperature scaling can never change a decision at 0.5: ``predict`` equals
    ``p > 0.5`` exactly (also where float rounding would otherwise land on 0.5). Use Platt, beta,
    isotonic or :class:`DecisionThreshold` to move decisions.

    Parameters
    ----------
    max_iter : int, default=100
        L-BFGS-B iteration limit.

    Attributes
    ----------
    temperature_ : float
        The fitted T, searched in [1e-4, 1e4].
    """

    STATE = ("temperature_",)

    def _fit(self, p, y):
        # Fit the inverse temperature s = 1/T: the log loss is convex in s (logistic regression
        # through the origin); the bounds keep T in [1e-4, 1e4] when the data are separable or
        # the scores anti-informative.
        (s,) = _fit_logistic(logit(p, _EPS)[:, None], y, np.array([1.0]), max_iter=self.max_iter,
                             bounds=[(1e-4, 1e4)], name="TemperatureScaling")
        self.temperature_ = float(1.0 / s)

    def calibrated_logit(self, scores) -> np.ndarray:
        """``logit(p) / T``, the logit of the calibrated probability (before the decision guard)."""
        check_is_fitted(self)
        return logit(positive_proba(scores), _EPS) / self.temperature_

    def _transform(self, p):
        q = sigmoid(logit(p, _EPS) / self.temperature_)
        return np.where(p > 0.5, np.maximum(q, ABOVE_HALF), np.minimum(q, 0.5))


@register_calibrator("platt")
class PlattScaling(_IterativeCalibrator):
    """Platt scaling on the logit: ``sigmoid(a * logit(p) + b)``.

    Unpenalised maximum likelihood (no L2 penalty, no label smoothing), so ``a`` and ``b`` are
    consistent estimates. ``b != 0`` moves the decision boundary away from p = 0.5. ``a`` is not
    constrained: ``a < 0`` means the scores rank the classes the wrong way round.

    Parameters
    ----------
    max_iter : int, default=100
        L-BFGS-B iteration limit (a ``ConvergenceWarning`` says when it was reached).

    Attributes
    ----------
    coef_ : float
        The slope ``a``.
    intercept_ : float
        The offset ``b``.
    """

    STATE = ("coef_", "intercept_")

    def _fit(self, p, y):
        z = logit(p, _EPS)
        X = np.column_stack([z, np.ones_like(z)])
        a, b = _fit_logistic(X, y, np.array([1.0, 0.0]), max_iter=self.max_iter, name="PlattScaling")
        self.coef_, self.intercept_ = float(a), float(b)

    def calibrated_logit(self, scores) -> np.ndarray:
        """``a * logit(p) + b``, the logit of the calibrated probability."""
        check_is_fitted(self)
        return self.coef_ * logit(positive_proba(scores), _EPS) + self.intercept_

    def _transform(self, p):
        return sigmoid(self.coef_ * logit(p, _EPS) + self.intercept_)


@register_calibrator("beta")
class BetaCalibration(BinaryCalibrator):
    """Beta calibration (Kull et al., 2017): ``sigmoid(a * ln p - c * ln(1 - p) + d)``.

    For two classes this is Dirichlet calibration. ``a = c = 1, d = 0`` is the identity;
    ``a = c`` is Platt scaling on the logit. As Kull et al. recommend, ``a, c >= 0``, which
    keeps the map monotone (it never reverses the ranking, so AUROC cannot drop). p is clipped to
    [1e-12, 1 - 1e-12] before the logs.

    Parameters
    ----------
    reg : float >= 0, default=0.0
        Strength of the L2 penalty ``reg * ((a - 1)^2 + (c - 1)^2)`` added to the *mean* log loss.
        It pulls towards the identity map (up to the free offset ``d``), not towards zero as
        Dirichlet calibration's ODIR penalty does, because the inputs come from a trained head
        that is usually near-calibrated. 0 gives the unpenalised maximum-likelihood fit; because
        the loss is a mean, the penalty's pull does not fade with the sample size.
    max_iter : int, default=100
        L-BFGS-B iteration limit.

    Attributes
    ----------
    a_, c_, d_ : float
        The fitted parameters.
    """

    STATE = ("a_", "c_", "d_")

    def __init__(self, *, reg: float = 0.0, max_iter: int = 100):
        self.reg = reg
        self.max_iter = max_iter

    def _check_params(self) -> None:
        nonnegative_float(self.reg, "reg")
        positive_int(self.max_iter, "max_iter")

    @staticmethod
    def _features(p):
        p = np.clip(p, _EPS, 1.0 - _EPS)
        return np.column_stack([np.log(p), -np.log1p(-p), np.ones_like(p)])

    def _fit(self, p, y):
        a, c, d = _fit_logistic(
            self._features(p), y, np.array([1.0, 1.0, 0.0]), max_iter=self.max_iter,
            bounds=[(0.0, None), (0.0, None), (None, None)], reg=float(self.reg),
            reg_center=np.array([1.0, 1.0, 0.0]), reg_mask=np.array([1.0, 1.0, 0.0]),
            name="BetaCalibration")
        self.a_, self.c_, self.d_ = float(a), float(c), float(d)

    def _transform(self, p):
        return sigmoid(self._features(p) @ np.array([self.a_, self.c_, self.d_]))


@register_calibrator("isotonic")
class IsotonicCalibration(BinaryCalibrator):
    """Isotonic regression of the labels on p (scikit-learn's PAV), clipped outside the fitted range.

    Non-parametric and monotone non-decreasing: it can merge neighbouring scores into ties (so
    AUROC may move through ties only) and can return exactly 0 or 1 on the extremes.

    Parameters
    ----------
    eps : float in [0, 0.5), default=0.0
        The output is clipped to [eps, 1 - eps]; a small eps (e.g. 1e-6) keeps log-loss-based
        consumers finite. 0 leaves the isotonic fit untouched.

    Attributes
    ----------
    x_thresholds_, y_thresholds_ : ndarray of shape (k,)
        The fitted step map (scikit-learn's ``X_thresholds_``, ``y_thresholds_``, fitted with
        ``out_of_bounds="clip", y_min=0, y_max=1``): linear between thresholds, constant outside.

    The state (``to_state``) is ``{"isotonic_": {"x": [...], "y": [...]}, "eps": eps}``; a state
    without ``eps`` (older calibration files) means 0.
    """

    def __init__(self, *, eps: float = 0.0):
        self.eps = eps

    def _check_params(self) -> None:
        if nonnegative_float(self.eps, "eps") >= 0.5:
            raise ConfigError(f"eps must be in [0, 0.5), got {self.eps!r}: pass e.g. eps=1e-6")

    def _fit(self, p, y):
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
        self.x_thresholds_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def _transform(self, p):
        # Clip to the fitted range, then interpolate linearly between the thresholds (what
        # IsotonicRegression(out_of_bounds="clip") does): np.interp does both, the same way for a
        # fitted estimator and one rebuilt from its state.
        eps = float(self.eps)
        return np.clip(np.interp(p, self.x_thresholds_, self.y_thresholds_), eps, 1.0 - eps)

    def to_state(self) -> dict:
        check_is_fitted(self)
        return {"isotonic_": {"x": self.x_thresholds_.tolist(), "y": self.y_thresholds_.tolist()},
                "eps": float(self.eps)}

    @classmethod
    def from_state(cls, state: dict) -> IsotonicCalibration:
        owner = cls.__name__
        table = state.get("isotonic_") if isinstance(state, Mapping) else None
        if not isinstance(table, Mapping):
            raise StateError(owner, "lacks the 'isotonic_' table {x, y}")
        x, y = state_vector(table, "x", owner), state_vector(table, "y", owner)
        if x.shape != y.shape or np.any(np.diff(x) < 0):
            raise StateError(owner, "'isotonic_' is not an increasing (x, y) table")
        eps = state_number(state, "eps", owner) if "eps" in state else 0.0
        if not 0 <= eps < 0.5:
            raise StateError(owner, f"'eps' is {eps!r}, outside [0, 0.5)")
        est = cls(eps=eps)
        est.x_thresholds_, est.y_thresholds_ = x, y
        est._seen_input()
        return est


# --------------------------------------------------------------------------------------------
# Decision threshold
# --------------------------------------------------------------------------------------------

_OBJECTIVES = ("mcc", "reward", "fnr")


def recentre(p: np.ndarray, t: float) -> np.ndarray:
    """Monotone piecewise-linear map [0, t] -> [0, 0.5], (t, 1] -> (0.5, 1]; ``> 0.5`` iff ``p > t``."""
    lo = 0.5 * np.minimum(p / max(t, np.finfo(np.float64).tiny), 1.0)
    hi = 0.5 + 0.5 * ((p - t) / (1.0 - t))
    # Clamp so that p just above t still rounds to 1 after float rounding of 0.5 + tiny.
    hi = np.clip(hi, ABOVE_HALF, 1.0)
    return np.where(p > t, hi, lo)


def _closest_to_half(candidates: np.ndarray, scores: np.ndarray) -> int:
    """Index of the best score; ties (within 1e-12) go to the candidate nearest 0.5."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return int(best[np.argmin(np.abs(candidates[best] - 0.5))])


class DecisionThreshold(BinaryCalibrator):
    """The decision threshold t on calibration probabilities, then a re-centring so t lands on 0.5.

    Candidates are the midpoints between consecutive distinct values of ``{0} ∪ p ∪ {1}`` (so
    "everything positive" and "everything negative" are candidates too); the decision at t is
    ``p > t``. ``transform`` maps [0, t] linearly onto [0, 0.5] and (t, 1] onto (0.5, 1]: it is
    monotone, keeps 0 and 1, sends t to 0.5, and the validator's rounding at 0.5 of the output
    reproduces ``p > t`` exactly.

    Parameters
    ----------
    objective : {"mcc", "reward", "fnr"}, default="mcc"
        ``"mcc"``: maximise the Matthews correlation over all candidates (exact, one sweep).
        ``"reward"``: maximise the mean NATIX reward ``ordered_rewards(y, transform(p))[1]``
        with ``y`` in the order given (pass calibration data in a shuffled, arrival-like order).
        The reward is a windowed, order-dependent quantity that costs O(n) per candidate, so only
        ``max_candidates`` candidates evenly spaced in rank are scored, plus the MCC-optimal one
        and the one equivalent to no re-centring (deciding at 0.5), so the result is never worse
        than leaving the probabilities alone on the calibration data.
        ``"fnr"``: the largest candidate whose false-negative rate ``mean(p <= t | y = 1)`` is at
        most ``target_fnr`` (exact).
        Ties in MCC or reward go to the candidate nearest 0.5 (the least re-centring).
    target_fnr : float in [0, 1), optional
        Required for ``objective="fnr"`` and rejected otherwise.
    max_candidates : int >= 1, default=32
        Number of rank-spaced candidates scored by ``objective="reward"``; unused otherwise.

    Attributes
    ----------
    threshold_ : float
        The threshold t in [0, 1).
    score_ : float
        The objective at ``threshold_`` on the calibration data (MCC, mean reward, or the FNR).

    The state (``to_state``, ``from_state``) is ``threshold_`` alone: all ``transform`` needs.
    """

    STATE = ("threshold_",)

    def __init__(self, *, objective: str = "mcc", target_fnr: float | None = None, max_candidates: int = 32):
        self.objective = objective
        self.target_fnr = target_fnr
        self.max_candidates = max_candidates

    def _check_params(self) -> None:
        choice(self.objective, _OBJECTIVES, "objective")
        if self.objective == "fnr":
            if self.target_fnr is None:
                raise ConfigError("objective='fnr' needs target_fnr: pass e.g. target_fnr=0.05")
            if nonnegative_float(self.target_fnr, "target_fnr") >= 1:
                raise ConfigError(f"target_fnr must be in [0, 1), got {self.target_fnr!r}")
        elif self.target_fnr is not None:
            raise ConfigError(f"target_fnr is only used with objective='fnr', got objective={self.objective!r}: "
                              "drop target_fnr or pass objective='fnr'")
        positive_int(self.max_candidates, "max_candidates")

    def _fit(self, p, y):
        values = np.unique(np.concatenate(([0.0], p, [1.0])))
        lo, hi = values[:-1], values[1:]
        mid = lo + 0.5 * (hi - lo)
        # For adjacent floats the midpoint can round up onto `hi`; `lo` gives the same decisions.
        candidates = np.where(mid < hi, mid, lo)

        # Candidate k predicts negative for every value <= values[k]: cumulative counts per value.
        idx = np.searchsorted(values, p)
        pos = np.bincount(idx, weights=y, minlength=len(values))
        neg = np.bincount(idx, minlength=len(values)) - pos
        fn, tn = np.cumsum(pos)[:-1], np.cumsum(neg)[:-1]
        n_pos, n_neg = pos.sum(), neg.sum()
        tp, fp = n_pos - fn, n_neg - tn

        if self.objective == "fnr":
            fnr = fn / n_pos
            feasible = np.flatnonzero(fnr <= float(self.target_fnr))
            if feasible.size == 0:
                raise DataError(f"no threshold reaches FNR <= {self.target_fnr}: "
                                f"{int(pos[0])} positives have probability 0; raise target_fnr")
            k = int(feasible[-1])  # fnr is non-decreasing in k
            score = fnr[k]
        else:
            mcc = mcc_from_counts(tp, tn, fp, fn)
            k = _closest_to_half(candidates, mcc)
            score = mcc[k]
            if self.objective == "reward":
                k, score = self._best_reward(p, y, values, candidates, k)
        self.threshold_ = float(candidates[k])
        self.score_ = float(score)

    def _best_reward(self, p, y, values, candidates, k_mcc):
        """Best candidate by mean NATIX reward among rank-spaced ones, the MCC optimum and 'decide at 0.5'."""
        m = len(candidates)
        k_half = int(np.searchsorted(values, 0.5, side="right")) - 1  # same decisions as p > 0.5
        spaced = np.linspace(0, m - 1, min(int(self.max_candidates), m)).round().astype(np.int64)
        ks = np.unique(np.concatenate([spaced, [k_mcc, min(k_half, m - 1)]]))
        rewards = np.array([ordered_rewards(y, recentre(p, float(candidates[k])))[1] for k in ks])
        j = _closest_to_half(candidates[ks], rewards)
        return int(ks[j]), rewards[j]

    def _transform(self, p):
        return recentre(p, self.threshold_)




def make_calibrator(name: str, **params) -> BinaryCalibrator:
    """An unfitted calibrator from :data:`CALIBRATORS` by name, with keyword hyperparameters."""
    return CALIBRATORS.create(name, **params)
