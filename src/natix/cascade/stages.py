"""The stages of a cascade: runs read as stages, joined by image id, and external stages.

Stages 1 and 2 are runs (:func:`natix.heads.runs.fit_run`), read through
:class:`natix.rundir.Run`: per split in :data:`SPLITS` the stored ``prob`` and the run's confidence
(:func:`natix.rundir.confidence`: the gate score when the run has one, else ``max(p, 1 - p)``).
An optional last stage is an external callable ``images -> probabilities``
(:class:`ExternalStage`) that sees only the images deferred to it, as paths of the stage-1 cache.

Probabilities: both splits use ``prob`` of ``predictions/<split>.npz`` as fitted. Calibrated
files (``val_test_calibrated.npz`` from ``natix calibrate``) cover ``val_test`` only, so using
them would make the thresholds (fitted on raw ``val_calib``) and the evaluation disagree.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from natix.errors import ConfigError, DataError
from natix.rundir import confidence, open_run, under_source

__all__ = ["SPLITS", "ExternalStage", "as_external", "as_stage", "join_stages", "load_callable", "load_stage"]

SPLITS = ("val_calib", "val_test")  # thresholds are fitted on the first, reported on the second


# --------------------------------------------------------------------------- run stages


def load_stage(run: str | Path) -> dict:
    """A run's predictions for ``val_calib`` and ``val_test``, as a cascade stage.

    Parameters
    ----------
    run : a run directory written by ``natix fit-head`` (or ``natix tune-gatekeeper``)

    Returns
    -------
    dict with ``run`` (Path), ``cache`` (the run's ``config.json`` cache entry: path,
    fingerprint, n_views, dim, view_names), ``confidence`` (``"gate"`` when the run has a learned
    gate score, else ``"max_prob"``) and, per split in :data:`SPLITS`, a dict of arrays
    ``ids (n,) str``, ``labels (n,) int64``, ``prob (n,) float64`` (P(roadwork)) and
    ``confidence (n,) float64`` (the gate score g, else ``max(p, 1 - p)``).
    """
    source = open_run(run)
    out = {"run": source.path, "cache": dict(source.cache), "confidence": "max_prob", "under": under_source(source)}
    for split in SPLITS:
        pred = source.predictions(split)
        prob = np.asarray(pred["prob"], dtype=np.float64)
        if not ((prob >= 0.0) & (prob <= 1.0)).all():  # also NaN
            raise DataError(f"run '{source.path}' {split} prob holds NaN or values outside [0, 1]: refit the run")
        conf = confidence(pred)
        if "gate" in pred:
            if not np.isfinite(conf).all():
                raise DataError(f"run '{source.path}' {split} gate scores hold NaN or inf: refit the run")
            out["confidence"] = "gate"
        out[split] = {"ids": pred["ids"].astype(str), "labels": pred["labels"].astype(np.int64), "prob": prob,
                      "confidence": conf}
    return out


def as_stage(stage) -> dict:
    """A :func:`load_stage` dict as given, or the stage of a run directory."""
    return stage if isinstance(stage, dict) else load_stage(stage)


def join_stages(stages: Sequence[dict]) -> list[dict]:
    """Align every stage's rows to stage 1's image ids, per split.

    Parameters
    ----------
    stages : list of :func:`load_stage` dicts, stage 1 first

    Returns
    -------
    list of stage dicts like the input; every split's arrays of stage k >= 2 are reordered (and
    cut) to stage 1's ids of that split. Raises :class:`DataError` when a later stage lacks ids of
    stage 1 or its labels disagree.
    """
    if len(stages) < 1:
        raise ConfigError("a cascade needs at least one run")
    first = stages[0]
    for split in SPLITS:
        ids = first[split]["ids"]
        if len(np.unique(ids)) != len(ids):
            raise DataError(f"stage 1 has duplicate {split} image ids: refit the run from a valid cache")
    out = [first]
    for k, stage in enumerate(stages[1:], start=2):
        aligned = dict(stage)
        for split in SPLITS:
            aligned[split] = _align(stage[split], first[split], k, split)
        out.append(aligned)
    return out


def _align(part: dict, first: dict, k: int, split: str) -> dict:
    """Stage k's arrays of one split, reordered to stage 1's ids (whose labels they must share)."""
    ids, labels = first["ids"], first["labels"]
    index = {i: r for r, i in enumerate(part["ids"].tolist())}
    if len(index) != len(part["ids"]):
        raise DataError(f"stage {k} has duplicate {split} image ids: refit the run from a valid cache")
    rows = np.array([index.get(i, -1) for i in ids.tolist()], dtype=np.int64)
    missing = int((rows < 0).sum())
    if missing:
        raise DataError(f"stage {k} lacks {missing} of {len(ids)} {split} image ids: runs must come from "
                        "caches of the same images (and the same splits)")
    bad = int((part["labels"][rows] != labels).sum())
    if bad:
        raise DataError(f"stage {k} disagrees with stage 1 on the labels of {bad} of {len(ids)} {split} "
                        "images: the runs come from differently labeled caches")
    n = len(part["ids"])
    return {key: (v[rows] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v) for key, v in part.items()}


# --------------------------------------------------------------------------- external stages


def load_callable(spec: str) -> Callable:
    """Import ``"package.module:function"`` (the function may be dotted, ``module:Class.method``);
    the module is looked for in the current folder first, then on ``sys.path``."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"stage 3 must be given as 'module:function', got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        obj = _import_from_cwd(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module '{module_name}' for stage 3 ({exc}): put it in the current folder "
                          "or on PYTHONPATH, or pass another module:function") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module '{module_name}' has no attribute '{attr}': pass module:function")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"'{spec}' is not callable: pass a function images -> probabilities")
    return obj


def _import_from_cwd(module_name: str):
    """Import `module_name` with the current folder first on ``sys.path`` for this import only, as
    ``python -m`` would find it: the ``natix`` console script's own ``sys.path`` lacks the folder."""
    cwd = os.getcwd()
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # a module file written since the last import is seen
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(cwd)  # the first occurrence: the one inserted above


class ExternalStage:
    """A stage behind the protocol ``fn(images: list[str]) -> probabilities``, validated.

    ``images`` are the image paths (strings) of the samples that reach the stage; the answer must
    hold one P(roadwork) in [0, 1] per image (a sequence, numpy array or CPU tensor of shape
    ``(n,)``). Anything else (-1, NaN, the wrong length, another shape) raises :class:`DataError`:
    the router must produce a valid probability for every input.
    """

    def __init__(self, fn: Callable, *, name: str | None = None):
        if not callable(fn):
            raise ConfigError(f"stage 3 must be callable (images -> probabilities), got {type(fn).__name__}")
        self.fn = fn
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"

    def __repr__(self) -> str:
        return f"ExternalStage({self.name})"

    def __call__(self, images: Sequence[str]) -> np.ndarray:
        images = [str(i) for i in images]
        if not images:
            return np.empty(0, dtype=np.float64)
        raw = self.fn(images)
        try:
            p = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"stage 3 ({self.name}) returned {type(raw).__name__}, not numbers: return one "
                            "probability per image") from None
        if p.shape != (len(images),):
            raise DataError(f"stage 3 ({self.name}) returned shape {p.shape} for {len(images)} images: return "
                            "one probability per image, shape (n,)")
        bad = ~np.isfinite(p)
        if bad.any():
            raise DataError(f"stage 3 ({self.name}) returned NaN or inf for {int(bad.sum())} of {len(p)} images: "
                            "return a probability in [0, 1] for every image")
        out = (p < 0.0) | (p > 1.0)
        if out.any():
            raise DataError(f"stage 3 ({self.name}) returned {int(out.sum())} values outside [0, 1] (e.g. "
                            f"{p[out][0]:g}): return P(roadwork), never -1")
        return p


def as_external(stage3) -> ExternalStage:
    """An :class:`ExternalStage` from one, from ``"module:function"`` or from a callable."""
    if isinstance(stage3, ExternalStage):
        return stage3
    if isinstance(stage3, str):
        return ExternalStage(load_callable(stage3), name=stage3)
    return ExternalStage(stage3)
