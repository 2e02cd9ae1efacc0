"""Synthetic feature caches for tests and benchmarks (no images, no backbone).

Positives carry a signal direction in one or two random tiles (and a faint trace in the
global view), so an aggregator that can find the tile (max, top-k, attention) should beat
mean pooling, which dilutes the tile among the other views.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from natix.cache.store import CacheWriter, Rows


def make_synthetic_cache(root: str | Path, *, n: int = 2000, n_views: int = 10, dim: int = 64,
                         strength: float = 3.0, global_strength: float = 0.3, seed: int = 0,
                         dtype: str = "float16", groups: int = 0, block: int = 2048) -> Path:
    """Write a labeled cache of `n` images × `n_views` views × `dim` dims; return its path.

    Features are N(0, 1); a positive adds ``strength · w`` to one tile (two tiles for a third
    of the positives) and ``global_strength · w`` to the global view, for a fixed unit vector w.
    With `groups` > 0 every image gets one of that many group names.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    w /= np.linalg.norm(w)
    identity = {"extractor_version": 0, "synthetic": {"n": n, "n_views": n_views, "dim": dim, "strength": strength,
                                                      "global_strength": global_strength, "seed": seed,
                                                      "groups": groups},
                "store_dtype": dtype}
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
            writer.add_part(X.astype(dtype), Rows(ids, [f"synthetic/{start + i}" for i in range(m)],
                                                  y.tolist(), grp, [(224, 224)] * m), [])
        return writer.commit()
