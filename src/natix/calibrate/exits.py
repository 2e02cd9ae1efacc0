"""Exit rules: which images a calibrated stage answers now and which it defers (a registry).

An exit rule is fitted on fold B of ``val_calib`` (see :mod:`natix.calibrate.apply`): the
calibrated probabilities ``q``, the labels ``y`` and the confidence ``g`` (the gate score when
the run has one, else ``max(q, 1 - q)``). A fitted rule gives

* ``state()``: its entries of thresholds.json, built from its estimator's ``to_state()``;
* ``accept(g)``: the images it answers now, a boolean mask (the others defer);
* ``serve(q)``: the probabilities it serves (unchanged unless the rule moves decisions, as CRC
  does; such a rule names the calibration step that replays the change, ``step``, and rebuilds
  it from thresholds.json with ``served_map``);
* ``bound``: what it certifies as ``Bound(quantity, level)``, or None when it certifies nothing;
  ``observed(...)`` measures that quantity on new data;
* ``guarantee``: the guarantee in words, with its numbers filled in;
* ``threshold``: the confidence threshold it accepts at (None when it does not threshold ``g``).

``fit`` sets ``bound``, ``threshold`` and ``guarantee``.

Rules are dataclasses whose fields are the levels they use (named as in :class:`ExitLevels`),
registered by name with :func:`register_exit`; :func:`create_exit` builds one from the levels.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, NamedTuple

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from natix import metrics as M
from natix.calibrate.calibrators import ABOVE_HALF, recentre
from natix.calibrate.checks import finite_scores, unit_open
from natix.calibrate.conformal import ConformalRiskControl, LearnThenTest
from natix.calibrate.scrc import SCRC
from natix.calibrate.state import Stateful
from natix.errors import DataError
from natix.registry import Registry

__all__ = ["EXITS", "EXIT_RULES", "AnswerAll", "Bound", "BudgetThreshold", "ExitLevels", "ExitRule", "create_exit",
           "register_exit"]

EXIT_RULES = Registry("exit rule")  # name -> rule class, filled by @register_exit below


class Bound(NamedTuple):
    """What an exit rule certifies: ``quantity <= level``."""

    quantity: str
    level: float


@dataclass(frozen=True)
class ExitLevels:
    """The levels exit rules read, each checked to lie in (0, 1); a rule reads the ones it names."""

    alpha: float = 0.1  # risk level of the guarantee (LTT, CRC, SCRC)
    delta: float = 0.1  # failure probability (LTT, SCRC)
    acceptance: float = 0.8  # SCRC: target fraction of images that pass selection
    budget: float = 0.2  # budget: largest fraction of the calibration images deferred

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, unit_open(getattr(self, f.name), f.name))


def register_exit(name: str) -> Callable[[type[ExitRule]], type[ExitRule]]:
    """Class decorator: register an :class:`ExitRule` dataclass under `name` (a duplicate raises)."""

    def wrap(cls: type[ExitRule]) -> type[ExitRule]:
        cls.name = name
        return EXIT_RULES.register(name)(cls)

    return wrap


def create_exit(name: str | None, levels: ExitLevels) -> ExitRule:
    """The unfitted exit rule `name`, reading its levels from `levels`; None: :class:`AnswerAll`."""
    if name is None:
        return AnswerAll()
    cls = EXIT_RULES.get(name)
    return cls(**{f.name: getattr(levels, f.name) for f in fields(cls)})


class ExitRule(ABC):
    """What :func:`natix.calibrate.apply.calibrate_run` needs of an exit rule (module docstring)."""

    name: ClassVar[str] = ""
    step: ClassVar[str | None] = None  # a calibration step the rule adds to the served map
    # What a fit found; fit sets them.
    bound: Bound | None = None
    threshold: float | None = None
    guarantee: str = ""

    @abstractmethod
    def fit(self, q: np.ndarray, y: np.ndarray, confidence: np.ndarray) -> ExitRule:
        """Fit on fold B (calibrated probabilities, labels, confidences, each ``(n,)``); set the results."""

    @abstractmethod
    def state(self) -> dict:
        """The fitted state, as plain JSON values (for thresholds.json)."""

    @abstractmethod
    def accept(self, confidence: np.ndarray) -> np.ndarray:
        """Which images this stage answers, from their confidences ``(n,)``: bool ``(n,)``."""

    def serve(self, q: np.ndarray) -> np.ndarray:
        return q

    @classmethod
    def served_map(cls, thresholds: dict | None) -> Callable[[np.ndarray], np.ndarray]:
        """The map of this rule's calibration ``step``, rebuilt from thresholds.json (identity without a step)."""
        return lambda q: q

    def observed(self, y: np.ndarray, q: np.ndarray, accept: np.ndarray, confidence: np.ndarray) -> float:
        """The bound's quantity on new data (served probabilities `q`, `accept` mask); NaN if undefined."""
        return float("nan")


def _mean(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else float("nan")


class AnswerAll(ExitRule):
    """No exit rule (not registered): every image is answered by this stage."""

    guarantee = "no exit rule: every image is answered by this stage"

    def fit(self, q, y, confidence) -> AnswerAll:
        return self

    def state(self) -> dict:
        return {}

    def accept(self, confidence) -> np.ndarray:
        return np.ones(len(confidence), dtype=bool)


@register_exit("ltt")
@dataclass
class LearnThenTestExit(ExitRule):
    """Learn then Test: the lowest confidence threshold whose selective risk is certified."""

    alpha: float
    delta: float

    def fit(self, q, y, confidence) -> LearnThenTestExit:
        self.ltt_ = LearnThenTest(alpha=self.alpha, delta=self.delta).fit(confidence, M.decision_errors(y, q))
        self.bound, self.threshold = Bound("selective_risk", self.alpha), self.ltt_.threshold_
        self.guarantee = (f"LTT: P(selective risk <= {self.alpha:g}) >= {1 - self.delta:g}" if self.ltt_.certified_ else
                          "LTT certified no threshold: every image defers to the next stage")
        return self

    def state(self) -> dict:
        return {"ltt": self.ltt_.to_state(), "certified": bool(self.ltt_.certified_)}

    def accept(self, confidence) -> np.ndarray:
        return self.ltt_.accept(confidence)

    def observed(self, y, q, accept, confidence) -> float:
        return _mean(M.decision_errors(y, q)[accept])


@register_exit("crc")
@dataclass
class ConformalRiskControlExit(ExitRule):
    """Conformal risk control of the false-negative rate: moves the decision, defers nothing."""

    alpha: float
    step: ClassVar[str] = "crc_recentre_below"

    def fit(self, q, y, confidence) -> ConformalRiskControlExit:
        self.crc_ = ConformalRiskControl(loss="fnr", alpha=self.alpha).fit(q, y)
        # CRC decides positive at q >= t; re-centring just below t sends exactly those above 0.5.
        self.recentre_below_ = float(np.nextafter(self.crc_.threshold_, -np.inf))
        self.bound = Bound("fnr", self.alpha)
        self.guarantee = f"CRC: E[false-negative rate] <= {self.alpha:g} (decision at p >= {self.crc_.threshold_:.4f})"
        return self

    def state(self) -> dict:
        return {"crc": self.crc_.to_state(), "certified": True, "crc_recentre_below": self.recentre_below_}

    def accept(self, confidence) -> np.ndarray:
        return np.ones(len(confidence), dtype=bool)

    def serve(self, q) -> np.ndarray:
        return _recentre_below(self.recentre_below_)(q)

    @classmethod
    def served_map(cls, thresholds) -> Callable[[np.ndarray], np.ndarray]:
        if not isinstance(thresholds, dict) or "crc_recentre_below" not in thresholds:
            raise DataError("calibration ends with CRC's re-centring but thresholds.json (crc_recentre_below) "
                            "was not given: pass thresholds= the run's thresholds.json")
        return _recentre_below(float(thresholds["crc_recentre_below"]))

    def observed(self, y, q, accept, confidence) -> float:
        return _mean(M.decision_errors(y, q)[y == 1])  # the misses among the positives


def _recentre_below(t_below: float) -> Callable[[np.ndarray], np.ndarray]:
    """Served map of a CRC decision ``q > t_below``; t_below < 0 (CRC threshold 0) decides all positive."""
    if t_below >= 0:
        return lambda q: recentre(q, t_below)
    return lambda q: np.maximum(q, ABOVE_HALF)


@register_exit("scrc")
@dataclass
class SCRCExit(ExitRule):
    """Selective conformal risk control (inductive): select confident images, then control their risk."""

    alpha: float
    delta: float
    acceptance: float

    def fit(self, q, y, confidence) -> SCRCExit:
        self.scrc_ = SCRC(alpha=self.alpha, delta=self.delta, acceptance=self.acceptance).fit(
            q, y, confidence=confidence)
        self.bound = Bound("error_among_selected", self.alpha)
        self.threshold, self.guarantee = self.scrc_.threshold_, self.scrc_.guarantee_
        return self

    def state(self) -> dict:
        return {"scrc": self.scrc_.to_state(), "certified": True}

    def accept(self, confidence) -> np.ndarray:
        return np.asarray(self.scrc_.accept(confidence), dtype=bool)

    def observed(self, y, q, accept, confidence) -> float:
        # P(decided here and wrong | selected): selected images below the threshold count as no error.
        selected = confidence >= self.scrc_.selection_threshold_
        return _mean((M.decision_errors(y, q).astype(bool) & accept)[selected])


class BudgetThreshold(Stateful, BaseEstimator):
    """The confidence threshold that defers at most a fraction `budget` of the calibration images.

    ``threshold_`` is the ``k``-th smallest calibration confidence (0-based) with
    ``k = floor(budget * n)``; an image is accepted when ``confidence >= threshold_``, so at most
    ``k <= budget * n`` calibration images fall below it (fewer with ties). No guarantee: on new
    images the deferred fraction is only estimated, and nothing bounds the error rate of the
    accepted ones.

    Parameters
    ----------
    budget : float in (0, 1), default=0.2

    Attributes
    ----------
    threshold_ : float
    deferred_fraction_ : float
        Fraction of calibration images below ``threshold_`` (at most ``budget``).
    n_calibration_ : int

    The state (``to_state``) holds ``budget`` and the attributes above.
    """

    STATE = ("budget", "threshold_", "deferred_fraction_", "n_calibration_")

    def __init__(self, *, budget: float = 0.2):
        self.budget = budget

    def fit(self, confidence) -> BudgetThreshold:
        """Pick ``threshold_`` from calibration confidences ``(n,)``."""
        budget = unit_open(self.budget, "budget")
        g = np.sort(finite_scores(confidence, "confidence"))
        x = budget * g.size
        k = min(math.floor(x + 1e-12 * max(1.0, x)), g.size - 1)  # 0.29 * 100 must give 29, not 28
        self.threshold_ = float(g[k])
        self.deferred_fraction_ = float(np.mean(g < self.threshold_))
        self.n_calibration_ = int(g.size)
        return self

    def accept(self, confidence) -> np.ndarray:
        """Boolean ``(n,)``: True where ``confidence >= threshold_``."""
        check_is_fitted(self, "threshold_")
        return finite_scores(confidence, "confidence") >= self.threshold_


@register_exit("budget")
@dataclass
class BudgetExit(ExitRule):
    """Defer at most a fraction `budget` of the calibration images, the least confident (no guarantee)."""

    budget: float

    def fit(self, q, y, confidence) -> BudgetExit:
        from natix.calibrate.report import rounded

        b = self.budget_ = BudgetThreshold(budget=self.budget).fit(confidence)
        self.threshold = b.threshold_
        self.guarantee = (f"budget: no guarantee; accepts confidence >= {rounded(b.threshold_)}, which deferred "
                          f"{b.deferred_fraction_:.4f} (at most budget = {self.budget:g}) of the {b.n_calibration_} "
                          "calibration images it was fitted on; on new images the deferred fraction is only estimated "
                          "and the error rate of the accepted images is not bounded")
        return self

    def state(self) -> dict:
        return {"budget": self.budget_.to_state(), "certified": False}

    def accept(self, confidence) -> np.ndarray:
        return self.budget_.accept(confidence)


EXITS = tuple(EXIT_RULES)  # the registered names: ltt, crc, scrc, budget
