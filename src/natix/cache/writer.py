"""Writing a cache: one writer at a time (a lock), durable parts, resume, and an atomic merge.

A killed run leaves the old cache plus whole parts (see :mod:`natix.cache.parts`), and the next
run skips the images those parts already hold. At the end of a run the old cache and the parts
are merged into a new file that replaces the old one with `os.replace`; only then are the parts
deleted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from natix.cache.fingerprint import fingerprint
from natix.cache.layout import (
    cache_path,
    fsync_dir,
    image_of,
    not_writable,
    parts_dir,
    pending_parts,
    remove_empty_parts,
    writable_problem,
)
from natix.cache.lock import CacheLock, locked
from natix.cache.merge import CacheSpec, Conflicts, grouped_conflicts, merge_into
from natix.cache.parts import Rows, part_number, read_part, write_part
from natix.cache.reader import FeatureCache
from natix.cache.verify import REPAIRABLE, Problem, damage_error, feature_problems, table_problems
from natix.errors import CacheError, FingerprintMismatchError


class CacheWriter:
    """Appends chunks of rows to the cache of one identity, crash-safely.

    Use as a context manager: it takes the writer lock, checks that an existing cache file
    holds the same fingerprint, and loads what is already done (cache rows, parts of an
    interrupted run, known failures). `add_part` makes a chunk durable; `commit` merges.
    In a folder that cannot be written, an existing cache opens read-only (no lock taken, only
    checked): enough to find there is nothing to do; any write raises the not-writable error.

    In a torchrun job (see :mod:`natix.extract.ranks`) rank 0 holds the lock, cleans up and
    merges; every other rank opens with ``follower=True``: it takes no lock, removes nothing,
    writes its parts under rank 0's lock and never commits.
    """

    def __init__(self, root: str | os.PathLike, identity: dict, view_table: list[dict], *, dim: int,
                 store_dtype: str = "float16", source: dict | None = None, follower: bool = False):
        self.root = Path(root)
        self.identity = identity
        self.source = source or {}  # where the weights came from: shown, never hashed
        self.fingerprint = fingerprint(identity)
        self.view_table = view_table
        self.dim = dim  # features per view; fixed by the identity
        self.store_dtype = np.dtype(store_dtype)
        self.path = cache_path(self.root, self.fingerprint)
        self.parts = parts_dir(self.path)
        self._lock = CacheLock(self.path)
        self.read_only: CacheError | None = None  # set when the folder cannot be written: what a write raises
        self.done_ids: set[str] = set()  # row ids: image ids, or "<image id>:<draw>" in a challenge cache
        self.failed_ids: dict[str, str] = {}
        self.path_failures: dict[str, str] = {}  # files that could not be read: retried every run
        self.rows_meta: dict[str, tuple[str, int, str] | None] = {}  # image id → (path, label, group);
        # None when the rows of one image (draws of a challenge cache) disagree: damage the source repairs
        self.in_file: set[str] = set()  # image ids in the cache file (not in parts)
        self.resumed_parts = 0
        self._next_part = 0
        self._meta_updates: dict[str, tuple[str, int, str]] = {}
        self._listed: set[str] = set()  # cached ids whose path/label/group the source gave this run
        self._repairs: set[str] = set()  # damaged parts of the file the next commit rewrites
        self.conflicts: Conflicts = {}  # recorded in the cache file
        self._conflicts: Conflicts | None = None  # what the next commit records (None: keep the file's)
        self._new_rows = 0
        self._new_failures: list[tuple[str, str, str]] = []
        self.follower = follower
        self._known_parts: set[str] = set()

    # -- lifecycle
    def __enter__(self):
        if self.follower:
            self._load_state()  # rank 0 holds the lock and has cleaned up; see the class docstring
            return self
        reason = writable_problem(self.root)
        if reason is not None and not self.path.is_file():
            raise not_writable(self.root, reason)
        if reason is not None:
            # Read-only: enough to find that nothing needs writing. A live writer elsewhere still
            # counts; any write (a chunk, a merge) raises `read_only`.
            self.read_only = not_writable(self.root, reason)
            with self._lock.probe() as holder:
                if holder is not None:
                    raise locked(self.path, holder)
                self._load_state()
            return self
        self._lock.acquire()
        try:
            self._load_state()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self._lock.release()

    def require_writable(self) -> None:
        """Raise the not-writable error when the cache folder is read-only (before work that must be kept)."""
        if self.read_only is not None:
            raise self.read_only

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
        if self.read_only is None and not self.follower:
            for stale in self.root.glob(self.path.name + ".tmp-*"):
                stale.unlink()  # a merge that was killed before its rename; the parts still hold its rows
            if self.parts.is_dir():
                for tmp in self.parts.glob("*.tmp"):
                    tmp.unlink()
                remove_empty_parts(self.path)
        for part in pending_parts(self.path):
            self._absorb_part(part)

    def _absorb(self, cache: FeatureCache) -> None:
        """Take the done ids, row metadata and failures of the existing cache file."""
        if cache.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"cache file '{self.path}' holds fingerprint {cache.fingerprint[:16]}..., not "
                f"{self.fingerprint[:16]}...: it was renamed or copied by hand; move it away or use another --cache"
            )
        self.done_ids.update(cache.ids.tolist())
        self.in_file = set(cache.image_ids.tolist())
        for i, p, lab, g in zip(cache.image_ids.tolist(), cache.paths, cache.labels, cache.groups):
            self._remember(i, (p, int(lab), g))
        self.conflicts = grouped_conflicts((c["id"], c["path"], c["label"]) for c in cache.conflicts)
        for fail in cache.failures:
            if fail["id"]:
                self.failed_ids[fail["id"]] = fail["reason"]
            else:
                self.path_failures[fail["path"]] = fail["reason"]

    def _absorb_part(self, part: Path) -> None:
        """Take the done ids, row metadata and failures of a finished part of an interrupted run."""
        meta = read_part(part, features=False, shape=(len(self.view_table), self.dim))
        self.done_ids.update(meta["ids"].tolist())
        for i, p, lab, g in zip(meta["ids"].tolist(), meta["paths"].tolist(), meta["labels"].tolist(),
                                meta["groups"].tolist()):
            self._remember(image_of(i), (p, int(lab), g))
        for i, r in zip(meta["fail_ids"].tolist(), meta["fail_reasons"].tolist()):
            if i:
                self.failed_ids[i] = r
        self._next_part = max(self._next_part, part_number(part) + 1)
        self._known_parts.add(part.name)
        self.resumed_parts += 1

    def absorb_new_parts(self) -> int:
        """Take the parts other ranks of the job wrote meanwhile (rank 0, before it commits); how many."""
        new = [p for p in pending_parts(self.path) if p.name not in self._known_parts]
        for part in new:
            self._absorb_part(part)
        return len(new)

    @property
    def next_part(self) -> int:
        """The sequence number the next part gets (one past every part found or written)."""
        return self._next_part

    def _remember(self, image_id: str, meta: tuple[str, int, str]) -> None:
        """Record a row's path/label/group under its image; rows of one image that disagree leave None."""
        if image_id not in self.rows_meta:
            self.rows_meta[image_id] = meta
        elif self.rows_meta[image_id] != meta:
            self.rows_meta[image_id] = None

    # -- writing
    def set_metadata(self, image_id: str, path: str, label: int, group: str) -> None:
        """Record the current path/label/group of an image already in the cache (all its draws)."""
        self._listed.add(image_id)
        if self.rows_meta.get(image_id) != (path, label, group):
            self._meta_updates[image_id] = (path, label, group)

    def set_conflicts(self, listed: Iterable[str], conflicts: dict[str, list[tuple[str, int]]]) -> None:
        """Record which of the images `listed` by the source it gives conflicting labels, with their
        listings ``(path, label)``; conflicts of images it does not list stay as recorded."""
        listed = set(listed)
        keep = {i: v for i, v in self.conflicts.items() if i not in listed}
        self._conflicts = {**keep, **{i: tuple((str(p), int(x)) for p, x in v) for i, v in conflicts.items()}}

    def _conflicts_change(self) -> bool:
        """Whether the conflicts to record differ from the file's, for images that have rows."""
        if self._conflicts is None:
            return False
        done = set(map(image_of, self.done_ids))
        return {i: v for i, v in self._conflicts.items() if i in done} != self.conflicts

    def add_part(self, features: np.ndarray, rows: Rows, failures: list[tuple[str, str, str]],
                 seq: int | None = None) -> Path:
        """Durably write one chunk: features ``[n, V, D]`` with their rows, plus failures.

        `failures` holds ``(id, path, reason)``; id is "" when the file could not be read.
        `seq` numbers the part (default: the next one); the ranks of a job number their chunks
        from one shared base so their names never collide. Safe to call from one background thread.
        """
        self.require_writable()
        n = len(rows.ids)
        assert features.shape == (n, len(self.view_table), self.dim), (features.shape, n)
        seq = self._next_part if seq is None else seq
        self._next_part = max(self._next_part, seq + 1)
        final = write_part(self.parts, seq, features, rows, failures)
        self._known_parts.add(final.name)
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
                    or self._repairs or self._conflicts_change() or not self.path.exists())

    def audit(self, *, checksum: bool = True) -> list[str]:
        """Check the cache file before saying it is well; call after the source's `set_metadata` calls.

        Damage the source can undo (labels, paths and groups of images it lists, the view table,
        failures) is scheduled for the next commit and returned by part name; other damage raises
        a one-line `CacheError`. With `checksum`, and when no commit would re-check them anyway,
        the features are read once to check their checksum and finiteness.
        """
        if not self.path.exists():
            return []
        with FeatureCache(self.path) as cache:
            self._repairs = self._repairable(table_problems(cache))
            if checksum and not self.needs_commit():
                problems = feature_problems(cache)
                if problems:
                    raise damage_error(self.path, problems, note="finished chunks are kept")
        return sorted(self._repairs)

    def _repairable(self, problems: list[Problem]) -> set[str]:
        """The damaged parts a commit can rewrite from the source; raise for any other damage."""
        hard = [p for p in problems if p.part not in REPAIRABLE]
        if hard:
            raise damage_error(self.path, hard, note="finished chunks are kept")
        labels = [p for p in problems if p.part == "labels"]
        unlisted = len(self.in_file - self._listed)
        if labels and unlisted:
            raise CacheError(
                f"cache file '{self.path}' is damaged ({labels[0].text}) and {unlisted} of its images are not in "
                f"this source to restore them from: see `natix cache verify {self.path}`; extract from its full "
                f"image source again, or move it away (mv {self.path} {self.path}.broken) and rerun; finished chunks "
                "are kept"
            )
        return {p.part for p in problems}

    def commit(self, *, block: int = 4096) -> Path:
        """Merge the cache file and all parts into a new file and swap it in atomically.

        Two passes keep memory at one block or one part: metadata first, then features
        streamed part by part. Old rows are checked against the recorded checksum while they
        are copied, so a corrupt cache is refused rather than re-checksummed.
        """
        self.require_writable()
        if self.follower:
            raise CacheError(f"only rank 0 of the job merges '{self.path}'")
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
        spec = CacheSpec(self.path, self.identity, self.fingerprint, self.source, self.view_table, self.dim,
                         self.store_dtype)
        try:
            repairs = self._repairable(table_problems(old)) if old is not None else set()
            conflicts = self.conflicts if self._conflicts is None else self._conflicts
            merged = merge_into(tmp, old, pending_parts(self.path), spec, self._meta_updates, conflicts,
                                block=block, old_failures="failures" not in repairs)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if old is not None:
                old.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.root)
        # The merged file is durable; only now may the parts go.
        for part in pending_parts(self.path):
            part.unlink()
        remove_empty_parts(self.path)
        self._known_parts = set()
        self.rows_meta = {}
        for i, p, lab, g in zip(merged.ids, merged.paths, merged.labels, merged.groups):
            self._remember(image_of(i), (p, lab, g))
        self.in_file = set(map(image_of, merged.ids))
        self.conflicts = grouped_conflicts(merged.conflicts)
        self._conflicts = None
        self._meta_updates.clear()
        self._repairs = set()
        self._new_rows = 0
        self._new_failures = []
        self.resumed_parts = 0
        return self.path
