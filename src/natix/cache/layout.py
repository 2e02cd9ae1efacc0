"""Where a cache's files live and the small file-system steps every part of the store shares.

Layout under a cache root, for a fingerprint ``fp`` (file stem = its first 16 hex digits)::

    <stem>.h5        the cache: always a complete file, replaced atomically
    <stem>.h5.lock   the writer lock (flock; the holder's pid, host and start time inside)
    <stem>.parts/    finished chunks of a run in progress, one .npz per chunk
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from natix.errors import CacheError

STEM_LEN = 16
FORMAT = "natix-features/1"
ROW_FIELDS = ("ids", "paths", "labels", "groups", "sizes")


def cache_path(root: str | os.PathLike, fp: str) -> Path:
    """Where the cache of fingerprint `fp` lives under `root`."""
    return Path(root) / f"{fp[:STEM_LEN]}.h5"


def parts_dir(cache_file: Path) -> Path:
    """The folder of finished chunks of a run in progress on `cache_file`."""
    return cache_file.with_suffix(".parts")


def pending_parts(cache_file: Path) -> list[Path]:
    """Finished chunks of `cache_file` not merged yet, in the order they were written."""
    parts = parts_dir(cache_file)
    return sorted(parts.glob("part-*.npz")) if parts.is_dir() else []


def utc_now() -> str:
    """The time now (UTC, seconds), as the store records it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_writable(root: Path) -> None:
    """Create `root` and prove a file can be written there, or raise a `CacheError`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".natix-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CacheError(
            f"cache directory '{root}' is not writable ({exc.strerror or exc}): "
            "pass --cache DIR or set NATIX_CACHE to a writable folder"
        ) from None
