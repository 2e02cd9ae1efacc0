"""Judging a run under another cache of the same images: its head applied to, say, validator-e1
draws of the images it was split on.

The run's splits are keyed by image id, so every row of the other cache whose image is in a
split (each draw of a challenge cache) is scored in that split: no image trained on is ever
judged, whatever cache it comes from. The other cache must hold the run's views (by name) with
the run's feature width; it is checked as :func:`natix.heads.runs.load_dataset` checks a cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.errors import DataError, NatixError
from natix.heads.runs import Dataset, check_same_features, load_dataset
from natix.heads.splits import SPLITS, Splits
from natix.rundir import Run, Under

# The metrics of each level's row in an evaluation under a challenge cache.
LEVEL_METRICS = ("auroc", "mcc", "accuracy", "reward_ordered", "reward_expected")


def load_head(run: Run):
    """The run's fitted head (:class:`natix.heads.config.FittedHead`), from config.json and model.safetensors."""
    from safetensors.numpy import load

    from natix.heads.config import FittedHead, HeadConfig, TrainConfig

    cfg = run.config
    try:
        return FittedHead(HeadConfig(**cfg["head"]), TrainConfig(**cfg.get("train", {})), load(run.model_bytes()))
    except NatixError:  # already one line with its own fix (natix input errors are ValueErrors too)
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"run '{run.path}' cannot be loaded ({exc}): refit the run with natix fit-head") from None


def under_dataset(run: Run, cache, *, verify: bool = True) -> Dataset:
    """The labeled rows of `cache` with the run's views (selected by name) and feature width."""
    data = load_dataset(cache, verify=verify)
    known = _run_identity(run)
    if known is not None:
        check_same_features(known, data.identity, f"run '{run.path}' and cache '{cache}'")
    want, dim = list(run.cache.get("view_names") or []), run.cache.get("dim")
    missing = [v for v in want if v not in data.view_names]
    if missing or (dim is not None and data.X.shape[2] != dim):
        raise DataError(f"cache '{cache}' has views {data.view_names} × {data.X.shape[2]} dims, run '{run.path}' "
                        f"needs {want} × {dim}: extract it with the run's backbone and --views "
                        f"{len(want)} (a challenge cache defaults to 1 view)")
    if data.view_names == want:
        return data
    idx = [data.view_names.index(v) for v in want]
    return dataclasses.replace(data, X=data.X[:, idx], view_names=want)


def _run_identity(run: Run) -> dict | None:
    """The feature source of the run's cache: from config.json, or (runs fitted before it was
    recorded) from the cache file when it is still there; None when neither says."""
    if "features" in run.config:
        return run.config["features"]
    from natix.cache.store import open_cache
    from natix.errors import CacheError

    try:
        with open_cache(run.cache["path"]) as c:
            return c.identity
    except (CacheError, OSError):
        return None


def split_rows(run: Run, data: Dataset, splits=SPLITS) -> dict[str, np.ndarray]:
    """Rows of `data` per split of the run (by image id); refuses a cache that lacks some of their images."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        why = ("out-of-fold predictions come from fold models that are not kept, so they exist only on the run's "
               "own cache" if unknown[0] == "train_oof" else f"it is not one of {', '.join(SPLITS)}")
        raise DataError(f"split '{unknown[0]}' cannot be judged under another cache: {why}")
    assignment = Splits.load(run.splits_file)
    wanted = Splits({k: assignment.ids[k] for k in splits}, assignment.seed, assignment.ratios,
                    assignment.fingerprint, assignment.grouped)
    return wanted.rows(data.images, cache=data.path, owner=f"run '{run.path}'")


def predict_under(run, cache, *, splits=SPLITS, verify: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """The run's predictions on `cache`, per split: ``ids`` (row ids), ``labels``, ``images``,
    ``levels`` (-1 where a row has none) and the head's outputs (``prob``, ``logit``, ...)."""
    run = run if isinstance(run, Run) else Run(run)
    head = load_head(run)
    data = under_dataset(run, cache, verify=verify)
    rows = split_rows(run, data, splits)
    every = np.concatenate(list(rows.values())) if rows else np.zeros(0, dtype=np.int64)
    out = head.predict(data.X[every])
    preds, start = {}, 0
    for name, r in rows.items():
        part = slice(start, start + len(r))
        preds[name] = {"ids": data.ids[r], "labels": data.labels[r], "images": data.images[r],
                       "levels": data.levels[r], **{k: v[part] for k, v in out.items()}}
        start += len(r)
    return preds


def under_run(run, cache, *, verify: bool = True) -> Run:
    """The run opened under `cache`: its predictions of the four splits are those on `cache`."""
    run = run if isinstance(run, Run) else Run(run)
    return Run(run.path, under=Under(under_source(cache), predict_under(run, cache, verify=verify)))


def level_table(pred: dict) -> dict[str, dict]:
    """:data:`LEVEL_METRICS` (and ``n``) of each augmentation level present, keyed "0".."3"."""
    table = {}
    for level in sorted(set(pred["levels"].tolist()) - {-1}):
        keep = pred["levels"] == level
        conf = M.confidence(pred["prob"][keep], pred["gate"][keep] if "gate" in pred else None)
        table[str(level)] = M.split_metrics(pred["labels"][keep], pred["prob"][keep], conf, names=LEVEL_METRICS)
    return table


def under_source(cache) -> dict:
    """What a result judged under `cache` records of it: path, fingerprint and challenge recipe."""
    from natix.cache.store import open_cache

    with open_cache(cache) as c:
        challenge = c.identity.get("challenge")
        return {"path": str(Path(cache).resolve()), "fingerprint": c.fingerprint,
                "challenge": challenge["name"] if challenge else "clean",
                "draws": challenge["draws"] if challenge else 1,
                "recipe": {k: v for k, v in challenge.items() if k != "draws"} if challenge else None}


__all__ = ["LEVEL_METRICS", "level_table", "load_head", "predict_under", "split_rows", "under_dataset",
           "under_run", "under_source"]
