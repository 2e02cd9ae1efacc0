"""Synthetic feature caches for tests and benchmarks (no images, no backbone).

Positives carry a signal direction in one or two random tiles (and a faint trace in the
global view), so an aggregator that can find the tile (max, top-k, attention) should beat
mean pooling, which dilutes the tile among the other views.

With ``draws=K`` the same images (same ids, labels and clean features) become a challenge-style
cache: K rows per image, each at a validator level 0-3 that fades the clean signal, moves part of
it to another direction and adds noise (what a crop, a rotation and the distortions do to
features, in caricature), so a head trained on the draws beats one trained on clean rows there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from natix.cache.layout import row_id
from natix.cache.store import CacheWriter, Rows


def make_synthetic_cache(root: str | Path, *, n: int = 2000, n_views: int = 10, dim: int = 64,
                         strength: float = 3.0, global_strength: float = 0.3, seed: int = 0,
                         dtype: str = "float16", groups: int = 0, block: int = 2048, draws: int = 0,
                         shift: float = 1.5) -> Path:
    """Write a labeled cache of `n` images × `n_views` views × `dim` dims; return its path.

    Features are N(0, 1); a positive adds ``strength · w`` to one tile (two tiles for a third
    of the positives) and ``global_strength · w`` to the global view, for a fixed unit vector w.
    With `groups` > 0 every image gets one of that many group names. With `draws` > 0 it is a
    challenge-style cache of the same images: `draws` rows per image (ids ``"<id>:<d>"``), each
    at a level L in 0-3 whose features are ``(1 - 0.25 L) · x + shift · (L / 3) · y · u + 0.3 L · noise``,
    u a fixed unit vector orthogonal to w.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    w /= np.linalg.norm(w)
    identity = {"extractor_version": 0, "synthetic": {"n": n, "n_views": n_views, "dim": dim, "strength": strength,
                                                      "global_strength": global_strength, "seed": seed,
                                                      "groups": groups},
                "store_dtype": dtype}
    if draws:
        identity["challenge"] = {"name": "synthetic-validator", "draws": draws, "shift": shift}
    drng = np.random.default_rng([seed, 1])
    u = drng.normal(size=dim)
    u -= (u @ w) * w
    u /= np.linalg.norm(u)
    table = [{"name": "global" if v == 0 else f"tile_{v}", "box": [0.0, 0.0, 1.0, 1.0], "flip": False}
             for v in range(n_views)]
    with CacheWriter(root, identity, table, dim=dim, store_dtype=dtype, source={"backbone": "synthetic"}) as writer:
        if writer.path.exists():
            return writer.path
        for start in range(0, n, block):
            m = min(block, n - start)
            X = rng.standard_normal((m, n_views, dim), dtype=np.float32)
            y = rng.integers(0, 2, m)
            pos = np.flatnonzero(y == 1)
            if n_views > 1:
                tiles = rng.integers(1, n_views, len(pos))
                X[pos, tiles] += strength * w
                second = pos[rng.random(len(pos)) < 1 / 3]
                X[second, rng.integers(1, n_views, len(second))] += strength * w
            X[pos, 0] += (global_strength if n_views > 1 else strength) * w
            ids = [hashlib.sha256(f"synthetic:{seed}:{start + i}".encode()).hexdigest() for i in range(m)]
            grp = [f"g{rng.integers(groups)}" if groups else "" for _ in range(m)]
            rows = Rows(ids, [f"synthetic/{start + i}" for i in range(m)], y.tolist(), grp, [(224, 224)] * m)
            if draws:
                X, rows = _draws(X, rows, draws, u, shift, drng)
            writer.add_part(X.astype(dtype), rows, [])
        return writer.commit()


def _draws(X: np.ndarray, rows: Rows, draws: int, u: np.ndarray, shift: float, rng) -> tuple[np.ndarray, Rows]:
    """`draws` challenge-style rows per image of `X` (consecutive, as extraction writes them)."""
    level = rng.integers(0, 4, (len(X), draws))
    fade = (1.0 - 0.25 * level)[..., None, None]
    y = np.asarray(rows.labels, dtype=np.float32)[:, None, None, None]
    out = fade * X[:, None] + (shift * level / 3.0)[..., None, None] * y * u
    out += (0.3 * level)[..., None, None] * rng.standard_normal(out.shape, dtype=np.float32)
    rep = [r for r in range(len(X)) for _ in range(draws)]
    records = [json.dumps({"draw": d, "source_size": [224, 224], "params": {"level": int(level[r, d])}})
               for r in range(len(X)) for d in range(draws)]
    return out.reshape(-1, *X.shape[1:]).astype(np.float32), Rows(
        [row_id(rows.ids[r], d) for r in range(len(X)) for d in range(draws)], [rows.paths[r] for r in rep],
        [rows.labels[r] for r in rep], [rows.groups[r] for r in rep], [rows.sizes[r] for r in rep], records)
