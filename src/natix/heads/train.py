"""The torch engine: mini-batch AdamW for heads that are not view-linear (see `natix.heads.config`).

The training rows are converted to float32 and standardised once, in place; the model then
trains with its standardisation switched off and receives the statistics at the end. All seeds
of one call are members that share every mini-batch (one gather, one float32 block) and the
batch order (``TrainConfig.seed``); each member has its own initialisation, its own random
stream (dropout, view dropout) and its own AdamW, and stops early on ``val_select`` on its own,
after which it costs nothing. Member ``s`` is therefore the same model a call with ``seeds=(s,)``
trains (on CPU: on a GPU, dropout draws from the device's single generator).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F

from natix import metrics as M
from natix.errors import ConfigError
from natix.heads.config import FittedHead, HeadConfig, TrainConfig, limit_threads
from natix.heads.fitting import fit_heads, fold_ids, out_of_fold
from natix.heads.linear import feature_stats, standardised_inputs
from natix.heads.modules import ViewModel

log = logging.getLogger(__name__)


def training_loss(out: dict, y, weights, cfg: HeadConfig):
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
    return -M.mcc(y, prob)


@torch.inference_mode()
def predict(model: ViewModel, X: np.ndarray, *, batch: int = 2048, device: str = "cpu",
            standardised: bool = False, view_logits: bool = True) -> dict[str, np.ndarray]:
    """Run `model` over ``X [N, V, D]``; returns numpy arrays (logit, prob, view_logits, ...).

    `standardised`: ``X`` is already standardised with the model's statistics (training copies).
    `view_logits=False` skips the per-view head where the aggregator does not need it (scoring).
    """
    model.eval()
    parts: dict[str, list] = {}
    for i in range(0, X.shape[0], batch):
        xb = torch.from_numpy(np.ascontiguousarray(X[i:i + batch])).to(device=device, dtype=torch.float32)
        out = model(xb, standardised=standardised, view_logits=view_logits)
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
    """One model (seed ``train.seed``) as a torch `ViewModel`, with its history; either engine."""
    fitted = fit_heads(X_train, y_train, X_val, y_val, head, train)[0]
    return fitted.module(X_train.shape[1]), fitted.history


class _Member:
    """One seed: its model, optimiser, random stream and early-stopping record."""

    def __init__(self, head: HeadConfig, train: TrainConfig, seed: int, d: int, v: int):
        torch.manual_seed(seed)
        self.seed = seed
        self.model = head.build(d, v).to(train.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train.adamw_lr(head), weight_decay=train.weight_decay)
        self.rng = torch.get_rng_state()
        self.best, self.best_state, self.best_epoch, self.bad = np.inf, None, 0, 0
        self.active = True
        self.total = 0.0  # this epoch's summed training loss
        self.history = {"train_loss": [], "val_score": []}


def fit_adamw(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
              head: HeadConfig, train: TrainConfig, seeds: tuple[int, ...], *, bar=None) -> list[FittedHead]:
    """Train one model per seed as members sharing every batch; returns a `FittedHead` per seed.

    `bar` (a :class:`natix.progress.Progress`) counts the epochs as they end.
    """
    with limit_threads(train.threads), torch.random.fork_rng(devices=[]):
        return _fit_adamw(X_train, y_train, X_val, y_val, head, train, seeds, bar)


def _fit_adamw(X_train, y_train, X_val, y_val, head, train, seeds, bar):
    n, v, d = X_train.shape
    X_fit, X_val_fit, mu, sigma = standardised_inputs(X_train, X_val, head, train.n_threads)
    X_t = torch.from_numpy(X_fit)
    y_t = torch.as_tensor(y_train, dtype=torch.float32)
    if train.class_weights:
        pos = max(float(y_t.sum()), 1.0)
        neg = max(float(n - y_t.sum()), 1.0)
        w_all = torch.where(y_t == 1, n / (2 * pos), n / (2 * neg))
    else:
        w_all = torch.ones(n)
    members = [_Member(head, train, s, d, v) for s in seeds]
    order_gen = torch.Generator().manual_seed(train.seed)
    amp = train.autocast_dtype()
    bs = n if train.batch_size == 0 else min(train.batch_size, n)
    for epoch in range(train.max_epochs):
        live = [m for m in members if m.active]
        if not live:
            break
        order = torch.randperm(n, generator=order_gen)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            batch = (X_t[idx].to(device=train.device), y_t[idx].to(train.device), w_all[idx].to(train.device))
            for m in live:
                _step(m, batch, head, train, amp)
        for m in live:
            prob = predict(m.model, X_val_fit, device=train.device, standardised=True, view_logits=False)["prob"]
            _record(m, epoch, _stop_score(prob, y_val, train.stop_metric), m.total / n, train.patience_for("adamw"))
        if bar is not None:
            bar.update(1)
    out = []
    for m in members:
        if m.best_state is not None:
            m.model.load_state_dict(m.best_state)
        m.model.set_standardisation(mu, sigma)
        state = {k: t.detach().cpu().numpy().copy() for k, t in m.model.state_dict().items()}
        history = dict(m.history, engine="adamw", seed=m.seed, best_epoch=m.best_epoch,
                       precision="bf16" if amp is not None else "fp32",
                       epochs=len(m.history["val_score"]), best_val_score=m.best, members=len(members))
        out.append(FittedHead(head, train, state, history))
    return out


def _step(m: _Member, batch, head: HeadConfig, train: TrainConfig, amp) -> None:
    """One AdamW step of member `m` on a shared batch, drawing randomness from its own stream."""
    xb, yb, wb = batch
    torch.set_rng_state(m.rng)
    m.model.train()
    mask = None
    if head.view_dropout > 0 and xb.shape[1] > 1:
        mask = torch.rand(len(xb), xb.shape[1]) >= head.view_dropout
        mask[:, 0] = True
        mask = mask.to(train.device)
    with torch.autocast(device_type=torch.device(train.device).type, dtype=amp or torch.float32,
                        enabled=amp is not None):
        out = m.model(xb, mask, standardised=True)
    loss = training_loss({k: (t.float() if t is not None else None) for k, t in out.items()}, yb, wb, head)
    if not torch.isfinite(loss):
        raise ConfigError(f"training diverged: the loss became {loss.item()} (lr {m.opt.param_groups[0]['lr']:g}, "
                          f"weight decay {m.opt.param_groups[0]['weight_decay']:g}): lower --lr or --weight-decay")
    m.opt.zero_grad(set_to_none=True)
    loss.backward()
    m.opt.step()
    m.rng = torch.get_rng_state()
    m.total += loss.item() * len(xb)


def _record(m: _Member, epoch: int, score: float, train_loss: float, patience: int) -> None:
    """Log an epoch; keep the best state; stop the member after `patience` epochs without gain."""
    m.total = 0.0
    m.history["train_loss"].append(train_loss)
    m.history["val_score"].append(score)
    if score < m.best - 1e-6:
        m.best, m.best_epoch, m.bad = score, epoch, 0
        m.best_state = copy.deepcopy(m.model.state_dict())
    else:
        m.bad += 1
        m.active = m.bad < patience


__all__ = ["FittedHead", "HeadConfig", "TrainConfig", "feature_stats", "fit", "fit_adamw", "fit_heads", "fold_ids",
           "out_of_fold", "predict"]
