"""Input checks shared by every calibration estimator (numpy only)."""

from __future__ import annotations

import numpy as np

from natix.errors import ConfigError, DataError


def positive_proba(scores, name: str = "scores") -> np.ndarray:
    """A 1-D array of P(class 1), or an ``(n, 2)`` probability array → ``(n,)`` float64 in [0, 1]."""
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim == 2:
        if p.shape[1] != 2:
            raise DataError(f"{name} must be (n,) or (n, 2) probabilities, got shape {p.shape}")
        p = p[:, 1]
    if p.ndim != 1:
        raise DataError(f"{name} must be (n,) or (n, 2) probabilities, got shape {p.shape}")
    p = finite_scores(p, name)
    if p.min() < 0 or p.max() > 1:
        raise DataError(f"{name} must be probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]: "
                        "pass probabilities, not logits")
    return p


def finite_scores(values, name: str = "confidence", n: int | None = None) -> np.ndarray:
    """One finite float64 score per sample, shape ``(n,)`` (of length `n` when given)."""
    g = np.asarray(values, dtype=np.float64)
    if g.ndim != 1:
        raise DataError(f"{name} must be 1-D (one score per sample), got shape {g.shape}")
    if g.size == 0:
        raise DataError(f"{name} is empty: pass at least one score")
    if n is not None and g.size != n:
        raise DataError(f"{name} has {g.size} scores for {n} samples: pass one score per sample")
    if not np.all(np.isfinite(g)):
        raise DataError(f"{name} contains NaN or inf: drop those rows or fix the model's output")
    return g


def choice(value, choices, name: str):
    """`value` when it is one of `choices` (a hyperparameter naming a variant), else a one-line error."""
    if isinstance(value, str) and value in choices:
        return value
    raise ConfigError(f"unknown {name} {value!r}: pass one of {', '.join(choices)}")


def binary_labels(y, n: int | None = None, *, both_classes: bool = True, name: str = "y") -> np.ndarray:
    """Labels in {0, 1} as int64; both classes required unless said otherwise."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {y.shape}")
    if n is not None and len(y) != n:
        raise DataError(f"{name} has {len(y)} labels for {n} scores: pass one label per score")
    if not np.all(np.isin(y, (0, 1))):
        raise DataError(f"{name} must hold labels 0/1, got {sorted(set(np.unique(y).tolist()))[:5]}")
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
