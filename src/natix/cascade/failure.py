"""ViLU-style failure predictors and the comparison of confidence scores (DESIGN §6).

A failure predictor learns P(the stage-1 decision is wrong | uncertainty features). Its training
labels must come from out-of-fold predictions (``predictions/train_oof.npz``): a head's
predictions on its own training rows are over-confident and nearly never wrong.

:class:`FailurePredictor` is a scikit-learn-style estimator (an MLP in torch on the CPU, or
XGBoost) trained with ViLU's weighted binary cross-entropy; :func:`compare_confidences` scores
any set of confidences (higher = more confident) by AUROC_f, FPR@95%TPR and AUGRC with bootstrap
confidence intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from natix import metrics as M
from natix.calibrate.calibrators import PlattScaling
from natix.calibrate.checks import real_array
from natix.errors import ConfigError, DataError
from natix.progress import Progress, say
from natix.rundir import Run, open_run, under_source

__all__ = ["MODELS", "FailurePredictor", "compare_confidences", "vilu_failure_weight"]

MODELS = ("mlp", "xgboost")
_STATE_FORMAT = "natix.cascade.FailurePredictor"
_STATE_VERSION = 1


def vilu_failure_weight(is_error) -> float:
    """ViLU's weight of a failure in the weighted BCE: ``-log(1 - acc)``, acc = ``1 - mean(is_error)``.

    Correct predictions keep weight 1. Because ``1 - acc`` is the error rate, the weight is
    ``-log(error rate)``: 2.30 at 90% accuracy, 4.61 at 99%, and below 1 when accuracy is under
    ``1 - 1/e`` (63.2%), where failures are the majority-ish class and need no up-weighting.
    """
    e = np.asarray(is_error, dtype=np.float64)
    err = float(e.mean())
    if not 0.0 < err < 1.0:
        raise DataError(f"the error rate is {err:g}: the failure weight needs both correct and wrong predictions")
    return float(-math.log(err))


class FailurePredictor(ClassifierMixin, BaseEstimator):
    """Predict whether a stage-1 decision is wrong from its uncertainty features (ViLU-style).

    Training uses ViLU's weighted binary cross-entropy. Our reading of "failures get weight
    ``-log(1 - acc)``": with ``acc = 1 - mean(is_error)`` the accuracy of the stage-1 model on the
    training rows, every failure (``is_error = 1``) has weight ``w_f = -log(1 - acc)`` and every
    correct prediction weight 1 (see :func:`vilu_failure_weight`). The MLP minimises the mean of
    ``w_i * BCE_i``; XGBoost gets the same numbers as ``sample_weight``.

    The weighting multiplies the learned failure odds by about ``w_f``, and XGBoost's
    probabilities are not calibrated in any case, so the raw score ranks failures but is not a
    probability. Pass ``X_calib, is_error_calib`` (held-out rows, e.g. ``val_calib``) to ``fit``
    and Platt scaling (:class:`natix.calibrate.PlattScaling` on the raw P(error)) is fitted on
    them, for both models, and applied by ``predict_proba``. Without calibration data,
    ``calibrator_`` is None and the raw score is returned.

    Parameters
    ----------
    model : {"mlp", "xgboost"}, default="mlp"
    hidden : int, default=64
        MLP width: ``Linear(k, hidden) → ReLU → Linear(hidden, hidden) → ReLU → Linear(hidden, 1)``
        on standardised inputs (per column mean 0, std 1; constant columns are only centred).
    epochs : int, default=200
        MLP full-batch AdamW steps.
    lr : float, default=1e-2
        MLP learning rate.
    weight_decay : float, default=1e-4
        MLP AdamW weight decay.
    n_estimators : int, default=200
        XGBoost boosting rounds.
    max_depth : int, default=3
        XGBoost tree depth.
    learning_rate : float, default=0.1
        XGBoost shrinkage.
    seed : int, default=0
        Seeds the MLP's initialisation and XGBoost's ``random_state``.
    threads : int, default=0
        CPU threads of the fit (torch and BLAS for the MLP, ``n_jobs`` for XGBoost); 0 = every
        core this process may use. Changes speed only.

    Attributes
    ----------
    n_features_in_ : int
    classes_ : ndarray [0, 1]
        Column 1 of ``predict_proba`` is P(error).
    train_accuracy_ : float
        ``1 - mean(is_error)`` on the training rows.
    failure_weight_ : float
        ``-log(1 - train_accuracy_)``; correct rows have weight 1.
    mean_, scale_ : ndarray of shape (k,)
        MLP input standardisation (None for XGBoost, which needs none).
    mlp_ : torch.nn.Sequential or None
    booster_ : xgboost.Booster or None
    calibrator_ : PlattScaling or None
    """

    def __init__(self, *, model: str = "mlp", hidden: int = 64, epochs: int = 200, lr: float = 1e-2,
                 weight_decay: float = 1e-4, n_estimators: int = 200, max_depth: int = 3,
                 learning_rate: float = 0.1, seed: int = 0, threads: int = 0):
        self.model = model
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.seed = seed
        self.threads = threads

    # ---------------------------------------------------------------------------------------
    # fit / predict
    # ---------------------------------------------------------------------------------------

    def fit(self, X, is_error, *, X_calib=None, is_error_calib=None, progress: bool = False):
        """Fit on features ``X`` and failure labels, then (optionally) Platt-calibrate.

        Parameters
        ----------
        X : array of shape (n, k), finite
            Uncertainty features (:func:`natix.cascade.uncertainty_features`) of out-of-fold
            predictions.
        is_error : array of shape (n,), 0/1
            1 where the stage-1 decision is wrong (:func:`natix.cascade.failure_labels`); both
            values must occur.
        X_calib : array of shape (m, k), optional
        is_error_calib : array of shape (m,), optional
            Held-out rows for the Platt calibrator; pass both or neither.
        progress : bool, default=False
            Count the MLP's epochs or XGBoost's boosting rounds on stderr ("fit-failure",
            :mod:`natix.progress`); off by default, as scikit-learn estimators are silent.

        Returns
        -------
        self
        """
        from natix.heads.config import limit_threads

        self._check_params()
        X = _features(X, "X")
        e = _errors(is_error, len(X), "is_error")
        if (X_calib is None) != (is_error_calib is None):
            raise DataError("pass both X_calib and is_error_calib, or neither")
        if X_calib is not None:
            Xc = _features(X_calib, "X_calib", n_features=X.shape[1])
            ec = _errors(is_error_calib, len(Xc), "is_error_calib")

        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        self.train_accuracy_ = float(1.0 - e.mean())
        self.failure_weight_ = vilu_failure_weight(e)
        weights = np.where(e == 1, self.failure_weight_, 1.0)
        self.mean_ = self.scale_ = self.mlp_ = self.booster_ = None
        if self.model == "mlp":
            import torch  # noqa: F401 -- limit_threads caps torch only once it is loaded
        with limit_threads(int(self.threads)) as n_threads:
            rounds = int(self.epochs if self.model == "mlp" else self.n_estimators)
            with Progress(rounds, "fit-failure", "epoch" if self.model == "mlp" else "round", enabled=progress) as bar:
                if self.model == "mlp":
                    self._fit_mlp(X, e, weights, bar)
                else:
                    self._fit_xgboost(X, e, weights, n_threads, bar if progress else None)
            self.calibrator_ = None
            if X_calib is not None:
                self.calibrator_ = PlattScaling().fit(self._raw_score(Xc), ec)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities of shape (n, 2): column 0 P(correct), column 1 P(error).

        Parameters
        ----------
        X : array of shape (n, k)

        Returns
        -------
        ndarray of shape (n, 2), rows sum to 1
        """
        check_is_fitted(self)
        X = _features(X, "X", n_features=self.n_features_in_)
        p = self._raw_score(X)
        if self.calibrator_ is not None:
            p = self.calibrator_.transform(p)
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        """Predicted failure (1) or not (0): ``P(error) > 0.5``, shape (n,)."""
        return M.predictions(self.predict_proba(X)[:, 1])

    def failure_score(self, X) -> np.ndarray:
        """P(error), shape (n,). As a confidence for selective metrics use ``1 - failure_score``."""
        return self.predict_proba(X)[:, 1]

    # ---------------------------------------------------------------------------------------
    # save / load without pickle
    # ---------------------------------------------------------------------------------------

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted predictor as strict JSON plus numeric arrays (safetensors-ready, no pickle).

        Returns
        -------
        meta : dict
            JSON-serialisable: format, version, hyperparameters, scalar fitted state, Platt
            parameters.
        tensors : dict of str → ndarray
            MLP: ``mean``, ``scale`` and ``mlp.<param>`` weights (float32). XGBoost:
            ``xgboost_json``, the booster in XGBoost's own JSON format as uint8 bytes.
        """
        check_is_fitted(self)
        meta = {
            "format": _STATE_FORMAT, "version": _STATE_VERSION, "params": self.get_params(),
            "n_features_in": int(self.n_features_in_), "train_accuracy": self.train_accuracy_,
            "failure_weight": self.failure_weight_,
            "calibrator": None if self.calibrator_ is None else {"method": "platt", **self.calibrator_.to_state()},
        }
        if self.model == "mlp":
            tensors = {"mean": self.mean_.copy(), "scale": self.scale_.copy()}
            tensors.update({f"mlp.{k}": v.detach().cpu().numpy().copy() for k, v in self.mlp_.state_dict().items()})
        else:
            raw = self.booster_.save_raw(raw_format="json")
            tensors = {"xgboost_json": np.frombuffer(bytes(raw), dtype=np.uint8).copy()}
        return meta, tensors

    @classmethod
    def from_state(cls, meta: Mapping, tensors: Mapping[str, np.ndarray]) -> FailurePredictor:
        """Rebuild a fitted predictor from :meth:`to_state`'s output (predictions are identical)."""
        if not isinstance(meta, Mapping) or meta.get("format") != _STATE_FORMAT:
            raise DataError(f"not a failure predictor state (format must be '{_STATE_FORMAT}'): "
                            "pass what FailurePredictor.to_state wrote")
        if meta.get("version") != _STATE_VERSION:
            raise DataError(f"failure predictor state version {meta.get('version')!r} is not supported "
                            f"(this natix reads {_STATE_VERSION}): refit with natix fit-failure")
        try:
            est = cls(**meta["params"])
            est._check_params()
            est.n_features_in_ = int(meta["n_features_in"])
            est.classes_ = np.array([0, 1])
            est.train_accuracy_ = float(meta["train_accuracy"])
            est.failure_weight_ = float(meta["failure_weight"])
            est.mean_ = est.scale_ = est.mlp_ = est.booster_ = None
            if est.model == "mlp":
                import torch

                est.mean_ = np.asarray(tensors["mean"], dtype=np.float64)
                est.scale_ = np.asarray(tensors["scale"], dtype=np.float64)
                est.mlp_ = _build_mlp(est.n_features_in_, est.hidden)
                est.mlp_.load_state_dict({k[len("mlp."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items()
                                          if k.startswith("mlp.")})
                est.mlp_.eval()
            else:
                import xgboost

                est.booster_ = xgboost.Booster()
                est.booster_.load_model(bytearray(np.asarray(tensors["xgboost_json"], dtype=np.uint8).tobytes()))
            cal = meta["calibrator"]
            est.calibrator_ = None
            if cal is not None:  # files written before calibrators kept their own state say coef, intercept
                state = cal if "coef_" in cal else {"coef_": cal["coef"], "intercept_": cal["intercept"]}
                est.calibrator_ = PlattScaling.from_state(state)
        except (ConfigError, DataError):  # already one line naming the problem (a ValueError too)
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"failure predictor state is incomplete or damaged ({exc!r}): refit it") from None
        return est

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # is_error is 0/1
        return tags

    # ---------------------------------------------------------------------------------------
    # internals
    # ---------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        """Validate hyperparameters (first thing in ``fit``)."""
        if self.model not in MODELS:
            raise ConfigError(f"unknown failure model '{self.model}': pass one of {', '.join(MODELS)}")
        for name in ("hidden", "epochs", "n_estimators", "max_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name, positive in (("lr", True), ("learning_rate", True), ("weight_decay", False)):
            value = getattr(self, name)
            ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
                  and math.isfinite(value) and (value > 0 if positive else value >= 0))
            if not ok:
                raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, (int, np.integer)) or self.threads < 0:
            raise ConfigError(f"threads must be an integer >= 0, got {self.threads!r}: pass 0 (every available "
                              "core) or a thread count")

    def _fit_mlp(self, X: np.ndarray, e: np.ndarray, weights: np.ndarray, bar) -> None:
        """Full-batch AdamW on the weighted BCE, standardised inputs, CPU; `bar` counts the epochs."""
        import torch
        import torch.nn.functional as F

        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        Xt = torch.from_numpy(((X - self.mean_) / self.scale_).astype(np.float32))
        yt = torch.from_numpy(e.astype(np.float32))
        wt = torch.from_numpy(weights.astype(np.float32))
        # A private RNG stream: the global torch seed is left as the caller had it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            mlp = _build_mlp(X.shape[1], int(self.hidden))
        opt = torch.optim.AdamW(mlp.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        mlp.train()
        for _ in range(int(self.epochs)):
            logit = mlp(Xt).squeeze(-1)
            loss = (wt * F.binary_cross_entropy_with_logits(logit, yt, reduction="none")).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
        if not all(torch.isfinite(p).all() for p in mlp.parameters()):
            raise DataError("the failure MLP diverged (non-finite weights): lower lr")
        mlp.eval()
        self.mlp_ = mlp

    def _fit_xgboost(self, X: np.ndarray, e: np.ndarray, weights: np.ndarray, n_threads: int, bar) -> None:
        """XGBoost with the ViLU weights as sample weights; only the booster is kept. `bar` (or None)
        counts the boosting rounds."""
        import xgboost

        # n_jobs explicitly: XGBoost's own default takes every core regardless of the machine's load.
        clf = xgboost.XGBClassifier(n_estimators=int(self.n_estimators), max_depth=int(self.max_depth),
                                    learning_rate=float(self.learning_rate), random_state=int(self.seed),
                                    objective="binary:logistic", tree_method="hist", eval_metric="logloss",
                                    n_jobs=int(n_threads), callbacks=None if bar is None else [_round_counter(bar)])
        clf.fit(X, e, sample_weight=weights)
        self.booster_ = clf.get_booster()

    def _raw_score(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated P(error), float64 of shape (n,)."""
        if self.mlp_ is not None:
            import torch

            with torch.inference_mode():
                Xt = torch.from_numpy(((X - self.mean_) / self.scale_).astype(np.float32))
                logit = self.mlp_(Xt).squeeze(-1).double().numpy()
            return np.exp(-np.logaddexp(0.0, -logit))
        p = np.asarray(self.booster_.inplace_predict(X), dtype=np.float64)
        return np.clip(p, 0.0, 1.0)


def _round_counter(bar):
    """An XGBoost training callback that counts each boosting round on `bar` (and never stops training)."""
    from xgboost.callback import TrainingCallback

    class RoundCounter(TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            bar.update(1)
            return False

    return RoundCounter()


def _build_mlp(n_features: int, hidden: int):
    """The failure MLP: two ReLU hidden layers of width ``hidden``, one logit out."""
    from torch import nn

    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def _features(X, name: str, *, n_features: int | None = None) -> np.ndarray:
    """A finite 2-D float64 feature matrix with at least one row."""
    X = real_array(X, name)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{name} must have shape (n, k) with n, k >= 1, got {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise DataError(f"{name} has {X.shape[1]} features but the predictor uses {n_features}: "
                        "build features the same way as for training")
    if not np.isfinite(X).all():
        raise DataError(f"{name} contains NaN or inf: drop those rows or fix the features")
    return X


def _errors(is_error, n: int, name: str) -> np.ndarray:
    """Failure labels: 1-D, one per row, 0/1, both values present."""
    e = np.asarray(is_error)
    if e.ndim != 1 or len(e) != n:
        raise DataError(f"{name} must have shape ({n},), one label per feature row, got {e.shape}")
    if e.dtype.kind not in "biuf" or not np.isin(e, (0, 1)).all():
        raise DataError(f"{name} must hold 0 (correct) / 1 (wrong) labels")
    e = e.astype(np.int64)
    if e.min() == e.max():
        what = "wrong" if e[0] else "correct"
        raise DataError(f"{name} marks every prediction {what}: nothing to learn; use more (out-of-fold) rows "
                        "or a weaker stage-1 model")
    return e


def compare_confidences(y_err, scores: Mapping[str, np.ndarray], *, n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05, reference: str | None = None, progress: bool = False) -> dict:
    """AUROC_f, FPR@95%TPR and AUGRC of each named confidence, with percentile bootstrap CIs.

    Every confidence is resampled with the same bootstrap indices (same ``seed``), so the
    intervals are paired across confidences.

    Parameters
    ----------
    y_err : array of shape (n,), 0/1
        1 where the stage-1 decision is wrong; both values must occur.
    scores : mapping name → array of shape (n,)
        Confidences, higher = more confident (for a failure predictor pass ``1 - P(error)``).
    n_boot : int >= 1
    seed : int
    alpha : float in (0, 1)
        Intervals are [alpha/2, 1 - alpha/2] percentiles.
    reference : str, optional
        A key of ``scores``; every other confidence then also gets the paired bootstrap difference
        (other minus reference) of each metric under ``"vs_reference"``.
    progress : bool, default=False
        Count the confidences as their intervals are bootstrapped ("bootstrap", :mod:`natix.progress`).

    Returns
    -------
    dict with ``n``, ``error_rate``, ``n_boot``, ``alpha``, ``reference`` and ``confidences``:
    ``{name: {"auroc_f": {"estimate", "low", "high"}, "fpr_at_95_tpr": {...}, "augrc": {...}}}``
    (fractions, not x1000; AUROC_f higher is better, FPR@95%TPR and AUGRC lower is better).
    """
    y = np.asarray(y_err)
    if y.ndim != 1:
        raise DataError(f"y_err must be 1-D (one 0/1 label per row), got shape {y.shape}")
    e = _errors(y, len(y), "y_err")
    if not isinstance(scores, Mapping) or not scores:
        raise DataError("scores must be a non-empty mapping name -> confidence array")
    conf = {}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != e.shape:
            raise DataError(f"confidence '{name}' has shape {s.shape}, expected {e.shape}: one score per row")
        if not np.isfinite(s).all():
            raise DataError(f"confidence '{name}' contains NaN or inf")
        conf[str(name)] = s
    if reference is not None and reference not in conf:
        raise ConfigError(f"reference '{reference}' is not one of the confidences: pass one of {', '.join(conf)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")

    metrics = (("auroc_f", M.auroc_failure), ("fpr_at_95_tpr", M.fpr_at_95_tpr), ("augrc", M.augrc))
    out = {"n": len(e), "error_rate": float(e.mean()), "n_boot": int(n_boot), "alpha": float(alpha),
           "reference": reference, "confidences": {}}
    with Progress(len(conf), "bootstrap", "confidence", enabled=progress) as bar:
        for name, s in conf.items():
            row = {}
            for key, fn in metrics:
                est, lo, hi = M.bootstrap_ci(fn, e, s, n_boot=n_boot, alpha=alpha, seed=seed)
                row[key] = {"estimate": est, "low": lo, "high": hi}
            if reference is not None and name != reference:
                row["vs_reference"] = {}
                for key, fn in metrics:
                    d, lo, hi = M.paired_bootstrap_diff(fn, e, s, conf[reference], n_boot=n_boot, alpha=alpha,
                                                        seed=seed)
                    row["vs_reference"][key] = {"diff": d, "low": lo, "high": hi}
            out["confidences"][name] = row
            bar.update(1)
    return out


def fit_failure_run(run, *, model: str = "xgboost", n_boot: int = 1000, seed: int = 0, threads: int = 0,
                    progress: bool = True, **params) -> dict:
    """Train a failure predictor for a run and store it there (failure.json + failure.safetensors).

    Training rows are the run's out-of-fold train predictions (never a head's predictions on its
    own training rows); `val_calib` calibrates P(error); `val_test` scores max-probability, the
    gate (if any) and the predictor side by side. `threads` caps the torch, BLAS and XGBoost
    threads of the whole call (0 = every available core). `progress` says each step and counts
    the fit's epochs or rounds and the bootstrapped confidences on stderr (:mod:`natix.progress`).
    Returns the comparison dict.
    """

    from natix.heads.config import limit_threads

    predictor = FailurePredictor(model=model, seed=seed, threads=threads, **params)
    predictor._check_params()  # bad options fail before the run is read
    with limit_threads(int(threads)):
        return _fit_and_compare(open_run(run), predictor, n_boot, progress)


def _fit_and_compare(source: Run, predictor: FailurePredictor, n_boot: int, progress: bool) -> dict:
    """The steps of :func:`fit_failure_run`."""
    from safetensors.numpy import save

    from natix.cascade.features import failure_labels, load_run_split, uncertainty_features

    oof, cal, test = (load_run_split(source, s) for s in ("train_oof", "val_calib", "val_test"))
    X_tr, names = uncertainty_features(oof)
    X_cal, _ = uncertainty_features(cal)
    X_te, _ = uncertainty_features(test)
    if progress:
        say(f"training the failure predictor ({predictor.model}) on {len(X_tr):,} out-of-fold train predictions, "
            f"calibrating it on {len(X_cal):,} val_calib images")
    predictor.fit(X_tr, failure_labels(oof), X_calib=X_cal, is_error_calib=failure_labels(cal), progress=progress)
    meta, tensors = predictor.to_state()
    meta = {**meta, "features": names, "trained_on": "train_oof", "calibrated_on": "val_calib",
            "under": under_source(source)}
    source.write_bytes(source.failure_file.name, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))
    source.write_json("failure.json", meta)
    scores = {"max probability": M.confidence(test["prob"])}
    if "gate" in test:
        scores["gate score"] = np.asarray(test["gate"], dtype=np.float64)
    scores[f"failure predictor ({predictor.model})"] = 1.0 - predictor.failure_score(X_te)
    if progress:
        say(f"comparing {len(scores)} confidences on {len(X_te):,} val_test images ({n_boot:,} bootstrap resamples)")
    comparison = compare_confidences(failure_labels(test), scores, n_boot=n_boot, seed=int(predictor.seed),
                                     reference="max probability", progress=progress)
    return {**comparison, "under": meta["under"]}
