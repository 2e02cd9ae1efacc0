"""View-linear heads in numpy: one linear map per view, pooled by global / mean / max / top-k.

The image logit is ``pool_v(x_v · w) + b`` over standardised view features ``x_v``. Global and
mean pooling commute with the linear map, so those heads are linear probes fitted on pooled
rows ``[N, D]`` (convex: every seed reaches the same optimum, so it is fitted once and shared);
max and top-k are fitted on all views ``[N·V, D]``. The loss is the (class-weighted) mean binary
cross-entropy plus ``½ λ ||w||²``. Every L2 value λ of ``TrainConfig.l2``, every seed and every
row subset (cross-fitting folds) is one member of a batched L-BFGS (`natix.heads.lbfgs`): one
matrix product ``X @ W`` per call serves all members, so the features are read once per
iteration for all of them. Each member stops early on ``val_select`` (checked every
``eval_every`` iterations), and per seed the λ with the best ``val_select`` score is kept.

Analytic gradients, BLAS threads capped by `TrainConfig.threads`; torch is never imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from natix.heads.config import FittedHead, HeadConfig, TrainConfig, limit_threads
from natix.heads.lbfgs import minimize_lbfgs
from natix.metrics.inputs import mcc_from_counts


@dataclass(frozen=True)
class _Member:
    group: int  # which row weights
    seed: int
    l2: float


def fit_view_linear(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                    head: HeadConfig, train: TrainConfig, seeds: tuple[int, ...], *,
                    row_groups: np.ndarray | None = None, bar=None) -> list[FittedHead]:
    """Fit `head` for every seed (and every row group); returns ``FittedHead`` per (group, seed), group-major.

    `row_groups` ``[N_train, G]`` bool selects the training rows of each of G fits (cross-fitting
    folds); default: one group of all rows. ``X_*`` are ``[N, V, D]`` in any float dtype. `bar`
    (a :class:`natix.progress.Progress`) is set to the iterations done at each check on val_select.
    """
    with limit_threads(train.threads):
        return _fit(X_train, y_train, X_val, y_val, head, train, tuple(seeds), row_groups, bar)


def _fit(X_train, y_train, X_val, y_val, head, train, seeds, row_groups, bar):
    n, _, d = X_train.shape
    groups = np.ones((n, 1), dtype=bool) if row_groups is None else np.asarray(row_groups, dtype=bool)
    Z, Zv, mu, sigma = standardised_inputs(X_train, X_val, head, train.n_threads)
    agg = "pooled" if head.pooled else head.agg
    convex = head.pooled  # one optimum: the seeds share one fit
    fit_seeds = seeds[:1] if convex else seeds
    members = [_Member(g, s, lam) for g in range(groups.shape[1]) for s in fit_seeds for lam in train.l2]
    weights = _weights(y_train, groups, train.class_weights, members)
    # Each row group is standardised with its own rows' statistics, as if fitted alone. All
    # members still share one standardised copy: with z = (x - mu) / sigma, the group's model
    # w_g . (x - mu_g) / sigma_g + b_g is v . z + c with v = w_g sigma / sigma_g, and its penalty
    # |w_g|^2 becomes sum_d (sigma_g / sigma)_d^2 v_d^2.
    g_mu, g_sigma = _group_stats(Z, groups, mu, sigma)
    scale = np.stack([g_sigma[m.group] / np.maximum(sigma, 1e-6) for m in members])  # [M, D]
    objective = _Objective(Z, y_train, weights, np.array([m.l2 for m in members]), agg, head.k, scale**2)
    val = _ValScore(Zv, y_val, agg, head.k, train.stop_metric)
    x0 = np.zeros((len(members), d + 1))
    for i, m in enumerate(members):
        if not convex:  # break the symmetry between views; the seed decides where
            x0[i, :d] = np.random.default_rng(m.seed).normal(0.0, 0.01, d) / scale[i]
    stopper = _EarlyStopping(val, x0, train.patience_for("lbfgs"), bar)
    res = minimize_lbfgs(objective, x0, max_iter=train.max_iter, callback=stopper, callback_every=train.eval_every)
    stopper.final(res.x)
    if bar is not None:
        bar.n = int(res.n_iter.max())
        bar.refresh()
    stats = (mu, sigma, g_mu, g_sigma, scale)
    return [_result(head, train, members, stopper, res, stats, g, s, s if not convex else fit_seeds[0])
            for g in range(groups.shape[1]) for s in seeds]


def _result(head, train, members, stopper, res, stats, group: int, seed: int, fit_seed: int) -> FittedHead:
    """The fitted head of (group, seed): its best L2 member, mapped back to the group's standardisation."""
    mu, sigma, g_mu, g_sigma, scale = stats
    d = len(mu)
    idx = [i for i, m in enumerate(members) if m.group == group and m.seed == fit_seed]
    best = min(idx, key=lambda i: stopper.best_score[i])
    w = stopper.best_x[best, :d] * scale[best]
    b = stopper.best_x[best, d] - w @ ((mu - g_mu[group]) / g_sigma[group])
    state = {"mu": g_mu[group], "sigma": g_sigma[group],
             "head.fc.weight": w.astype(np.float32)[None, :], "head.fc.bias": np.array([b], np.float32)}
    history = {"engine": "lbfgs", "seed": int(seed), "l2": members[best].l2,
               "train_loss": [float(f[best]) for _, f, _ in stopper.trace],  # objective at each check
               "val_score": [float(v[best]) for _, _, v in stopper.trace],
               "l2_scores": {str(members[i].l2): float(stopper.best_score[i]) for i in idx},
               "iterations": int(res.n_iter[best]), "best_iteration": int(stopper.best_iter[best]),
               "passes": int(res.n_calls), "epochs": int(res.n_calls),  # passes over the rows, all members
               "best_epoch": int(stopper.best_iter[best]), "best_val_score": float(stopper.best_score[best]),
               "converged": bool(res.converged[best]), "members": len(members)}
    return FittedHead(head, train, state, history)


def standardised_inputs(X_train, X_val, head: HeadConfig, threads: int):
    """New float32 training and validation inputs, standardised with the training statistics.

    Pooled heads (global / mean) get pooled rows ``[N, 1, D]`` and their statistics (the same
    model: ``(mean_v x_v - mu) / sigma = mean_v (x_v - mu) / sigma``, a V-times smaller pass);
    the others every view. Returns ``(Z_train, Z_val, mu, sigma)``.
    """
    def inputs(X):
        return pool_views(X, head.agg, threads) if head.pooled else to_float32(X, threads)

    Z = inputs(X_train)
    mu, sigma = feature_stats(Z)
    standardise_(Z, mu, sigma)
    Zv = inputs(X_val)
    standardise_(Zv, mu, sigma)
    return Z, Zv, mu, sigma


def for_blocks(n: int, block: int, fn, threads: int = 1) -> None:
    """``fn(start, stop)`` over row blocks of ``range(n)``, on `threads` threads (BLAS single-threaded meanwhile).

    numpy's float16 → float32 conversion runs on one core and releases the GIL, so converting
    blocks side by side is how a pass over a float16 cache uses the machine.
    """
    starts = range(0, n, max(block, 1))
    if threads <= 1 or len(starts) < 2:
        for i in starts:
            fn(i, min(i + block, n))
        return
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: fn(i, min(i + block, n)), starts))


def _rows_per_block(X, nbytes: int = 16 << 20) -> int:
    return max(1, nbytes // max(int(np.prod(X.shape[1:])) * 4, 1))


def pool_views(X: np.ndarray, agg: str, threads: int = 1) -> np.ndarray:
    """``[N, V, D]`` → float32 ``[N, 1, D]``: the global view, or the mean over views."""
    out = np.empty((X.shape[0], 1, X.shape[2]), dtype=np.float32)

    def fill(i, j):
        if agg == "global":
            out[i:j, 0] = X[i:j, 0]
        else:
            out[i:j, 0] = X[i:j].mean(axis=1, dtype=np.float32)

    for_blocks(X.shape[0], _rows_per_block(X), fill, threads)
    return out


def to_float32(X, threads: int = 1) -> np.ndarray:
    """A new float32 copy of ``X [N, ...]``, converted in cache-sized blocks (no full-size temporary)."""
    out = np.empty(X.shape, dtype=np.float32)

    def fill(i, j):
        out[i:j] = X[i:j]

    for_blocks(X.shape[0], _rows_per_block(X), fill, threads)
    return out


def feature_stats(X: np.ndarray, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of ``X [N, V, D]`` over rows and views: float32 blocks, float64 sums."""
    d = X.shape[-1]
    s = np.zeros(d)
    ss = np.zeros(d)
    n = 0
    for i in range(0, X.shape[0], block):
        blk = np.asarray(X[i:i + block], dtype=np.float32).reshape(-1, d)
        s += blk.sum(0, dtype=np.float64)
        ss += np.einsum("ij,ij->j", blk, blk, dtype=np.float64)
        n += blk.shape[0]
    mu = s / max(n, 1)
    var = np.maximum(ss / max(n, 1) - mu**2, 0.0)
    return mu.astype(np.float32), np.sqrt(var).astype(np.float32)


def standardise_(X: np.ndarray, mu: np.ndarray, sigma: np.ndarray, block: int = 4096) -> None:
    """``X = (X - mu) / sigma`` in place, in blocks, with the model's sigma floor (1e-6)."""
    inv = 1.0 / np.maximum(sigma, 1e-6)
    for i in range(0, X.shape[0], block):
        blk = X[i:i + block]
        blk -= mu
        blk *= inv


def _group_stats(Z: np.ndarray, groups: np.ndarray, mu: np.ndarray, sigma: np.ndarray, block: int = 4096):
    """Per-group mean and std ``[G, D]`` (floored like the model's) of standardised ``Z``, in raw units."""
    if groups.all():
        return np.repeat(mu[None], groups.shape[1], 0), np.repeat(np.maximum(sigma, 1e-6)[None], groups.shape[1], 0)
    n, v, d = Z.shape
    g = groups.astype(np.float64)
    s = np.zeros((g.shape[1], d))
    ss = np.zeros((g.shape[1], d))
    for i in range(0, n, block):
        blk = Z[i:i + block].astype(np.float64)
        s += g[i:i + block].T @ blk.sum(axis=1)
        ss += g[i:i + block].T @ np.einsum("nvd,nvd->nd", blk, blk)
    count = (g.sum(0) * v)[:, None]
    m_z = s / count
    sd_z = np.sqrt(np.maximum(ss / count - m_z**2, 0.0))
    sig = np.maximum(sigma, 1e-6).astype(np.float64)
    return (mu + m_z * sig).astype(np.float32), np.maximum(sd_z * sig, 1e-6).astype(np.float32)


def _weights(y, groups, class_weights: bool, members) -> np.ndarray:
    """Row weights ``[N, M]`` of each member, each column summing to one."""
    base = np.ones(len(y))
    if class_weights:
        pos = max(int(y.sum()), 1)
        neg = max(len(y) - int(y.sum()), 1)
        base = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg))
    W = np.stack([base * groups[:, m.group] for m in members], axis=1)
    total = W.sum(0)
    if (total <= 0).any():
        raise ValueError("a row group has no training rows")
    return (W / total).astype(np.float32)


def _pool(Zr: np.ndarray, agg: str, k: int):
    """Per-view logits ``[N, V, M]`` → image logits ``[N, M]`` and what the gradient needs."""
    if agg == "pooled":
        return Zr[:, 0], None
    if agg == "max":
        idx = Zr.argmax(axis=1)[:, None, :]
        return np.take_along_axis(Zr, idx, axis=1)[:, 0], idx
    kk = min(k, Zr.shape[1])  # topk
    idx = np.argpartition(-Zr, kk - 1, axis=1)[:, :kk, :]
    return np.take_along_axis(Zr, idx, axis=1).mean(axis=1), idx


def _spread(r: np.ndarray, shape, agg: str, idx) -> np.ndarray:
    """d loss / d per-view logits ``[N, V, M]`` from d loss / d image logits ``r [N, M]``."""
    if agg == "pooled":
        return r[:, None, :]
    out = np.zeros(shape, dtype=np.float32)
    np.put_along_axis(out, idx, (r / idx.shape[1])[:, None, :], axis=1)
    return out


class _Objective:
    """``f [M]``, ``g [M, D + 1]`` of every member in one pass over the features.

    The pass runs over blocks of images small enough to stay in cache, so the forward product,
    the loss and the gradient product read each block from memory once.
    """

    def __init__(self, Z, y, weights, l2, agg, k, penalty_scale, block_bytes: int = 8 << 20):
        self.n, self.v, self.d = Z.shape
        self.Z = Z
        self.y = y.astype(np.float32)[:, None]
        self.w, self.agg, self.k = weights, agg, k
        self.l2 = l2[:, None] * penalty_scale  # [M, D]: per-member, per-dimension L2
        self.block = max(1, block_bytes // (self.v * self.d * 4))

    def __call__(self, x: np.ndarray):
        d, m = self.d, x.shape[0]
        W = np.ascontiguousarray(x[:, :d].T, dtype=np.float32)
        b = x[:, d].astype(np.float32)
        f = 0.5 * np.einsum("md,md,md->m", self.l2, x[:, :d], x[:, :d])
        gW = np.zeros((d, m), dtype=np.float64)
        gb = np.zeros(m)
        for i in range(0, self.n, self.block):
            X = self.Z[i:i + self.block].reshape(-1, d)
            Zr = (X @ W).reshape(-1, self.v, m)
            logit, idx = _pool(Zr, self.agg, self.k)
            logit += b
            y, w = self.y[i:i + self.block], self.w[i:i + self.block]
            f += np.einsum("nm,nm->m", w, np.logaddexp(0.0, logit) - y * logit, dtype=np.float64)
            r = w * (_sigmoid(logit) - y)
            dZ = _spread(r, Zr.shape, self.agg, idx).reshape(-1, m) if self.v > 1 else r
            gW += X.T @ dZ
            gb += r.sum(0, dtype=np.float64)
        g = np.empty_like(x)
        g[:, :d] = gW.T + self.l2 * x[:, :d]
        g[:, d] = gb
        return f, g


class _ValScore:
    """Early-stopping score per member on val_select (lower is better: NLL, or -MCC)."""

    def __init__(self, Z, y, agg, k, metric):
        self.n, self.v, self.d = Z.shape
        self.X = Z.reshape(-1, self.d)
        self.y = y.astype(np.float32)[:, None]
        self.agg, self.k, self.metric = agg, k, metric

    def __call__(self, x: np.ndarray) -> np.ndarray:
        d, m = self.d, x.shape[0]
        Zr = (self.X @ np.ascontiguousarray(x[:, :d].T, dtype=np.float32)).reshape(self.n, self.v, m)
        logit = _pool(Zr, self.agg, self.k)[0] + x[:, d].astype(np.float32)
        if self.metric == "nll":
            return (np.logaddexp(0.0, logit) - self.y * logit).mean(0, dtype=np.float64)
        pred = logit > 0
        pos = self.y == 1
        tp = (pred & pos).sum(0).astype(np.float64)
        tn = (~pred & ~pos).sum(0).astype(np.float64)
        fp = (pred & ~pos).sum(0).astype(np.float64)
        fn = (~pred & pos).sum(0).astype(np.float64)
        return -mcc_from_counts(tp, tn, fp, fn)


class _EarlyStopping:
    """Keeps each member's best iterate on val_select; stops it `patience` iterations after its best;
    shows the iterations done on `bar` (when there is one)."""

    def __init__(self, score, x0, patience: int, bar=None):
        self.score, self.patience, self.bar = score, patience, bar
        self.best_x = x0.copy()
        self.best_score = np.full(len(x0), np.inf)  # the starting point is not a candidate
        self.best_iter = np.zeros(len(x0), dtype=np.int64)
        self.trace: list[tuple[int, np.ndarray, np.ndarray]] = []  # (iteration, objective, val score)

    def __call__(self, it: int, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        s = self.score(x)
        self.trace.append((it, f.copy(), s))
        better = s < self.best_score - 1e-7
        self.best_x[better], self.best_score[better], self.best_iter[better] = x[better], s[better], it
        if self.bar is not None:
            self.bar.n = it
            self.bar.refresh()
        return it - self.best_iter >= self.patience

    def final(self, x: np.ndarray) -> None:
        s = self.score(x)
        better = s < self.best_score - 1e-7
        self.best_x[better], self.best_score[better] = x[better], s[better]


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def predict_view_linear(state: dict[str, np.ndarray], X: np.ndarray, *, agg: str, k: int = 2,
                        threads: int = 1) -> dict[str, np.ndarray]:
    """Outputs of a view-linear head on ``X [N, V, D]`` (any float dtype), read in blocks.

    Returns ``logit [N]`` and ``view_logits [N, V]`` (float32) and ``prob [N]`` (float64), as
    `natix.heads.train.predict` does for the same `ViewModel`.
    """
    sigma = np.maximum(state["sigma"].astype(np.float32), 1e-6)
    w = state["head.fc.weight"].reshape(-1).astype(np.float32) / sigma
    b = np.float32(state["head.fc.bias"].reshape(-1)[0]) - np.float32(state["mu"].astype(np.float32) @ w)
    n, v = X.shape[0], X.shape[1]
    view_logits = np.empty((n, v), dtype=np.float32)
    block = _rows_per_block(X)

    def fill(i, j):
        view_logits[i:j] = np.asarray(X[i:j], dtype=np.float32) @ w + b

    for_blocks(n, block, fill, threads)
    if agg == "global":
        logit = view_logits[:, 0].copy()
    elif agg == "mean":
        logit = view_logits.mean(axis=1)
    elif agg == "max":
        logit = view_logits.max(axis=1)
    else:
        kk = min(k, v)
        logit = np.sort(view_logits, axis=1)[:, v - kk:].mean(axis=1)
    return {"logit": logit.astype(np.float32), "view_logits": view_logits,
            "prob": 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))}
