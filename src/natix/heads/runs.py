"""Runs: fit a head on a cache and write its run directory; recompute a run's metrics.

What a run directory holds, and the one reader and writer of it, is :mod:`natix.rundir`:
:func:`fit_run` hands it the config, weights, splits and per-split predictions, and
:func:`evaluate_run` reads predictions back through :class:`natix.rundir.Run`. Metrics are
:func:`natix.metrics.split_metrics` everywhere (fractions, not x1000).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix import rundir
from natix.cache.checksum import all_finite
from natix.cache.layout import image_ids
from natix.cache.store import open_cache
from natix.cache.verify import Problem, damage_error, read_checked, table_problems
from natix.errors import ConfigError, DataError
from natix.heads.fitting import check_oof_folds
from natix.heads.splits import DEFAULT_RATIOS, SPLITS, Splits, make_splits
from natix.progress import Progress, say

log = logging.getLogger(__name__)

# Metrics `evaluate_run` gives a bootstrap CI.
CI_METRICS = ("accuracy", "mcc", "auroc", "nll")
# Feature values (images x views x dims) from which reading a cache's labeled rows takes long
# enough (a second or more: 256 MiB of float16) for `load_dataset` to say so first.
SAY_READ_VALUES = 1 << 27


@dataclass
class Dataset:
    """The labeled rows of a cache, with features in their stored dtype."""

    path: Path
    fingerprint: str
    ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    X: np.ndarray  # [N, V, D]
    view_names: list[str]
    held_out: frozenset[str] = frozenset()  # images listed with conflicting labels: in no split
    images: np.ndarray | None = None  # image id per row (default: the row ids); draws of one image share it
    levels: np.ndarray | None = None  # validator augmentation level per row (challenge caches), else -1
    identity: dict | None = None  # the cache's identity (what made its features)

    def __post_init__(self):
        if self.images is None:
            self.images = self.ids
        if self.levels is None:
            self.levels = np.full(len(self.ids), -1, dtype=np.int8)


def load_dataset(path: str | Path, *, verify: bool = True, progress: bool = True) -> Dataset:
    """Read the labeled rows of a cache file (features stay float16 if stored so), checked for training.

    Always checked (cheap): structure, unique ids, labels in {-1, 0, 1}, the checksums of ids,
    labels and the view table, and finite features in the labeled rows. With `verify` the features
    checksum too, in the same pass that reads the rows; ``verify=False`` skips it for huge caches
    and says so in a log line. Damage raises a one-line `CacheError` naming `natix cache verify`.
    `progress` says what is read before reading at least :data:`SAY_READ_VALUES` feature values
    (:func:`natix.progress.say`).
    """
    with open_cache(path) as cache:
        problems = table_problems(cache)
        if problems:
            raise damage_error(cache.path, problems)
        labeled = np.flatnonzero(cache.labels >= 0)
        if len(labeled) == 0:
            raise DataError(f"cache '{path}' has no labeled images: extract from a source with labels "
                            "(class folders or a manifest with a label column)")
        if progress and len(labeled) * cache.n_views * cache.dim >= SAY_READ_VALUES:
            say(f"reading {len(labeled):,} labeled images x {cache.n_views} views x {cache.dim} dims from "
                f"{cache.path}" + (" (checking the features checksum)" if verify else ""))
        if verify:  # also checks that every feature is finite, in the same pass
            X = read_checked(cache, labeled)
        else:
            log.warning("not verifying the features checksum of %s (verify=False): ids, labels, the view table "
                        "and finite features of the labeled rows are still checked", cache.path)
            X = cache.features(labeled, dtype=None)
            if not all_finite(X):
                raise damage_error(cache.path, [Problem("features", "features of labeled images contain NaN or inf")])
        images = cache.image_ids[labeled]
        return Dataset(Path(cache.path), cache.fingerprint, cache.ids[labeled], cache.labels[labeled].astype(np.int64),
                       cache.groups[labeled], X, cache.view_names, held_out=cache.conflict_ids & set(images.tolist()),
                       images=images, levels=cache.levels[labeled], identity=cache.identity)


def resolve_splits(data: Dataset, *, splits_path=None, ratios=DEFAULT_RATIOS, seed: int = 0) -> Splits:
    """Load a split file (checked against the cache) or make the default splits; images listed with
    conflicting labels are in no split."""
    if splits_path:
        splits = Splits.load(splits_path, fingerprint=data.fingerprint)
        held = data.held_out & {i for ids in splits.ids.values() for i in ids}
        if held:
            raise DataError(f"split file '{splits_path}' puts {len(held)} image(s) listed with conflicting labels in "
                            "a split (natix cache info lists them): drop --splits to make splits without them")
        return splits
    _, first = np.unique(data.images, return_index=True)  # one unit per image, whatever its draws
    first.sort()
    return make_splits(data.images[first], data.labels[first], data.groups[first], ratios=ratios, seed=seed,
                       fingerprint=data.fingerprint, exclude=data.held_out)


@dataclass(frozen=True)
class RunResult:
    out: Path
    metrics: dict[str, dict[str, float]]
    history: dict
    seconds: float


def fit_run(features, out, *, head=None, train=None, splits_path=None, ratios=DEFAULT_RATIOS,
            split_seed: int = 0, oof_folds: int = 0, data: Dataset | None = None, verify: bool = True,
            also=(), progress: bool = True) -> RunResult:
    """Fit a head on a cache and write the run directory `out` (see :mod:`natix.rundir`).

    Returns the metrics it wrote. View-linear heads (see `natix.heads.config`) never import
    torch on this path. `out` may be new, empty, or an earlier run (replaced whole). The cache
    is checked as :func:`load_dataset` does; ``verify=False`` skips its features checksum.
    `also` names further caches of the same images (e.g. validator-e1 draws of a clean cache)
    whose train-split rows join the training rows; every other split stays the first cache's.
    `progress` says what it reads and counts the fit's iterations or epochs ("fit-head") and the
    cross-fitting folds ("oof") on stderr (:mod:`natix.progress`).
    """
    from natix.heads.config import HeadConfig, TrainConfig, limit_threads

    head = head or HeadConfig()
    train = train or TrainConfig()
    if oof_folds and oof_folds < 2:
        raise ConfigError(f"--oof-folds must be 0 (off) or >= 2, got {oof_folds}")
    t0 = time.perf_counter()
    out = rundir.check_out(out)
    data = data or load_dataset(features, verify=verify, progress=progress)
    splits = resolve_splits(data, splits_path=splits_path, ratios=ratios, seed=split_seed)
    rows = splits.rows(data.images)
    for extra in also:
        data, rows = _with_train_rows(data, rows, splits, load_dataset(extra, verify=verify, progress=progress))
    if oof_folds:  # refused before the main fit, not after it; folds hold images (all draws of one together)
        _, first = np.unique(data.images[rows["train"]], return_index=True)
        check_oof_folds(oof_folds, data.labels[rows["train"]][first])
    with limit_threads(train.threads):
        fitted, preds = _fit_and_predict(data, rows, head, train, oof_folds, progress)
    predictions = {}
    for name, pred in preds.items():
        r = rows["train"] if name == "train_oof" else rows[name]
        predictions[name] = {"ids": data.ids[r], "labels": data.labels[r], **pred}
    config = {**_run_config(features, data, splits, fitted, oof_folds), "also": [str(Path(p).resolve()) for p in also]}
    metrics = rundir.write_run(out, config=config,
                               state=fitted.state, splits=splits, predictions=predictions)
    return RunResult(out, metrics, fitted.history, time.perf_counter() - t0)


def feature_source(identity: dict | None) -> dict:
    """What decides a cache's feature space whatever images went in: the extractor version, the
    backbone (weights, adapter, pooling), the preprocessing and the precision."""
    identity = identity or {}
    return {k: identity.get(k) for k in ("extractor_version", "backbone", "preprocess", "precision")}


def check_same_features(a: dict | None, b: dict | None, what: str) -> None:
    """Refuse to mix the features of two caches (identities `a`, `b`) that another backbone,
    preprocessing or precision made; `what` names them in the message."""
    fa, fb = feature_source(a), feature_source(b)
    differ = sorted(k for k in fa if fa[k] != fb[k])
    if differ:
        raise DataError(f"{what} come from different feature extractors ({', '.join(differ)} differ): extract "
                        "every cache with the same backbone, adapter, preprocessing and precision")


def _with_train_rows(data: Dataset, rows: dict, splits: Splits, extra: Dataset) -> tuple[Dataset, dict]:
    """`data` with the train-split rows of `extra` (another cache of the same images) appended to
    its train rows."""
    if extra.view_names != data.view_names or extra.X.shape[2] != data.X.shape[2]:
        raise DataError(f"cache '{extra.path}' has views {extra.view_names} × {extra.X.shape[2]} dims, '{data.path}' "
                        f"{data.view_names} × {data.X.shape[2]}: extract both with the same backbone and --views")
    check_same_features(data.identity, extra.identity, f"caches '{data.path}' and '{extra.path}'")
    add = splits.rows(extra.images, cache=extra.path, owner=f"the splits of '{data.path}'")["train"]
    n = len(data.ids)
    joined = dataclasses.replace(
        data, X=np.concatenate([data.X, extra.X[add]]), ids=np.concatenate([data.ids, extra.ids[add]]),
        labels=np.concatenate([data.labels, extra.labels[add]]), groups=np.concatenate([data.groups, extra.groups[add]]),
        images=np.concatenate([data.images, extra.images[add]]), levels=np.concatenate([data.levels, extra.levels[add]]))
    return joined, {**rows, "train": np.concatenate([rows["train"], n + np.arange(len(add))])}


def _fit_and_predict(data: Dataset, rows: dict, head, train, oof_folds: int, progress: bool):
    """The fitted head and its predictions per split (one pass over the features for all splits)."""
    from natix.heads.fitting import RowView, fit_heads, out_of_fold

    Xtr, ytr = RowView(data.X, rows["train"]), data.labels[rows["train"]]
    Xva, yva = RowView(data.X, rows["val_select"]), data.labels[rows["val_select"]]
    if progress:
        engine = {"lbfgs": "L-BFGS", "adamw": "AdamW"}[train.engine(head)]
        say(f"fitting {head.name} on {len(ytr):,} training images ({engine}), early stopping on "
            f"{len(yva):,} val_select images")
    fitted = fit_heads(Xtr, ytr, Xva, yva, head, train, progress=progress)[0]
    every = fitted.predict(data.X)
    preds = {name: {k: v[r] for k, v in every.items()} for name, r in rows.items()}
    if oof_folds:
        preds["train_oof"] = out_of_fold(Xtr, ytr, data.images[rows["train"]], Xva, yva, head, train, oof_folds,
                                         progress=progress)
    return fitted, preds


def _run_config(features, data: Dataset, splits: Splits, fitted, oof_folds: int) -> dict:
    """config.json of a run: head and train configs, the cache it read, its splits and the fit's history."""
    torch = sys.modules.get("torch")
    return {"head": dataclasses.asdict(fitted.head), "train": dataclasses.asdict(fitted.train),
            "cache": {"path": str(Path(features).resolve()) if features else str(data.path),
                      "fingerprint": data.fingerprint, "n_views": int(data.X.shape[1]),
                      "dim": int(data.X.shape[2]), "view_names": data.view_names},
            "features": feature_source(data.identity),
            "splits": {"digest": splits.digest, "seed": splits.seed, "ratios": list(splits.ratios),
                       "grouped": splits.grouped, "sizes": {k: len(v) for k, v in splits.ids.items()}},
            "oof_folds": oof_folds, "history": fitted.history, "numpy": np.__version__,
            "torch": torch.__version__ if torch is not None else None}


def draw_groups(ids) -> np.ndarray | None:
    """The image id of each row when some image has several rows (challenge draws), else None:
    what a bootstrap resamples as one unit."""
    images = image_ids(ids)
    return images if len(np.unique(images)) < len(images) else None


def evaluate_run(run: str | Path, split: str = "val_test", *, n_boot: int = 1000, seed: int = 0, under=None,
                 verify: bool = True, progress: bool = True) -> dict:
    """A split's metrics, with bootstrap CIs for the main ones: from the run's stored predictions, or
    with `under` (another cache of the same images, e.g. validator-e1 draws) from the run's head
    applied to that cache's rows of the split's images (see :mod:`natix.heads.under`).

    Returns
    -------
    dict with ``run`` (str), ``split`` (str), ``metrics`` (name → float, NaN where undefined, and
    ``n`` → int) and ``ci`` (name → ``[low, high]`` floats, NaN when undefined) for
    :data:`CI_METRICS`: plain values that :func:`natix.jsonio.dumps` writes as strict JSON. Under
    a cache, also ``under`` (its path, fingerprint, challenge, draws) and ``levels`` (level →
    metrics of its rows, for caches whose rows have validator levels). The CIs resample rows, or
    whole images when the rows are challenge draws (``ci_unit`` says which). `progress` counts
    the metrics as their CIs are bootstrapped ("bootstrap", :mod:`natix.progress`).
    """
    if under is None:
        pred = rundir.Run(run).predictions(split)
    else:
        from natix.heads.under import predict_under

        pred = predict_under(run, under, splits=(split,), verify=verify)[split]
    y, prob = pred["labels"], pred["prob"]
    result = {"run": str(run), "split": split, "metrics": M.split_metrics(y, prob, rundir.confidence(pred)),
              "ci": {}}
    if under is not None:
        from natix.heads.under import level_table, under_source

        result["under"] = under_source(under)
        result["levels"] = level_table(pred)
    groups = draw_groups(pred["ids"])
    result["ci_unit"] = "row" if groups is None else "image (all its draws resampled together)"
    with Progress(len(CI_METRICS), "bootstrap", "metric", enabled=progress) as bar:
        for name in CI_METRICS:
            try:
                _, lo, hi = M.bootstrap_ci(getattr(M, name), y, prob, n_boot=n_boot, seed=seed, groups=groups)
            except ValueError:  # undefined on this split, e.g. AUROC with one class
                lo = hi = float("nan")
            result["ci"][name] = [float(lo), float(hi)]
            bar.update(1)
    return result


__all__ = ["CI_METRICS", "Dataset", "check_same_features", "feature_source", "RunResult", "SPLITS", "evaluate_run", "fit_run", "load_dataset", "resolve_splits"]
