"""Training heads on cached features: AdamW, mini-batches, early stopping, seeds, OOF.

Features stay in their stored dtype (float16 by default) and each mini-batch is converted to
float32 on the fly, so memory stays near the size of the cache slice in use.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from natix.errors import ConfigError
from natix.heads.modules import POLICIES, ViewModel
from natix.heads.registry import AGGREGATORS, HEADS

log = logging.getLogger(__name__)

STOP_METRICS = ("nll", "mcc")


@dataclass(frozen=True)
class HeadConfig:
    """What the model is: head, aggregator, policy and their hyperparameters."""

    head: str = "linear"
    agg: str = "mean"
    policy: str = "softmax"
    hidden: int = 256  # mlp width
    depth: int = 1  # mlp hidden layers
    dropout: float = 0.1
    norm: str = "layer"
    k: int = 2  # topk
    attn_hidden: int = 128
    view_embedding: bool = False
    view_dropout: float = 0.0  # training-time probability of hiding a view (the global view always stays)
    coverage: float = 0.8  # gate: target coverage c
    gate_lambda: float = 32.0  # gate: coverage penalty λ
    gate_alpha: float = 0.5  # gate: weight of the selective loss against the auxiliary CE

    def __post_init__(self):
        if self.head not in HEADS:
            raise ConfigError(f"unknown head '{self.head}': pass one of {', '.join(HEADS.names())}")
        if self.agg not in AGGREGATORS:
            raise ConfigError(f"unknown aggregator '{self.agg}': pass one of {', '.join(AGGREGATORS.names())}")
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy '{self.policy}': pass one of {', '.join(POLICIES)}")
        if not 0 <= self.view_dropout < 1:
            raise ConfigError(f"view dropout must be in [0, 1), got {self.view_dropout}")
        if not 0 < self.coverage <= 1:
            raise ConfigError(f"gate coverage must be in (0, 1], got {self.coverage}")
        if self.norm not in ("layer", "none"):
            raise ConfigError(f"unknown norm '{self.norm}': pass layer or none")
        if self.hidden < 1 or self.depth < 0 or self.attn_hidden < 1 or self.k < 1:
            raise ConfigError(f"hidden, attn hidden and k must be >= 1 and depth >= 0, got hidden={self.hidden}, "
                              f"attn_hidden={self.attn_hidden}, k={self.k}, depth={self.depth}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.gate_alpha <= 1 or self.gate_lambda < 0:
            raise ConfigError(f"gate alpha must be in [0, 1] and gate lambda >= 0, got alpha={self.gate_alpha}, "
                              f"lambda={self.gate_lambda}")

    def build(self, dim: int, n_views: int) -> ViewModel:
        return ViewModel(dim=dim, n_views=n_views, head=self.head, agg=self.agg, policy=self.policy,
                         view_embedding=self.view_embedding,
                         head_kwargs={"hidden": self.hidden, "depth": self.depth, "dropout": self.dropout,
                                      "norm": self.norm},
                         agg_kwargs={"k": self.k, "attn_hidden": self.attn_hidden})

    @property
    def name(self) -> str:
        return f"{self.head}-{self.agg}-{self.policy}"


@dataclass(frozen=True)
class TrainConfig:
    """How the model is fitted."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256  # 0 = full batch
    max_epochs: int = 100
    patience: int = 8  # epochs without improvement on val_select before stopping
    stop_metric: str = "nll"
    class_weights: bool = False  # weight the classes to equal total weight
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.stop_metric not in STOP_METRICS:
            raise ConfigError(f"unknown stop metric '{self.stop_metric}': pass one of {', '.join(STOP_METRICS)}")
        if self.device != "cpu":
            import torch

            try:
                dev = torch.device(self.device)
            except RuntimeError:
                raise ConfigError(f"unknown device '{self.device}': pass cpu or cuda[:N]") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"--device {self.device} was asked for but no CUDA GPU is visible: pass --device cpu")
        if self.batch_size < 0 or self.max_epochs < 1 or self.lr <= 0:
            raise ConfigError("batch size must be >= 0, max epochs >= 1 and lr > 0")
        if self.patience < 1 or self.weight_decay < 0:
            raise ConfigError(f"patience must be >= 1 and weight decay >= 0, got patience={self.patience}, "
                              f"weight_decay={self.weight_decay}")


def feature_stats(X: np.ndarray, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over rows and views, in float64 blocks."""
    d = X.shape[-1]
    s = np.zeros(d)
    ss = np.zeros(d)
    n = 0
    for i in range(0, X.shape[0], block):
        blk = np.asarray(X[i:i + block], dtype=np.float32).reshape(-1, d)
        s += blk.sum(0, dtype=np.float64)  # float64 accumulators, float32 blocks
        ss += np.einsum("ij,ij->j", blk, blk, dtype=np.float64)
        n += blk.shape[0]
    mu = s / max(n, 1)
    var = np.maximum(ss / max(n, 1) - mu**2, 0.0)
    return mu.astype(np.float32), np.sqrt(var).astype(np.float32)


def _loss(out: dict, y, weights, cfg: HeadConfig):
    """BCE for softmax; the SelectiveNet objective for gate."""
    bce = F.binary_cross_entropy_with_logits(out["logit"], y, reduction="none") * weights
    if cfg.policy == "softmax":
        return bce.mean()
    g = out["gate"]
    coverage = g.mean()
    selective_risk = (bce * g).mean() / coverage.clamp_min(1e-6)
    penalty = cfg.gate_lambda * F.relu(cfg.coverage - coverage) ** 2
    aux = (F.binary_cross_entropy_with_logits(out["aux_logit"], y, reduction="none") * weights).mean()
    return cfg.gate_alpha * (selective_risk + penalty) + (1 - cfg.gate_alpha) * aux


def _stop_score(prob: np.ndarray, y: np.ndarray, metric: str) -> float:
    """Lower is better."""
    if metric == "nll":
        p = np.clip(prob, 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    pred = prob > 0.5
    tp = np.sum(pred & (y == 1)); tn = np.sum(~pred & (y == 0))
    fp = np.sum(pred & (y == 0)); fn = np.sum(~pred & (y == 1))
    den = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return -float((tp * tn - fp * fn) / den) if den > 0 else 0.0


@torch.inference_mode()
def predict(model: ViewModel, X: np.ndarray, *, batch: int = 2048, device: str = "cpu") -> dict[str, np.ndarray]:
    """Run `model` over ``X [N, V, D]``; returns numpy arrays (logit, prob, view_logits, ...)."""
    model.eval()
    parts: dict[str, list] = {}
    for i in range(0, X.shape[0], batch):
        xb = torch.from_numpy(np.ascontiguousarray(X[i:i + batch])).to(device=device, dtype=torch.float32)
        out = model(xb)
        for k, v in out.items():
            if v is not None:
                parts.setdefault(k, []).append(v.float().cpu().numpy())
    res = {k: np.concatenate(v) for k, v in parts.items()}
    if not res:
        n, v = 0, X.shape[1]
        res = {"logit": np.zeros(0, np.float32), "view_logits": np.zeros((n, v), np.float32)}
    res["prob"] = 1.0 / (1.0 + np.exp(-res["logit"].astype(np.float64)))
    return res


def fit(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
        head: HeadConfig = HeadConfig(), train: TrainConfig = TrainConfig()) -> tuple[ViewModel, dict]:
    """Fit a model on ``X_train [N, V, D]`` with early stopping on ``X_val``.

    Returns the model with the best validation state and a history dict.
    """
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    n, v, d = X_train.shape
    model = head.build(d, v).to(train.device)
    mu, sigma = feature_stats(X_train)
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    y_t = torch.as_tensor(y_train, dtype=torch.float32)
    if train.class_weights:
        pos = max(float(y_t.sum()), 1.0)
        neg = max(float(n - y_t.sum()), 1.0)
        w_all = torch.where(y_t == 1, n / (2 * pos), n / (2 * neg))
    else:
        w_all = torch.ones(n)
    # Mean and global pooling have no parameters and commute with the per-dimension
    # standardisation, so without view embedding or view dropout the model can be trained on
    # the pooled rows [N, 1, D]: the same optimisation, a V-times smaller epoch.
    pooled = head.agg in ("mean", "global") and not head.view_embedding and head.view_dropout == 0
    # The training copy is standardised once, in place; the model trains with identity
    # standardisation and gets the real statistics at the end (same function, fewer passes).
    X_fit = _pool(X_train, head.agg) if pooled else np.array(X_train, dtype=np.float32)
    _standardise_(X_fit, mu, sigma)
    X_t = torch.from_numpy(X_fit)
    X_val_fit = _pool(X_val, head.agg) if pooled else np.array(X_val, dtype=np.float32)
    _standardise_(X_val_fit, mu, sigma)
    v_fit = X_t.shape[1]
    bs = n if train.batch_size == 0 else min(train.batch_size, n)
    best, best_state, best_epoch, bad = np.inf, None, 0, 0
    history = {"train_loss": [], "val_score": []}
    for epoch in range(train.max_epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            xb = X_t[idx].to(device=train.device, dtype=torch.float32)
            mask = None
            if head.view_dropout > 0 and v_fit > 1:
                mask = torch.rand(len(idx), v_fit, generator=gen) >= head.view_dropout
                mask[:, 0] = True
                mask = mask.to(train.device)
            out = model(xb, mask)
            loss = _loss(out, y_t[idx].to(train.device), w_all[idx].to(train.device), head)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        score = _stop_score(predict(model, X_val_fit, device=train.device)["prob"], y_val, train.stop_metric)
        history["train_loss"].append(total / n)
        history["val_score"].append(score)
        if score < best - 1e-6:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= train.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.set_standardisation(mu, sigma)
    model.eval()
    history.update(best_epoch=best_epoch, epochs=len(history["val_score"]), best_val_score=best)
    return model, history


def _standardise_(X: np.ndarray, mu: np.ndarray, sigma: np.ndarray, block: int = 4096) -> None:
    """``X = (X - mu) / sigma`` in place, in blocks, with the model's sigma floor."""
    inv = 1.0 / np.maximum(sigma, 1e-6)
    for i in range(0, X.shape[0], block):
        blk = X[i:i + block]
        blk -= mu
        blk *= inv


def _pool(X: np.ndarray, agg: str, block: int = 4096) -> np.ndarray:
    """``[N, V, D]`` → float32 ``[N, 1, D]``: the view mean, or the global view."""
    if agg == "global":
        return np.asarray(X[:, :1], dtype=np.float32)
    out = np.empty((X.shape[0], 1, X.shape[2]), dtype=np.float32)
    for i in range(0, X.shape[0], block):
        out[i:i + block, 0] = X[i:i + block].mean(axis=1, dtype=np.float32)
    return out


def fold_ids(ids, labels, k: int, seed: int = 0) -> np.ndarray:
    """Deterministic stratified fold index in [0, k) for each row (hash order within class)."""
    ids = np.asarray(ids).astype(str)
    labels = np.asarray(labels)
    folds = np.zeros(len(ids), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        order = sorted(rows, key=lambda r: hashlib.sha256(f"fold{seed}:{ids[r]}".encode()).hexdigest())
        for j, r in enumerate(order):
            folds[r] = j % k
    return folds


def out_of_fold(X_train, y_train, ids_train, X_val, y_val, head: HeadConfig, train: TrainConfig,
                k: int) -> dict[str, np.ndarray]:
    """Cross-fitted predictions for every training row from a model that did not see it."""
    if k < 2:
        raise ConfigError(f"--oof-folds must be >= 2, got {k}")
    folds = fold_ids(ids_train, y_train, k, seed=train.seed)
    result: dict[str, np.ndarray] = {}
    for f in range(k):
        held = np.flatnonzero(folds == f)
        kept = np.flatnonzero(folds != f)
        model, _ = fit(X_train[kept], y_train[kept], X_val, y_val, head,
                       dataclasses.replace(train, seed=train.seed + 1000 * (f + 1)))
        pred = predict(model, X_train[held], device=train.device)
        for key, val in pred.items():
            if key not in result:
                result[key] = np.zeros((len(y_train),) + val.shape[1:], dtype=val.dtype)
            result[key][held] = val
    result["fold"] = folds
    return result
