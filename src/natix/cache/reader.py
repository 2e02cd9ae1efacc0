"""Reading a finished cache file: h5py and numpy only (no torch).

Readers only ever open the cache file, which a writer replaces atomically, so they never see
half a chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.cache.layout import FORMAT, image_ids, pending_parts
from natix.errors import CacheError, ConfigError


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
            # Challenge caches: each row's draw record (JSON: draw, source size, drawn parameters).
            self.challenge = _strings(f["challenge"][()]) if "challenge" in f else None
            self.shape = tuple(f["features"].shape)
            self.dtype = np.dtype(f["features"].dtype)
            v = f["views"]
            self.views = [ViewInfo(n, tuple(map(float, b)), bool(fl))
                          for n, b, fl in zip(_strings(v["name"][()]), v["box"][()], v["flip"][()])]
            fl = f["failures"]
            self.failures = [{"id": i, "path": p, "reason": r} for i, p, r in
                             zip(fl["ids"][()].astype(str), _strings(fl["paths"][()]), _strings(fl["reasons"][()]))]
            cf = f.get("conflicts")  # absent in files written before conflicts were recorded
            self.conflicts = [] if cf is None else [
                {"id": i, "path": p, "label": int(x)}
                for i, p, x in zip(cf["ids"][()].astype(str).tolist(), _strings(cf["paths"][()]), cf["labels"][()])]
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
    def conflict_ids(self) -> frozenset[str]:
        """Images whose identical bytes the source listed with conflicting labels (held out of every split)."""
        return frozenset(c["id"] for c in self.conflicts)

    @property
    def image_ids(self) -> np.ndarray:
        """The image id of every row: the row id itself, or in a challenge cache the id without ``:<draw>``."""
        return image_ids(self.ids) if self.challenge is not None else self.ids

    @property
    def draws(self) -> list[dict] | None:
        """Each row's draw record in a challenge cache (``draw``, ``source_size``, ``params`` with ``level``);
        None for a cache of plain images."""
        if self.challenge is None:
            return None
        try:
            draws = [json.loads(c) for c in self.challenge]
            if not all(isinstance(d, dict) and isinstance(d.get("params"), dict) for d in draws):
                raise ValueError("a record without params")
        except ValueError as exc:
            raise CacheError(f"cache file '{self.path}' has a damaged draw record ({exc}): see `natix cache verify "
                             f"{self.path}`; extract it again") from None
        return draws

    @property
    def levels(self) -> np.ndarray:
        """The validator augmentation level (0-3) of every row; -1 where the row has none."""
        draws = self.draws
        if draws is None:
            return np.full(len(self), -1, dtype=np.int8)
        levels = [d["params"].get("level") for d in draws]
        bad = next((v for v in levels if v is not None and (type(v) is not int or not 0 <= v <= 3)), None)
        if bad is not None:
            raise CacheError(f"cache file '{self.path}' has a damaged draw record (level {bad!r}): see `natix cache "
                             f"verify {self.path}`; extract it again")
        return np.array([-1 if v is None else v for v in levels], dtype=np.int8)

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.views]

    def _features(self):
        if self._file is None:
            raise CacheError(f"feature cache '{self.path}' is closed: open it again with open_cache()")
        return self._file["features"]

    def features(self, rows=None, *, dtype=np.float32) -> np.ndarray:
        """Features ``[N, V, D]`` (or ``[len(rows), V, D]``) as `dtype`.

        `rows` is None (all rows), a slice, an integer array (any order, repeats allowed) or a
        boolean mask of length N (``cache.features(cache.labels == 1)``); sorted index arrays
        read fastest. Anything else raises a `ConfigError`.
        """
        ds = self._features()
        out = _read_rows(ds, row_indices(rows, ds.shape[0]))
        return out if dtype is None or out.dtype == dtype else out.astype(dtype)

    def blocks(self, block: int = 4096) -> Iterator[np.ndarray]:
        """The stored features in row order, `block` rows at a time, C-contiguous in the stored dtype."""
        ds = self._features()
        for start in range(0, ds.shape[0], block):
            yield np.ascontiguousarray(ds[start:start + block])

    def pixel_boxes(self, row: int) -> np.ndarray:
        """Integer-free boxes ``[V, 4]`` of image `row` in its source pixels."""
        h, w = self.sizes[row]
        return np.array([v.box for v in self.views]) * np.array([w, h, w, h], dtype=np.float64)


def row_indices(rows, n: int) -> np.ndarray:
    """`rows` (None, a slice, integer indices or a boolean mask of length `n`) as int64 indices into `n` rows.

    A boolean mask is never read as the indices 0 and 1; anything that is not one of these
    forms raises a one-line `ConfigError`.
    """
    if rows is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(rows, slice):
        return np.arange(*rows.indices(n), dtype=np.int64)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (np.ndarray, list, tuple, range)):
        what = "a single row" if isinstance(rows, (int, np.integer)) else f"row selection of type {type(rows).__name__}"
        raise ConfigError(f"{what} is not a row selection: pass a slice, an integer array or a boolean mask "
                          f"of length {n} (e.g. [i] for one row)")
    arr = np.asarray(rows)
    if arr.ndim != 1:
        raise ConfigError(f"row selection must be one-dimensional, got shape {arr.shape}: pass a slice, an integer "
                          f"array or a boolean mask of length {n}")
    if arr.dtype == bool:
        if len(arr) != n:
            raise ConfigError(f"boolean mask of {len(arr)} rows for a cache of {n} rows: pass a mask of length {n}")
        return np.flatnonzero(arr).astype(np.int64)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"row selection of dtype {arr.dtype} is neither integer indices nor a boolean mask: "
                          f"pass a slice, an integer array or a boolean mask of length {n}")
    bad = arr[(arr < 0) | (arr >= n)]
    if len(bad):
        raise ConfigError(f"row {bad[0]} is out of range for a cache of {n} rows: pass indices in [0, {n})")
    return arr.astype(np.int64)


def _read_rows(ds, rows: np.ndarray, block: int = 4096) -> np.ndarray:
    """``ds[rows]`` for any row order and repeats, reading each touched block of rows once.

    Straight into the result: no fancy-indexed HDF5 selection (slow) and no second full copy.
    """
    out = np.empty((len(rows),) + ds.shape[1:], dtype=ds.dtype)
    if not len(rows):
        return out
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
                challenge = c.identity.get("challenge")
                out.append({"path": str(p), "fingerprint": c.fingerprint, "images": len(c), "views": c.n_views,
                            "challenge": f"{challenge['name']} ×{challenge['draws']}" if challenge else None,
                            "dim": c.dim, "dtype": str(c.dtype), "backbone": c.source.get("backbone", "?"),
                            "updated": c.attrs.get("updated"), "size_mb": p.stat().st_size / 2**20,
                            "pending_parts": len(pending_parts(p))})
        except CacheError as exc:
            out.append({"path": str(p), "error": str(exc)})
    return out
