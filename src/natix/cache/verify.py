"""End-to-end checks of a finished cache file (`natix cache verify`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from natix.cache.fingerprint import fingerprint
from natix.cache.layout import ROW_FIELDS, STEM_LEN, pending_parts
from natix.cache.parts import read_part
from natix.cache.reader import FeatureCache
from natix.errors import CacheError


def features_digest(cache: FeatureCache, block: int = 4096) -> str:
    """SHA-256 of the stored features' bytes in row order (what a writer records as ``features_sha256``)."""
    h = hashlib.sha256()
    for blk in cache.blocks(block):
        h.update(blk.tobytes())
    return h.hexdigest()


def verify_cache(path: str | os.PathLike) -> dict:
    """Check a cache file end to end. Returns ``{"ok": bool, "problems": [...], "checked": [...]}``."""
    path = Path(path)
    with FeatureCache(path) as cache:  # raises a CacheError for unreadable or foreign files
        return _verify(path, cache)


def _verify(path: Path, cache: FeatureCache) -> dict:
    """The checks of `verify_cache` on an open cache."""
    problems, checked = [], []
    fp = fingerprint(cache.identity)
    if fp != cache.fingerprint:
        problems.append(f"stored fingerprint {cache.fingerprint[:16]} does not match its identity ({fp[:16]})")
    checked.append("fingerprint matches identity")
    if not path.name.startswith(cache.fingerprint[:STEM_LEN]):
        problems.append(f"file name does not start with its fingerprint {cache.fingerprint[:STEM_LEN]}")
    n, v, d = cache.shape
    for name in ROW_FIELDS:
        if len(getattr(cache, name)) != n:
            problems.append(f"{name} has {len(getattr(cache, name))} rows, features have {n}")
    checked.append("row counts agree")
    if len(cache.views) != v:
        problems.append(f"view table has {len(cache.views)} views, features have {v}")
    if len(set(cache.ids)) != n:
        problems.append("image ids are not unique")
    if not all(len(i) == 64 and all(c in "0123456789abcdef" for c in i) for i in cache.ids):
        problems.append("some image ids are not SHA-256 hex digests")
    checked.append("ids unique")
    if not set(np.unique(cache.labels)) <= {-1, 0, 1}:
        problems.append("labels outside {-1, 0, 1}")
    if not all(np.isfinite(blk).all() for blk in cache.blocks()):
        problems.append("features contain NaN or inf")
    checked.append("features finite")
    if features_digest(cache) != cache.attrs.get("features_sha256"):
        problems.append("features checksum differs from the one recorded at write time (corruption)")
    checked.append("features checksum")
    pending = pending_parts(path)
    for part in pending:
        try:
            read_part(part, shape=(v, d))
        except CacheError as exc:
            problems.append(str(exc))
    if pending:
        problems.append(f"{len(pending)} finished chunk(s) of an interrupted run are not merged yet: "
                        "rerun the same `natix extract` to merge them")
    return {"ok": not problems, "problems": problems, "checked": checked, "images": n, "views": v, "dim": d}
