"""Input checks shared by every calibration estimator (numpy and scipy only), and their scikit-learn input contract."""

from __future__ import annotations

import numpy as np
from scipy.sparse import issparse

from natix.errors import ConfigError, DataError

# The labels of every binary estimator here, in the column order of its predict_proba.
CLASSES = np.array([0, 1])
_SHAPES = "(n,), (n, 1) or (n, 2) probabilities"


def positive_proba(scores, name: str = "scores") -> np.ndarray:
    """P(class 1) → ``(n,)`` float64 in [0, 1].

    `scores` is P(class 1) as a 1-D array or one column ``(n, 1)`` (a scikit-learn feature
    matrix with one feature), or an ``(n, 2)`` probability array (a ``predict_proba`` output),
    whose column 1 is taken.
    """
    p = real_array(scores, name)
    _all_finite(p, name)  # NaN or inf first: it is the problem to fix, whatever the shape
    if p.ndim == 2:
        if p.shape[1] not in (1, 2):
            raise DataError(f"{name} must be {_SHAPES}, got shape {p.shape}: pass one score per sample")
        p = p[:, -1]
    if p.ndim != 1:
        raise DataError(f"{name} must be {_SHAPES}, got shape {p.shape}: pass one score per sample")
    p = finite_scores(p, name)
    if p.min() < 0 or p.max() > 1:
        raise DataError(f"{name} must be probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]: "
                        "pass probabilities, not logits")
    return p


def real_array(values, name: str) -> np.ndarray:
    """`values` as a dense float64 array; sparse, complex or non-numeric input is refused in one line."""
    if issparse(values):
        raise DataError(f"{name} is a sparse matrix, and sparse input is not supported: pass a dense array")
    try:
        arr = np.asarray(values)
        real = None if arr.dtype.kind == "c" else arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:  # ragged rows, strings, objects
        why = str(exc).split(". ")[0]
        raise DataError(f"{name} must be a numeric array ({why}): pass numbers, one row per sample") from None
    if real is None:  # a cast to float would silently drop the imaginary part
        raise DataError(f"{name} holds complex numbers: pass real values")
    return real


def finite_scores(values, name: str = "confidence", n: int | None = None) -> np.ndarray:
    """One finite float64 score per sample, shape ``(n,)`` (of length `n` when given)."""
    g = np.asarray(values, dtype=np.float64)
    if g.ndim != 1:
        raise DataError(f"{name} must be 1-D (one score per sample), got shape {g.shape}")
    if g.size == 0:
        raise DataError(f"{name} is empty: pass at least one score")
    if n is not None and g.size != n:
        raise DataError(f"{name} has {g.size} scores for {n} samples: pass one score per sample")
    _all_finite(g, name)
    return g


def _all_finite(values: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(values)):
        raise DataError(f"{name} contains NaN or inf: drop those rows or fix the model's output")


def choice(value, choices, name: str):
    """`value` when it is one of `choices` (a hyperparameter naming a variant), else a one-line error."""
    if isinstance(value, str) and value in choices:
        return value
    raise ConfigError(f"unknown {name} {value!r}: pass one of {', '.join(choices)}")


def binary_labels(y, n: int | None = None, *, both_classes: bool = True, name: str = "y") -> np.ndarray:
    """Labels in {0, 1} as int64; both classes required unless said otherwise."""
    if y is None:
        raise DataError(f"this estimator requires {name} to be passed, but the target {name} is None: "
                        "pass labels 0/1, one per score")
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {y.shape}")
    if n is not None and len(y) != n:
        raise DataError(f"{name} has {len(y)} labels for {n} scores: pass one label per score")
    if not np.all(np.isin(y, (0, 1))):
        raise DataError(f"{name} must hold labels 0/1, got {np.unique(y)[:5].tolist()}")
    y = y.astype(np.int64)
    if both_classes and len(np.unique(y)) < 2:
        raise DataError(f"calibration data has only class {int(y[0])}: it needs examples of both classes")
    return y


def unit_open(value: float, name: str) -> float:
    """A level in the open interval (0, 1) (alpha, delta, ...)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0 < v < 1:
        raise ConfigError(f"{name} must be in (0, 1), got {v}: pass e.g. {name}=0.1")
    return v


def logit(p: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """log(p / (1 - p)) with probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(p, eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable 1 / (1 + exp(-z))."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def two_column(p: np.ndarray) -> np.ndarray:
    """P(class 1) ``(n,)`` → ``(n, 2)`` with columns P(0), P(1)."""
    return np.stack([1.0 - p, p], axis=1)


def positive_int(value, name: str) -> int:
    """A hyperparameter that must be an integer >= 1 (max_iter, max_candidates, ...)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}: pass e.g. {name}=100")
    return int(value)


def nonnegative_float(value, name: str) -> float:
    """A finite hyperparameter >= 0 (a regularisation strength, a clipping margin, ...)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


class ProbabilityInput:
    """Mixin of the scikit-learn estimators whose input is P(class 1) and whose labels are 0/1.

    Their ``X`` is one feature, a probability (:func:`positive_proba`: ``(n,)``, ``(n, 1)`` or
    ``(n, 2)``), so after ``fit`` they report ``n_features_in_ = 1`` whichever form was passed,
    and ``classes_ = [0, 1]`` (the columns of ``predict_proba``). Their scikit-learn tags
    (>= 1.6) say so: 1-D input accepted, non-negative input only, binary labels only.
    """

    def _seen_input(self) -> None:
        """Record what ``fit`` saw: one feature, labels 0 and 1."""
        self.n_features_in_ = 1
        self.classes_ = CLASSES.copy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.one_d_array = True  # P(class 1) as (n,); (n, 1) and (n, 2) are 2-D
        tags.input_tags.positive_only = True  # probabilities in [0, 1]
        if tags.classifier_tags is not None:
            tags.classifier_tags.multi_class = False  # labels 0/1 only
        return tags
