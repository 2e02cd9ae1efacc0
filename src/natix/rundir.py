"""The run directory: the one reader and writer of what tier 2 leaves on disk.

A run directory holds::

    config.json                  head/train config, cache path + fingerprint, split digest, history
    model.safetensors            the head's weights
    splits.json                  the split assignment (ids per split)
    metrics.json                 metrics per split (fractions, not x1000)
    predictions/<split>.npz      ids, labels, logit, prob and what the head has (view_logits,
                                 attention, gate, aux_logit); train_oof.npz with --oof-folds
    calibration.json             natix calibrate: the calibration map (calibrator state, order)
    thresholds.json              natix calibrate: decision threshold, exit rule, guarantee
    predictions/val_test_calibrated.npz   natix calibrate: ids, labels, prob, confidence, accept
    failure.json, failure.safetensors     natix fit-failure: the failure predictor
    deferral.json                natix tune-gatekeeper: deferral metrics of the tuned and base run

Every step that reads or writes these files goes through :class:`Run` and :func:`write_run`,
which is numpy and JSON only: calibrate, cascade and serve read runs without importing the
heads. The rule "confidence = the gate score when the run has one, else max(p, 1 - p)" is
:func:`natix.metrics.confidence` applied to a prediction dict by :meth:`Run.confidence`.

A run opened ``under`` another cache of the same images (:class:`Under`, made by
:func:`natix.heads.under.under_run`) answers :meth:`Run.predictions` with its head's predictions
on that cache, so calibrate, fit-failure and cascade judge and certify under, say, validator
conditions without knowing where the predictions came from.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.errors import ConfigError, DataError
from natix.jsonio import read_json, write_atomic, write_json

__all__ = ["DERIVED", "PREDICTION_SPLITS", "Run", "Under", "check_out", "check_replace", "confidence", "is_run", "open_run",
           "write_predictions", "write_run"]

PREDICTION_SPLITS = ("train", "val_select", "val_calib", "val_test")
# Files a later step derives from the model: a refit removes them with the old model.
DERIVED = ("calibration.json", "thresholds.json", "failure.json", "failure.safetensors", "deferral.json")
_REFIT = "refit the run with natix fit-head"


def confidence(pred: dict) -> np.ndarray:
    """The confidence of a prediction dict: its gate score when present, else ``max(p, 1 - p)``."""
    return M.confidence(pred["prob"], pred.get("gate"))


@dataclass(frozen=True)
class Under:
    """A run's predictions on another cache of the same images, per split, and what that cache is."""

    source: dict  # path, fingerprint, challenge, draws
    predictions: dict  # split → dict of arrays like a stored predictions file (ids, labels, prob, ...)


class Run:
    """A run directory, opened for reading.

    ``Run(path)`` refuses a directory without ``config.json`` with a one-line error. Readers
    check what they return and name the step to rerun when a file is missing or damaged. With
    `under`, :meth:`predictions` of the splits it holds are its predictions instead of the
    stored ones (``train_oof`` stays the stored cross-fitted predictions).
    """

    def __init__(self, path, *, under: Under | None = None):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise DataError(f"'{self.path}' is not a natix run (no config.json): pass a directory written by "
                            "natix fit-head")
        self._config = None
        self.under = under

    def __repr__(self) -> str:
        return f"Run('{self.path}')"

    # -- paths
    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def splits_file(self) -> Path:
        return self.path / "splits.json"

    @property
    def failure_file(self) -> Path:
        return self.path / "failure.safetensors"

    def file(self, name: str) -> Path:
        """The path of file `name` of the run (which may not exist)."""
        return self.path / name

    # -- JSON files
    @property
    def config(self) -> dict:
        """config.json, checked to have its head and cache entries."""
        if self._config is None:
            cfg = read_json(self.path / "config.json", fix=_REFIT)
            for key in ("head", "cache"):
                if not isinstance(cfg, dict) or not isinstance(cfg.get(key), dict):
                    raise DataError(f"'{self.path / 'config.json'}' has no '{key}' entry: {_REFIT}")
            self._config = cfg
        return self._config

    @property
    def cache(self) -> dict:
        """The cache entry of config.json: path, fingerprint, n_views, dim, view_names."""
        cache = self.config["cache"]
        if "path" not in cache:
            raise DataError(f"run '{self.path}' has no cache path in config.json: {_REFIT}")
        return cache

    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json", fix=_REFIT)

    def calibration(self) -> tuple[dict | None, dict | None]:
        """calibration.json and thresholds.json (None where the run was not calibrated)."""
        fix = "rerun natix calibrate"
        return (read_json(self.path / "calibration.json", fix=fix, missing_ok=True),
                read_json(self.path / "thresholds.json", fix=fix, missing_ok=True))

    def failure(self) -> tuple[dict, bytes] | None:
        """failure.json and the bytes of failure.safetensors; None without a failure predictor."""
        meta = read_json(self.path / "failure.json", fix="rerun natix fit-failure", missing_ok=True)
        if meta is None:
            return None
        if not self.failure_file.is_file():
            raise DataError(f"run '{self.path}' has failure.json but no failure.safetensors: rerun natix fit-failure")
        return meta, self.failure_file.read_bytes()

    def model_bytes(self) -> bytes:
        if not self.model_file.is_file():
            raise DataError(f"run '{self.path}' has no model.safetensors: {_REFIT}")
        return self.model_file.read_bytes()

    # -- files later steps add
    def write_json(self, name: str, content) -> Path:
        """Write (atomically) the strict-JSON file `name` of the run, e.g. calibration.json."""
        return write_json(self.path / name, content)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write (atomically) the binary file `name` of the run, e.g. failure.safetensors."""
        return write_atomic(self.path / name, data)

    # -- predictions
    def splits_with_predictions(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "predictions").glob("*.npz"))

    def predictions(self, split: str) -> dict[str, np.ndarray]:
        """A split's stored predictions (ids, labels, prob, ...), checked: one row per id, 0/1 labels;
        opened `under` a cache, its predictions there."""
        if self.under is not None and split in self.under.predictions:
            return dict(self.under.predictions[split])
        path = self.path / "predictions" / f"{split}.npz"
        if not path.is_file():
            if split == "train_oof":
                raise DataError(f"run '{self.path}' has no predictions for split 'train_oof': refit with natix "
                                "fit-head --oof-folds 5 to get out-of-fold train predictions")
            have = ", ".join(self.splits_with_predictions()) or "none"
            raise DataError(f"run '{self.path}' has no predictions for split '{split}' (it has: {have}): {_REFIT}")
        try:
            with np.load(path, allow_pickle=False) as z:
                pred = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"predictions '{path}' are unreadable ({exc}): {_REFIT}") from None
        missing = [k for k in ("ids", "labels", "prob") if k not in pred]
        if missing:
            raise DataError(f"predictions '{path}' lack {', '.join(missing)}: {_REFIT}")
        n = len(pred["ids"])
        for k in ("labels", "prob", "gate", "logit"):
            if k in pred and (pred[k].ndim != 1 or len(pred[k]) != n):
                raise DataError(f"predictions '{path}': '{k}' has shape {pred[k].shape}, expected ({n},): {_REFIT}")
        if not np.isin(pred["labels"], (0, 1)).all():
            raise DataError(f"predictions '{path}' hold labels other than 0/1: a run needs labeled images")
        return pred

    def calibrated_predictions(self) -> dict[str, np.ndarray] | None:
        """predictions/val_test_calibrated.npz (from natix calibrate), checked against val_test; or None."""
        path = self.path / "predictions" / "val_test_calibrated.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            pred = {k: z[k] for k in z.files}
        if "ids" not in pred or not np.array_equal(pred["ids"], self.predictions("val_test")["ids"]):
            raise DataError(f"'{path}' belongs to an earlier fit of this run: rerun natix calibrate")
        return pred

    def confidence(self, split: str) -> np.ndarray:
        """The stored confidence of a split (see :func:`confidence`)."""
        return confidence(self.predictions(split))

    def prior(self) -> float:
        """Fraction of positives among the run's training labels."""
        labels = self.predictions("train")["labels"]
        if labels.size == 0:
            raise DataError(f"run '{self.path}' has no training labels: refit it on a labeled cache")
        return float(np.mean(labels == 1))


def open_run(run) -> Run:
    """`run` itself when it is a :class:`Run` (e.g. opened under a cache), else ``Run(run)``."""
    return run if isinstance(run, Run) else Run(run)


def under_source(run: Run) -> dict | None:
    """What the predictions of `run` were judged under (path, fingerprint, challenge, draws), or None."""
    return None if run.under is None else dict(run.under.source)


def check_out(out, *, base=None, run: bool = True) -> Path:
    """Refuse an output directory that cannot be created or written, that is `base`, or (with
    `run`) that exists, is not empty and is not a natix run. Nothing is created.

    ``run=False`` accepts any directory (for outputs such as a cascade's folder, which a rerun
    replaces file by file).
    """
    out = Path(out)
    if base is not None and out.resolve() == Path(base).resolve():
        raise ConfigError(f"out '{out}' is the base run: pass a new directory")
    if run and out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_run(out))):
        raise ConfigError(f"run directory '{out}' exists and is not a natix run: pass a new --out")
    # The nearest existing folder decides: `out` itself, or the ancestor it would be created in.
    existing = out.absolute()
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create '{out}': '{existing}' is not a directory: pass an --out in a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write '{out}': '{existing}' is not writable: pass an --out in a writable "
                          "directory")
    return out


def is_run(path) -> bool:
    """Whether `path` is a natix run directory (it has config.json, which a run writes last)."""
    return (Path(path) / "config.json").is_file()


def check_replace(out, *, force: bool, what: str = "natix run", ours: Callable[[Path], bool] = is_run) -> bool:
    """Refuse an `out` that already holds something, before a command writes there.

    A missing or empty `out` passes. A `what` already there (``ours(out)`` is true) passes only
    with `force`, to be replaced; anything else is refused even with `force`, because it is not
    ours to replace. Returns whether `out` holds a `what` that is to be replaced.
    """
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_dir() and not any(out.iterdir()):
        return False
    if not out.is_dir() or not ours(out):
        raise ConfigError(f"'{out}' exists and is not a {what}: pass a new --out (--force replaces only a {what})")
    if not force:
        raise ConfigError(f"'{out}' already holds a {what}: pass --force to replace it, or a new --out")
    return True


def write_predictions(out, split: str, ids, labels, pred: dict) -> Path:
    """Write ``predictions/<split>.npz`` (ids as fixed-width text, labels, then `pred`'s arrays)."""
    path = Path(out) / "predictions" / f"{split}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{split}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, ids=np.asarray(ids).astype(str), labels=np.asarray(labels), **pred)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_run(out, *, config: dict, state: dict[str, np.ndarray], splits, predictions: dict[str, dict],
              extra: dict | None = None) -> dict:
    """Write a run directory (replacing a run there) and return its metrics per split.

    Parameters
    ----------
    out : the run directory (checked with :func:`check_out`)
    config : config.json content (must hold ``head`` and ``cache``)
    state : the model weights, name → numpy array (model.safetensors)
    splits : the split assignment, an object with ``save(path)`` (splits.json)
    predictions : split → dict with ``ids``, ``labels``, ``prob`` and the head's other arrays
    extra : further JSON files, name → content (e.g. ``{"deferral.json": {...}}``)

    Files a later step derived from an earlier model in `out` (calibration, thresholds, failure
    predictor, calibrated predictions, report) are removed first. Metrics are
    :func:`natix.metrics.split_metrics` of each split's ``prob`` and :func:`confidence`.
    """
    out = check_out(out)
    try:
        return _write_run_files(out, config, state, splits, predictions, extra)
    except OSError as exc:  # a file system that refuses what check_out could not foresee (full, read-only, /proc)
        raise DataError(f"cannot write run directory '{out}' ({exc.strerror or exc}): pass an --out on a writable "
                        "file system with free space") from None


def _write_run_files(out: Path, config: dict, state: dict, splits, predictions: dict, extra: dict | None) -> dict:
    """The steps of :func:`write_run` once `out` is checked."""
    from safetensors.numpy import save

    for name in DERIVED:
        (out / name).unlink(missing_ok=True)
    for path in sorted((out / "predictions").glob("*.npz")):
        path.unlink()
    shutil.rmtree(out / "report", ignore_errors=True)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split, pred in predictions.items():
        arrays = {k: v for k, v in pred.items() if k not in ("ids", "labels")}
        write_predictions(out, split, pred["ids"], pred["labels"], arrays)
        metrics[split] = M.split_metrics(pred["labels"], pred["prob"], confidence(pred))
    write_atomic(out / "model.safetensors", save({k: np.ascontiguousarray(v) for k, v in state.items()}))
    splits.save(out / "splits.json")
    for name, content in (extra or {}).items():
        write_json(out / name, content)
    write_json(out / "metrics.json", metrics)
    write_json(out / "config.json", config)  # last: a run directory is complete once it has config.json
    return metrics
