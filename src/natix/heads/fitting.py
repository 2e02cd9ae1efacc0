"""Fitting heads on cached features, torch-free at this level: the engine is chosen per head.

`fit_heads` sends view-linear heads to the numpy L-BFGS engine (`natix.heads.linear`) and the
rest to the torch AdamW engine (`natix.heads.train`, imported only then). `out_of_fold` gives
every training row a prediction from a model that did not see it (cross-fitting).

With ``progress=True`` a fit counts its L-BFGS iterations or AdamW epochs and cross-fitting its
folds (:mod:`natix.progress`). Both are off by default here, because callers fit many heads in a
loop (``natix ablate`` counts arms); :func:`natix.heads.runs.fit_run` turns them on.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from natix.errors import ConfigError
from natix.heads.config import FittedHead, HeadConfig, TrainConfig
from natix.progress import Progress, say


def fit_progress(head: HeadConfig, train: TrainConfig, desc: str, *, enabled: bool) -> Progress:
    """The count of one fit: L-BFGS iterations (no total: it stops when it converges) or AdamW
    epochs (out of ``max_epochs``; early stopping ends it sooner)."""
    if train.engine(head) == "lbfgs":
        return Progress(None, desc, "it", enabled=enabled)
    return Progress(train.max_epochs, desc, "epoch", enabled=enabled)


def fit_heads(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
              head: HeadConfig = HeadConfig(), train: TrainConfig = TrainConfig(), *,
              seeds: tuple[int, ...] | None = None, progress: bool = False) -> list[FittedHead]:
    """Fit one head per seed (default: ``train.seed``) on ``X_train [N, V, D]``; early stopping on ``X_val``.

    Seeds change the initialisation (and dropout); the batch order of adamw follows
    ``train.seed``, so every seed of one call sees the same batches and they train together.
    `progress` counts the iterations or epochs ("fit-head"; off by default: see the module).
    """
    seeds = tuple(seeds) if seeds is not None else (train.seed,)
    if not seeds:
        raise ConfigError("fit needs at least one seed")
    y_train = _binary(y_train, "training")
    y_val = _binary(y_val, "val_select")
    if X_train.ndim != 3 or X_val.ndim != 3 or X_train.shape[1:] != X_val.shape[1:]:
        raise ConfigError(f"features must be [N, V, D] with the same V and D, got {X_train.shape} and {X_val.shape}")
    if len(X_train) != len(y_train) or len(X_val) != len(y_val):
        raise ConfigError("features and labels have different numbers of rows")
    head.check_views(X_train.shape[1])
    with fit_progress(head, train, "fit-head", enabled=progress) as bar:
        if train.engine(head) == "lbfgs":
            from natix.heads.linear import fit_view_linear

            return fit_view_linear(X_train, y_train, X_val, y_val, head, train, seeds, bar=bar)
        from natix.heads.train import fit_adamw

        return fit_adamw(X_train, y_train, X_val, y_val, head, train, seeds, bar=bar)


def _binary(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if len(y) == 0:
        raise ConfigError(f"the {name} split is empty: use more images or other --ratios")
    if not np.isin(y, (0, 1)).all():
        raise ConfigError(f"{name} labels must be 0 or 1")
    return y.astype(np.int64)


class RowView:
    """Rows ``rows`` of an array ``X [N, ...]`` without copying them: slicing gathers only that block.

    The engines read their inputs in contiguous blocks, so a split of a cache's features can be
    passed without a full copy of the split.
    """

    def __init__(self, X: np.ndarray, rows: np.ndarray):
        self.X, self.rows = X, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows),) + tuple(X.shape[1:])
        self.dtype = X.dtype
        self.ndim = X.ndim

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self.X[self.rows[key]]
        if isinstance(key, tuple) and key and isinstance(key[0], slice):
            return self.X[(self.rows[key[0]],) + key[1:]]
        return self.X[self.rows[key]]

    def __array__(self, dtype=None, copy=None):
        out = self.X[self.rows]
        return out if dtype is None else out.astype(dtype, copy=False)


def fold_ids(ids, labels, k: int, seed: int = 0) -> np.ndarray:
    """Deterministic stratified fold index in [0, k) for each row (hash order within class); rows
    with the same image id (draws of one image) share a fold."""
    ids = np.asarray(ids).astype(str)
    labels = np.asarray(labels)
    folds = np.zeros(len(ids), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        order = sorted(set(ids[rows].tolist()), key=lambda i: hashlib.sha256(f"fold{seed}:{i}".encode()).hexdigest())
        fold_of = {i: j % k for j, i in enumerate(order)}
        folds[rows] = [fold_of[i] for i in ids[rows].tolist()]
    return folds


def check_oof_folds(k: int, y_train) -> None:
    """Refuse `k` cross-fitting folds unless 2 <= k <= the training rows of each class.

    Folds are stratified: with more folds than rows of a class some fold models would hold out
    none of that class, and some folds would be empty.
    """
    if k < 2:
        raise ConfigError(f"--oof-folds must be >= 2, got {k}")
    classes, counts = np.unique(np.asarray(y_train), return_counts=True)
    if len(counts) and k > counts.min():
        fewest = int(counts.min())
        raise ConfigError(f"--oof-folds {k} is more than the {fewest} training images of class "
                          f"{classes[counts.argmin()]}: pass --oof-folds <= {fewest}")


def out_of_fold(X_train, y_train, ids_train, X_val, y_val, head: HeadConfig, train: TrainConfig,
                k: int, *, progress: bool = False) -> dict[str, np.ndarray]:
    """Cross-fitted predictions for every training row from a model that did not see it.

    View-linear heads fit the k fold models as members of one L-BFGS run; other heads one
    after another (fold f uses seed ``train.seed + 1000 (f + 1)``). `progress` counts the folds
    ("oof"), or the iterations of the one L-BFGS run that fits them all.
    """
    check_oof_folds(k, y_train)
    folds = fold_ids(ids_train, y_train, k, seed=train.seed)
    if progress:
        say(f"cross-fitting {k} folds of {len(y_train):,} training rows for out-of-fold predictions")
    fitted = _fold_models(X_train, y_train, X_val, y_val, head, train, folds, k, progress)
    result: dict[str, np.ndarray] = {}
    for f, model in enumerate(fitted):
        held = np.flatnonzero(folds == f)
        pred = model.predict(RowView(X_train, held))
        for key, val in pred.items():
            if key not in result:
                result[key] = np.zeros((len(y_train),) + val.shape[1:], dtype=val.dtype)
            result[key][held] = val
    result["fold"] = folds
    return result


def _fold_models(X_train, y_train, X_val, y_val, head: HeadConfig, train: TrainConfig, folds: np.ndarray, k: int,
                 progress: bool) -> list[FittedHead]:
    """The k models of :func:`out_of_fold`, fold f's fitted without the rows of fold f."""
    if train.engine(head) == "lbfgs":
        from natix.heads.linear import fit_view_linear

        with fit_progress(head, train, f"oof ({k} folds)", enabled=progress) as bar:
            return fit_view_linear(X_train, _binary(y_train, "training"), X_val, _binary(y_val, "val_select"), head,
                                   train, (train.seed,), row_groups=folds[:, None] != np.arange(k)[None, :], bar=bar)
    fitted = []
    with Progress(k, "oof", "fold", enabled=progress) as bar:
        for f in range(k):
            kept = np.flatnonzero(folds != f)
            fitted += fit_heads(RowView(X_train, kept), y_train[kept], X_val, y_val, head,
                                dataclasses.replace(train, seed=train.seed + 1000 * (f + 1)))
            bar.update(1)
    return fitted
