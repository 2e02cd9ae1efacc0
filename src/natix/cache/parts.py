"""Part files: the finished chunks of a run in progress, each made durable before it counts as done.

HDF5 files are not safe against ``kill -9`` during a write, so a run never writes into the
cache file. Each chunk of rows becomes one ``part-NNNNNN.npz`` (written to a temporary name,
fsync'ed, renamed, the folder fsync'ed); a merge folds the parts into a new cache file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.cache.layout import fsync_dir
from natix.errors import CacheError


@dataclass(frozen=True)
class Rows:
    """Rows of metadata, aligned with a block of features."""

    ids: list[str]
    paths: list[str]
    labels: list[int]  # -1 when unknown
    groups: list[str]  # "" when none
    sizes: list[tuple[int, int]]  # (height, width) of the decoded source image


def part_number(part: Path) -> int:
    """The sequence number of a part file (``part-000012.npz`` → 12)."""
    return int(part.stem.split("-")[1])


def write_part(parts: Path, seq: int, features: np.ndarray, rows: Rows,
               failures: list[tuple[str, str, str]]) -> Path:
    """Durably write part `seq` into the folder `parts`: features ``[n, V, D]``, their rows and failures.

    `failures` holds ``(id, path, reason)``; id is "" when the file could not be read.
    """
    n = len(rows.ids)
    parts.mkdir(parents=True, exist_ok=True)
    final = parts / f"part-{seq:06d}.npz"
    tmp = parts / f"part-{seq:06d}.tmp"
    arrays = {
        "features": features,
        "ids": np.array(rows.ids, dtype="U64").reshape(n),
        "paths": np.array(rows.paths, dtype=str).reshape(n),
        "labels": np.array(rows.labels, dtype=np.int8).reshape(n),
        "groups": np.array(rows.groups, dtype=str).reshape(n),
        "sizes": np.array(rows.sizes, dtype=np.int32).reshape(n, 2),
        "fail_ids": np.array([f[0] for f in failures], dtype="U64"),
        "fail_paths": np.array([f[1] for f in failures], dtype=str),
        "fail_reasons": np.array([f[2] for f in failures], dtype=str),
    }
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(parts)
    except OSError as exc:
        raise CacheError(f"cannot write a chunk to '{parts}' ({exc.strerror or exc}): free disk space "
                         "and rerun; finished chunks are kept") from None
    return final


def read_part(part: Path, *, features: bool = True) -> dict:
    """A part's arrays; with `features=False` only the small ones (npz members load lazily)."""
    try:
        with np.load(part, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if features or k != "features"}
    except (OSError, ValueError) as exc:
        raise CacheError(f"part file '{part}' is unreadable ({exc}): delete it and rerun") from None
