"""Uncertainty features of a stage-1 run's predictions, and the failure labels they predict.

Everything here is numpy on the arrays a run directory stores in ``predictions/<split>.npz``
(see :mod:`natix.heads.runs`): ``prob [n]``, ``view_logits [n, V]`` and, when the model has them,
``attention [n, V]`` and ``gate [n]``. Nothing imports torch, so scoring a split never wakes a
GPU.

Columns of :func:`uncertainty_features`, always in this order:

=====================  ===========================================================================
``max_prob``           ``max(p, 1 - p)``
``entropy``            binary entropy of ``p`` in bits (``H / ln 2``), in [0, 1]
``margin``             ``|2p - 1|``
``view_prob_mean``     mean over views of ``p_v = sigmoid(view_logits[:, v])``
``view_prob_std``      population standard deviation (``ddof=0``) of ``p_v`` over views
``view_prob_min``      minimum of ``p_v``
``view_prob_max``      maximum of ``p_v``
``view_disagreement``  fraction of views whose decision ``p_v > 0.5`` differs from ``p > 0.5``
``attention_entropy``  only when the split has ``attention``: ``-sum_v a_v ln a_v / ln V`` in
                       [0, 1] (0 when V = 1)
``gate``               only when the split has ``gate`` (selective policy): the gate score g
``pooled_0`` ...       only when ``pooled`` is passed: the caller's pooled feature vector
=====================  ===========================================================================

Decisions are ``p > 0.5`` everywhere, the NATIX validator's ``np.round(p)`` (0.5 is class 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.errors import DataError
from natix.rundir import open_run

__all__ = ["BASE_FEATURES", "failure_labels", "load_run_split", "uncertainty_features"]

BASE_FEATURES = ("max_prob", "entropy", "margin", "view_prob_mean", "view_prob_std", "view_prob_min",
                 "view_prob_max", "view_disagreement")
_ATTENTION_SUM_TOL = 1e-3  # attention rows are float32 softmax outputs


def load_run_split(run: str | Path, split: str) -> dict[str, np.ndarray]:
    """One split's stored predictions of a run (``predictions/<split>.npz``), numpy only.

    Parameters
    ----------
    run : path of a run directory written by ``natix fit-head`` (:func:`natix.heads.runs.fit_run`)
    split : ``train``, ``val_select``, ``val_calib``, ``val_test`` or ``train_oof`` (the cross-fitted
        training predictions, present when the run was fitted with ``oof_folds >= 2``)

    Returns
    -------
    dict of arrays: ``ids [n]``, ``labels [n]``, ``logit [n]``, ``prob [n]``, ``view_logits [n, V]``
    and, when the model has them, ``attention [n, V]``, ``gate [n]``, ``aux_logit [n]``, ``fold [n]``.
    """
    source = open_run(run)
    pred = source.predictions(split)
    if "view_logits" not in pred:
        raise DataError(f"predictions of split '{split}' in '{source.path}' lack view_logits: refit the run with "
                        "natix fit-head")
    return pred


def failure_labels(pred: dict) -> np.ndarray:
    """1 where the stage-1 decision ``prob > 0.5`` (the validator's rounding) is wrong, else 0.

    Parameters
    ----------
    pred : dict with ``labels [n]`` in {0, 1} and ``prob [n]`` in [0, 1]

    Returns
    -------
    ndarray of shape (n,), int64 in {0, 1}
    """
    p = _prob(pred)
    if "labels" not in pred:
        raise DataError("predictions lack 'labels': failure labels need labeled images")
    y = np.asarray(pred["labels"])
    if y.shape != p.shape:
        raise DataError(f"labels have shape {y.shape} but prob has shape {p.shape}: pass one label per prediction")
    if not np.isin(y, (0, 1)).all():
        raise DataError("labels must be 0/1 (unlabeled rows are -1): failure labels need labeled images")
    return M.decision_errors(y.astype(np.int64), p)


def uncertainty_features(pred: dict, *, pooled=None) -> tuple[np.ndarray, list[str]]:
    """Per-image uncertainty features of one split's predictions (columns: see the module docstring).

    Parameters
    ----------
    pred : dict with ``prob [n]`` and ``view_logits [n, V]``; optional ``attention [n, V]``
        (adds ``attention_entropy``) and ``gate [n]`` (adds ``gate``)
    pooled : array of shape (n, d), optional
        A pooled feature vector per image (e.g. the mean over views of the cached features),
        appended as ``pooled_0 .. pooled_{d-1}``.

    Returns
    -------
    X : ndarray of shape (n, k), float64
    names : list of k column names
    """
    p = _prob(pred)
    n = len(p)
    if "view_logits" not in pred:
        raise DataError("predictions lack 'view_logits': refit the run with natix fit-head")
    vl = np.asarray(pred["view_logits"], dtype=np.float64)
    if vl.ndim != 2 or vl.shape[0] != n or vl.shape[1] < 1:
        raise DataError(f"view_logits must have shape ({n}, V), got {vl.shape}: refit the run")
    if not np.isfinite(vl).all():
        raise DataError("view_logits contain NaN or inf: refit the run (the head diverged)")
    n_views = vl.shape[1]

    decision = M.predictions(p) == 1
    pv = _sigmoid(vl)
    columns = [M.confidence(p), _binary_entropy_bits(p), np.abs(2.0 * p - 1.0), pv.mean(axis=1),
               pv.std(axis=1), pv.min(axis=1), pv.max(axis=1), ((pv > 0.5) != decision[:, None]).mean(axis=1)]
    names = list(BASE_FEATURES)

    if "attention" in pred:
        a = np.asarray(pred["attention"], dtype=np.float64)
        if a.shape != (n, n_views):
            raise DataError(f"attention must have shape ({n}, {n_views}) like view_logits, got {a.shape}: "
                            "refit the run")
        if not np.isfinite(a).all() or (a < 0).any() or np.abs(a.sum(axis=1) - 1.0).max() > _ATTENTION_SUM_TOL:
            raise DataError("attention weights must be finite, >= 0 and sum to 1 over views: refit the run")
        if n_views == 1:
            ent = np.zeros(n)
        else:
            ent = -np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0), axis=1) / np.log(n_views)
        columns.append(np.clip(ent, 0.0, 1.0))
        names.append("attention_entropy")

    if "gate" in pred:
        g = np.asarray(pred["gate"], dtype=np.float64)
        if g.shape != (n,) or not np.isfinite(g).all():
            raise DataError(f"gate must be a finite array of shape ({n},), got shape {g.shape}: refit the run")
        columns.append(g)
        names.append("gate")

    X = np.column_stack(columns)
    if pooled is not None:
        z = np.asarray(pooled, dtype=np.float64)
        if z.ndim != 2 or z.shape[0] != n:
            raise DataError(f"pooled must have shape ({n}, d), got {z.shape}: pass one pooled vector per image")
        if not np.isfinite(z).all():
            raise DataError("pooled features contain NaN or inf: check the feature cache (natix verify)")
        X = np.hstack([X, z])
        names += [f"pooled_{j}" for j in range(z.shape[1])]
    return X, names


def _prob(pred: dict) -> np.ndarray:
    """The split's ``prob`` as a validated 1-D float64 array in [0, 1]."""
    if "prob" not in pred:
        raise DataError("predictions lack 'prob': refit the run with natix fit-head")
    p = np.asarray(pred["prob"], dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise DataError(f"prob must be a non-empty 1-D array, got shape {p.shape}")
    if not ((p >= 0.0) & (p <= 1.0)).all():  # also catches NaN
        raise DataError("prob must hold probabilities in [0, 1] without NaN: refit the run")
    return p


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -z))


def _binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    """``-(p log2 p + (1-p) log2 (1-p))`` with ``0 log 0 = 0``."""
    def xlog2x(x):
        return np.where(x > 0, x * np.log2(np.where(x > 0, x, 1.0)), 0.0)

    return -(xlog2x(p) + xlog2x(1.0 - p))
