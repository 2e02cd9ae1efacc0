"""Calibrate a run: fit on `val_calib`, certify an exit rule, report on `val_test`.

Reads and writes the run through :mod:`natix.rundir` (numpy and JSON only), so this tier never
imports `natix.heads`. Certified steps must not reuse the data another step was fitted on, so
`val_calib` is split into two disjoint, hash-ordered folds: fold A fits the calibrator and the
decision threshold, fold B fits the exit rule (:mod:`natix.calibrate.exits`: LTT, CRC, SCRC or
a deferral budget) on the calibrated scores. The output says so.

What a run's calibration.json holds (and :func:`calibration_from_json` replays)::

    {"method": "platt", "state": <the calibrator's to_state()>, "decision_threshold": t,
     "order": ["calibrator", "decision_threshold"(, an exit rule's step, e.g. "crc_recentre_below")]}

An exit rule's step reads its value from thresholds.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from natix import metrics as M
from natix.cache.layout import image_ids
from natix.calibrate.calibrators import CALIBRATORS, DecisionThreshold
from natix.calibrate.exits import EXIT_RULES, EXITS, ExitLevels, ExitRule, create_exit
from natix.calibrate.state import StateError
from natix.errors import ConfigError, DataError
from natix.progress import say
from natix.rundir import open_run, under_source, write_predictions

__all__ = ["EXITS", "METHODS", "SUMMARY_METRICS", "CalibrationMap", "CalibrationResult", "calibrate_run",
           "calibration_from_json", "certify_fold"]

METHODS = tuple(CALIBRATORS)
# The val_test metrics calibrate_run reports before and after calibration.
SUMMARY_METRICS = ("ece", "nll", "brier", "mcc", "accuracy", "reward_ordered")


# What a certificate fitted on challenge draws (several rows per image) can and cannot promise.
DRAWS_CAVEAT = ("; the calibration rows are challenge draws, several per image and not independent: the "
                "certificate holds per draw and only approximately")


def certify_fold(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A deterministic half/half fold assignment by hashed image id: ``(n,)`` bool, True = fold B.

    Rows of one image (the draws of a challenge cache, ids ``"<image id>:<draw>"``) fall in the
    same fold, so no image is both fitted on and certified on.
    """
    images = image_ids(ids)
    unique = np.unique(images)
    keys = np.array([hashlib.sha256(f"calib{seed}:{i}".encode()).hexdigest() for i in unique.tolist()])
    order = np.argsort(keys, kind="stable")
    fold_b = np.zeros(len(unique), dtype=bool)
    fold_b[order[len(unique) // 2:]] = True
    return fold_b[np.searchsorted(unique, images)]


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted calibrator followed by the decision threshold's re-centring: ``p (n,) → q (n,)``."""

    method: str
    calibrator: object  # a fitted CALIBRATORS[method]
    decision: DecisionThreshold

    @classmethod
    def fit(cls, method: str, p: np.ndarray, y: np.ndarray, *, objective: str, target_fnr: float | None):
        calibrator = CALIBRATORS[method]().fit(p, y)
        decision = DecisionThreshold(objective=objective, target_fnr=target_fnr).fit(calibrator.transform(p), y)
        return cls(method, calibrator, decision)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return self.decision.transform(self.calibrator.transform(p))

    def to_json(self, rule: ExitRule) -> dict:
        """calibration.json: this map, then the exit rule's step when it has one."""
        return {"method": self.method, "state": self.calibrator.to_state(),
                "decision_threshold": self.decision.to_state()["threshold_"],
                "order": ["calibrator", "decision_threshold"] + ([rule.step] if rule.step else [])}


@dataclass(frozen=True)
class CalibrationResult:
    calibration: dict
    thresholds: dict
    table: dict  # val_test metrics before/after
    guarantee: str


def calibrate_run(run, *, method: str = "platt", exit: str | None = None, alpha: float = 0.1,
                  delta: float = 0.1, target_fnr: float | None = None, acceptance: float = 0.8,
                  decision: str = "mcc", budget: float = 0.2, progress: bool = True) -> CalibrationResult:
    """Fit `method` on val_calib, fit the exit rule `exit`, write the calibration files of the run.

    Parameters
    ----------
    run : a run directory written by fit-head
    method : a calibrator of :data:`CALIBRATORS` (temperature, platt, beta, isotonic)
    exit : an exit rule of :data:`EXITS` (ltt, crc, scrc, budget), or None to answer every image
    alpha, delta, acceptance, budget : the exit rule's levels (:class:`~natix.calibrate.exits.ExitLevels`)
    target_fnr : pick the decision threshold for this false-negative rate (else by `decision`)
    decision : the decision threshold's objective, "mcc" or "reward"
    progress : say what is fitted on how many images, as a detail (``-v``): calibrating takes
        well under a second (:mod:`natix.progress`)

    Writes calibration.json, thresholds.json and predictions/val_test_calibrated.npz (ids,
    labels, prob, confidence, accept) and returns what it wrote, the val_test table before and
    after calibration, and the guarantee in words.
    """
    if method not in CALIBRATORS:
        raise ConfigError(f"unknown calibration method '{method}': pass one of {', '.join(METHODS)}")
    levels = ExitLevels(alpha=alpha, delta=delta, acceptance=acceptance, budget=budget)
    rule = create_exit(exit, levels)
    run = open_run(run)
    cal, test = run.predictions("val_calib"), run.predictions("val_test")
    fold_b = np.zeros(len(cal["ids"]), dtype=bool) if exit is None else certify_fold(cal["ids"])
    p_cal, y_cal = cal["prob"].astype(np.float64), cal["labels"].astype(np.int64)
    objective = "fnr" if target_fnr is not None else decision
    if progress:
        say(f"calibrating {run.path}: {method} and the decision threshold on {int((~fold_b).sum()):,} val_calib "
            "images" + (f", the {exit} exit rule on the other {int(fold_b.sum()):,}" if exit is not None else ""),
            detail=True)
    cmap = CalibrationMap.fit(method, p_cal[~fold_b], y_cal[~fold_b], objective=objective, target_fnr=target_fnr)

    q_cal = cmap(p_cal)
    conf_cal = M.confidence(q_cal, cal.get("gate"))
    rule.fit(q_cal[fold_b], y_cal[fold_b], conf_cal[fold_b])

    y_test = test["labels"].astype(np.int64)
    q_test = rule.serve(cmap(test["prob"].astype(np.float64)))
    conf_test = M.confidence(q_test, test.get("gate"))
    accept = np.asarray(rule.accept(conf_test), dtype=bool)

    thresholds = {"decision_threshold": cmap.decision.threshold_, "objective": objective, "exit": exit,
                  "folds": {"fit": int((~fold_b).sum()), "certify": int(fold_b.sum())},
                  "confidence": "gate" if "gate" in cal else "max(p, 1-p)", "exit_threshold": rule.threshold,
                  **rule.state()}
    guarantee = _guarantee(rule, fold_b) if exit is not None else rule.guarantee
    under = under_source(run)
    if under is not None:
        guarantee += (f"; scores judged under {under['challenge']} ({under['path']}), "
                      f"{under['draws']} draw(s) per image")
    if len(np.unique(image_ids(cal["ids"]))) < len(cal["ids"]):
        guarantee += DRAWS_CAVEAT
    table = _table(rule, y_test, test["prob"].astype(np.float64), q_test, conf_test, accept)
    calibration = {**cmap.to_json(rule), "under": under}
    run.write_json("calibration.json", calibration)
    # The levels of the rules that certify, as before; a budget sits in its rule's state.
    run.write_json("thresholds.json", {**thresholds, "guarantee": guarantee, "alpha": levels.alpha,
                                       "delta": levels.delta, "acceptance": levels.acceptance,
                                       "bound": rule.bound._asdict() if rule.bound else None})
    write_predictions(run.path, "val_test_calibrated", test["ids"], y_test,
                      {"prob": q_test, "confidence": conf_test, "accept": accept})
    return CalibrationResult(calibration, thresholds, table, guarantee)


def _guarantee(rule: ExitRule, fold_b: np.ndarray) -> str:
    """The exit rule's guarantee, and which fold of val_calib fitted what."""
    verb = "certified" if rule.bound is not None else "fitted"
    return (f"{rule.guarantee}; the calibrator and decision threshold were fitted on fold A of val_calib "
            f"({int((~fold_b).sum())} images) and the exit rule {verb} on the disjoint fold B ({int(fold_b.sum())})")


def _table(rule: ExitRule, y: np.ndarray, p: np.ndarray, q: np.ndarray, confidence: np.ndarray,
           accept: np.ndarray) -> dict:
    """val_test before (`p`) and after (`q`) calibration, what the exit rule accepts, and its bound."""
    errors = M.decision_errors(y, q)
    table = {"before": _summary(y, p), "after": _summary(y, q), "coverage": float(accept.mean()),
             "selective_risk": float(errors[accept].mean()) if accept.any() else float("nan"),
             "accepted": int(accept.sum()), "n": int(len(y))}
    if rule.bound is not None:
        observed = rule.observed(y, q, accept, confidence)
        table["bound"] = {"quantity": rule.bound.quantity, "level": rule.bound.level, "observed": observed,
                          "held": bool(observed <= rule.bound.level) if np.isfinite(observed) else None}
    return table


def _summary(y: np.ndarray, p: np.ndarray) -> dict:
    metrics = M.split_metrics(y, p, names=SUMMARY_METRICS)
    return {name: metrics[name] for name in SUMMARY_METRICS}


# --------------------------------------------------------------------------- calibration.json


def _decision_step(cal: dict) -> Callable[[np.ndarray], np.ndarray]:
    state = {"threshold_": cal["decision_threshold"]} if "decision_threshold" in cal else {}
    return DecisionThreshold.from_state(state).transform


def calibration_from_json(cal: dict, *, thresholds: dict | None = None):
    """The calibrated-probability map that `calibrate_run` applied to val_test, rebuilt from JSON.

    `cal` is the content of a run's calibration.json; its ``order`` lists the steps: the fitted
    calibrator (``CALIBRATORS[method].from_state``), the re-centring at the decision threshold
    (``DecisionThreshold.from_state``), then the step of an exit rule that moves decisions (CRC's
    re-centring just below its threshold), whose value lives in thresholds.json (`thresholds`).
    Returns a function ``p (n,) → q (n,)``, float64 in [0, 1]. Raises `DataError` for a damaged
    or unknown calibration.
    """
    method = cal.get("method") if isinstance(cal, dict) else None
    if method not in CALIBRATORS:
        raise DataError(f"calibration method {method!r} is unknown: recalibrate with natix calibrate "
                        f"(methods: {', '.join(METHODS)})")
    if not isinstance(cal.get("order"), list):
        raise DataError("calibration.json has no list of steps ('order'): recalibrate with natix calibrate")
    builders = {"calibrator": lambda: CALIBRATORS[method].from_state(cal.get("state")).transform,
                "decision_threshold": lambda: _decision_step(cal),
                **{rule.step: partial(rule.served_map, thresholds) for rule in EXIT_RULES.values() if rule.step}}
    steps = []
    for name in cal["order"]:
        if not isinstance(name, str) or name not in builders:
            raise DataError(f"calibration step '{name}' is unknown to this natix: upgrade natix or recalibrate")
        try:
            steps.append(builders[name]())
        except StateError as exc:
            raise DataError(f"calibration.json is incomplete or damaged ({exc.owner} state {exc.problem}): "
                            "recalibrate with natix calibrate") from None

    def calibrate(p) -> np.ndarray:
        q = np.asarray(p, dtype=np.float64)
        if q.size == 0:
            return q.reshape(0)
        for fn in steps:
            q = fn(q)
        return q

    return calibrate
