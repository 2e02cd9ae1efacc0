"""Runs: fit a head on a cache, write everything a later step needs, read it back.

A run directory holds::

    config.json          head/train config, cache path + fingerprint, split digest, history
    model.safetensors    the head's weights
    splits.json          the split assignment (ids per split)
    metrics.json         metrics per split (fractions, not x1000)
    predictions/<split>.npz   ids, labels, logit, prob, view_logits, attention, gate, aux_logit
                              (plus train_oof.npz with --oof-folds): numpy only, no torch needed
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.cache.store import open_cache
from natix.errors import ConfigError, DataError
from natix.heads.splits import DEFAULT_RATIOS, SPLITS, Splits, make_splits

METRIC_NAMES = ("accuracy", "balanced_accuracy", "mcc", "auroc", "auprc", "nll", "brier", "ece", "ece_mass",
                "aurc", "augrc", "e_augrc", "auroc_f", "natix_reward")
LOWER_IS_BETTER = {"nll", "brier", "ece", "ece_mass", "aurc", "augrc", "e_augrc"}


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


def load_dataset(path: str | Path) -> Dataset:
    """Read the labeled rows of a cache file (features stay float16 if stored so)."""
    with open_cache(path) as cache:
        labeled = np.flatnonzero(cache.labels >= 0)
        if len(labeled) == 0:
            raise DataError(f"cache '{path}' has no labeled images: extract from a source with labels "
                            "(class folders or a manifest with a label column)")
        X = cache.features(labeled, dtype=None)
        return Dataset(Path(path), cache.fingerprint, cache.ids[labeled], cache.labels[labeled].astype(np.int64),
                       cache.groups[labeled], X, cache.view_names)


def confidence(pred: dict) -> np.ndarray:
    """Stage-1 confidence: the gate score g when present, else max(p, 1 - p)."""
    if "gate" in pred:
        return pred["gate"].astype(np.float64)
    p = pred["prob"].astype(np.float64)
    return np.maximum(p, 1 - p)


def compute_metrics(y: np.ndarray, prob: np.ndarray, conf: np.ndarray | None = None) -> dict[str, float]:
    """Every reported metric for one split; undefined ones are NaN."""
    y = np.asarray(y).astype(np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    conf = np.maximum(prob, 1 - prob) if conf is None else np.asarray(conf, dtype=np.float64)
    errors = (M.predictions(prob) != y).astype(np.int64)
    fns = {
        "accuracy": lambda: M.accuracy(y, prob), "balanced_accuracy": lambda: M.balanced_accuracy(y, prob),
        "mcc": lambda: M.mcc(y, prob), "auroc": lambda: M.auroc(y, prob), "auprc": lambda: M.auprc(y, prob),
        "nll": lambda: M.nll(y, prob), "brier": lambda: M.brier(y, prob),
        "ece": lambda: M.ece(y, prob), "ece_mass": lambda: M.ece(y, prob, strategy="quantile"),
        "aurc": lambda: M.aurc(errors, conf), "augrc": lambda: M.augrc(errors, conf),
        "e_augrc": lambda: M.e_augrc(errors, conf), "auroc_f": lambda: M.auroc_failure(errors, conf),
        "natix_reward": lambda: M.natix_reward_windows(y, prob)[1],
    }
    out = {}
    for name, fn in fns.items():
        try:
            out[name] = float(fn())
        except ValueError:
            out[name] = float("nan")
    out["n"] = int(len(y))
    return out


def resolve_splits(data: Dataset, *, splits_path=None, ratios=DEFAULT_RATIOS, seed: int = 0) -> Splits:
    """Load a split file (checked against the cache) or make the default splits."""
    if splits_path:
        return Splits.load(splits_path, fingerprint=data.fingerprint)
    return make_splits(data.ids, data.labels, data.groups, ratios=ratios, seed=seed, fingerprint=data.fingerprint)


@dataclass(frozen=True)
class RunResult:
    out: Path
    metrics: dict[str, dict[str, float]]
    history: dict
    seconds: float


def fit_run(features, out, *, head=None, train=None, splits_path=None, ratios=DEFAULT_RATIOS,
            split_seed: int = 0, oof_folds: int = 0, data: Dataset | None = None) -> RunResult:
    """Fit a head on a cache and write the run directory `out`. Returns its metrics.

    View-linear heads (see `natix.heads.config`) never import torch on this path.
    """
    from natix.heads.config import HeadConfig, TrainConfig, limit_threads

    head = head or HeadConfig()
    train = train or TrainConfig()
    if oof_folds and oof_folds < 2:
        raise ConfigError(f"--oof-folds must be 0 (off) or >= 2, got {oof_folds}")
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"run directory '{out}' exists and is not a natix run: pass a new --out")
    data = data or load_dataset(features)
    splits = resolve_splits(data, splits_path=splits_path, ratios=ratios, seed=split_seed)
    rows = splits.rows(data.ids)
    with limit_threads(train.threads):
        fitted, preds = _fit_and_predict(data, rows, head, train, oof_folds)
    metrics = _write_run(out, features, data, splits, rows, fitted, preds, oof_folds)
    return RunResult(out, metrics, fitted.history, time.perf_counter() - t0)


def _fit_and_predict(data: Dataset, rows: dict, head, train, oof_folds: int):
    """The fitted head and its predictions per split (one pass over the features for all splits)."""
    from natix.heads.fitting import RowView, fit_heads, out_of_fold

    Xtr, ytr = RowView(data.X, rows["train"]), data.labels[rows["train"]]
    Xva, yva = RowView(data.X, rows["val_select"]), data.labels[rows["val_select"]]
    fitted = fit_heads(Xtr, ytr, Xva, yva, head, train)[0]
    every = fitted.predict(data.X)
    preds = {name: {k: v[r] for k, v in every.items()} for name, r in rows.items()}
    if oof_folds:
        preds["train_oof"] = out_of_fold(Xtr, ytr, data.ids[rows["train"]], Xva, yva, head, train, oof_folds)
    return fitted, preds


def _write_run(out: Path, features, data: Dataset, splits, rows: dict, fitted, preds: dict, oof_folds: int) -> dict:
    """Replace the run directory's model, splits, predictions, metrics and config; return the metrics."""
    import sys

    from safetensors.numpy import save_file

    stale = [out / "calibration.json", out / "thresholds.json", *sorted((out / "predictions").glob("*.npz"))]
    # Refitting into an existing run: everything derived from the old model goes first.
    for path in stale:
        path.unlink(missing_ok=True)
    if (out / "report").is_dir():
        import shutil

        shutil.rmtree(out / "report")
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    metrics = {}
    for name, pred in preds.items():
        r = rows["train"] if name == "train_oof" else rows[name]
        metrics[name] = compute_metrics(data.labels[r], pred["prob"], confidence(pred))
        np.savez(out / "predictions" / f"{name}.npz", ids=data.ids[r].astype("U64"), labels=data.labels[r],
                 **{k: v for k, v in pred.items()})
    save_file({k: np.ascontiguousarray(v) for k, v in fitted.state.items()}, str(out / "model.safetensors"))
    splits.save(out / "splits.json")
    torch = sys.modules.get("torch")
    config = {"head": dataclasses.asdict(fitted.head), "train": dataclasses.asdict(fitted.train),
              "cache": {"path": str(Path(features).resolve()) if features else str(data.path),
                        "fingerprint": data.fingerprint, "n_views": int(data.X.shape[1]),
                        "dim": int(data.X.shape[2]), "view_names": data.view_names},
              "splits": {"digest": splits.digest, "seed": splits.seed, "ratios": list(splits.ratios),
                         "grouped": splits.grouped, "sizes": {k: len(v) for k, v in splits.ids.items()}},
              "oof_folds": oof_folds, "history": fitted.history, "numpy": np.__version__,
              "torch": torch.__version__ if torch is not None else None}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=float))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def load_predictions(run: str | Path, split: str) -> dict[str, np.ndarray]:
    """A split's stored predictions (numpy only)."""
    path = Path(run) / "predictions" / f"{split}.npz"
    if not path.is_file():
        have = sorted(p.stem for p in (Path(run) / "predictions").glob("*.npz"))
        if not have:
            raise DataError(f"'{run}' is not a natix run (no predictions/): pass a directory written by fit-head")
        raise DataError(f"run '{run}' has no predictions for split '{split}': pass one of {', '.join(have)}")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def evaluate_run(run: str | Path, split: str = "val_test", *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Recompute a split's metrics from stored predictions, with bootstrap CIs for the main ones."""
    pred = load_predictions(run, split)
    y, prob = pred["labels"], pred["prob"]
    conf = confidence(pred)
    result = {"split": split, "metrics": compute_metrics(y, prob, conf), "ci": {}}
    for name, fn in (("accuracy", M.accuracy), ("mcc", M.mcc), ("auroc", M.auroc), ("nll", M.nll)):
        try:
            est, lo, hi = M.bootstrap_ci(fn, y, prob, n_boot=n_boot, seed=seed)
            result["ci"][name] = [lo, hi]
        except ValueError:
            result["ci"][name] = [float("nan"), float("nan")]
    return result


def read_config(run: str | Path) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise DataError(f"'{run}' is not a natix run (no config.json): pass a directory written by fit-head")
    return json.loads(path.read_text())


__all__ = ["Dataset", "METRIC_NAMES", "RunResult", "SPLITS", "compute_metrics", "confidence",
           "evaluate_run", "fit_run", "load_dataset", "load_predictions", "read_config", "resolve_splits"]
