"""What a cache file's checksums cover, and how each is computed.

Version 2 (``checksum_version = 2``) records one SHA-256 per part of the file, so a mismatch
says what was damaged and whether the image source can repair it::

    features_sha256   the features, row by row in the stored dtype
    ids_sha256        row ids and image sizes (what the image bytes decide), and in a challenge
                      cache each draw's record
    labels_sha256     labels, paths, groups and label conflicts (what the source listing decides)
    views_sha256      the view table (what the view recipe decides)
    failures_sha256   the recorded failures

A file without ``checksum_version`` (written before version 2) has only ``features_sha256``.
Checksums detect damage, not malice: whoever can write the file can recompute them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np

CHECKSUM_VERSION = 2
# The parts of a version-2 file, each with its digest attribute and what it covers (for messages).
PARTS = {"features": "features", "ids": "ids, sizes", "labels": "labels, paths, groups, conflicts", "views": "view table",
         "failures": "failures"}


def attribute(part: str) -> str:
    """The file attribute that holds the digest of `part`."""
    return f"{part}_sha256"


def checksum_version(attrs: dict) -> int:
    """The checksum version of a file's attributes (1 when it predates versions)."""
    return int(attrs.get("checksum_version", 1))


def covered(version: int) -> str:
    """What the checksum of `version` covers, in words."""
    if version >= 2:
        return f"checksum v{version} ({'; '.join(PARTS.values())})"
    return ("checksum v1 (features only: labels, ids and the view table are not covered; the next `natix extract` "
            "that changes this cache records v2)")


def blocks_digest(blocks: Iterable[np.ndarray]) -> str:
    """SHA-256 of stored feature blocks in row order (C-contiguous, stored dtype)."""
    h = hashlib.sha256()
    for blk in blocks:
        h.update(np.ascontiguousarray(blk))  # the buffer itself: no copy
    return h.hexdigest()


_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000),
             np.dtype(np.float64): (np.uint64, 0x7FF0000000000000)}


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of a float array is finite: no exponent field is all ones (NaN, inf).

    Reads the bits as integers, which is several times faster than `np.isfinite` on float16.
    """
    x = np.asarray(x)
    if x.size == 0:
        return True
    if x.dtype not in _EXPONENT:
        return bool(np.isfinite(x).all())
    uint, mask = _EXPONENT[x.dtype]
    return int((np.ascontiguousarray(x).view(uint) & mask).max()) != mask


def table_digests(*, ids, sizes, labels, paths, groups, conflicts, views, failures, challenge=None) -> dict[str, str]:
    """The digests of everything but the features, from plain values as written or as read back.

    `conflicts` holds ``(id, path, label)`` per listing of an image listed with conflicting
    labels, `views` ``(name, box, flip)`` per view, `failures` ``(id, path, reason)`` per
    failure, `sizes` ``(height, width)`` per row, `challenge` (challenge caches only) each draw's
    record, covered with the ids (the draw decides it as the bytes decide the id). Values are normalised (ints, floats, str)
    first, so the writer's lists and the reader's arrays give the same digests.
    """
    return {
        "ids": _digest([[str(i) for i in ids], [[int(h), int(w)] for h, w in sizes],
                        *([[str(c) for c in challenge]] if challenge is not None else [])]),
        "labels": _digest([[int(x) for x in labels], [str(p) for p in paths], [str(g) for g in groups],
                           [[str(i), str(p), int(x)] for i, p, x in conflicts]]),
        "views": _digest([[str(n), [float(b) for b in box], bool(fl)] for n, box, fl in views]),
        "failures": _digest([[str(i), str(p), str(r)] for i, p, r in failures]),
    }


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode("ascii")).hexdigest()
