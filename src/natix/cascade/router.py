"""The cascade router: the exit thresholds that decide which stage answers each image.

A cascade is K stages. Stage 1 (a cheap head) always runs; stage k answers when its confidence
``g_k >= tau_k`` and defers to stage k + 1 otherwise; the last stage always answers. Every image
gets a probability in [0, 1] (the NATIX validator scores -1 as zero, so "abstain" means
"escalate", never "return -1"). The stages themselves (runs, external callables) are
:mod:`natix.cascade.stages`; evaluating a fitted router and writing ``natix cascade``'s files is
:mod:`natix.cascade.evaluation`; the compute model is :mod:`natix.cascade.compute`.

Thresholds (:class:`Router`), in one of two modes:

``target_risk`` (certified)
    For each stage k < K, Learn-then-Test (:class:`natix.calibrate.LearnThenTest`, selective
    risk) on the calibration samples that actually *reach* stage k (those every earlier stage
    deferred), with errors ``(p_k > 0.5) != y``. With probability >= 1 - delta over the
    calibration draw, ``P(stage k is wrong | stage k answers) <= target_risk``. A stage whose
    threshold cannot be certified gets ``tau_k = inf`` (it defers everything). The last stage
    is not certified: it answers whatever reaches it.

    Chaining: which samples reach stage 2 depends on ``tau_1``, which was chosen on calibration
    data. Certifying ``tau_2`` on the very rows that chose ``tau_1`` breaks the exchangeability
    LTT needs (DESIGN §6), so with K >= 3 the calibration rows are split at random
    (``random_state``) into K - 1 disjoint folds: stage k is certified on the rows of fold k that
    reach it under the already fixed earlier thresholds. With K = 2 only stage 1 is certified and
    it uses every calibration row. Each stage's guarantee holds on its own; all K - 1 hold
    together with probability >= 1 - (K - 1)·delta (union bound).

``budget`` (compute)
    At most a ``budget`` fraction of the images that arrive at stage k go on to stage k + 1, on
    the calibration data (on new data the fraction is close to, not bounded by, ``budget``).
    Among the thresholds that respect the budget (``-inf``, the quantiles of the arrivals'
    confidence up to the budget, and the largest threshold that fits the budget exactly), the
    one whose joint answers have the highest mean NATIX reward (:func:`natix.metrics.
    ordered_rewards`, calibration rows in their stored order) wins; ties go to the smaller
    deferral. With three stages that all have calibration data, (tau_1, tau_2) are searched
    jointly, each stage's budget applied to that stage's arrivals. An external last stage has no
    calibration data: the thresholds before it are chosen as if the stage in front of it
    answered everything, and the stage in front of it defers the full budget of its arrivals
    (the budget is what the caller is willing to pay for the strongest stage). No guarantee.

Numpy only: nothing here imports torch or ``natix.extract``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from natix import metrics as M
from natix.calibrate.checks import binary_labels, positive_int, unit_open
from natix.calibrate.conformal import LearnThenTest
from natix.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["Router"]


def _max_deferred(m: int, budget: float) -> int:
    """The most of ``m`` arrivals a stage may defer: ``floor(budget·m)`` (float slack), at most ``m - 1``."""
    return min(math.floor(budget * m + 1e-9), m - 1)


class Router(BaseEstimator):
    """Per-stage exit thresholds of a K-stage cascade (module docstring: modes and guarantees).

    Stage k < K answers when its confidence ``g_k >= thresholds_[k]`` and defers otherwise; the
    last stage answers everything that reaches it.

    Parameters
    ----------
    target_risk : float in (0, 1), optional
        Certified mode: the selective risk each stage k < K may have on the samples it answers.
    delta : float in (0, 1), default=0.1
        Certified mode: allowed probability (per stage) that a threshold violates ``target_risk``.
    budget : float in (0, 1), optional
        Budget mode: the largest fraction of a stage's arrivals it may defer (calibration data).
    p_value : {"binomial", "hb"}, default="binomial"
        LTT p-value (certified mode).
    min_accepted : "auto" or int >= 1, default="auto"
        LTT: candidates accepting fewer calibration samples are not tested, i.e. where the fixed
        sequence starts; ``"auto"`` is LearnThenTest's rule (the count from which an empirical
        risk <= ``target_risk / 2`` always passes), recorded per stage in ``ltt_[k].min_accepted_``.
    n_grid : int >= 1, default=100
        Budget mode: quantile thresholds per stage, between 0 and the budget.
    random_state : int or None, default=0
        Certified mode with K >= 3: the random split of the calibration rows into K - 1 folds.

    Exactly one of ``target_risk`` and ``budget`` must be given.

    Attributes
    ----------
    mode_ : {"certified", "budget"}
    n_stages_ : int
    thresholds_ : list of K - 1 floats
        ``inf``: the stage defers everything; ``-inf``: it answers everything.
    certified_ : list of K - 1 bools (certified mode) or None
    ltt_ : list of K - 1 fitted LearnThenTest or None (certified mode; None where no row reached)
    n_calibration_ : list of K - 1 ints
        Calibration rows each threshold was chosen on (those reaching the stage, in its fold).
    reach_calib_ : list of K floats
        Fraction of all calibration rows that reach each stage.
    reward_calib_ : float or None
        Budget mode: mean NATIX reward of the chosen joint answers on calibration.
    reward_stage1_calib_ : float
        Mean NATIX reward of stage 1 alone on calibration.
    """

    def __init__(self, *, target_risk: float | None = None, delta: float = 0.1, budget: float | None = None,
                 p_value: str = "binomial", min_accepted: int | str = "auto", n_grid: int = 100, random_state=0):
        self.target_risk = target_risk
        self.delta = delta
        self.budget = budget
        self.p_value = p_value
        self.min_accepted = min_accepted
        self.n_grid = n_grid
        self.random_state = random_state

    # -- validation
    def check_params(self) -> str:
        """Validate the hyperparameters (first thing in ``fit``); the mode they select."""
        if (self.target_risk is None) == (self.budget is None):
            got = "both" if self.target_risk is not None else "neither"
            raise ConfigError(f"pass exactly one of target_risk (certified thresholds) or budget (a deferral "
                              f"budget), got {got}")
        if self.target_risk is not None:
            unit_open(self.target_risk, "target_risk")
            unit_open(self.delta, "delta")
            return "certified"
        unit_open(self.budget, "budget")
        positive_int(self.n_grid, "n_grid")
        return "budget"

    @staticmethod
    def _check_calib(stages_calib) -> tuple[list, np.ndarray]:
        """[(prob, confidence) or None per stage], labels."""
        if not isinstance(stages_calib, (list, tuple)) or len(stages_calib) < 2:
            raise ConfigError("a cascade needs at least two stages: pass a list of per-stage dicts")
        if stages_calib[0] is None or "labels" not in stages_calib[0]:
            raise DataError("stage 1 needs calibration data with prob, confidence and labels")
        y = binary_labels(stages_calib[0]["labels"], both_classes=False, name="stage 1 labels")
        out = []
        for k, st in enumerate(stages_calib, start=1):
            if st is None:
                if k != len(stages_calib):
                    raise DataError(f"stage {k} has no calibration data: only the last stage may lack it")
                out.append(None)
                continue
            p = np.asarray(st["prob"], dtype=np.float64)
            if p.shape != y.shape:
                raise DataError(f"stage {k} has {p.shape} probabilities for {len(y)} labels: align the stages "
                                "with join_stages")
            if not ((p >= 0.0) & (p <= 1.0)).all():
                raise DataError(f"stage {k} calibration prob holds NaN or values outside [0, 1]")
            g = M.confidence(p, st.get("confidence"))
            if g.shape != y.shape or not np.isfinite(g).all():
                raise DataError(f"stage {k} calibration confidence must be finite with shape {y.shape}")
            if "labels" in st and k > 1 and not np.array_equal(np.asarray(st["labels"]), y):
                raise DataError(f"stage {k} labels disagree with stage 1: align the stages with join_stages")
            out.append((p, g))
        return out, y

    # -- fitting
    def fit(self, stages_calib: Sequence[dict | None]) -> Router:
        """Choose the thresholds on calibration data.

        Parameters
        ----------
        stages_calib : list of K dicts, aligned by row, with ``prob (n,)``, ``confidence (n,)``
            (optional: ``max(p, 1 - p)``) and ``labels (n,)`` (stage 1 at least). The last entry may
            be None: an external stage without calibration data.

        Returns
        -------
        self
        """
        mode = self.check_params()
        stages, y = self._check_calib(stages_calib)
        self.n_stages_ = len(stages)
        self.mode_ = mode
        if mode == "certified":
            self._fit_certified(stages, y)
        else:
            self._fit_budget(stages, y, float(self.budget))
        self.reach_calib_ = self._reach([s[1] if s else None for s in stages], np.arange(len(y)))
        self.reward_stage1_calib_ = M.ordered_rewards(y, stages[0][0])[1]
        return self

    def _reach(self, confidences, rows) -> list[float]:
        stage = self._route([g[rows] if g is not None else None for g in confidences])
        return [float((stage >= k).mean()) for k in range(self.n_stages_)]

    def _fit_certified(self, stages, y) -> None:
        K, n = len(stages), len(y)
        if K > 2:
            perm = np.random.default_rng(self.random_state).permutation(n)
            folds = [np.sort(f) for f in np.array_split(perm, K - 1)]
        else:
            folds = [np.arange(n)]
        self.thresholds_, self.certified_, self.ltt_, self.n_calibration_ = [], [], [], []
        for k in range(K - 1):
            rows = folds[k]
            for j in range(k):  # keep the rows every earlier (fixed) threshold defers
                rows = rows[stages[j][1][rows] < self.thresholds_[j]]
            self.n_calibration_.append(len(rows))
            if len(rows) == 0:
                log.info("no calibration row reaches stage %d: it defers everything", k + 1)
                self.thresholds_.append(float("inf"))
                self.certified_.append(False)
                self.ltt_.append(None)
                continue
            p, g = stages[k]
            ltt = LearnThenTest(risk="selective", alpha=self.target_risk, delta=self.delta, p_value=self.p_value,
                                min_accepted=self.min_accepted).fit(g[rows], M.decision_errors(y[rows], p[rows]))
            self.thresholds_.append(float(ltt.threshold_))
            self.certified_.append(bool(ltt.certified_))
            self.ltt_.append(ltt)
        self.reward_calib_ = None

    def _candidates(self, g: np.ndarray, budget: float) -> list[float]:
        """Thresholds on ``g`` (ascending) that defer at most ``budget`` of it, ``-inf`` first."""
        if len(g) == 0:
            return [float("-inf")]
        gs = np.sort(g)
        q = np.quantile(g, np.linspace(0.0, budget, int(self.n_grid) + 1))
        cand = [float("-inf"), *q.tolist(), self._boundary(g, budget)]
        limit = _max_deferred(len(g), budget)
        return sorted(t for t in set(cand) if np.searchsorted(gs, t, side="left") <= limit)

    @staticmethod
    def _boundary(g: np.ndarray, budget: float) -> float:
        """The largest threshold that defers at most ``budget`` of ``g``."""
        if len(g) == 0:
            return float("-inf")
        return float(np.sort(g)[_max_deferred(len(g), budget)])

    def _fit_budget(self, stages, y, budget: float) -> None:
        K = len(stages)
        best = {"reward": -np.inf, "thresholds": None}

        def search(k: int, rows: np.ndarray, thresholds: list, answers: np.ndarray) -> None:
            p, g = stages[k]
            if k == K - 1:  # the last stage answers what reaches it
                a = answers.copy()
                a[rows] = p[rows]
                reward = M.ordered_rewards(y, a)[1]
                if reward > best["reward"]:  # strict: ties keep the smaller deferral (searched first)
                    best.update(reward=reward, thresholds=list(thresholds))
                return
            if stages[k + 1] is None:  # external last stage: spend the budget, judge the rest without it
                a = answers.copy()
                a[rows] = p[rows]
                search_last(thresholds + [self._boundary(g[rows], budget)], a)
                return
            for tau in self._candidates(g[rows], budget):
                keep = g[rows] >= tau
                a = answers.copy()
                a[rows[keep]] = p[rows[keep]]
                search(k + 1, rows[~keep], thresholds + [tau], a)

        def search_last(thresholds: list, answers: np.ndarray) -> None:
            reward = M.ordered_rewards(y, answers)[1]
            if reward > best["reward"]:
                best.update(reward=reward, thresholds=list(thresholds))

        search(0, np.arange(len(y)), [], np.full(len(y), np.nan))
        self.thresholds_ = [float(t) for t in best["thresholds"]]
        self.reward_calib_ = float(best["reward"])
        self.certified_ = None
        self.ltt_ = None
        confs = [s[1] if s else None for s in stages]
        self.n_calibration_ = []
        rows = np.arange(len(y))
        for k in range(K - 1):
            self.n_calibration_.append(len(rows))
            rows = rows[confs[k][rows] < self.thresholds_[k]]

    # -- using
    def _route(self, confidences) -> np.ndarray:
        """Stage index (0-based) per sample; confidences of stages a sample never reaches are not read."""
        K = self.n_stages_
        if len(confidences) < K - 1:
            raise DataError(f"the router has {K} stages: pass at least {K - 1} confidence arrays")
        g0 = np.asarray(confidences[0], dtype=np.float64)
        if g0.ndim != 1:
            raise DataError(f"confidences must be 1-D, got shape {g0.shape}")
        n = len(g0)
        stage = np.full(n, K - 1, dtype=np.int64)
        active = np.ones(n, dtype=bool)
        for k in range(K - 1):
            if not active.any():
                break
            if confidences[k] is None:
                raise DataError(f"stage {k + 1} has no confidences but {int(active.sum())} images reach it")
            g = np.asarray(confidences[k], dtype=np.float64)
            if g.shape != (n,):
                raise DataError(f"stage {k + 1} confidences have shape {g.shape}, expected ({n},)")
            if not np.isfinite(g[active]).all():
                raise DataError(f"stage {k + 1} confidence is NaN or inf for "
                                f"{int((~np.isfinite(g[active])).sum())} images that reach it")
            answer = active & (g >= self.thresholds_[k])
            stage[answer] = k
            active &= ~answer
        return stage

    def route(self, confidences: Sequence) -> np.ndarray:
        """Which stage answers each sample.

        Parameters
        ----------
        confidences : list of K - 1 (or K; the last is not used) arrays of shape (n,); entries of
            samples that never reach a stage may be NaN

        Returns
        -------
        ndarray of shape (n,), int64 stage index in 0..K-1
        """
        check_is_fitted(self, "thresholds_")
        return self._route(confidences)

    def roadwork_probability(self, stage_probs: Sequence, confidences: Sequence | None = None) -> np.ndarray:
        """The cascade's P(roadwork) per sample: the answering stage's probability.

        Parameters
        ----------
        stage_probs : list of K arrays of shape (n,); entries of samples a stage does not answer may be
            NaN (a stage nobody reaches may be None)
        confidences : list of K - 1 arrays of shape (n,), optional; default ``max(p, 1 - p)`` of each
            stage's probability (pass the gate scores for runs with a gate)

        Returns
        -------
        ndarray of shape (n,), float64 in [0, 1]; :class:`DataError` when an answering stage's
        probability is NaN or outside [0, 1]
        """
        check_is_fitted(self, "thresholds_")
        K = self.n_stages_
        if len(stage_probs) != K:
            raise DataError(f"the router has {K} stages, got {len(stage_probs)} probability arrays")
        probs = [None if p is None else np.asarray(p, dtype=np.float64) for p in stage_probs]
        if confidences is None:
            confidences = [None if p is None else M.confidence(p) for p in probs[:K - 1]]
        stage = self._route(confidences)
        out = np.empty(len(stage), dtype=np.float64)
        for k in range(K):
            rows = stage == k
            if not rows.any():
                continue
            if probs[k] is None or probs[k].shape != stage.shape:
                got = None if probs[k] is None else probs[k].shape
                raise DataError(f"stage {k + 1} answers {int(rows.sum())} images but its probabilities have "
                                f"shape {got}, expected {stage.shape}")
            p = probs[k][rows]
            bad = ~((p >= 0.0) & (p <= 1.0))
            if bad.any():
                raise DataError(f"stage {k + 1} answers {int(bad.sum())} images with NaN or a value outside "
                                "[0, 1]: every answer must be a probability")
            out[rows] = p
        return out

    def predict_proba(self, stage_probs: Sequence, confidences: Sequence | None = None) -> np.ndarray:
        """``(n, 2)``: P(no roadwork), P(roadwork), as scikit-learn's ``predict_proba`` gives them
        (:meth:`roadwork_probability` is the second column)."""
        p = self.roadwork_probability(stage_probs, confidences)
        return np.column_stack([1.0 - p, p])

    def predict(self, stage_probs: Sequence, confidences: Sequence | None = None) -> np.ndarray:
        """Hard decisions ``P(roadwork) > 0.5`` (the validator's rounding), int64 of shape (n,)."""
        return M.predictions(self.roadwork_probability(stage_probs, confidences))
