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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import __version__
from natix.cache.fingerprint import canonical_json, fingerprint
from natix.errors import CacheError, CacheLockedError, FingerprintMismatchError

STEM_LEN = 16
FORMAT = "natix-features/1"
_ROW_FIELDS = ("ids", "paths", "labels", "groups", "sizes")


def resolve_cache_root(value: str | os.PathLike | None = None) -> Path:
    """`--cache` if given, else ``$NATIX_CACHE``, else ``./.natix-cache``; resolved at call time."""
    if value:
        return Path(value)
    env = os.environ.get("NATIX_CACHE")
    return Path(env) if env else Path(".natix-cache")


def cache_path(root: str | os.PathLike, fp: str) -> Path:
    """Where the cache of fingerprint `fp` lives under `root`."""
    return Path(root) / f"{fp[:STEM_LEN]}.h5"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
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


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ViewInfo:
    """A row of the stored view table."""

    name: str
    box: tuple[float, float, float, float]  # unit coordinates; multiply by (W, H, W, H)
    flip: bool


class FeatureCache:
    """A finished cache file, read with h5py and numpy only (no torch).

    Small arrays are read on open; features are read on demand with `features()`. The file
    stays open until `close()` (or the end of a ``with`` block), so a cache that a writer
    replaces meanwhile keeps serving the snapshot that was opened, never a mix of two.
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"feature file '{self.path}' does not exist: run `natix extract` or check the path")
        f = None
        try:
            f = h5py.File(self.path, "r")
            if f.attrs.get("format") != FORMAT:
                raise CacheError(
                    f"'{self.path}' is an HDF5 file but not a natix feature cache: "
                    "pass a file written by `natix extract`"
                )
            self.identity = json.loads(f.attrs["identity"])
            self.source = json.loads(f.attrs.get("source", "{}"))
            self.fingerprint = str(f.attrs["fingerprint"])
            self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                          if k not in ("identity", "source")}
            self.ids = f["ids"][()].astype(str)
            self.paths = _strings(f["paths"][()])
            self.labels = f["labels"][()]
            self.groups = _strings(f["groups"][()])
            self.sizes = f["sizes"][()]
            self.shape = tuple(f["features"].shape)
            self.dtype = np.dtype(f["features"].dtype)
            v = f["views"]
            self.views = [ViewInfo(n, tuple(map(float, b)), bool(fl))
                          for n, b, fl in zip(_strings(v["name"][()]), v["box"][()], v["flip"][()])]
            fl = f["failures"]
            self.failures = [{"id": i, "path": p, "reason": r} for i, p, r in
                             zip(fl["ids"][()].astype(str), _strings(fl["paths"][()]), _strings(fl["reasons"][()]))]
        except CacheError:
            if f is not None:
                f.close()
            raise
        except (OSError, KeyError, ValueError) as exc:
            if f is not None:
                f.close()
            raise CacheError(
                f"feature file '{self.path}' is unreadable or incomplete ({exc}): "
                "move it away and rerun `natix extract` to rebuild it"
            ) from None
        self._file = f

    def close(self) -> None:
        """Release the file handle."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def n_views(self) -> int:
        return self.shape[1]

    @property
    def dim(self) -> int:
        return self.shape[2]

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.views]

    def features(self, rows=None, *, dtype=np.float32) -> np.ndarray:
        """Features ``[N, V, D]`` (or ``[len(rows), V, D]``) as `dtype`.

        `rows` is an index array or slice; sorted index arrays read fastest.
        """
        if self._file is None:
            raise CacheError(f"feature cache '{self.path}' is closed: open it again with open_cache()")
        ds = self._file["features"]
        if rows is None:
            rows = slice(None)
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(ds.shape[0]))
        out = _read_rows(ds, np.asarray(rows, dtype=np.int64))
        return out if dtype is None or out.dtype == dtype else out.astype(dtype)

    def pixel_boxes(self, row: int) -> np.ndarray:
        """Integer-free boxes ``[V, 4]`` of image `row` in its source pixels."""
        h, w = self.sizes[row]
        return np.array([v.box for v in self.views]) * np.array([w, h, w, h], dtype=np.float64)


def _read_rows(ds, rows: np.ndarray, block: int = 4096) -> np.ndarray:
    """``ds[rows]`` for any row order and repeats, reading each touched block of rows once.

    Straight into the result: no fancy-indexed HDF5 selection (slow) and no second full copy.
    """
    out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
    if not len(rows):
        return out
    if rows.min() < 0 or rows.max() >= ds.shape[0]:
        raise IndexError(f"row index out of range for {ds.shape[0]} rows")
    if np.all(np.diff(rows) == 1):  # one contiguous run: read it directly
        ds.read_direct(out, source_sel=np.s_[rows[0]:rows[-1] + 1])
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    bounds = np.searchsorted(sorted_rows, np.arange(0, ds.shape[0] + block, block))
    for b in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[b], bounds[b + 1]
        first, last = sorted_rows[lo], sorted_rows[hi - 1]
        chunk = ds[first:last + 1]
        out[order[lo:hi]] = chunk[sorted_rows[lo:hi] - first]
    return out


def _strings(values) -> np.ndarray:
    """HDF5 variable-length strings (bytes or str) → an object array of str."""
    return np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)


def open_cache(path: str | os.PathLike) -> FeatureCache:
    """Open a finished feature cache for reading (numpy arrays, no torch)."""
    return FeatureCache(path)


def list_caches(root: str | os.PathLike) -> list[dict]:
    """One summary per cache file under `root` (unreadable files are listed with their error)."""
    root = Path(root)
    out = []
    for p in sorted(root.glob("*.h5")) if root.is_dir() else []:
        try:
            with FeatureCache(p) as c:
                out.append({"path": str(p), "fingerprint": c.fingerprint, "images": len(c), "views": c.n_views,
                            "dim": c.dim, "dtype": str(c.dtype), "backbone": c.source.get("backbone", "?"),
                            "updated": c.attrs.get("updated"), "size_mb": p.stat().st_size / 2**20,
                            "pending_parts": len(list(_parts_dir(p).glob("part-*.npz")))})
        except CacheError as exc:
            out.append({"path": str(p), "error": str(exc)})
    return out


def features_digest(features_ds, block: int = 4096) -> str:
    """SHA-256 of the features' bytes in row order, read in blocks."""
    h = hashlib.sha256()
    for start in range(0, features_ds.shape[0], block):
        h.update(np.ascontiguousarray(features_ds[start:start + block]).tobytes())
    return h.hexdigest()


def verify_cache(path: str | os.PathLike) -> dict:
    """Check a cache file end to end. Returns ``{"ok": bool, "problems": [...], "checked": [...]}``."""
    path = Path(path)
    with FeatureCache(path) as cache:  # raises a CacheError for unreadable or foreign files
        return _verify(path, cache)


def _verify(path: Path, cache: FeatureCache) -> dict:
    """The checks of `verify_cache` on an open cache."""
    problems, checked = [], []
    fp = fingerprint(cache.identity)
    if fp != cache.fingerprint:
        problems.append(f"stored fingerprint {cache.fingerprint[:16]} does not match its identity ({fp[:16]})")
    checked.append("fingerprint matches identity")
    if not path.name.startswith(cache.fingerprint[:STEM_LEN]):
        problems.append(f"file name does not start with its fingerprint {cache.fingerprint[:STEM_LEN]}")
    n, v, d = cache.shape
    for name in _ROW_FIELDS:
        if len(getattr(cache, name)) != n:
            problems.append(f"{name} has {len(getattr(cache, name))} rows, features have {n}")
    checked.append("row counts agree")
    if len(cache.views) != v:
        problems.append(f"view table has {len(cache.views)} views, features have {v}")
    if len(set(cache.ids)) != n:
        problems.append("image ids are not unique")
    if not all(len(i) == 64 and all(c in "0123456789abcdef" for c in i) for i in cache.ids):
        problems.append("some image ids are not SHA-256 hex digests")
    checked.append("ids unique")
    if not set(np.unique(cache.labels)) <= {-1, 0, 1}:
        problems.append("labels outside {-1, 0, 1}")
    ds = cache._file["features"]
    if not all(np.isfinite(ds[s:s + 4096]).all() for s in range(0, n, 4096)):
        problems.append("features contain NaN or inf")
    checked.append("features finite")
    if features_digest(ds) != cache.attrs.get("features_sha256"):
        problems.append("features checksum differs from the one recorded at write time (corruption)")
    checked.append("features checksum")
    pending = sorted(_parts_dir(path).glob("part-*.npz"))
    if pending:
        problems.append(f"{len(pending)} finished chunk(s) of an interrupted run are not merged yet: "
                        "rerun the same `natix extract` to merge them")
    return {"ok": not problems, "problems": problems, "checked": checked, "images": n, "views": v, "dim": d}


# --------------------------------------------------------------------------- writing


def _parts_dir(cache_file: Path) -> Path:
    return cache_file.with_suffix(".parts")


class CacheLock:
    """An exclusive, non-blocking writer lock on a cache file (released by the OS on death)."""

    def __init__(self, cache_file: Path):
        self.path = cache_file.with_name(cache_file.name + ".lock")
        self._fd = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                holder = {}
            os.close(fd)
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
                   if holder else "another process")
            raise CacheLockedError(
                f"cache '{self.path.with_suffix('')}' is being written by {who}: "
                "wait for that run to finish or stop it, then rerun"
            ) from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
                           "argv": sys.argv[:8]}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self._fd = fd

    @property
    def fd(self) -> int | None:
        """The locked descriptor; forked children must close it or they keep the lock alive."""
        return self._fd

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


@dataclass(frozen=True)
class Rows:
    """Rows of metadata, aligned with a block of features."""

    ids: list[str]
    paths: list[str]
    labels: list[int]  # -1 when unknown
    groups: list[str]  # "" when none
    sizes: list[tuple[int, int]]  # (height, width) of the decoded source image


class CacheWriter:
    """Appends chunks of rows to the cache of one identity, crash-safely.

    Use as a context manager: it takes the writer lock, checks that an existing cache file
    holds the same fingerprint, and loads what is already done (cache rows, parts of an
    interrupted run, known failures). `add_part` makes a chunk durable; `commit` merges.
    """

    def __init__(self, root: str | os.PathLike, identity: dict, view_table: list[dict], *, dim: int,
                 store_dtype: str = "float16", source: dict | None = None):
        self.root = Path(root)
        self.identity = identity
        self.source = source or {}  # where the weights came from: shown, never hashed
        self.fingerprint = fingerprint(identity)
        self.view_table = view_table
        self.dim = dim  # features per view; fixed by the identity
        self.store_dtype = np.dtype(store_dtype)
        self.path = cache_path(self.root, self.fingerprint)
        self.parts = _parts_dir(self.path)
        self._lock = CacheLock(self.path)
        self.done_ids: set[str] = set()
        self.failed_ids: dict[str, str] = {}
        self.path_failures: dict[str, str] = {}  # files that could not be read: retried every run
        self.rows_meta: dict[str, tuple[str, int, str]] = {}
        self.in_file: set[str] = set()  # ids in the cache file (not in parts)
        self.resumed_parts = 0
        self._next_part = 0
        self._meta_updates: dict[str, tuple[str, int, str]] = {}
        self._new_rows = 0
        self._new_failures: list[tuple[str, str, str]] = []

    # -- lifecycle
    def __enter__(self):
        ensure_writable(self.root)
        self._lock.acquire()
        try:
            self._load_state()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self._lock.release()

    @property
    def lock_fd(self) -> int | None:
        return self._lock.fd

    def _load_state(self) -> None:
        """Read what the cache file and leftover parts already hold (metadata only)."""
        if self.path.exists():
            try:
                cache = FeatureCache(self.path)
            except FingerprintMismatchError:
                raise
            except CacheError as exc:
                raise CacheError(
                    f"cache file '{self.path}' is unreadable ({str(exc).split(' (', 1)[-1].split('):')[0]}): "
                    f"move it away (mv {self.path} {self.path}.broken) and rerun; finished chunks are kept"
                ) from None
            with cache:
                self._absorb(cache)
        for stale in self.root.glob(self.path.name + ".tmp-*"):
            stale.unlink()  # a merge that was killed before its rename; the parts still hold its rows
        if self.parts.is_dir():
            for tmp in self.parts.glob("*.tmp"):
                tmp.unlink()
            for part in sorted(self.parts.glob("part-*.npz")):
                meta = self._read_part(part, features=False)
                self.done_ids.update(meta["ids"].tolist())
                for i, p, lab, g in zip(meta["ids"].tolist(), meta["paths"].tolist(), meta["labels"].tolist(),
                                        meta["groups"].tolist()):
                    self.rows_meta.setdefault(i, (p, int(lab), g))
                for i, r in zip(meta["fail_ids"].tolist(), meta["fail_reasons"].tolist()):
                    if i:
                        self.failed_ids[i] = r
                self._next_part = max(self._next_part, int(part.stem.split("-")[1]) + 1)
                self.resumed_parts += 1

    def _absorb(self, cache: FeatureCache) -> None:
        """Take the done ids, row metadata and failures of the existing cache file."""
        if cache.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"cache file '{self.path}' holds fingerprint {cache.fingerprint[:16]}..., not "
                f"{self.fingerprint[:16]}...: it was renamed or copied by hand; move it away or use another --cache"
            )
        self.done_ids.update(cache.ids)
        self.in_file = set(cache.ids.tolist())
        for i, p, lab, g in zip(cache.ids, cache.paths, cache.labels, cache.groups):
            self.rows_meta[i] = (p, int(lab), g)
        for fail in cache.failures:
            if fail["id"]:
                self.failed_ids[fail["id"]] = fail["reason"]
            else:
                self.path_failures[fail["path"]] = fail["reason"]

    @staticmethod
    def _read_part(part: Path, *, features: bool = True) -> dict:
        """A part's arrays; with `features=False` only the small ones (npz members load lazily)."""
        try:
            with np.load(part, allow_pickle=False) as z:
                return {k: z[k] for k in z.files if features or k != "features"}
        except (OSError, ValueError) as exc:
            raise CacheError(f"part file '{part}' is unreadable ({exc}): delete it and rerun") from None

    # -- writing
    def set_metadata(self, image_id: str, path: str, label: int, group: str) -> None:
        """Record the current path/label/group of an image already in the cache."""
        if self.rows_meta.get(image_id) != (path, label, group):
            self._meta_updates[image_id] = (path, label, group)

    def add_part(self, features: np.ndarray, rows: Rows, failures: list[tuple[str, str, str]]) -> Path:
        """Durably write one chunk: features ``[n, V, D]`` with their rows, plus failures.

        `failures` holds ``(id, path, reason)``; id is "" when the file could not be read.
        Safe to call from one background thread.
        """
        n = len(rows.ids)
        assert features.shape == (n, len(self.view_table), self.dim), (features.shape, n)
        self.parts.mkdir(parents=True, exist_ok=True)
        seq = self._next_part
        self._next_part += 1
        final = self.parts / f"part-{seq:06d}.npz"
        tmp = self.parts / f"part-{seq:06d}.tmp"
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
            _fsync_dir(self.parts)
        except OSError as exc:
            raise CacheError(f"cannot write a chunk to '{self.parts}' ({exc.strerror or exc}): free disk space "
                             "and rerun; finished chunks are kept") from None
        self.done_ids.update(rows.ids)
        self._new_rows += n
        self._new_failures.extend(failures)
        return final

    @property
    def pending_metadata(self) -> int:
        """Cached images whose path, label or group will change at the next commit."""
        return len(self._meta_updates)

    def needs_commit(self) -> bool:
        """Whether `commit` would change the cache file."""
        return bool(self._new_rows or self._new_failures or self._meta_updates or self.resumed_parts
                    or not self.path.exists())

    def commit(self, *, block: int = 4096) -> Path:
        """Merge the cache file and all parts into a new file and swap it in atomically.

        Two passes keep memory at one block or one part: metadata first, then features
        streamed part by part. Old rows are checked against the recorded checksum while they
        are copied, so a corrupt cache is refused rather than re-checksummed.
        """
        try:
            return self._commit(block)
        except OSError as exc:
            for tmp in self.root.glob(self.path.name + ".tmp-*"):
                tmp.unlink(missing_ok=True)
            raise CacheError(f"cannot write '{self.path}' ({exc.strerror or exc}): a merge needs free space for "
                             "the old and the new cache; free some and rerun (finished chunks are kept)") from None

    def _commit(self, block: int) -> Path:
        old = FeatureCache(self.path) if self.path.exists() else None
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        try:
            self._merge_into(tmp, old, block)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if old is not None:
                old.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.root)
        # The merged file is durable; only now may the parts go.
        for part in sorted(self.parts.glob("part-*.npz")) if self.parts.is_dir() else []:
            part.unlink()
        with contextlib.suppress(OSError):
            self.parts.rmdir()
        self._meta_updates.clear()
        self._new_rows = 0
        self._new_failures = []
        self.resumed_parts = 0
        return self.path

    def _merge_into(self, tmp: Path, old: FeatureCache | None, block: int) -> None:
        """Write the merged cache to `tmp`."""
        import h5py

        parts = sorted(self.parts.glob("part-*.npz")) if self.parts.is_dir() else []
        ids: list[str] = []
        paths: list[str] = []
        labels: list[int] = []
        groups: list[str] = []
        sizes: list[tuple[int, int]] = []
        seen: set[str] = set()
        failures: dict[tuple[str, str], tuple[str, str]] = {}
        n_old = 0
        if old is not None:
            n_old = len(old)
            ids += old.ids.tolist(); paths += old.paths.tolist(); labels += old.labels.astype(int).tolist()
            groups += old.groups.tolist(); sizes += [tuple(map(int, sz)) for sz in old.sizes]
            seen.update(ids)
            for fl in old.failures:
                failures[(fl["id"], fl["path"] if not fl["id"] else "")] = (fl["path"], fl["reason"])
        take: list[list[int]] = []  # per part, the rows it contributes (first id wins)
        for part in parts:
            meta = self._read_part(part, features=False)
            rows = []
            for r, i in enumerate(meta["ids"].tolist()):
                if i in seen:
                    continue
                seen.add(i)
                rows.append(r)
                ids.append(i); paths.append(str(meta["paths"][r])); labels.append(int(meta["labels"][r]))
                groups.append(str(meta["groups"][r])); sizes.append(tuple(int(x) for x in meta["sizes"][r]))
            take.append(rows)
            for i, p, reason in zip(meta["fail_ids"].tolist(), meta["fail_paths"].tolist(),
                                    meta["fail_reasons"].tolist()):
                failures[(i, p if not i else "")] = (p, reason)
        for r, i in enumerate(ids):
            if i in self._meta_updates:
                paths[r], labels[r], groups[r] = self._meta_updates[i]
        # An id that now has features is no longer a failure, nor is an unreadable path that
        # was read since.
        have_paths = set(paths)
        failures = {k: v for k, v in failures.items()
                    if not (k[0] in seen if k[0] else v[0] in have_paths)}
        v, d, dtype = len(self.view_table), self.dim, self.store_dtype
        if old is not None and n_old and old.shape[1:] != (v, d):
            raise CacheError(f"cache file '{self.path}' holds [N, {old.shape[1]}, {old.shape[2]}] features, this run "
                             f"makes [N, {v}, {d}]: move the file away")
        n = len(ids)

        str_dt = h5py.string_dtype("utf-8")
        created = old.attrs.get("created") if old is not None else _now()
        digest = hashlib.sha256()
        with h5py.File(tmp, "w") as f:
            row_bytes = max(1, v * d * dtype.itemsize)
            chunk_rows = max(1, min(n, (1 << 20) // row_bytes)) if n else 1
            ds = f.create_dataset("features", shape=(n, v, d), dtype=dtype,
                                  chunks=(chunk_rows, v, max(d, 1)) if n and d else None)
            if n_old:
                check = hashlib.sha256()
                for s in range(0, n_old, block):
                    blk = np.ascontiguousarray(old.features(slice(s, s + block), dtype=None))
                    check.update(blk.tobytes())
                    digest.update(blk.tobytes())
                    ds[s:s + len(blk)] = blk
                if check.hexdigest() != old.attrs.get("features_sha256"):
                    raise CacheError(
                        f"cache file '{self.path}' is corrupt (its features no longer match their checksum): "
                        f"move it away (mv {self.path} {self.path}.broken) and rerun; finished chunks are kept"
                    )
            pos = n_old
            for part, rows in zip(parts, take):
                if not rows:
                    continue
                feats = self._read_part(part)["features"][rows].astype(dtype, copy=False)
                ds[pos:pos + len(rows)] = feats
                digest.update(np.ascontiguousarray(feats).tobytes())
                pos += len(rows)
            assert pos == n, (pos, n)
            f.create_dataset("ids", data=np.array(ids, dtype="S64"))
            f.create_dataset("paths", data=np.array(paths, dtype=object), dtype=str_dt)
            f.create_dataset("labels", data=np.array(labels, dtype=np.int8))
            f.create_dataset("groups", data=np.array(groups, dtype=object), dtype=str_dt)
            f.create_dataset("sizes", data=np.array(sizes, dtype=np.int32).reshape(n, 2))
            vg = f.create_group("views")
            vg.create_dataset("name", data=np.array([t["name"] for t in self.view_table], dtype=object), dtype=str_dt)
            vg.create_dataset("box", data=np.array([t["box"] for t in self.view_table], dtype=np.float64).reshape(-1, 4))
            vg.create_dataset("flip", data=np.array([t["flip"] for t in self.view_table], dtype=bool))
            fg = f.create_group("failures")
            fkeys = sorted(failures)
            fg.create_dataset("ids", data=np.array([k[0] for k in fkeys], dtype="S64"))
            fg.create_dataset("paths", data=np.array([failures[k][0] for k in fkeys], dtype=object), dtype=str_dt)
            fg.create_dataset("reasons", data=np.array([failures[k][1] for k in fkeys], dtype=object), dtype=str_dt)
            f.attrs["format"] = FORMAT
            f.attrs["fingerprint"] = self.fingerprint
            f.attrs["identity"] = canonical_json(self.identity)
            f.attrs["source"] = json.dumps(self.source)
            f.attrs["natix_version"] = __version__
            f.attrs["created"] = created
            f.attrs["updated"] = _now()
            f.attrs["features_sha256"] = digest.hexdigest()
        self.rows_meta = {i: (p, lab, g) for i, p, lab, g in zip(ids, paths, labels, groups)}
        self.in_file = set(ids)
