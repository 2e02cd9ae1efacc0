"""The cascade router: which stage answers each image, and how well the cascade does.

A cascade is K stages. Stage 1 (a cheap head) always runs; stage k answers when its confidence
``g_k >= tau_k`` and defers to stage k + 1 otherwise; the last stage always answers. Every image
gets a probability in [0, 1] (the NATIX validator scores -1 as zero, so "abstain" means
"escalate", never "return -1"). Stages 1 and 2 are runs (:func:`natix.heads.runs.fit_run`);
an optional stage 3 is an external callable ``images -> probabilities`` (:class:`ExternalStage`)
that sees only the images deferred to it, as paths of the stage-1 cache.

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
    natix_reward_windows`, calibration rows in their stored order) wins; ties go to the smaller
    deferral. With three stages that all have calibration data, (tau_1, tau_2) are searched
    jointly, each stage's budget applied to that stage's arrivals. An external last stage has no
    calibration data: the thresholds before it are chosen as if the stage in front of it
    answered everything, and the stage in front of it defers the full budget of its arrivals
    (the budget is what the caller is willing to pay for the strongest stage). No guarantee.

Compute: :func:`gflops_per_image` counts the backbone forward pass of a cache's view recipe
(2 × multiply-accumulates of a ViT, DESIGN §4); heads cost nothing by comparison. A stage whose
cache has the same fingerprint as an earlier stage's reuses those features: its marginal cost is
0. Synthetic caches (no backbone) and external stages have unknown compute (``None``), and the
output says so.

Probabilities: both splits use ``prob`` of ``predictions/<split>.npz`` as fitted. Calibrated
files (``val_test_calibrated.npz`` from ``natix calibrate``) cover ``val_test`` only, so using
them would make the thresholds (fitted on raw ``val_calib``) and the evaluation disagree.

Numpy only: nothing here imports torch or ``natix.extract``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from natix import metrics as M
from natix.calibrate.checks import binary_labels, positive_int, unit_open
from natix.calibrate.conformal import LearnThenTest
from natix.cascade.stages import SPLITS, ExternalStage, as_external, as_stage, join_stages, load_callable, load_stage
from natix.errors import CacheError, ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "ExternalStage", "Router", "cascade_run", "deferral_curve", "evaluate_cascade",
           "expected_gflops", "gflops_from_identity", "gflops_per_image", "join_stages", "load_callable",
           "load_stage", "save_curve", "vit_gflops"]

CURVE_POINTS = 101  # stage-1 confidence quantiles on the deferral curve
_DEFAULT_PATCH = 16
_DEFAULT_PREFIX = 5  # DINOv3: 1 CLS + 4 registers


# --------------------------------------------------------------------------- compute


def vit_gflops(side: int, *, dim: int, depth: int, mlp_dim: int, patch: int = _DEFAULT_PATCH,
               n_prefix: int = _DEFAULT_PREFIX, gated: bool = False) -> float:
    """Forward GFLOPs (2 × multiply-accumulates) of a ViT on one ``side × side`` view.

    ``patches = (side // patch)²``, ``tokens = patches + n_prefix``; per layer
    ``tokens·(4·D² + 2·D·I) + 2·tokens²·D`` MACs (QKV and output projections, the MLP, QKᵀ and
    AV; ``3·D·I`` for a gated MLP), plus the patch embedding ``patches·3·patch²·D``. Norms,
    softmax, RoPE and biases are ignored (< 1 %).
    """
    patches = (int(side) // int(patch)) ** 2
    tokens = patches + int(n_prefix)
    mlp = (3 if gated else 2) * dim * mlp_dim
    per_layer = tokens * (4 * dim * dim + mlp) + 2 * tokens * tokens * dim
    macs = depth * per_layer + patches * 3 * patch * patch * dim
    return 2.0 * macs / 1e9


def _view_sides(views: dict) -> list[int]:
    """The side of every view of a cache's recipe identity (global, tiles, flips)."""
    n_views = int(views["n_views"])
    mult = 2 if views.get("flips") else 1
    sides = [int(views["view_size"])] * mult
    if n_views > 1:
        grid = int(views.get("grid") or 0)
        sides += [int(views.get("tile_size") or views["view_size"])] * (grid * grid * mult)
    if len(sides) != n_views:
        raise DataError(f"view recipe {views} describes {len(sides)} views, not n_views={n_views}")
    return sides


def _gflops_and_reason(identity: dict) -> tuple[float | None, str]:
    """GFLOPs per image of a cache identity, or None and why it is unknown."""
    backbone = identity.get("backbone")
    if not backbone:
        return None, "unknown: the cache has no backbone in its identity (synthetic features)"
    arch = backbone.get("arch") or {}
    if "hidden_size" in arch:  # transformers config
        dim, depth, mlp_dim = arch["hidden_size"], arch.get("num_hidden_layers"), arch.get("intermediate_size")
        patch = arch.get("patch_size", _DEFAULT_PATCH)
        gated = bool(arch.get("use_gated_mlp", False))
        prefix = backbone.get("n_prefix_tokens", 1 + arch["num_register_tokens"]
                              if "num_register_tokens" in arch else _DEFAULT_PREFIX)
    elif "embed_dim" in arch:  # timm: no MLP width is stored, assume the standard ratio 4
        dim, depth = arch["embed_dim"], arch.get("depth")
        mlp_dim = 4 * dim
        found = re.search(r"patch(\d+)", str(arch.get("architecture", "")))
        patch = int(found.group(1)) if found else _DEFAULT_PATCH
        gated = False
        prefix = backbone.get("n_prefix_tokens", arch.get("num_prefix_tokens", _DEFAULT_PREFIX))
    else:
        return None, f"unknown: backbone architecture {sorted(arch)} is not a ViT config natix knows"
    if not depth or not mlp_dim:
        return None, "unknown: the backbone architecture lacks its depth or MLP width"
    views = identity.get("views")
    if not views:
        return None, "unknown: the cache identity has no view recipe"
    sides = _view_sides(views)
    total = sum(vit_gflops(s, dim=int(dim), depth=int(depth), mlp_dim=int(mlp_dim), patch=int(patch),
                           n_prefix=int(prefix), gated=gated) for s in sides)
    return total, f"{len(sides)} views at sides {sorted(set(sides))}, ViT D={dim} L={depth} I={mlp_dim}"


def gflops_from_identity(identity: dict) -> float | None:
    """Backbone GFLOPs per image for a cache identity (all its views); None when unknown.

    Unknown means: a synthetic cache (no ``backbone`` in the identity) or an architecture dict
    without ViT sizes. Transformers configs give ``hidden_size``, ``num_hidden_layers``,
    ``intermediate_size``, ``patch_size`` and ``use_gated_mlp``; timm identities give
    ``embed_dim`` and ``depth`` only (MLP width 4·D, patch size from the name, else 16). Prefix
    tokens: ``backbone["n_prefix_tokens"]``, else 5 (CLS + 4 registers).
    """
    return _gflops_and_reason(identity)[0]


def gflops_per_image(cache_path: str | Path) -> float | None:
    """Backbone GFLOPs per image of a feature cache (see :func:`gflops_from_identity`); None when unknown."""
    from natix.cache.store import open_cache

    with open_cache(cache_path) as cache:
        value, reason = _gflops_and_reason(cache.identity)
    if value is None:
        log.info("compute of cache '%s' is %s", cache_path, reason)
    return value


def expected_gflops(reach: Sequence[float], gflops: Sequence[float | None]) -> tuple[float | None, list]:
    """Expected GFLOPs per image ``Σ_k P(reach k)·gflops_k``.

    Parameters
    ----------
    reach : K fractions of images that reach each stage (stage 1: 1.0)
    gflops : K marginal GFLOPs per image, None where unknown

    Returns
    -------
    total : float, or None when any stage that is reached has unknown compute
    parts : list of K floats (None where unknown)
    """
    if len(reach) != len(gflops):
        raise DataError(f"{len(reach)} reach fractions for {len(gflops)} stages")
    parts = [None if g is None else float(r) * float(g) for r, g in zip(reach, gflops)]
    unknown = any(p is None and r > 0 for p, r in zip(parts, reach))
    return (None if unknown else float(sum(p for p in parts if p is not None))), parts


# --------------------------------------------------------------------------- the router


def _max_deferred(m: int, budget: float) -> int:
    """The most of ``m`` arrivals a stage may defer: ``floor(budget·m)`` (float slack), at most ``m - 1``."""
    return min(math.floor(budget * m + 1e-9), m - 1)


def _errors(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0/1 errors of the validator's decision ``p > 0.5``."""
    return ((prob > 0.5).astype(np.int64) != y).astype(np.int64)


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
    def _mode(self) -> str:
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
            g = np.maximum(p, 1.0 - p) if st.get("confidence") is None else np.asarray(st["confidence"], np.float64)
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
        mode = self._mode()
        stages, y = self._check_calib(stages_calib)
        self.n_stages_ = len(stages)
        self.mode_ = mode
        if mode == "certified":
            self._fit_certified(stages, y)
        else:
            self._fit_budget(stages, y, float(self.budget))
        self.reach_calib_ = self._reach([s[1] if s else None for s in stages], np.arange(len(y)))
        self.reward_stage1_calib_ = M.natix_reward_windows(y, stages[0][0])[1]
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
                                min_accepted=self.min_accepted).fit(g[rows], _errors(p[rows], y[rows]))
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
                reward = M.natix_reward_windows(y, a)[1]
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
            reward = M.natix_reward_windows(y, answers)[1]
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

    def predict_proba(self, stage_probs: Sequence, confidences: Sequence | None = None) -> np.ndarray:
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
            confidences = [None if p is None else np.maximum(p, 1.0 - p) for p in probs[:K - 1]]
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

    def predict(self, stage_probs: Sequence, confidences: Sequence | None = None) -> np.ndarray:
        """Hard decisions ``predict_proba > 0.5`` (the validator's rounding), int64 of shape (n,)."""
        return (self.predict_proba(stage_probs, confidences) > 0.5).astype(np.int64)


# --------------------------------------------------------------------------- evaluation


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def deferral_curve(labels, prob1, confidence1, prob2, *, n_points: int = CURVE_POINTS) -> dict:
    """Joint accuracy of stages 1 and 2 over stage-1 thresholds (defer when ``g_1 < tau``).

    Parameters
    ----------
    labels, prob1, confidence1, prob2 : arrays of shape (n,)
    n_points : quantiles of ``confidence1`` used as thresholds (plus ``-inf`` and ``inf``)

    Returns
    -------
    dict of lists, one entry per distinct deferral count, by increasing deferral:
    ``threshold``, ``deferral_ratio`` r, ``joint_accuracy``, ``random_accuracy``
    ``(1 - r)·acc1 + r·acc2``, ``ideal_accuracy`` (deferring first the samples where stage 2 gains
    most: stage-1 errors that stage 2 fixes first, stage-1 successes that stage 2 breaks last),
    and the scalar ``s_d = ∫(joint − random) / ∫(ideal − random)`` (trapezoid; None when ideal =
    random).
    """
    y = np.asarray(labels, dtype=np.int64)
    g = np.asarray(confidence1, dtype=np.float64)
    c1 = (M.predictions(prob1) == y).astype(np.float64)
    c2 = (M.predictions(prob2) == y).astype(np.float64)
    n = len(y)
    order = np.argsort(g, kind="stable")
    gs = g[order]
    gain = c2 - c1
    cum_conf = np.concatenate([[0.0], np.cumsum(gain[order])])  # deferring the k least confident
    cum_ideal = np.concatenate([[0.0], np.cumsum(np.sort(gain)[::-1])])
    taus = np.concatenate([[-np.inf], np.quantile(g, np.linspace(0.0, 1.0, n_points)), [np.inf]])
    k = np.searchsorted(gs, taus, side="left")  # g < tau is exactly the k least confident
    _, first = np.unique(k, return_index=True)
    taus, k = taus[first], k[first]
    acc1, acc2 = c1.mean(), c2.mean()
    r = k / n
    joint = acc1 + cum_conf[k] / n
    ideal = acc1 + cum_ideal[k] / n
    random = (1 - r) * acc1 + r * acc2
    den = _trapezoid(ideal - random, r)
    s_d = _trapezoid(joint - random, r) / den if den > 1e-12 else None
    return {"threshold": taus.tolist(), "deferral_ratio": r.tolist(), "joint_accuracy": joint.tolist(),
            "random_accuracy": random.tolist(), "ideal_accuracy": ideal.tolist(), "s_d": s_d}


def _scores(y: np.ndarray, p: np.ndarray) -> dict:
    return {"accuracy": M.accuracy(y, p), "mcc": M.mcc(y, p), "natix_reward": M.natix_reward_windows(y, p)[1]}


def _image_paths(stage: dict, ids: np.ndarray) -> list[str]:
    """Image paths of ``ids`` from a stage's feature cache, in the order of ``ids``."""
    from natix.cache.store import open_cache

    with open_cache(stage["cache"]["path"]) as cache:
        index = {i: r for r, i in enumerate(cache.ids.tolist())}
        rows = [index.get(i) for i in ids.tolist()]
        missing = sum(r is None for r in rows)
        if missing:
            raise DataError(f"the stage-1 cache '{cache.path}' lacks {missing} of {len(ids)} deferred image ids: "
                            "pass the run's own cache")
        return [str(cache.paths[r]) for r in rows]


def _stage_compute(stages: list[dict]) -> tuple[list, list, list]:
    """Per run stage: standalone GFLOPs, marginal GFLOPs (0 when the features are reused), a note."""
    from natix.cache.store import open_cache

    gflops, marginal, notes = [], [], []
    for k, st in enumerate(stages):
        try:
            with open_cache(st["cache"]["path"]) as cache:
                value, note = _gflops_and_reason(cache.identity)
                fp = cache.fingerprint
        except CacheError as exc:
            value, note, fp = None, f"unknown: {exc}", st["cache"].get("fingerprint")
            log.warning("compute of stage %d is %s", k + 1, note)
        earlier = [j for j in range(k) if stages[j]["cache"].get("fingerprint") == fp]
        gflops.append(value)
        if earlier:
            marginal.append(0.0)
            note = f"reuses the features of stage {earlier[0] + 1} (same cache): only the head runs"
        else:
            marginal.append(value)
        notes.append(note)
    return gflops, marginal, notes


def evaluate_cascade(stage_runs: Sequence, router: Router, *, stage3=None) -> dict:
    """Run a fitted router on ``val_test`` and measure the cascade.

    Parameters
    ----------
    stage_runs : list of run directories (or :func:`load_stage` dicts), stage 1 first
    router : a fitted :class:`Router` with ``len(stage_runs)`` stages (+ 1 with ``stage3``)
    stage3 : ``"module:function"``, a callable ``images -> probabilities`` or an
        :class:`ExternalStage`, optional; it receives the stage-1 cache's image paths of the
        samples deferred to it, and nothing when none is

    Returns
    -------
    dict: ``n``, ``accuracy``, ``mcc``, ``natix_reward`` (mean over the windows, val_test in its
    stored order), ``thresholds``, ``stages`` (per stage: source, reach, answered, accuracy on
    the answered samples, the run's own scores alone, GFLOPs), ``deferral`` (fraction reaching
    each stage), ``compute`` (expected GFLOPs per image, None when a reached stage's compute is
    unknown), ``curve`` (:func:`deferral_curve` of stage 1 vs the stage-2 run), and
    ``predictions`` (numpy ``ids``, ``labels``, ``prob``, ``stage``; not JSON).
    """
    check_is_fitted(router, "thresholds_")
    stages = join_stages([as_stage(s) for s in stage_runs])
    if len(stages) < 2 and stage3 is None:
        raise ConfigError("a cascade needs at least two stages: pass two runs, or one run and stage3")
    external = None if stage3 is None else as_external(stage3)
    K = len(stages) + (external is not None)
    if router.n_stages_ != K:
        raise ConfigError(f"the router was fitted for {router.n_stages_} stages, but {K} were given")
    test = [s["val_test"] for s in stages]
    ids, y = test[0]["ids"], test[0]["labels"]
    n = len(y)
    confidences = [t["confidence"] for t in test]
    probs = [t["prob"] for t in test]
    stage = router.route(confidences[:K - 1])
    if external is not None:
        deferred = np.flatnonzero(stage == K - 1)
        p3 = np.full(n, np.nan)
        if len(deferred):
            p3[deferred] = external(_image_paths(stages[0], ids[deferred]))
        probs.append(p3)
    prob = router.predict_proba(probs, confidences[:K - 1])

    gflops, marginal, notes = _stage_compute(stages)
    if external is not None:
        gflops.append(None)
        marginal.append(None)
        notes.append("unknown: external stage")
    reach = [float((stage >= k).mean()) for k in range(K)]
    total, parts = expected_gflops(reach, marginal)
    per_stage = []
    for k in range(K):
        answered = stage == k
        source = str(stages[k]["run"]) if k < len(stages) else external.name
        per_stage.append({
            "stage": k + 1, "source": source, "reach": reach[k], "answered": float(answered.mean()),
            "n_answered": int(answered.sum()),
            "accuracy_answered": float((M.predictions(prob[answered]) == y[answered]).mean()) if answered.any()
            else None,
            "threshold": router.thresholds_[k] if k < K - 1 else None,
            "alone": _scores(y, probs[k]) if k < len(stages) else None,
            "gflops": gflops[k], "marginal_gflops": marginal[k], "compute_note": notes[k],
        })
    curve = deferral_curve(y, probs[0], confidences[0], probs[1]) if len(stages) >= 2 else None
    return {
        "split": "val_test", "n": n, **_scores(y, prob),
        "mode": router.mode_, "thresholds": list(router.thresholds_),
        "deferral": reach[1:], "stages": per_stage,
        "compute": {"expected_gflops": total, "parts": parts, "gflops_per_stage": gflops,
                    "marginal_gflops": marginal, "notes": notes,
                    "note": "backbone forward GFLOPs per image (2 x MACs); heads are not counted"},
        "curve": curve,
        "predictions": {"ids": ids, "labels": y, "prob": prob, "stage": stage},
    }


# --------------------------------------------------------------------------- files


def _strict(v):
    """Strict JSON values: NaN → None, ±inf → "inf"/"-inf", numpy → Python, paths → str."""
    if isinstance(v, dict):
        return {str(k): _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_strict(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, Path):
        return str(v)
    return v


def save_curve(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``cascade_curve.csv`` and ``cascade_curve.png`` (joint, random and ideal accuracy vs deferral).

    Returns the two paths.
    """
    from matplotlib.figure import Figure

    curve = result.get("curve")
    if not curve:
        raise DataError("the result has no deferral curve: it needs two run stages")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ("threshold", "deferral_ratio", "joint_accuracy", "random_accuracy", "ideal_accuracy")
    csv_path = out_dir / "cascade_curve.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for row in zip(*(curve[c] for c in cols)):
            w.writerow([repr(float(x)) for x in row])

    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    r = curve["deferral_ratio"]
    ax.plot(r, curve["joint_accuracy"], color="C0", label="cascade (defer least confident)")
    ax.plot(r, curve["random_accuracy"], color="C7", linestyle="--", label="random deferral")
    ax.plot(r, curve["ideal_accuracy"], color="C2", linestyle=":", label="ideal deferral")
    if result.get("deferral"):
        what = "" if len(result.get("stages", ())) <= 2 else f", {len(result['stages'])}-stage accuracy"
        ax.plot([result["deferral"][0]], [result["accuracy"]], "o", color="C3",
                label=f"router ({result.get('mode', '?')}{what})")
    ax.set_xlabel("deferral ratio (fraction of images sent to stage 2)")
    ax.set_ylabel(f"accuracy ({result.get('split', 'val_test')})")
    s_d = curve.get("s_d")
    ax.set_title("cascade deferral" + (f"  (s_d = {s_d:.3f})" if s_d is not None else ""))
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    png_path = out_dir / "cascade_curve.png"
    fig.savefig(png_path, dpi=120)
    return csv_path, png_path


def cascade_run(stage1, stage2, *, stage3=None, target_risk: float | None = None, delta: float = 0.1,
                budget: float | None = None, out=None) -> dict:
    """Load, join, fit the router on ``val_calib``, evaluate on ``val_test``, write the results.

    Writes into ``out`` (default ``<stage1>/cascade``): ``cascade.json`` (strict JSON: mode,
    thresholds, stage sources, calibration procedure, metrics, compute), ``cascade_curve.csv``,
    ``cascade_curve.png`` and ``cascade_predictions.npz`` (ids, labels, prob, stage per val_test
    image). Returns the :func:`evaluate_cascade` dict plus ``router``, ``calibration``, ``out`` and
    ``files``.
    """
    router = Router(target_risk=target_risk, delta=delta, budget=budget)
    router._mode()  # option errors before any file is read
    external = None if stage3 is None else as_external(stage3)
    stages = join_stages([load_stage(stage1), load_stage(stage2)])
    calib = [s["val_calib"] for s in stages] + ([None] if external is not None else [])
    router.fit(calib)
    result = evaluate_cascade(stages, router, stage3=external)

    n_calib = len(stages[0]["val_calib"]["ids"])
    if router.mode_ == "certified":
        procedure = ("LTT (selective risk) per stage on the val_calib rows that reach it"
                     + (f"; rows split at random into {router.n_stages_ - 1} disjoint folds, one per certified stage"
                        if router.n_stages_ > 2 else "; one certified stage, all rows"))
        guarantee = (f"per certified stage: P(error | stage answers) <= {target_risk} with probability >= "
                     f"{1 - delta:g} over the calibration draw; the last stage is not certified")
    else:
        procedure = (f"NATIX-reward grid search on val_calib, each stage deferring at most {budget} of its arrivals"
                     + ("; the external last stage has no calibration data: the stage before it spends the full "
                        "budget" if external is not None else ""))
        guarantee = "none (the budget holds on val_calib, approximately on new data)"
    calibration = {"split": "val_calib", "n": n_calib, "procedure": procedure, "guarantee": guarantee,
                   "n_per_stage": router.n_calibration_, "reach": router.reach_calib_,
                   "certified": router.certified_, "reward": router.reward_calib_,
                   "reward_stage1_alone": router.reward_stage1_calib_}
    out = Path(out) if out is not None else Path(stage1) / "cascade"
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = save_curve(result, out)
    pred = result["predictions"]
    np.savez(out / "cascade_predictions.npz", ids=pred["ids"].astype("U64"), labels=pred["labels"],
             prob=pred["prob"], stage=pred["stage"])
    files = [str(out / "cascade.json"), str(csv_path), str(png_path), str(out / "cascade_predictions.npz")]
    doc = {"mode": router.mode_,
           "router": {**router.get_params(), "thresholds": router.thresholds_},
           "stages": [str(Path(stage1)), str(Path(stage2))] + ([external.name] if external is not None else []),
           "confidence": [s["confidence"] for s in stages] + (["none (last stage)"] if external is not None else []),
           "calibration": calibration,
           "metrics": {k: result[k] for k in ("split", "n", "accuracy", "mcc", "natix_reward", "deferral")},
           "per_stage": result["stages"], "compute": result["compute"],
           "s_d": result["curve"]["s_d"], "files": files}
    (out / "cascade.json").write_text(json.dumps(_strict(doc), indent=2, allow_nan=False))
    return {**result, "router": router, "calibration": calibration, "out": out, "files": files}
