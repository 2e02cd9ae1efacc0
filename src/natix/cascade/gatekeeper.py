"""Gatekeeper confidence tuning for stage 1 of a cascade (Rabanser et al., NeurIPS 2025).

A trained stage-1 run is fine-tuned so that its confidence separates the samples it gets right
from the ones it gets wrong, which is what a cascade needs to decide what to defer::

    L = α · (1/N) Σ 1[ŷ = y] · CE(p, y)  +  (1 − α) · (1/N) Σ 1[ŷ ≠ y] · KL(p ‖ U)

ŷ is the model's own current prediction (``p > 0.5``), computed without gradient; for a binary
head ``KL(p ‖ U) = log 2 − H(p)``. Small α pushes the mistakes towards p = 0.5 (low confidence)
while the correct predictions stay sharp.

The tuned model's probabilities are bent on purpose, so they are recalibrated on ``val_calib``.
Temperature scaling cannot move a decision at 0.5, but it also cannot undo a shift of the decision
boundary that the tuning may cause; Platt scaling (``σ(a z + b)``) can, so Platt is the default.
The recalibration uses *all* of ``val_calib``: a later certified step on the same split reuses
that data (two parameters, a small leak) and should say so or use another fold.

A tuned run is written in the format of :func:`natix.heads.runs.fit_run`, so every later step
(evaluate, calibrate, cascade) reads it like any other run. Its prediction files hold the
recalibrated ``prob`` and a ``logit`` with ``sigmoid(logit) == prob``, plus ``raw_prob`` and
``raw_logit`` (the tuned model before recalibration). ``model.safetensors`` holds the tuned model,
whose output is the *raw* probability; the recalibration map is in ``config.json``
(``gatekeeper.recalibration``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from natix import metrics as M
from natix.errors import ConfigError, DataError
from natix.heads.config import check_device
from natix.progress import Progress, say
from natix.rundir import Run, check_out, confidence, write_run

log = logging.getLogger(__name__)

STOP_METRICS = ("augrc", "loss")
RECALIBRATIONS = ("platt", "temperature", "none")
OVERLAP_BINS = 50
_LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- the loss


def gatekeeper_loss(logit: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """The Gatekeeper loss of a binary head, from logits (a scalar tensor).

    Parameters
    ----------
    logit : tensor of shape (N,), the head's logit z (p = σ(z))
    y : tensor of shape (N,), labels in {0, 1}
    alpha : float in (0, 1], the weight of the cross-entropy on correct predictions

    Returns
    -------
    ``α · mean(1[ŷ=y] · CE) + (1 − α) · mean(1[ŷ≠y] · (log 2 − H(p)))``, both means over all N,
    with ``ŷ = 1[z > 0]`` taken without gradient (ties at z = 0 are class 0, as ``p > 0.5``).
    CE and H are computed with softplus, so ``|z|`` of 50 or more stays finite and exact.
    """
    y = y.to(logit.dtype)
    with torch.no_grad():
        correct = ((logit > 0).to(logit.dtype) == y).to(logit.dtype)
    ce = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
    # H(p) = p·softplus(−z) + (1 − p)·softplus(z), since −log p = softplus(−z): no log of a probability
    # that rounded to 0 or 1 (p·log p + (1 − p)·log(1 − p) is 0·(−inf) = NaN once float32 p hits 1).
    p = torch.sigmoid(logit)
    entropy = p * F.softplus(-logit) + (1 - p) * F.softplus(logit)
    kl = _LOG2 - entropy
    return alpha * (correct * ce).mean() + (1 - alpha) * ((1 - correct) * kl).mean()


def _check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"gatekeeper alpha must be a number in (0, 1], got {alpha!r}") from None
    if not 0 < a <= 1:
        raise ConfigError(f"gatekeeper alpha must be in (0, 1], got {a}: pass e.g. alpha=0.5")
    return a


# --------------------------------------------------------------------------- deferral metrics


def deferral_metrics(correct, confidence, *, stage2_correct=None, bins: int = OVERLAP_BINS) -> dict:
    """How well a stage-1 confidence decides what to defer to stage 2.

    Parameters
    ----------
    correct : array of shape (n,), 1 where stage 1 is right
    confidence : array of shape (n,), finite stage-1 confidence (low = defer first)
    stage2_correct : array of shape (n,), optional, 1 where stage 2 is right on the same samples
    bins : int >= 1, histogram bins for the overlap

    Returns
    -------
    dict with

    ``accuracy``
        Stage-1 accuracy.
    ``auroc_f``
        P(a correct sample is more confident than a wrong one), ties 1/2; NaN if all samples are
        right or all wrong.
    ``overlap``
        Overlapping area ``Σ_b min(h_correct[b], h_wrong[b])`` of the two confidence histograms,
        each normalised to sum 1, over ``bins`` equal-width bins on [min, max] of all confidences
        (in [0, 1]: 0 = separated, 1 = identical histograms; 1 when all confidences are equal; NaN
        if one group is empty).
    ``stage2_accuracy``, ``s_d``
        None without ``stage2_correct``. s_d is :func:`natix.metrics.deferral_curve`'s (the value
        ``natix cascade`` reports for the same predictions): deferring the k least confident
        samples (tied confidences in expectation over their order), ``s_d = ∫(acc_joint −
        acc_random) dr / ∫(acc_ideal − acc_random) dr``; s_d <= 1, 0 is no better than random,
        negative is worse; NaN when ideal = random (no deferral can help or hurt, e.g. no stage-1
        errors and stage 2 always right), ``null`` in deferral.json.
    ``curves``
        None without ``stage2_correct``, else ``{"ratio", "joint", "random", "ideal"}``: arrays of
        shape (n + 1,) for plotting.
    """
    c1 = _binary(correct, "correct")
    g = np.asarray(confidence, dtype=np.float64)
    if g.shape != c1.shape:
        raise DataError(f"confidence has shape {g.shape}, correct has {c1.shape}: pass one confidence per sample")
    if not np.all(np.isfinite(g)):
        raise DataError("confidence contains NaN or inf: drop those rows or fix the model's output")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    errors = 1 - c1
    try:
        auroc_f = M.auroc_failure(errors, g)
    except M.UndefinedMetricError:
        auroc_f = float("nan")
    out = {"n": len(c1), "accuracy": float(c1.mean()), "auroc_f": float(auroc_f),
           "overlap": _overlap(g[c1 == 1], g[c1 == 0], g.min(), g.max(), bins),
           "stage2_accuracy": None, "s_d": None, "curves": None}
    if stage2_correct is None:
        return out
    c2 = _binary(stage2_correct, "stage2_correct")
    if c2.shape != c1.shape:
        raise DataError(f"stage2_correct has {len(c2)} samples, correct has {len(c1)}: join them by image id first")
    curve = M.deferral_curve(c1, c2, g)
    out.update(stage2_accuracy=float(c2.mean()), s_d=curve.s_d,
               curves={"ratio": curve.ratio, "joint": curve.joint, "random": curve.random, "ideal": curve.ideal})
    return out


def _binary(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isin(a, (0, 1))):
        raise DataError(f"{name} must hold 0/1 (or booleans), got values {np.unique(a)[:5].tolist()}")
    return a.astype(np.int64)


def _overlap(a: np.ndarray, b: np.ndarray, lo: float, hi: float, bins: int) -> float:
    """Overlapping area of the normalised histograms of `a` and `b` on [lo, hi]."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    if hi <= lo:
        return 1.0
    ha = np.histogram(a, bins=bins, range=(lo, hi))[0] / len(a)
    hb = np.histogram(b, bins=bins, range=(lo, hi))[0] / len(b)
    return float(np.minimum(ha, hb).sum())


# --------------------------------------------------------------------------- tuning a run


@dataclass(frozen=True)
class GatekeeperConfig:
    """How a run is Gatekeeper-tuned."""

    alpha: float  # weight of CE on correct predictions; 1 − α on pushing mistakes to uniform
    epochs: int = 30  # at most; early stopping on val_select picks the best epoch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256  # 0 = full batch
    patience: int = 5
    stop_metric: str = "augrc"  # val_select AUGRC of max(p, 1 − p), or "loss" (val Gatekeeper loss)
    recalibrate: str = "platt"  # on val_calib; "temperature" cannot undo a moved decision boundary
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch/BLAS threads (speed only); 0 = every core this process may use

    def __post_init__(self):
        object.__setattr__(self, "alpha", _check_alpha(self.alpha))
        if self.stop_metric not in STOP_METRICS:
            raise ConfigError(f"unknown stop metric '{self.stop_metric}': pass one of {', '.join(STOP_METRICS)}")
        if self.recalibrate not in RECALIBRATIONS:
            raise ConfigError(f"unknown recalibration '{self.recalibrate}': pass one of {', '.join(RECALIBRATIONS)}")
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 0:
            raise ConfigError(f"epochs and patience must be >= 1 and batch size >= 0, got epochs={self.epochs}, "
                              f"patience={self.patience}, batch_size={self.batch_size}")
        check_device(self.device)
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight decay >= 0, got lr={self.lr}, "
                              f"weight_decay={self.weight_decay}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, (int, np.integer)) or self.threads < 0:
            raise ConfigError(f"threads must be an integer >= 0, got {self.threads!r}: pass 0 (every available "
                              "core) or a thread count")


@dataclass(frozen=True)
class GatekeeperResult:
    out: Path
    alpha: float
    metrics: dict[str, dict[str, float]]  # per split, recalibrated probabilities (fractions)
    deferral: dict  # deferral_metrics on val_test (with curves)
    base_deferral: dict  # the same for the base run's stored val_test predictions
    history: dict
    seconds: float


def tune_gatekeeper(run, out, *, alpha: float, epochs: int = 30, lr: float = 1e-3, batch_size: int = 256,
                    patience: int = 5, stop_metric: str = "augrc", recalibrate: str = "platt", seed: int = 0,
                    device: str = "cpu", threads: int = 0, features=None, stage2=None,
                    data=None, progress: bool = True) -> GatekeeperResult:
    """Fine-tune a run with the Gatekeeper loss and write the tuned run to `out`.

    The run's model (head, aggregator, view embedding; the standardisation stays fixed) is tuned
    on its ``train`` split with AdamW; the epoch with the best ``stop_metric`` on ``val_select``
    is kept. AUGRC (of max(p, 1 − p)) is the default because it rewards what deferral needs,
    ranking and accuracy together; the val Gatekeeper loss can fall by giving up: for small α
    every logit at 0 scores about α·log(2)/2, below a working model's loss, so stopping on it
    would endorse a collapse towards p = 0.5. Then the probabilities are
    recalibrated on ``val_calib`` (see the module docstring), every split is predicted and the run
    directory is written. `features` overrides the cache path stored in the run (a moved cache);
    `stage2` is a run directory whose ``val_test`` predictions give stage-2 correctness for s_d;
    `data` is a preloaded :class:`natix.heads.runs.Dataset` of the same cache. `threads` caps the
    torch and BLAS threads of the tuning and the predictions (0 = every available core); callers
    running J tunings at once pass ``cores // J``. `progress` says what it reads and counts the
    epochs ("gatekeeper alpha=α") on stderr (:mod:`natix.progress`).
    """
    from natix.heads.config import limit_threads

    cfg = GatekeeperConfig(alpha=alpha, epochs=epochs, lr=lr, batch_size=batch_size, patience=patience,
                           stop_metric=stop_metric, recalibrate=recalibrate, seed=seed, device=device,
                           threads=threads)
    source = _read_run(run)
    data = data if data is not None else _load_data(source, features, progress)
    with limit_threads(cfg.threads):
        return _tune(source, Path(out), cfg, data, stage2, progress)


def tune_gatekeeper_grid(run, out_root, alphas, stage2=None, *, progress: bool = True, **options) -> list[dict]:
    """Tune one run per α into ``out_root/alpha-<α>``; a row per α for a table.

    Rows: ``alpha, accuracy, auroc_f, overlap, s_d`` (val_test, recalibrated; s_d None without
    `stage2`) and ``out``. `options` go to :func:`tune_gatekeeper` (epochs, lr, threads, features,
    ...). The cache is read once, after the options are checked. `progress` says which α is
    tuned (``i of n``) and counts each one's epochs.
    """
    alphas = [_check_alpha(a) for a in alphas]
    if not alphas:
        raise ConfigError("no alphas given: pass e.g. alphas=[0.3, 0.5, 0.9]")
    if len(set(alphas)) != len(alphas):
        raise ConfigError(f"alphas repeat: {alphas}: pass each alpha once")
    features = options.pop("features", None)
    GatekeeperConfig(alpha=alphas[0], **options)  # a bad option fails before the cache is read
    data = _load_data(_read_run(run), features, progress)
    rows = []
    for i, a in enumerate(alphas):
        out = Path(out_root) / f"alpha-{a:g}"
        if progress:
            say(f"gatekeeper: tuning alpha={a:g} ({i + 1} of {len(alphas)}) into {out}")
        res = tune_gatekeeper(run, out, alpha=a, stage2=stage2, data=data, progress=progress, **options)
        d = res.deferral
        rows.append({"alpha": a, "accuracy": res.metrics["val_test"]["accuracy"], "auroc_f": d["auroc_f"],
                     "overlap": d["overlap"], "s_d": d["s_d"], "out": str(res.out)})
    return rows


# --------------------------------------------------------------------------- internals


def _read_run(run) -> Run:
    """The base run, checked to be a complete softmax-policy run."""
    source = Run(run)
    for path in (source.model_file, source.splits_file):
        if not path.is_file():
            raise DataError(f"run '{source.path}' lacks {path.name} (expected '{path}'): refit the run with fit-head")
    policy = source.config["head"].get("policy", "softmax")
    if policy != "softmax":
        raise ConfigError(f"run '{source.path}' uses the {policy} policy: Gatekeeper tunes the confidence "
                          "max(p, 1 − p) of a softmax-policy run")
    return source


def _load_data(source: Run, features, progress: bool):
    from natix.heads.runs import load_dataset

    path = Path(features) if features is not None else Path(source.config["cache"].get("path", ""))
    if not path.is_file():
        how = "pass features=" if features is not None else f"run '{source.path}' names it; if it moved, pass features="
        raise DataError(f"cache '{path}' is missing ({how}<the cache file>)")
    return load_dataset(path, progress=progress)


def _build_model(source: Run, data):
    from safetensors.torch import load_file

    from natix.heads.train import HeadConfig

    base = source.config
    n_views, dim = int(data.X.shape[1]), int(data.X.shape[2])
    want = (base["cache"].get("n_views"), base["cache"].get("dim"))
    if want != (n_views, dim):
        raise DataError(f"cache '{data.path}' has {n_views} views × {dim} dims but run '{source.path}' was fitted "
                        f"on {want[0]} × {want[1]}: pass the run's cache")
    try:
        model = HeadConfig(**base["head"]).build(dim, n_views)
        model.load_state_dict(load_file(source.model_file))
    except (TypeError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"run '{source.path}': model.safetensors does not match its config ({first}): refit the "
                        "run") from None
    return model


def _batches(n: int, bs: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen).numpy()
    step = n if bs == 0 else min(bs, n)
    for i in range(0, n, step):
        yield np.sort(order[i:i + step])  # sorted rows read faster from a (possibly memory-mapped) array


def _stop_score(logit: np.ndarray, y: np.ndarray, cfg: GatekeeperConfig) -> float:
    """Lower is better."""
    if cfg.stop_metric == "loss":
        return float(gatekeeper_loss(torch.from_numpy(logit.astype(np.float64)), torch.from_numpy(y), cfg.alpha))
    prob = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
    return float(M.augrc(M.decision_errors(y, prob), M.confidence(prob)))


def _finetune(model, X_train, y_train, X_val, y_val, cfg: GatekeeperConfig, view_dropout: float, bar):
    from natix.heads.train import predict

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(cfg.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    y_t = torch.as_tensor(y_train, dtype=torch.float32)
    n, v = X_train.shape[:2]
    history = {"train_loss": [], "val_score": [], "val_accuracy": []}
    start = predict(model, X_val, device=cfg.device)["logit"]
    history["start_val_score"] = _stop_score(start, y_val, cfg)
    best, best_state, best_epoch, bad = np.inf, None, 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for idx in _batches(n, cfg.batch_size, gen):
            xb = torch.from_numpy(np.asarray(X_train[idx], dtype=np.float32)).to(cfg.device)
            mask = None
            if view_dropout > 0 and v > 1:  # as the base run was trained
                mask = torch.rand(len(idx), v, generator=gen) >= view_dropout
                mask[:, 0] = True
                mask = mask.to(cfg.device)
            loss = gatekeeper_loss(model(xb, mask)["logit"], y_t[idx].to(cfg.device), cfg.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        logit = predict(model, X_val, device=cfg.device)["logit"]
        score = _stop_score(logit, y_val, cfg)
        history["train_loss"].append(total / n)
        history["val_score"].append(score)
        history["val_accuracy"].append(float(np.mean((logit > 0) == (y_val == 1))))
        bar.update(1)
        if score < best - 1e-9:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:  # None only if every score was NaN
        model.load_state_dict(best_state)
    model.eval()
    history.update(best_epoch=best_epoch, epochs=len(history["val_score"]), best_val_score=best,
                   stop_metric=cfg.stop_metric)
    return model, history


def _recalibrate(method: str, raw_prob_calib: np.ndarray, y_calib: np.ndarray):
    """A fitted calibrator (or None) and its JSON description."""
    from natix.calibrate.calibrators import PlattScaling, TemperatureScaling

    if method == "none":
        return None, {"method": "none"}
    cal = (PlattScaling() if method == "platt" else TemperatureScaling()).fit(raw_prob_calib, y_calib)
    params = ({"coef": cal.coef_, "intercept": cal.intercept_} if method == "platt"
              else {"temperature": cal.temperature_})
    return cal, {"method": method, "split": "val_calib", "n": len(y_calib), **params}


def _apply(cal, raw_prob: np.ndarray, raw_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recalibrated ``(prob, logit)`` with ``sigmoid(logit) == prob`` (logit from the same clipped z)."""
    if cal is None:
        return raw_prob, raw_logit.astype(np.float64)
    return cal.transform(raw_prob), cal.calibrated_logit(raw_prob)


def _stage2_correct(stage2, ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Stage-2 correctness on `ids`, joined by image id from the stage-2 run's val_test."""
    pred = Run(stage2).predictions("val_test")
    index = {i: r for r, i in enumerate(pred["ids"].astype(str).tolist())}
    rows = [index.get(i) for i in ids.astype(str).tolist()]
    missing = sum(r is None for r in rows)
    if missing:
        raise DataError(f"stage-2 run '{stage2}' lacks {missing} of the {len(ids)} val_test image ids of stage 1: "
                        "fit both runs with the same splits (--splits)")
    rows = np.asarray(rows, dtype=np.int64)
    if not np.array_equal(pred["labels"][rows], labels):
        raise DataError(f"stage-2 run '{stage2}' labels disagree with stage 1 on the same image ids: "
                        "the runs come from differently labeled caches")
    return 1 - M.decision_errors(labels, pred["prob"][rows])


def _predict_splits(model, data, rows: dict, cfg: GatekeeperConfig) -> tuple[dict, dict]:
    """Every split's predictions of the tuned model, recalibrated on val_calib, and the recalibration."""
    from natix.heads.train import predict

    raw = {name: predict(model, data.X[r], device=cfg.device) for name, r in rows.items()}
    cal, recal = _recalibrate(cfg.recalibrate, raw["val_calib"]["prob"], data.labels[rows["val_calib"]])
    out = {}
    for name, pred in raw.items():
        prob, logit = _apply(cal, pred["prob"], pred["logit"])
        out[name] = {"ids": data.ids[rows[name]], "labels": data.labels[rows[name]], **pred,
                     "raw_prob": pred["prob"], "raw_logit": pred["logit"], "prob": prob, "logit": logit}
    return out, recal


def _deferral_of(pred: dict, stage2_correct) -> dict:
    """deferral_metrics of stored (or about to be stored) val_test predictions, with their run confidence."""
    return deferral_metrics(1 - M.decision_errors(pred["labels"], pred["prob"]), confidence(pred),
                            stage2_correct=stage2_correct)


def _tune(source: Run, out: Path, cfg: GatekeeperConfig, data, stage2, progress: bool) -> GatekeeperResult:
    from natix.heads.splits import Splits

    t0 = time.perf_counter()
    check_out(out, base=source.path)
    base = source.config
    fp = base["cache"].get("fingerprint")
    if fp is not None and fp != data.fingerprint:
        raise DataError(f"cache '{data.path}' ({data.fingerprint[:16]}) is not the cache run '{source.path}' was "
                        f"fitted on ({fp[:16]}): pass the run's cache")
    splits = Splits.load(source.splits_file, fingerprint=data.fingerprint)
    rows = splits.rows(data.images)
    model = _build_model(source, data)
    # Everything that can refuse the inputs runs before the (long) fine-tuning.
    test_ids, test_y = data.ids[rows["val_test"]].astype(str), data.labels[rows["val_test"]]
    c2 = _stage2_correct(stage2, test_ids, test_y) if stage2 is not None else None
    base_pred = source.predictions("val_test")
    if not np.array_equal(base_pred["ids"].astype(str), test_ids):
        raise DataError(f"run '{source.path}': predictions/val_test.npz does not match its splits.json: refit "
                        "the run")
    tr, va = rows["train"], rows["val_select"]
    with Progress(cfg.epochs, f"gatekeeper alpha={cfg.alpha:g}", "epoch", enabled=progress) as bar:
        model, history = _finetune(model, data.X[tr], data.labels[tr], data.X[va], data.labels[va], cfg,
                                   float(base["head"].get("view_dropout", 0.0)), bar)
    predictions, recal = _predict_splits(model, data, rows, cfg)
    deferral, base_deferral = _deferral_of(predictions["val_test"], c2), _deferral_of(base_pred, c2)

    config = copy.deepcopy(base)
    config["cache"]["path"] = str(Path(data.path).resolve())
    config["history"] = history
    config["oof_folds"] = 0  # no train_oof predictions are written for a tuned run
    config["gatekeeper"] = {**dataclasses.asdict(cfg), "base_run": str(source.path.resolve()),
                            "recalibration": recal,
                            "stage2": str(Path(stage2).resolve()) if stage2 is not None else None}
    config["torch"] = torch.__version__
    report = {"split": "val_test", "confidence": "max(p, 1 - p) of the recalibrated probability",
              "stage2": config["gatekeeper"]["stage2"],
              "tuned": {k: v for k, v in deferral.items() if k != "curves"},
              "base": {k: v for k, v in base_deferral.items() if k != "curves"}}
    metrics = write_run(out, config=config, state={k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
                        splits=splits, predictions=predictions, extra={"deferral.json": report})
    log.info("gatekeeper alpha=%g: val_test accuracy %.4f, AUROC_f %.4f (base %.4f)", cfg.alpha,
             metrics["val_test"]["accuracy"], deferral["auroc_f"], base_deferral["auroc_f"])
    return GatekeeperResult(out, cfg.alpha, metrics, deferral, base_deferral, history, time.perf_counter() - t0)


__all__ = ["GatekeeperConfig", "GatekeeperResult", "deferral_metrics", "gatekeeper_loss", "tune_gatekeeper",
           "tune_gatekeeper_grid"]
