"""Reading a finished cache file: h5py and numpy only (no torch).

Readers only ever open the cache file, which a writer replaces atomically, so they never see
half a chunk.

A run's split file (``splits.json``: image ids per split) is read here too, below the heads that
write it, so that a cache can answer "the rows of split S of run R" without importing them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.cache.layout import FORMAT, image_ids, pending_parts
from natix.errors import CacheError, ConfigError, DataError
from natix.jsonio import read_json
from natix.rundir import Run

_SPLITS_FIX = "pass a splits.json written by natix"


@dataclass(frozen=True)
class ViewInfo:
    """A row of the stored view table."""

    name: str
    box: tuple[float, float, float, float]  # unit coordinates; multiply by (W, H, W, H)
    flip: bool


class FeatureCache:
    """A finished cache file, read with h5py and numpy only (no torch).

    Small arrays (``ids``, ``labels``, ``paths``, ``groups``, ``sizes``, ``views``, ...) are read
    on open; features are read on demand. The file stays open until `close()` (or the end of a
    ``with`` block), so a cache that a writer replaces meanwhile keeps serving the snapshot that
    was opened, never a mix of two.

    The features index like a read-only numpy array of shape ``[N, V, D]`` that reads float32:

    - ``cache[i]`` is ``[V, D]``; ``cache[rows]`` is ``[n, V, D]`` for a slice, integer indices
      (any order, repeats allowed) or a boolean mask of length N (``cache[cache.labels == 1]``);
      negative indices count from the end, as in numpy.
    - ``cache[rows, views]`` selects views too: a view name or index drops the view axis
      (``cache[:, "global"]`` is ``[N, D]``); a slice, a list of names or indices, or a boolean
      mask of length V keeps it. Rows and views cannot both be lists or masks (numpy would pair
      them, h5py would cross them): one of the two is an int, a name or a slice. Feature dims
      are selected on the result (``cache[rows][..., :k]``).
    - ``len(cache)`` is N; ``for x in cache`` yields the rows (``[V, D]``), read a block at a time.
    - ``cache.rows(split, run=...)`` gives the rows of a run's split, to index with.

    It is deliberately not array-like: ``np.asarray(cache)`` raises instead of silently reading
    every feature; ``cache[:]`` reads them all. A bad index raises a one-line `ConfigError`
    (not an IndexError). `features` is the strict form of ``cache[rows]``: it refuses negative
    indices (a -1 among row indices is more often a "not found" marker than the last row) and
    can keep the stored dtype.
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = cache_file(path)
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
        """Release the file handle (the small arrays stay readable; features do not)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        """Whether `close()` has released the file."""
        return self._file is None

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        n, v, d = self.shape
        about = [f"backbone {self.source.get('backbone', '?')}"]
        challenge = _challenge_label(self.identity)
        if challenge is not None:
            about.append(f"challenge {challenge}")
        state = " (closed)" if self.closed else ""
        return f"<FeatureCache '{self.path}'{state} {n:,} rows × {v} views × {d} {self.dtype}, {', '.join(about)}>"

    def __getitem__(self, key) -> np.ndarray:
        """Float32 features ``cache[rows]`` or ``cache[rows, views]``, indexed as the class docstring says."""
        rows, views = key if isinstance(key, tuple) and len(key) == 2 else (key, slice(None))
        if isinstance(rows, tuple):
            raise ConfigError(f"cache[...] takes rows or rows, views; got {len(rows)} indices: select feature dims on "
                              "the result, e.g. cache[rows][..., :k]")
        if rows is None:
            raise ConfigError("cache[None] is not a row selection: pass cache[:] for every row")
        single = _is_index(rows)
        picked = np.array([_one_index(rows, len(self), "row")]) if single else row_indices(rows, len(self), wrap=True)
        view_rows, one_view = self._view_selection(views)
        if not (single or one_view or isinstance(rows, slice) or isinstance(views, slice)):
            raise ConfigError("cache[rows, views] with a list or mask for both is ambiguous (numpy pairs them, h5py "
                              "crosses them): make one an int, a name or a slice, e.g. cache[rows][:, views]")
        out = _read_rows(self._features(), picked, view_rows).astype(np.float32, copy=False)
        out = out[:, 0] if one_view else out
        return out[0] if single else out

    def __iter__(self) -> Iterator[np.ndarray]:
        """The rows in cache order, each float32 ``[V, D]``, read a block at a time."""
        for block in self.blocks():
            yield from block.astype(np.float32, copy=False)

    def __array__(self, dtype=None, copy=None):
        # numpy would otherwise read the cache row by row through __iter__, all of it, unasked.
        raise ConfigError(f"feature cache '{self.path}' is not converted to an array implicitly (that reads all "
                          f"{len(self):,} rows): read cache[:] or cache[rows] explicitly")

    def _view_selection(self, views) -> tuple[np.ndarray | None, bool]:
        """The `views` of ``cache[rows, views]`` as indices (None: all) and whether the view axis drops."""
        if isinstance(views, slice) and views == slice(None):
            return None, False
        if isinstance(views, str):
            return np.array([self._view_index(views)]), True
        if _is_index(views):
            return np.array([_one_index(views, self.n_views, "view")]), True
        if isinstance(views, (list, tuple, np.ndarray)) and np.asarray(views).dtype.kind == "U":
            return np.array([self._view_index(v) for v in np.asarray(views).tolist()], dtype=np.int64), False
        if views is None:
            raise ConfigError("cache[rows, None] is not a view selection: pass a view name, an index, a slice or a "
                              "list of them")
        return row_indices(views, self.n_views, wrap=True, unit="view"), False

    def _view_index(self, name: str) -> int:
        names = self.view_names
        if name not in names:
            raise ConfigError(f"cache '{self.path}' has no view '{name}': pass one of {', '.join(names)}")
        return names.index(name)

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

    def rows(self, split: str, *, run: str | os.PathLike) -> np.ndarray:
        """Row indices (int64, in cache order) of the images in split `split` of a run.

        Parameters
        ----------
        split : a split of the run: ``train``, ``val_select``, ``val_calib`` or ``val_test``.
        run : a run directory written by ``natix fit-head``, or a ``splits.json``.

        Returns
        -------
        ``[n]`` sorted row indices for ``cache[rows]``, ``cache.labels[rows]``, ``cache.ids[rows]``.
        Every row of a split image belongs to the split (each draw, in a challenge cache), so the
        splits of a run apply to any cache of the same images, whatever its fingerprint.

        A missing run or file, an unknown split, or a cache that lacks some of the split's images
        raises a one-line error naming the fix.
        """
        path, owner = _split_file(run)
        ids = read_split_file(path)["ids"]
        if not isinstance(split, str) or split not in ids:
            raise ConfigError(f"no split {split!r} in '{path}': pass one of {', '.join(ids)}")
        found = split_rows({split: ids[split]}, self.image_ids, cache=self.path, owner=owner)[split]
        return np.sort(found)

    def blocks(self, block: int = 4096) -> Iterator[np.ndarray]:
        """The stored features in row order, `block` rows at a time, C-contiguous in the stored dtype."""
        ds = self._features()
        for start in range(0, ds.shape[0], block):
            yield np.ascontiguousarray(ds[start:start + block])

    def pixel_boxes(self, row: int) -> np.ndarray:
        """Integer-free boxes ``[V, 4]`` of image `row` in its source pixels."""
        h, w = self.sizes[row]
        return np.array([v.box for v in self.views]) * np.array([w, h, w, h], dtype=np.float64)


def row_indices(rows, n: int, *, wrap: bool = False, unit: str = "row") -> np.ndarray:
    """`rows` (None, a slice, integer indices or a boolean mask of length `n`) as int64 indices into `n` rows.

    A boolean mask is never read as the indices 0 and 1. Negative indices count from the end
    with `wrap` (numpy's rule, as ``cache[rows]`` takes them) and are out of range without it.
    Anything that is not one of these forms raises a one-line `ConfigError` that speaks of
    `unit` (``"row"``, or ``"view"`` for the views of ``cache[rows, views]``).
    """
    forms = ("a name, " if unit == "view" else "") + ("an int, " if wrap else "") + \
        f"a slice, an integer array or a boolean mask of length {n}"
    if rows is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(rows, slice):
        return np.arange(*rows.indices(n), dtype=np.int64)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, (np.ndarray, list, tuple, range)):
        what = f"a single {unit}" if _is_index(rows) else f"{unit} selection of type {type(rows).__name__}"
        raise ConfigError(f"{what} is not a {unit} selection: pass {forms}"
                          + ("" if wrap else f" (e.g. [i] for one {unit})"))
    arr = np.asarray(rows)
    if arr.ndim != 1:
        raise ConfigError(f"{unit} selection must be one-dimensional, got shape {arr.shape}: pass {forms}")
    if arr.dtype == bool:
        if len(arr) != n:
            raise ConfigError(f"boolean mask of {len(arr)} {unit}s for a cache of {n} {unit}s: pass a mask of "
                              f"length {n}")
        return np.flatnonzero(arr).astype(np.int64)
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"{unit} selection of dtype {arr.dtype} is neither integer indices nor a boolean mask: "
                          f"pass {forms}")
    low = -n if wrap else 0
    bad = arr[(arr < low) | (arr >= n)]
    if len(bad):
        raise ConfigError(f"{unit} {bad[0]} is out of range for a cache of {n} {unit}s: pass indices in [{low}, {n})")
    arr = arr.astype(np.int64)
    return np.where(arr < 0, arr + n, arr) if wrap else arr


def _is_index(value) -> bool:
    """Whether `value` is one integer index (a bool is not one, as in numpy)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _one_index(i, n: int, unit: str) -> int:
    """The integer index `i` into `n` rows (or views), negative ones counted from the end."""
    if not -n <= i < n:
        raise ConfigError(f"{unit} {i} is out of range for a cache of {n} {unit}s: pass an index in [{-n}, {n})")
    return int(i) % n


def _read_rows(ds, rows: np.ndarray, views: np.ndarray | None = None, block: int = 4096) -> np.ndarray:
    """``ds[rows]`` (or ``ds[rows][:, views]``) for any row order and repeats, reading each touched
    block of rows once.

    Straight into the result: no fancy-indexed HDF5 selection (slow) and no second full copy.
    """
    width = ds.shape[1] if views is None else len(views)
    out = np.empty((len(rows), width) + ds.shape[2:], dtype=ds.dtype)
    if not len(rows):
        return out
    if views is None and np.all(np.diff(rows) == 1):  # one contiguous run: read it directly
        ds.read_direct(out, source_sel=np.s_[rows[0]:rows[-1] + 1])
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    bounds = np.searchsorted(sorted_rows, np.arange(0, ds.shape[0] + block, block))
    for b in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[b], bounds[b + 1]
        first, last = sorted_rows[lo], sorted_rows[hi - 1]
        chunk = ds[first:last + 1]
        picked = sorted_rows[lo:hi] - first
        out[order[lo:hi]] = chunk[picked] if views is None else chunk[np.ix_(picked, views)]
    return out


def _strings(values) -> np.ndarray:
    """HDF5 variable-length strings (bytes or str) → an object array of str."""
    return np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)


def cache_file(path: str | os.PathLike) -> Path:
    """`path`, or the one file its glob pattern matches (``caches/l10/*.h5``, as the README writes
    paths whose fingerprint is not known in advance); a one-line `CacheError` otherwise."""
    path = Path(path)
    if path.is_file():
        return path
    text = str(path)
    if any(c in text for c in "*?["):
        import glob

        matches = sorted(glob.glob(text))
        if len(matches) == 1 and Path(matches[0]).is_file():
            return Path(matches[0])
        if len(matches) > 1:
            shown = ", ".join(matches[:3]) + (", ..." if len(matches) > 3 else "")
            raise CacheError(f"'{text}' matches {len(matches)} files ({shown}): name one cache file (natix cache ls "
                             "lists them with their backbones)")
    raise CacheError(f"feature file '{text}' does not exist: run `natix extract` or check the path")


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
                            "challenge": _challenge_label(c.identity),
                            "dim": c.dim, "dtype": str(c.dtype), "backbone": c.source.get("backbone", "?"),
                            "updated": c.attrs.get("updated"), "size_mb": p.stat().st_size / 2**20,
                            "pending_parts": len(pending_parts(p))})
        except CacheError as exc:
            out.append({"path": str(p), "error": str(exc)})
    return out


def _challenge_label(identity: dict) -> str | None:
    """``"<recipe> ×<draws>"`` for the identity of a challenge cache; None for a cache of plain images."""
    challenge = identity.get("challenge")
    if not challenge:
        return None
    return f"{challenge.get('name', '?')} ×{challenge.get('draws', '?')}" if isinstance(challenge, dict) else "?"


# ---------------------------------------------------------------------------------------- split files


def split_digest(ids: dict[str, list[str]]) -> str:
    """SHA-256 of a split assignment (split → sorted image ids), as ``splits.json`` records it."""
    body = json.dumps({k: sorted(v) for k, v in ids.items()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def read_split_file(path: str | os.PathLike, *, names=None, fingerprint: str | None = None) -> dict:
    """The checked content of a ``splits.json``: ``ids`` (split → image ids, for the splits
    `names` or every split the file holds), ``seed``, ``ratios``, ``fingerprint`` (of the cache
    the splits were made for) and ``grouped``.

    A file that is unreadable or lacks a field or one of `names`, that was made for a cache
    other than `fingerprint` (when given), or whose digest no longer matches its ids (edited)
    raises a one-line `DataError`.
    """
    data = read_json(path, fix=_SPLITS_FIX)
    try:
        ids = data["ids"]
        out = {"ids": {k: list(ids[k]) for k in (ids if names is None else names)}, "seed": int(data["seed"]),
               "ratios": tuple(data["ratios"]), "fingerprint": data["fingerprint"], "grouped": bool(data["grouped"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"split file '{path}' is unreadable ({exc}): {_SPLITS_FIX}") from None
    if fingerprint is not None and out["fingerprint"] != fingerprint:
        raise DataError(f"split file '{path}' was made for cache {out['fingerprint'][:16]}, not {fingerprint[:16]}: "
                        "drop --splits to make splits for this cache")
    digest = split_digest(out["ids"])
    if digest != data.get("digest", digest):
        raise DataError(f"split file '{path}' was edited (its digest does not match): regenerate it")
    return out


def split_rows(ids: dict[str, list[str]], image_ids, *, cache=None, owner: str | None = None) -> dict[str, np.ndarray]:
    """Row indices into a cache's per-row `image_ids` of each split's images (split → ``[n]``, in
    split order; every row of an image, e.g. each draw of a challenge cache, with its image).

    A split image the cache lacks raises a one-line `DataError`; with `cache` and `owner` (whose
    splits these are, e.g. "run 'runs/a'") it says that the cache must come from the same images.
    """
    index: dict[str, list[int]] = {}
    for r, i in enumerate(np.asarray(image_ids).tolist()):
        index.setdefault(i, []).append(r)
    wanted = sum(len(v) for v in ids.values())
    missing = [i for v in ids.values() for i in v if i not in index]
    if missing and owner is not None:
        share = f"all {wanted}" if len(missing) == wanted else f"{len(missing)} of the"
        raise DataError(f"cache '{cache}' lacks {share} split images of {owner}: extract it from the same image "
                        "source")
    if missing:
        raise DataError(f"split file names {len(missing)} image(s) that are not in this cache: "
                        "it belongs to another cache; drop --splits to make new splits")
    return {k: np.array([r for i in v for r in index[i]], dtype=np.int64) for k, v in ids.items()}


def _split_file(run: str | os.PathLike) -> tuple[Path, str]:
    """The ``splits.json`` of `run` (a run directory or the file itself) and how to name its owner."""
    path = Path(run)
    if path.is_dir():
        return Run(path).splits_file, f"run '{path}'"
    if path.is_file():
        return path, f"split file '{path}'"
    raise DataError(f"'{path}' does not exist: pass a run directory written by natix fit-head or its splits.json")
