"""The HDF5 feature store: crash-safe writes, resumable runs, torch-free reads.

Layout under a cache root, for a fingerprint ``fp`` (file stem = its first 16 hex digits)::

    <stem>.h5        the cache: always a complete file, replaced atomically
    <stem>.h5.lock   the writer lock (flock; the holder's pid, host and start time inside)
    <stem>.parts/    finished chunks of a run in progress, one .npz per chunk

HDF5 files are not safe against ``kill -9`` during a write, so a run never writes into the
cache file. Each chunk of rows becomes a part file (written to a temporary name, fsync'ed,
renamed). At the end of a run the old cache and the parts are merged into a new file that
replaces the old one with `os.replace`; only then are the parts deleted. A killed run leaves
the old cache plus whole parts, and the next run skips the images those parts already hold.
Readers only ever open the cache file, so they never see half a chunk.

This module is the store's public face; the pieces live in :mod:`~natix.cache.layout` (paths),
:mod:`~natix.cache.reader`, :mod:`~natix.cache.parts`, :mod:`~natix.cache.merge` (with
:mod:`~natix.cache.space` and :mod:`~natix.cache.checksum`), :mod:`~natix.cache.lock`,
:mod:`~natix.cache.writer` and :mod:`~natix.cache.verify`.
"""

from __future__ import annotations

import os
from pathlib import Path

from natix.cache.layout import FORMAT, STEM_LEN, cache_path, ensure_writable
from natix.cache.lock import CacheLock
from natix.cache.parts import Rows
from natix.cache.reader import FeatureCache, ViewInfo, list_caches, open_cache
from natix.cache.verify import features_digest, verify_cache
from natix.cache.writer import CacheWriter

__all__ = ["FORMAT", "STEM_LEN", "CacheLock", "CacheWriter", "FeatureCache", "Rows", "ViewInfo", "cache_path",
           "ensure_writable", "features_digest", "list_caches", "open_cache", "resolve_cache_root", "verify_cache"]


def resolve_cache_root(value: str | os.PathLike | None = None) -> Path:
    """`--cache` if given, else ``$NATIX_CACHE``, else ``./.natix-cache``; resolved at call time."""
    if value:
        return Path(value)
    env = os.environ.get("NATIX_CACHE")
    return Path(env) if env else Path(".natix-cache")
