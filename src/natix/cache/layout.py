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

import numpy as np

from natix.errors import CacheError

STEM_LEN = 16
FORMAT = "natix-features/1"
ROW_FIELDS = ("ids", "paths", "labels", "groups", "sizes")
# A challenge cache holds several draws of each image: its row ids are "<image id>:<draw>".
DRAW_SEP = ":"


def row_id(image_id: str, draw: int) -> str:
    """The row id of draw `draw` of image `image_id` in a challenge cache."""
    return f"{image_id}{DRAW_SEP}{draw}"


def image_of(row: str) -> str:
    """The image id of a row id (a row id without a draw is the image id itself)."""
    return row.partition(DRAW_SEP)[0]


def image_ids(rows) -> np.ndarray:
    """The image id of every row id in `rows`, as a str array."""
    rows = np.asarray(rows).astype(str)
    return np.char.partition(rows, DRAW_SEP)[:, 0] if rows.size else rows


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


def remove_empty_parts(cache_file: Path) -> None:
    """Remove the parts folder of `cache_file` when a kill left it empty; call only under a lock
    that keeps writers out (a writer may be about to fill it)."""
    folder = parts_dir(cache_file)
    if folder.is_dir() and not any(folder.iterdir()):
        try:
            folder.rmdir()
        except OSError:  # a read-only folder, or a file that appeared meanwhile: leave it
            return


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


def writable_problem(root: Path) -> str | None:
    """Why no file can be written in `root` (created if missing), or None when one can."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".natix-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def not_writable(root: Path, reason: str) -> CacheError:
    """The one-line error for a cache directory that cannot be written."""
    return CacheError(f"cache directory '{root}' is not writable ({reason}): pass --cache DIR or set NATIX_CACHE "
                      "to a writable folder")


def ensure_writable(root: Path) -> None:
    """Create `root` and prove a file can be written there, or raise a `CacheError`."""
    reason = writable_problem(root)
    if reason is not None:
        raise not_writable(root, reason)
