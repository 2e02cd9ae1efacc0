"""Calibrate a run: fit on `val_calib`, certify an exit rule, report on `val_test`.

Reads a run directory's prediction files directly (plain numpy), so this tier never imports
`natix.heads`. Certified steps must not reuse the data another step was fitted on, so
`val_calib` is split into two disjoint, hash-ordered folds: fold A fits the calibrator and the
decision threshold, fold B certifies the exit rule (LTT, CRC or SCRC) on the calibrated scores.
The output says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.errors import ConfigError, DataError

METHODS = ("temperature", "platt", "beta", "isotonic")
EXITS = ("ltt", "crc", "scrc")


def load_split(run: str | Path, split: str) -> dict[str, np.ndarray]:
    """A run's stored predictions for one split (ids, labels, prob, gate, ...)."""
    path = Path(run) / "predictions" / f"{split}.npz"
    if not path.is_file():
        if not (Path(run) / "config.json").is_file():
            raise DataError(f"'{run}' is not a natix run (no config.json): pass a directory written by fit-head")
        raise DataError(f"run '{run}' has no {split} predictions: refit it with natix fit-head (every run "
                        "stores train, val_select, val_calib and val_test)")
    try:
        with np.load(path, allow_pickle=False) as z:
            pred = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"predictions '{path}' are unreadable ({exc}): refit the run with natix fit-head") from None
    missing = [k for k in ("ids", "labels", "prob") if k not in pred]
    if missing:
        raise DataError(f"predictions '{path}' lack {', '.join(missing)}: refit the run with natix fit-head")
    n = len(pred["ids"])
    for k in ("labels", "prob", "gate"):
        if k in pred and (pred[k].ndim != 1 or len(pred[k]) != n):
            raise DataError(f"predictions '{path}': '{k}' has shape {pred[k].shape}, expected ({n},): refit the run")
    if not np.isin(pred["labels"], (0, 1)).all():
        raise DataError(f"predictions '{path}' hold labels other than 0/1: calibration needs labeled images")
    return pred


def _folds(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A deterministic half/half fold assignment by hashed id (True = fold B)."""
    keys = np.array([hashlib.sha256(f"calib{seed}:{i}".encode()).hexdigest() for i in ids.astype(str)])
    order = np.argsort(keys, kind="stable")
    fold_b = np.zeros(len(ids), dtype=bool)
    fold_b[order[len(ids) // 2:]] = True
    return fold_b


def _state(est) -> dict:
    """The fitted attributes of an estimator as strict JSON (inf → "inf", arrays → lists)."""
    return {k: jsonable(v) for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")
            and not callable(v)}


def jsonable(v):
    if hasattr(v, "X_thresholds_"):  # sklearn IsotonicRegression
        return {"x": jsonable(v.X_thresholds_), "y": jsonable(v.y_thresholds_)}
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [jsonable(x) for x in np.asarray(v, dtype=object).ravel().tolist()] if np.ndim(v) else jsonable(
            np.asarray(v).item())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _confidence(pred: dict, prob: np.ndarray) -> np.ndarray:
    """The gate score g when the run has one, else max(p, 1 - p) of the calibrated probability."""
    return pred["gate"].astype(np.float64) if "gate" in pred else np.maximum(prob, 1 - prob)


@dataclass(frozen=True)
class CalibrationResult:
    calibration: dict
    thresholds: dict
    table: dict  # val_test metrics before/after
    guarantee: str


def calibrate_run(run, *, method: str = "platt", exit: str | None = None, alpha: float = 0.1,
                  delta: float = 0.1, target_fnr: float | None = None, acceptance: float = 0.8,
                  decision: str = "mcc") -> CalibrationResult:
    """Fit `method` on val_calib, certify `exit`, write calibration.json and thresholds.json."""
    from natix.calibrate.calibrators import CALIBRATORS, DecisionThreshold
    from natix.calibrate.calibrators import _recentre as recentre
    from natix.calibrate.conformal import ConformalRiskControl, LearnThenTest
    from natix.calibrate.scrc import SCRC

    if method not in METHODS:
        raise ConfigError(f"unknown calibration method '{method}': pass one of {', '.join(METHODS)}")
    if exit is not None and exit not in EXITS:
        raise ConfigError(f"unknown exit rule '{exit}': pass one of {', '.join(EXITS)}")
    from natix.calibrate.checks import unit_open

    alpha, delta, acceptance = unit_open(alpha, "alpha"), unit_open(delta, "delta"), unit_open(acceptance, "acceptance")
    run = Path(run)
    cal, test = load_split(run, "val_calib"), load_split(run, "val_test")
    if exit is None:  # nothing to certify: the calibrator may use all of val_calib
        a = np.ones(len(cal["ids"]), dtype=bool)
        b = ~a
    else:
        b = _folds(cal["ids"])
        a = ~b
    p_cal, y_cal = cal["prob"].astype(np.float64), cal["labels"].astype(np.int64)
    p_test, y_test = test["prob"].astype(np.float64), test["labels"].astype(np.int64)

    calibrator = CALIBRATORS[method]().fit(p_cal[a], y_cal[a])
    objective = "fnr" if target_fnr is not None else decision
    threshold = DecisionThreshold(objective=objective, target_fnr=target_fnr).fit(
        calibrator.transform(p_cal[a]), y_cal[a])
    q_cal = threshold.transform(calibrator.transform(p_cal))
    q_test = threshold.transform(calibrator.transform(p_test))
    conf_cal, conf_test = _confidence(cal, q_cal), _confidence(test, q_test)

    thresholds: dict = {"decision_threshold": float(threshold.threshold_), "objective": objective,
                        "exit": exit, "folds": {"fit": int(a.sum()), "certify": int(b.sum())},
                        "confidence": "gate" if "gate" in cal else "max(p, 1-p)"}
    accept_test = np.ones(len(q_test), dtype=bool)
    bound = None
    guarantee = "no exit rule: every image is answered by this stage"
    if exit == "ltt":
        errors_b = (M.predictions(q_cal[b]) != y_cal[b]).astype(np.int64)
        ltt = LearnThenTest(alpha=alpha, delta=delta).fit(conf_cal[b], errors_b)
        thresholds.update(ltt=_state(ltt), certified=bool(ltt.certified_))
        accept_test = ltt.accept(conf_test)
        bound = ("selective_risk", alpha)
        guarantee = (f"LTT: P(selective risk <= {alpha}) >= {1 - delta}" if ltt.certified_ else
                     "LTT certified no threshold: every image defers to the next stage")
    elif exit == "crc":
        crc = ConformalRiskControl(loss="fnr", alpha=alpha).fit(q_cal[b], y_cal[b])
        thresholds.update(crc=_state(crc), certified=True)
        # CRC decides positive at p >= t; the served map sends exactly those above 0.5.
        t_below = float(np.nextafter(crc.threshold_, -np.inf))
        q_test = recentre(q_test, t_below) if crc.threshold_ > 0 else np.maximum(q_test, np.nextafter(0.5, 1))
        conf_test = _confidence(test, q_test)
        thresholds["crc_recentre_below"] = t_below
        bound = ("fnr", alpha)
        guarantee = f"CRC: E[false-negative rate] <= {alpha} (decision at p >= {crc.threshold_:.4f})"
    elif exit == "scrc":
        scrc = SCRC(alpha=alpha, delta=delta, acceptance=acceptance).fit(q_cal[b], y_cal[b], confidence=conf_cal[b])
        thresholds.update(scrc=_state(scrc), certified=True)
        accept_test = np.asarray(scrc.accept(conf_test), dtype=bool)
        selected_test = conf_test >= scrc.selection_threshold_
        bound = ("error_among_selected", alpha)
        guarantee = scrc.guarantee_
    if exit is not None:
        guarantee += (f"; the calibrator and decision threshold were fitted on fold A of val_calib "
                      f"({int(a.sum())} images) and the exit rule certified on the disjoint fold B ({int(b.sum())})")

    errors_test = M.predictions(q_test) != y_test
    coverage = float(accept_test.mean())
    risk = float(errors_test[accept_test].mean()) if accept_test.any() else float("nan")
    table = {"before": _summary(y_test, p_test), "after": _summary(y_test, q_test),
             "coverage": coverage, "selective_risk": risk, "accepted": int(accept_test.sum()),
             "n": int(len(y_test))}
    if bound is not None:
        name, level = bound
        if name == "selective_risk":
            observed = risk
        elif name == "fnr":
            observed = _fnr(y_test, q_test)
        else:  # SCRC: P(decided here and wrong | selected)
            observed = float((errors_test & accept_test)[selected_test].mean()) if selected_test.any() else float("nan")
        table["bound"] = {"quantity": name, "level": level, "observed": observed,
                          "held": bool(observed <= level) if np.isfinite(observed) else None}
    calibration = {"method": method, "state": _state(calibrator), "decision_threshold": thresholds["decision_threshold"],
                   "order": ["calibrator", "decision_threshold"] + (["crc_recentre_below"] if exit == "crc" else [])}
    (run / "calibration.json").write_text(json.dumps(jsonable(calibration), indent=2, allow_nan=False))
    (run / "thresholds.json").write_text(json.dumps(jsonable({**thresholds, "guarantee": guarantee, "alpha": alpha,
                                                               "delta": delta, "acceptance": acceptance}),
                                                    indent=2, allow_nan=False))
    np.savez(run / "predictions" / "val_test_calibrated.npz", ids=test["ids"], labels=y_test, prob=q_test,
             confidence=conf_test, accept=accept_test)
    return CalibrationResult(calibration, thresholds, table, guarantee)


def _fnr(y: np.ndarray, p: np.ndarray) -> float:
    pos = y == 1
    return float(np.mean(M.predictions(p[pos]) == 0)) if pos.any() else float("nan")


def _summary(y: np.ndarray, p: np.ndarray) -> dict:
    out = {}
    for name, fn in (("ece", M.ece), ("nll", M.nll), ("brier", M.brier), ("mcc", M.mcc), ("accuracy", M.accuracy)):
        try:
            out[name] = float(fn(y, p))
        except ValueError:
            out[name] = float("nan")
    try:
        out["natix_reward"] = float(M.natix_reward_windows(y, p)[1])
    except ValueError:
        out["natix_reward"] = float("nan")
    return out


_STATE_ATTRS = {"temperature": ("temperature_",), "platt": ("coef_", "intercept_"), "beta": ("a_", "c_", "d_"),
                "isotonic": ("isotonic_",)}


class _Interpolant:
    """A fitted isotonic step map read back from JSON: linear between thresholds, clipped outside."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def predict(self, p: np.ndarray) -> np.ndarray:
        # sklearn's IsotonicRegression(out_of_bounds="clip") clips to the fitted range, then
        # interpolates linearly between its thresholds: np.interp does both.
        return np.interp(p, self.x, self.y)


def calibration_from_json(cal: dict, *, thresholds: dict | None = None):
    """The calibrated-probability map that `calibrate_run` applied to val_test, rebuilt from JSON.

    `cal` is the content of a run's calibration.json; its ``order`` lists the steps: the fitted
    calibrator, then the re-centring at the decision threshold, then (CRC exit rules only) the
    re-centring just below CRC's threshold, whose value lives in thresholds.json (`thresholds`).
    Returns a function ``p (n,) → q (n,)``, float64 in [0, 1]. Raises `DataError` for a damaged
    or unknown calibration.
    """
    from natix.calibrate.calibrators import _ABOVE_HALF, CALIBRATORS, DecisionThreshold
    from natix.calibrate.calibrators import _recentre as recentre

    if not isinstance(cal, dict) or cal.get("method") not in METHODS:
        method = cal.get("method") if isinstance(cal, dict) else None
        raise DataError(f"calibration method {method!r} is unknown: recalibrate with natix calibrate "
                        f"(methods: {', '.join(METHODS)})")
    method, state = cal["method"], cal.get("state")
    calibrator = CALIBRATORS[method]()
    try:
        missing = [k for k in _STATE_ATTRS[method] if k not in state]
        if missing:
            raise KeyError(missing[0])
        if method == "isotonic":
            x = np.array([float(v) for v in state["isotonic_"]["x"]])
            y = np.array([float(v) for v in state["isotonic_"]["y"]])
            if x.ndim != 1 or x.shape != y.shape or not len(x) or np.any(np.diff(x) < 0):
                raise ValueError("isotonic thresholds are not an increasing (x, y) table")
            calibrator.isotonic_ = _Interpolant(x, y)
        else:
            for k in _STATE_ATTRS[method]:
                setattr(calibrator, k, float(state[k]))
        decision = DecisionThreshold()
        decision.threshold_ = float(cal["decision_threshold"])
        order = list(cal["order"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"calibration.json is incomplete or damaged ({exc!r}): recalibrate with natix calibrate") from None

    steps = []
    for step in order:
        if step == "calibrator":
            steps.append(calibrator.transform)
        elif step == "decision_threshold":
            steps.append(decision.transform)
        elif step == "crc_recentre_below":
            if not isinstance(thresholds, dict) or "crc_recentre_below" not in thresholds:
                raise DataError("calibration ends with CRC's re-centring but thresholds.json (crc_recentre_below) "
                                "was not given: pass thresholds= the run's thresholds.json")
            t_below = float(thresholds["crc_recentre_below"])
            # calibrate_run: a CRC threshold of 0 (t_below < 0) decides everything positive.
            steps.append((lambda q, t=t_below: recentre(q, t)) if t_below >= 0 else
                         (lambda q: np.maximum(q, _ABOVE_HALF)))
        else:
            raise DataError(f"calibration step '{step}' is unknown to this natix: upgrade natix or recalibrate")

    def calibrate(p) -> np.ndarray:
        q = np.asarray(p, dtype=np.float64)
        if q.size == 0:
            return q.reshape(0)
        for fn in steps:
            q = fn(q)
        return q

    return calibrate
