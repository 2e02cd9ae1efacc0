"""Checks of a finished cache file: for `natix cache verify`, for training, and before a merge.

Two kinds of check, by cost. :func:`table_problems` reads only the small tables (structure,
ids, labels, view table, failures and their checksums). :func:`feature_problems` reads every
feature once (finite values, the features checksum). :func:`read_checked` does the second
while it gathers the rows a training run needs, so verifying costs no extra pass.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.cache.checksum import (
    PARTS,
    all_finite,
    attribute,
    blocks_digest,
    checksum_version,
    covered,
    table_digests,
)
from natix.cache.fingerprint import fingerprint
from natix.cache.layout import ROW_FIELDS, STEM_LEN, image_ids, pending_parts, remove_empty_parts
from natix.cache.lock import CacheLock, describe
from natix.cache.parts import read_part
from natix.cache.reader import FeatureCache
from natix.errors import CacheError

# Damage the image source can undo: labels, paths and groups come from its listing, the view
# table from the view recipe, and failures are found again by trying the images.
REPAIRABLE = frozenset({"labels", "views", "failures"})
_HEX = np.zeros(256, dtype=bool)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = True
_DIGEST_TEXT = {"ids": "ids, image sizes or draw records differ from their checksum",
                "labels": "labels, paths or groups differ from their checksum",  # or the label conflicts
                "views": "view table differs from its checksum",
                "failures": "failures differ from their checksum"}


@dataclass(frozen=True)
class Problem:
    """One kind of damage: the part of the file it is in (see :data:`natix.cache.checksum.PARTS`,
    or ``structure``) and what is wrong, in words."""

    part: str
    text: str


def features_digest(cache: FeatureCache, block: int = 4096) -> str:
    """SHA-256 of the stored features' bytes in row order (what a writer records as ``features_sha256``)."""
    return blocks_digest(cache.blocks(block))


def table_problems(cache: FeatureCache) -> list[Problem]:
    """What is wrong with everything but the features (cheap: small arrays, already in memory)."""
    problems = []
    n, v, _ = cache.shape
    if fingerprint(cache.identity) != cache.fingerprint:
        problems.append(Problem("structure", f"stored fingerprint {cache.fingerprint[:16]} does not match its "
                                             f"identity ({fingerprint(cache.identity)[:16]})"))
    problems += [Problem("structure", f"{name} has {len(getattr(cache, name))} rows, features have {n}")
                 for name in ROW_FIELDS if len(getattr(cache, name)) != n]
    if len(cache.views) != v:
        problems.append(Problem("structure", f"view table has {len(cache.views)} views, features have {v}"))
    records = -1 if cache.challenge is None else len(cache.challenge)
    if ("challenge" in cache.identity) != (records >= 0) or records not in (-1, n):
        problems.append(Problem("structure", f"challenge draw records ({max(records, 0)}) do not match its identity "
                                             f"and its {n} rows"))
    if problems:
        return problems  # the other checks assume aligned rows
    if len(np.unique(cache.ids)) != n:
        problems.append(Problem("ids", "image ids are not unique"))
    if not np.isin(cache.labels, (-1, 0, 1)).all():
        problems.append(Problem("labels", "labels outside {-1, 0, 1}"))
    if cache.challenge is not None and _draws_disagree(cache):
        problems.append(Problem("labels", "draws of one image disagree on their label, path or group"))
    if checksum_version(cache.attrs) >= 2:
        recorded = {part: cache.attrs.get(attribute(part)) for part in _DIGEST_TEXT}
        problems += [Problem(part, _DIGEST_TEXT[part]) for part, digest in stored_digests(cache).items()
                     if digest != recorded[part]]
    return problems


def _draws_disagree(cache: FeatureCache) -> bool:
    """Whether the rows of some image (its draws) hold different labels, paths or groups."""
    images = cache.image_ids
    order = np.argsort(images, kind="stable")
    same = images[order][1:] == images[order][:-1]
    return any(bool((col[order][1:][same] != col[order][:-1][same]).any())
               for col in (cache.labels, cache.paths, cache.groups))


def _hex_digests(ids: np.ndarray) -> bool:
    """Whether every id is 64 lowercase hex digits (what `natix extract` writes; synthetic caches may differ)."""
    raw = image_ids(ids).astype("S64")
    return bool((np.char.str_len(raw) == 64).all() and _HEX[raw.view(np.uint8)].all())


def stored_digests(cache: FeatureCache) -> dict[str, str]:
    """The table digests of what `cache` holds now (compare with its ``*_sha256`` attributes)."""
    return table_digests(ids=cache.ids.tolist(), sizes=cache.sizes.tolist(), labels=cache.labels.tolist(),
                         paths=cache.paths.tolist(), groups=cache.groups.tolist(),
                         conflicts=[(c["id"], c["path"], c["label"]) for c in cache.conflicts],
                         views=[(x.name, x.box, x.flip) for x in cache.views],
                         failures=[(fl["id"], fl["path"], fl["reason"]) for fl in cache.failures],
                         challenge=cache.challenge.tolist() if cache.challenge is not None else None)


def feature_problems(cache: FeatureCache, block: int = 4096) -> list[Problem]:
    """What is wrong with the features: NaN or inf, or a checksum that no longer matches (one full read)."""
    return _scan(cache, None, block)[1]


def read_checked(cache: FeatureCache, rows: np.ndarray, *, block: int = 4096) -> np.ndarray:
    """Features ``[len(rows), V, D]`` (stored dtype) of sorted `rows`, read in the same pass that checks
    the features checksum; damage raises the one-line error of :func:`damage_error`."""
    out, problems = _scan(cache, np.asarray(rows, dtype=np.int64), block)
    if problems:
        raise damage_error(cache.path, problems)
    return out


def _scan(cache: FeatureCache, rows: np.ndarray | None, block: int) -> tuple[np.ndarray | None, list[Problem]]:
    """One pass over the features: their digest, whether they are finite, and the `rows` asked for."""
    h, finite, out = hashlib.sha256(), True, None
    if rows is not None:
        out = np.empty((len(rows),) + tuple(cache.shape[1:]), dtype=cache.dtype)
        bounds = np.searchsorted(rows, np.arange(0, len(cache) + block, block))
    for k, blk in enumerate(cache.blocks(block)):
        h.update(np.ascontiguousarray(blk))  # the buffer itself: no copy
        finite = finite and all_finite(blk)
        if rows is not None:
            lo, hi = bounds[k], bounds[k + 1]
            if hi - lo == len(blk):  # every row of the block (the common case): a plain copy
                out[lo:hi] = blk
            else:
                out[lo:hi] = blk[rows[lo:hi] - k * block]
    problems = [] if finite else [Problem("features", "features contain NaN or inf")]
    if h.hexdigest() != cache.attrs.get("features_sha256"):
        problems.append(Problem("features", "features checksum differs from the one recorded at write time "
                                            "(corruption)"))
    return out, problems


def damage_error(path: Path, problems: list[Problem], *, note: str = "") -> CacheError:
    """The one-line error for a damaged cache file: the first problem, where to see all, the fix and a `note`."""
    first = problems[0]
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    if all(p.part in REPAIRABLE for p in problems):
        fix = ("rerun `natix extract` on the cache's full image source to restore them, or move it away "
               f"(mv {path} {path}.broken) and re-extract")
    else:
        fix = f"move it away (mv {path} {path}.broken) and rerun `natix extract` to rebuild it"
    return CacheError(f"cache file '{path}' is damaged ({first.text}{more}): see `natix cache verify {path}`; {fix}"
                      + (f"; {note}" if note else ""))


def verify_cache(path: str | os.PathLike) -> dict:
    """Check a cache file end to end.

    Returns ``{"ok": bool, "problems": [...], "checked": [...], "notes": [...], "images", "views", "dim"}``;
    notes are not problems (a run in progress, say).
    """
    path = Path(path)
    with FeatureCache(path) as cache:  # raises a CacheError for unreadable or foreign files
        return _verify(path, cache)


def _verify(path: Path, cache: FeatureCache) -> dict:
    """The checks of `verify_cache` on an open cache."""
    n, v, d = cache.shape
    problems = [p.text for p in table_problems(cache) + feature_problems(cache)]
    if not _hex_digests(cache.ids):
        problems.append("some image ids are not SHA-256 hex digests")
    if not path.name.startswith(cache.fingerprint[:STEM_LEN]):
        problems.append(f"file name does not start with its fingerprint {cache.fingerprint[:STEM_LEN]}")
    checked = ["fingerprint matches identity", "row counts agree", "ids unique", "labels in {-1, 0, 1}",
               "features finite", covered(checksum_version(cache.attrs))]
    notes = []
    with CacheLock(path).probe() as writer:
        pending = pending_parts(path)
        if writer is None:
            remove_empty_parts(path)  # a kill's leftover; the probe keeps writers out meanwhile
    for part in pending:
        try:
            read_part(part, shape=(v, d))
        except CacheError as exc:
            problems.append(str(exc))
    if writer is not None:
        notes.append(f"being written by {describe(writer)}: a run in progress holds {len(pending)} finished "
                     "chunk(s) not merged yet; verify again when it is done")
    elif pending:
        problems.append(f"{len(pending)} finished chunk(s) of an interrupted run are not merged yet: "
                        "rerun the same `natix extract` to merge them")
    return {"ok": not problems, "problems": problems, "checked": checked, "notes": notes, "images": n, "views": v,
            "dim": d}


__all__ = ["PARTS", "REPAIRABLE", "Problem", "damage_error", "feature_problems", "features_digest", "read_checked",
           "stored_digests", "table_problems", "verify_cache"]
