"""The merge at the end of a run: the old cache file and the finished parts become one new file.

Two passes keep memory at one block or one part: metadata first (:func:`collect_rows`), then
features streamed part by part (:func:`write_merged`). The rows the parts add follow the old rows
in source order (path, image id, draw), whatever order the parts were written in: a job of N
ranks, a resumed run and one uninterrupted process write the same file. Old rows are checked against their
recorded checksum while they are copied, so a corrupt cache is refused rather than
re-checksummed. Every part is read whole and checked before anything is written, and the
merged size is reserved on disk first (:mod:`natix.cache.space`). The caller writes to a
temporary name and swaps it in (see `CacheWriter.commit`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from natix import __version__
from natix.cache.checksum import CHECKSUM_VERSION, all_finite, attribute, table_digests
from natix.cache.fingerprint import canonical_json
from natix.cache.layout import DRAW_SEP, FORMAT, image_of, utc_now
from natix.cache.parts import read_part
from natix.cache.reader import FeatureCache
from natix.cache.space import is_no_space, no_space, release_after_full_disk, reserve, size_bound
from natix.errors import CacheError

# image id → its listings ((path, label), in source order) when the source gives its bytes conflicting labels
Conflicts = dict[str, tuple[tuple[str, int], ...]]


def grouped_conflicts(listings: Iterable[tuple[str, str, int]]) -> Conflicts:
    """``(id, path, label)`` listings (as a file stores them) grouped by image id, in order."""
    out: dict[str, tuple[tuple[str, int], ...]] = {}
    for image_id, path, label in listings:
        out[image_id] = (*out.get(image_id, ()), (str(path), int(label)))
    return out


@dataclass(frozen=True)
class CacheSpec:
    """What a cache file of one identity holds besides its rows, and where it lives."""

    path: Path
    identity: dict
    fingerprint: str
    source: dict
    view_table: list[dict]
    dim: int
    store_dtype: np.dtype


@dataclass
class MergedRows:
    """The rows of the merged file in order (old rows first) and where their features come from."""

    n_old: int = 0
    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    challenge: list[str] = field(default_factory=list)  # per row, the draw's record (challenge caches only)
    take: list[list[int]] = field(default_factory=list)  # per part, the rows it contributes (first id wins)
    dest: list[list[int]] = field(default_factory=list)  # per part, the merged row each of `take` becomes
    # (id, path when id is "") → (path, reason); a later record of the same failure wins
    failures: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    # (id, path, label) per listing of an image listed with conflicting labels, by id
    conflicts: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, row: str, path: str, label: int, group: str, size: tuple[int, int], challenge: str = "") -> None:
        self.ids.append(row)
        self.paths.append(path)
        self.labels.append(label)
        self.groups.append(group)
        self.sizes.append(size)
        self.challenge.append(challenge)

    def add_failure(self, image_id: str, path: str, reason: str) -> None:
        self.failures[(image_id, path if not image_id else "")] = (path, reason)


def collect_rows(old: FeatureCache | None, parts: list[Path], *, old_failures: bool = True) -> MergedRows:
    """Pass 1: the old file's rows, then each part's rows whose id is not in yet; all failures
    (the old file's only when `old_failures`: damaged ones are dropped and found again)."""
    rows = MergedRows()
    if old is not None:
        rows.n_old = len(old)
        records = old.challenge.tolist() if old.challenge is not None else [""] * len(old)
        for i, p, lab, g, sz, c in zip(old.ids.tolist(), old.paths.tolist(), old.labels.astype(int).tolist(),
                                       old.groups.tolist(), old.sizes, records):
            rows.add(i, p, lab, g, tuple(map(int, sz)), c)
        for fl in old.failures if old_failures else ():
            rows.add_failure(fl["id"], fl["path"], fl["reason"])
    seen = set(rows.ids)
    for part in parts:
        meta = read_part(part, features=False)
        take = []
        for r, i in enumerate(meta["ids"].tolist()):
            if i in seen:
                continue
            seen.add(i)
            take.append(r)
            rows.add(i, str(meta["paths"][r]), int(meta["labels"][r]), str(meta["groups"][r]),
                     tuple(int(x) for x in meta["sizes"][r]), str(meta["challenge"][r]) if "challenge" in meta else "")
        rows.take.append(take)
        for i, p, reason in zip(meta["fail_ids"].tolist(), meta["fail_paths"].tolist(),
                                meta["fail_reasons"].tolist()):
            rows.add_failure(i, p, reason)
    _source_order(rows)
    return rows


def _source_order(rows: MergedRows) -> None:
    """Sort the rows the parts add by (path, image id, draw) and set where each part's rows go.

    One process writes its parts in that order already (sources list their images by path), so
    there this only numbers the rows; parts of several ranks or of a resumed run get sorted.
    """
    new = range(rows.n_old, len(rows.ids))
    order = sorted(new, key=lambda r: (rows.paths[r], image_of(rows.ids[r]), _draw(rows.ids[r])))
    position = {r: rows.n_old + k for k, r in enumerate(order)}
    start = rows.n_old
    for take in rows.take:
        rows.dest.append([position[start + k] for k in range(len(take))])
        start += len(take)
    if order != list(new):
        for name in ("ids", "paths", "labels", "groups", "sizes", "challenge"):
            values = getattr(rows, name)
            values[rows.n_old:] = [values[r] for r in order]


def _draw(row: str) -> int:
    """The draw number of a challenge row id (0 for a plain image id)."""
    _, sep, draw = row.partition(DRAW_SEP)
    return int(draw) if sep else 0


def apply_updates(rows: MergedRows, updates: dict[str, tuple[str, int, str]]) -> None:
    """Set the new path, label and group of cached images (keyed by image id: every draw of a
    challenge cache's image), then drop the failures since resolved.

    An image that now has features is no longer a failure, nor is an unreadable path that was
    read since.
    """
    for r, i in enumerate(rows.ids):
        i = image_of(i)
        if i in updates:
            rows.paths[r], rows.labels[r], rows.groups[r] = updates[i]
    have_ids, have_paths = set(map(image_of, rows.ids)), set(rows.paths)
    rows.failures = {k: v for k, v in rows.failures.items()
                     if not (k[0] in have_ids if k[0] else v[0] in have_paths)}


def check_shape(old: FeatureCache | None, spec: CacheSpec) -> None:
    """Refuse to merge rows of another feature shape into an existing file."""
    v, d = len(spec.view_table), spec.dim
    if old is not None and len(old) and old.shape[1:] != (v, d):
        raise CacheError(f"cache file '{spec.path}' holds [N, {old.shape[1]}, {old.shape[2]}] features, this run "
                         f"makes [N, {v}, {d}]: move the file away")


def check_parts(parts: list[Path], spec: CacheSpec) -> None:
    """Read every part whole (CRC-checked, one in memory at a time) before anything is merged."""
    for part in parts:
        read_part(part, shape=(len(spec.view_table), spec.dim))


def merged_size(rows: MergedRows, spec: CacheSpec) -> int:
    """An upper bound on the bytes of the merged file of `rows` (what :func:`reserve` sets aside)."""
    n = len(rows.ids)
    text = sum(len(t.encode()) for t in rows.paths) + sum(len(t.encode()) for t in rows.groups)
    text += sum(len(p.encode()) + len(r.encode()) for p, r in rows.failures.values())
    text += sum(len(p.encode()) for _, p, _ in rows.conflicts)
    text += sum(len(c.encode()) + 16 for c in rows.challenge)  # + the wider ids of challenge rows
    return size_bound(n_rows=n, row_bytes=len(spec.view_table) * spec.dim * spec.store_dtype.itemsize,
                      chunk_rows=_chunk_rows(n, spec), text_bytes=text,
                      n_records=len(rows.failures) + len(rows.conflicts))


def write_merged(tmp: Path, rows: MergedRows, old: FeatureCache | None, parts: list[Path], spec: CacheSpec, *,
                 block: int, size: int) -> None:
    """Pass 2: fill the reserved file `tmp` (`size` bytes): features, then rows, views, failures, attributes.

    A full disk met anyway (see :mod:`natix.cache.space`) becomes the one-line no-space error.
    """
    import h5py

    f = h5py.File(tmp, "r+")
    try:
        _fill(f, rows, old, parts, spec, block=block)
        f.close()
    except (OSError, RuntimeError) as exc:
        if not is_no_space(exc):
            f.close()
            raise
        release_after_full_disk(f)
        raise no_space(tmp.parent, size - shutil.disk_usage(tmp.parent).free) from None
    except BaseException:
        f.close()
        raise


def _fill(f, rows: MergedRows, old: FeatureCache | None, parts: list[Path], spec: CacheSpec, *, block: int) -> None:
    """Write the features, tables and attributes of the merged file into the open HDF5 file `f`."""
    created = old.attrs.get("created") if old is not None else utc_now()
    digest = hashlib.sha256()
    ds = _features_dataset(f, len(rows.ids), spec)
    _copy_old_features(ds, old, digest, spec, block=block)
    _copy_part_features(ds, rows, parts, digest, spec)
    challenge = rows.challenge if "challenge" in spec.identity else None
    write_tables(f, rows, spec.view_table, challenge)
    digests = {"features": digest.hexdigest(), **table_digests(
        ids=rows.ids, sizes=rows.sizes, labels=rows.labels, paths=rows.paths, groups=rows.groups,
        conflicts=rows.conflicts, challenge=challenge,
        views=[(t["name"], t["box"], t["flip"]) for t in spec.view_table],
        failures=[(k[0], *rows.failures[k]) for k in sorted(rows.failures)])}
    f.attrs["format"] = FORMAT
    f.attrs["fingerprint"] = spec.fingerprint
    f.attrs["identity"] = canonical_json(spec.identity)
    f.attrs["source"] = json.dumps(spec.source)
    f.attrs["natix_version"] = __version__
    f.attrs["created"] = created
    f.attrs["updated"] = utc_now()
    f.attrs["checksum_version"] = CHECKSUM_VERSION
    for part, value in digests.items():
        f.attrs[attribute(part)] = value
    # Flush while `ds` is alive: a full disk then raises here, not in a dataset's finalizer.
    f.flush()


def _chunk_rows(n: int, spec: CacheSpec) -> int:
    """Rows per HDF5 chunk of the features: about 1 MiB."""
    row_bytes = max(1, len(spec.view_table) * spec.dim * spec.store_dtype.itemsize)
    return max(1, min(n, (1 << 20) // row_bytes)) if n else 1


def _features_dataset(f, n: int, spec: CacheSpec):
    """The ``[n, V, D]`` features dataset, chunked at about 1 MiB of rows."""
    v, d = len(spec.view_table), spec.dim
    return f.create_dataset("features", shape=(n, v, d), dtype=spec.store_dtype,
                            chunks=(_chunk_rows(n, spec), v, max(d, 1)) if n and d else None)


def _copy_old_features(ds, old: FeatureCache | None, digest, spec: CacheSpec, *, block: int) -> None:
    """Copy the old file's features block by block, checking them against their recorded checksum
    and for NaN or inf (which a recomputed checksum would hide)."""
    if old is None or not len(old):
        return
    check = hashlib.sha256()
    start, finite = 0, True
    for blk in old.blocks(block):
        buf = np.ascontiguousarray(blk)  # hashed as its buffer: no copy
        check.update(buf)
        digest.update(buf)
        finite = finite and all_finite(blk)
        ds[start:start + len(blk)] = blk
        start += len(blk)
    if check.hexdigest() != old.attrs.get("features_sha256") or not finite:
        what = "no longer match their checksum" if finite else "contain NaN or inf"
        raise CacheError(
            f"cache file '{spec.path}' is corrupt (its features {what}): see `natix cache verify {spec.path}`; "
            f"move it away (mv {spec.path} {spec.path}.broken) and rerun; finished chunks are kept"
        )


def _copy_part_features(ds, rows: MergedRows, parts: list[Path], digest, spec: CacheSpec) -> None:
    """Write the parts' contributed rows after the old ones, in merged-row order: each part's rows
    as runs of consecutive merged rows, the runs in order (hashed as written), one part in memory."""
    runs = sorted((dest[a], p, take[a:b]) for p, (take, dest) in enumerate(zip(rows.take, rows.dest))
                  for a, b in _runs(dest))
    pos, loaded, feats = rows.n_old, None, None
    for start, p, take in runs:
        assert start == pos, (start, pos)
        if loaded != p:
            loaded, feats = p, read_part(parts[p])["features"]
        block = feats[take].astype(spec.store_dtype, copy=False)
        ds[pos:pos + len(take)] = block
        digest.update(np.ascontiguousarray(block))
        pos += len(take)
    assert pos == len(rows.ids), (pos, len(rows.ids))


def _runs(dest: list[int]) -> list[tuple[int, int]]:
    """``[a, b)`` index ranges of `dest` whose values are consecutive integers."""
    out, a = [], 0
    for k in range(1, len(dest) + 1):
        if k == len(dest) or dest[k] != dest[k - 1] + 1:
            out.append((a, k))
            a = k
    return out


def write_tables(f, rows: MergedRows, view_table: list[dict], challenge: list[str] | None = None) -> None:
    """The row metadata (with each draw's record in a challenge cache), the view table and the failures."""
    import h5py

    str_dt = h5py.string_dtype("utf-8")
    n = len(rows.ids)
    width = max([64, *map(len, rows.ids)])  # image ids are 64 hex digits; challenge rows add ":<draw>"
    f.create_dataset("ids", data=np.array(rows.ids, dtype=f"S{width}"))
    if challenge is not None:
        f.create_dataset("challenge", data=np.array(challenge, dtype=object).reshape(n), dtype=str_dt)
    f.create_dataset("paths", data=np.array(rows.paths, dtype=object), dtype=str_dt)
    f.create_dataset("labels", data=np.array(rows.labels, dtype=np.int8))
    f.create_dataset("groups", data=np.array(rows.groups, dtype=object), dtype=str_dt)
    f.create_dataset("sizes", data=np.array(rows.sizes, dtype=np.int32).reshape(n, 2))
    vg = f.create_group("views")
    vg.create_dataset("name", data=np.array([t["name"] for t in view_table], dtype=object), dtype=str_dt)
    vg.create_dataset("box", data=np.array([t["box"] for t in view_table], dtype=np.float64).reshape(-1, 4))
    vg.create_dataset("flip", data=np.array([t["flip"] for t in view_table], dtype=bool))
    fg = f.create_group("failures")
    keys = sorted(rows.failures)
    fg.create_dataset("ids", data=np.array([k[0] for k in keys], dtype="S64"))
    fg.create_dataset("paths", data=np.array([rows.failures[k][0] for k in keys], dtype=object), dtype=str_dt)
    fg.create_dataset("reasons", data=np.array([rows.failures[k][1] for k in keys], dtype=object), dtype=str_dt)
    cg = f.create_group("conflicts")
    cg.create_dataset("ids", data=np.array([c[0] for c in rows.conflicts], dtype="S64"))
    cg.create_dataset("paths", data=np.array([c[1] for c in rows.conflicts], dtype=object), dtype=str_dt)
    cg.create_dataset("labels", data=np.array([c[2] for c in rows.conflicts], dtype=np.int8))


def merge_into(tmp: Path, old: FeatureCache | None, parts: list[Path], spec: CacheSpec,
               updates: dict[str, tuple[str, int, str]], conflicts: Conflicts, *, block: int,
               old_failures: bool = True) -> MergedRows:
    """Write the merge of `old` (or nothing), `parts`, metadata `updates` and label `conflicts` to `tmp`;
    return its rows.

    The caller has checked the old file's tables (:func:`natix.cache.verify.table_problems`);
    its features are checked here while they are copied. Conflicts of images without a row
    (failed or gone) are dropped.
    """
    check_shape(old, spec)
    check_parts(parts, spec)
    rows = collect_rows(old, parts, old_failures=old_failures)
    apply_updates(rows, updates)
    have = set(map(image_of, rows.ids))
    rows.conflicts = [(i, p, x) for i in sorted(conflicts) if i in have for p, x in conflicts[i]]
    size = merged_size(rows, spec)
    reserve(tmp, size)
    write_merged(tmp, rows, old, parts, spec, block=block, size=size)
    return rows
