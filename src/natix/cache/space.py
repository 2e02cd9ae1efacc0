"""Disk space for a merge: its size is known before it starts, so a full disk is refused up front.

HDF5 cannot recover from a failed write: the error surfaces when a dataset or the file is
closed, and the library may then crash the process. So the merge never lets HDF5 meet a full
disk: it checks the free space, then reserves the whole merged size in the temporary file
(``posix_fallocate``) before HDF5 writes a byte; HDF5 trims the file to its real end on close.
Should the disk still fill (no ``posix_fallocate``, or a file system that ignores it), HDF5's
last writes go to the null device so it can close without crashing, and the user gets one line.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from pathlib import Path

from natix.errors import CacheError

MIB = 1 << 20
_FIXED = MIB  # superblock, root group, attributes (identity JSON), heap collections
_PER_ROW = 192  # id (64), label, size (8), two variable-length strings (a 16-byte reference, a 16-byte heap header, padding)
_PER_CHUNK = 256  # an entry of the chunk index (B-tree key and address) with its share of a node
_PER_RECORD = 192  # a failure or conflict: id and two variable-length strings
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def size_bound(*, n_rows: int, row_bytes: int, chunk_rows: int, text_bytes: int, n_records: int) -> int:
    """An upper bound on the bytes of a merged cache file.

    `row_bytes` is the stored features of one row, `text_bytes` the UTF-8 bytes of every
    variable-length string (paths, groups, failure and conflict texts), `n_records` the
    failures and conflicts.
    """
    chunks = math.ceil(n_rows / max(chunk_rows, 1)) + 1
    return (n_rows * (row_bytes + _PER_ROW) + chunks * _PER_CHUNK + n_records * _PER_RECORD
            + text_bytes + _FIXED)


def no_space(folder: Path, short: int) -> CacheError:
    """The one-line error for a merge that does not fit by `short` bytes."""
    return CacheError(f"no space left while merging into {folder}: free {max(1, math.ceil(short / MIB))} MB and "
                      "rerun; finished chunks are kept")


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` is a full disk or quota, as Python or HDF5 (a RuntimeError naming errno 28) reports it."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    text = str(exc)
    return isinstance(exc, (OSError, RuntimeError)) and (
        any(f"errno = {e}," in text for e in _NO_SPACE) or "No space left on device" in text)


def reserve(tmp: Path, nbytes: int) -> None:
    """Create `tmp` as an empty HDF5 file that owns `nbytes` of disk, or raise the no-space error.

    Free space is checked first (the number to free comes from there); the reservation then
    catches what the check cannot see (quotas, a disk filling meanwhile).
    """
    import h5py

    free = shutil.disk_usage(tmp.parent).free
    if free < nbytes:
        raise no_space(tmp.parent, nbytes - free)
    h5py.File(tmp, "w").close()
    if not hasattr(os, "posix_fallocate"):  # macOS: the free-space check is all there is
        return
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if is_no_space(exc):
            os.ftruncate(fd, 0)
            raise no_space(tmp.parent, nbytes - shutil.disk_usage(tmp.parent).free) from None
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system that cannot reserve
            raise
    finally:
        os.close(fd)


def release_after_full_disk(f) -> None:
    """Close the HDF5 file `f` after one of its writes met a full disk, without crashing.

    HDF5 retries its pending writes while it closes; failing again leaves objects that crash
    the process when they are freed. The file is thrown away, so its descriptor is pointed at
    the null device first: the retries succeed and everything closes cleanly.
    """
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, f.id.get_vfd_handle())
    finally:
        os.close(null)
    with contextlib.suppress(RuntimeError, OSError, ValueError):  # bookkeeping of a file being thrown away
        f.close()
    with contextlib.suppress(RuntimeError, OSError, ValueError):
        f.id.close()  # what `close` could not reach once its own bookkeeping failed
