"""Fitted state as plain JSON: how every calibration estimator saves (``to_state``) and loads itself.

An estimator lists the fitted attributes that make up its state in ``STATE``; ``to_state()``
returns them as plain JSON values under the policy of :mod:`natix.jsonio` (NaN → null, ±inf →
"inf"/"-inf", arrays → lists), so the result can go straight into a run's JSON files. Estimators
that can be rebuilt from their state (the calibrators and the decision threshold) add a
classmethod ``from_state`` that reads the numbers back with :func:`state_number`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from sklearn.utils.validation import check_is_fitted

from natix.errors import DataError
from natix.jsonio import jsonable, number

__all__ = ["StateError", "Stateful", "state_number", "state_vector"]


class StateError(DataError):
    """A state that does not rebuild an estimator: ``owner`` names the estimator, ``problem`` what is wrong."""

    def __init__(self, owner: str, problem: str):
        self.owner, self.problem = owner, problem
        super().__init__(f"{owner} state {problem}: pass what to_state() returned")


class Stateful:
    """Mixin for scikit-learn-style estimators: ``to_state()`` over the fitted attributes in ``STATE``.

    Attributes a fit may leave unset (e.g. those of one mode only) are left out of the state.
    """

    STATE: ClassVar[tuple[str, ...]] = ()

    def to_state(self) -> dict:
        """The fitted state: ``{attribute: plain JSON value}`` for the attributes in ``STATE``."""
        check_is_fitted(self)
        return {k: jsonable(getattr(self, k)) for k in self.STATE if hasattr(self, k)}


def _entry(state, key: str, owner: str):
    if not isinstance(state, Mapping):
        raise StateError(owner, f"must be a JSON object, got {type(state).__name__}")
    if key not in state:
        raise StateError(owner, f"lacks '{key}'")
    return state[key]


def state_number(state, key: str, owner: str) -> float:
    """The finite number `state[key]` of `owner`'s state (:class:`StateError` when missing or not one)."""
    value = _entry(state, key, owner)
    try:
        v = number(value)
    except DataError:
        v = float("nan")
    if not np.isfinite(v):
        raise StateError(owner, f"'{key}' is {value!r}, not a finite number")
    return v


def state_vector(state, key: str, owner: str) -> np.ndarray:
    """The non-empty list of finite numbers `state[key]` as a float64 array ``(n,)``."""
    value = _entry(state, key, owner)
    if not isinstance(value, list) or not value:
        raise StateError(owner, f"'{key}' must be a non-empty list of numbers")
    return np.array([state_number({key: v}, key, owner) for v in value], dtype=np.float64)
