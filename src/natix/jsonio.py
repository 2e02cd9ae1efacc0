"""The one JSON writer and reader of natix: strict JSON, one policy for values JSON lacks.

Policy: NaN is written as ``null``; +inf and -inf as the strings ``"inf"`` and ``"-inf"`` (a
threshold of inf means "defer everything" and must survive a round trip); numpy scalars and
arrays become Python numbers and lists, tuples become lists, paths become strings, and dict keys
become strings. :func:`number` reads a value written this way back as a float. Nothing written
here can hold a bare ``NaN`` or ``Infinity``, which are not JSON.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePath

import numpy as np

from natix.errors import DataError

__all__ = ["canonical", "dumps", "jsonable", "number", "read_json", "write_atomic", "write_json"]


def jsonable(value):
    """`value` as plain JSON values under the module's policy (recursively)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()] if value.ndim else jsonable(value.item())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON data")


def dumps(value, *, indent: int | None = 2) -> str:
    """Strict JSON text of `value` (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)


def canonical(value) -> bytes:
    """Sorted keys, no whitespace, ASCII: equal values give equal bytes (for hashing)."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def write_json(path, value) -> Path:
    """Write `value` as strict JSON to `path` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, (dumps(value) + "\n").encode())


def write_atomic(path, data: bytes) -> Path:
    """Write `data` to a temporary file next to `path`, make it durable, then rename it over
    `path`: a reader (or the next run after a crash) sees the old file or the new one, never half
    of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path, *, fix: str, missing_ok: bool = False):
    """The JSON content of `path`; None when it is missing and `missing_ok`.

    A missing (unless `missing_ok`) or unreadable file raises :class:`DataError` naming the file
    and `fix` (what the user should do, e.g. "refit the run with natix fit-head").
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise DataError(f"'{path}' is missing: {fix}") from None
    except OSError as exc:
        raise DataError(f"'{path}' is unreadable ({exc.strerror or exc}): {fix}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise DataError(f"'{path}' is not valid JSON ({exc}): {fix}") from None


def number(value) -> float:
    """A number written by this module back as a float: null → NaN, "inf"/"-inf" → ±inf."""
    if value is None:
        return float("nan")
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{value!r} is not a number")
    return float(value)
