"""Part files: the finished chunks of a run in progress, each made durable before it counts as done.

HDF5 files are not safe against ``kill -9`` during a write, so a run never writes into the
cache file. Each chunk of rows becomes one ``part-NNNNNN.npz`` (written to a temporary name,
fsync'ed, renamed, the folder fsync'ed); a merge folds the parts into a new cache file.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
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
    sizes: list[tuple[int, int]]  # (height, width) of the decoded image the views were cut from
    # Challenge caches only: per row, the draw's JSON record (natix.data.challenge); None elsewhere.
    challenge: list[str] | None = None


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
        "ids": np.array(rows.ids, dtype=str).reshape(n),
        "paths": np.array(rows.paths, dtype=str).reshape(n),
        "labels": np.array(rows.labels, dtype=np.int8).reshape(n),
        "groups": np.array(rows.groups, dtype=str).reshape(n),
        "sizes": np.array(rows.sizes, dtype=np.int32).reshape(n, 2),
        "fail_ids": np.array([f[0] for f in failures], dtype="U64"),
        "fail_paths": np.array([f[1] for f in failures], dtype=str),
        "fail_reasons": np.array([f[2] for f in failures], dtype=str),
    }
    if rows.challenge is not None:
        arrays["challenge"] = np.array(rows.challenge, dtype=str).reshape(n)
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


# Members of a part file and the dtype kind and rank of each (U: str, i: integer, f: float).
MEMBERS = {"features": ("f", 3), "ids": ("U", 1), "paths": ("U", 1), "labels": ("i", 1), "groups": ("U", 1),
           "sizes": ("i", 2), "fail_ids": ("U", 1), "fail_paths": ("U", 1), "fail_reasons": ("U", 1)}
# Members only some parts hold (challenge caches), with the same description.
OPTIONAL = {"challenge": ("U", 1)}
# What a damaged zip or .npy member can raise while it is read (each member's CRC-32 is checked).
# zipfile reports a directory field it cannot honour (a zip version, compression method or flag
# that damage made up) with NotImplementedError: here that is damage, not missing code.
_DAMAGE = (OSError, EOFError, ValueError, KeyError, NotImplementedError, OverflowError, struct.error,
           zipfile.BadZipFile, zlib.error)


def read_part(part: Path, *, features: bool = True, shape: tuple[int, int] | None = None) -> dict:
    """A part's arrays, checked; with `features=False` only the small ones.

    Every member is read whole, so zip's CRC-32 catches a flipped byte before its .npy header
    is trusted. `shape` is the ``(V, D)`` the part's features must have (read from the .npy
    header alone when `features` is False). A damaged file raises a one-line `CacheError`
    naming it and the fix.
    """
    try:
        with zipfile.ZipFile(part) as zf:
            _check_members(zf)
            arrays = {k: _npy(zf.read(f"{k}.npy")) for k in MEMBERS if features or k != "features"}
            names = set(zf.namelist())
            arrays.update({k: _npy(zf.read(f"{k}.npy")) for k in OPTIONAL if f"{k}.npy" in names})
            header = ((arrays["features"].shape, arrays["features"].dtype) if features else
                      _npy_header(zf, "features.npy"))
    except _DAMAGE as exc:
        raise damaged_part(part, str(exc) or type(exc).__name__) from None
    problem = _structure_problem(arrays, *header)
    if problem is None and shape is not None and tuple(header[0][1:]) != tuple(shape):
        problem = f"it holds [n, {header[0][1]}, {header[0][2]}] features, this cache [N, {shape[0]}, {shape[1]}]"
    if problem is not None:
        raise damaged_part(part, problem)
    return arrays


def _check_members(zf: zipfile.ZipFile) -> None:
    """Refuse a member the zip directory calls encrypted (natix never encrypts): zipfile would ask
    for a password with a RuntimeError, which no other damage raises."""
    for info in zf.infolist():
        if info.flag_bits & 0x1:
            raise ValueError(f"member {info.filename} claims to be encrypted")


def damaged_part(part: Path, reason: str) -> CacheError:
    """The one-line error for a part file that cannot be merged."""
    reason = " ".join(reason.split())
    return CacheError(f"part file '{part}' is damaged ({reason}): delete it and rerun (its images are extracted "
                      "again; the cache and the other finished chunks are kept)")


def _npy(raw: bytes) -> np.ndarray:
    """One .npy member, from bytes whose CRC zip has already checked; never unpickles."""
    return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype in a .npy member's header, without reading its data."""
    with zf.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{name} has .npy format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    return tuple(shape), np.dtype(dtype)


def _structure_problem(arrays: dict, feature_shape: tuple[int, ...], feature_dtype: np.dtype) -> str | None:
    """What is wrong with the members of a part, or None."""
    found = {k: (v.shape, v.dtype) for k, v in arrays.items()}
    found["features"] = (feature_shape, feature_dtype)
    for name, (kind, ndim) in {**MEMBERS, **OPTIONAL}.items():
        if name not in found:
            continue
        shape, dtype = found[name]
        if len(shape) != ndim or dtype.kind != kind:
            return f"member {name} has shape {shape} and dtype {dtype}"
    n = feature_shape[0]
    for name in ("ids", "paths", "labels", "groups", "sizes", *[k for k in OPTIONAL if k in found]):
        if found[name][0][0] != n:
            return f"{name} has {found[name][0][0]} rows, features {n}"
    if found["sizes"][0][1] != 2:
        return f"sizes has shape {found['sizes'][0]}"
    if not len(arrays["fail_ids"]) == len(arrays["fail_paths"]) == len(arrays["fail_reasons"]):
        return "the failure lists disagree in length"
    if not np.isin(arrays["labels"], (-1, 0, 1)).all():
        return "labels outside {-1, 0, 1}"
    return None
