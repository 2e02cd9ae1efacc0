"""Extraction by the ranks of a ``torchrun`` job: shares of the work, one shared cache, one merge.

Every rank finds the same to-do list (the same source against the same cache state), cuts it
into chunks of ``batch_size`` images and takes chunks ``rank, rank + N, ...``. Chunk ``c``
becomes part file ``base + c``, so the ranks' part names never collide and the parts of an
interrupted job are skipped by any later run, whatever its world size (work is known by image
id). Rank 0 holds the cache's lock, cleans up before the others read, shows one progress bar
for the whole job (it counts the parts every rank has written) and merges once every rank is
done; the merge puts new rows in source order, so the file equals one process's.

Every rank must see the cache directory at the same path: :func:`check_job` has rank 0 write
a token next to the cache file, every rank read it back, and the job stop with one line if one
cannot (different mounts, a node-local folder) or if the ranks disagree on the fingerprint.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from natix.cache.layout import parts_dir
from natix.cache.store import CacheWriter
from natix.data.hashmemo import Hashed
from natix.distributed import Job
from natix.errors import CacheError, ConfigError, NatixError
from natix.progress import say


def chunks(n: int, batch_size: int) -> list[range]:
    """The to-do list's chunks: positions ``[c·batch, (c+1)·batch)``."""
    return [range(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]


def my_chunks(n: int, batch_size: int, job: Job) -> list[int]:
    """This rank's chunk numbers (rank, rank + world, ...): the DataLoader's batches over their
    concatenation are exactly these chunks, as only the last chunk of the list can be short."""
    return list(range(job.rank, -(-n // batch_size), job.world))


def shared_hashes(job: Job, paths: list, hash_files) -> list:
    """The content id (or read error) of every file by `hash_files` (see
    :func:`natix.data.sources.hash_files`), each rank hashing every world-th file."""
    if job.world == 1:
        return hash_files(paths)
    out: list = [None] * len(paths)
    for rank, ids in enumerate(job.gather(hash_files(paths[job.rank::job.world]))):
        out[rank::job.world] = ids
    return out


def file_ids(job: Job, paths: list, root: Path, hash_files, *, rehash: bool = False) -> tuple[Hashed, dict | None]:
    """The content id of every file: unchanged files (size, mtime, inode) from the cache
    directory's hash memo (see :mod:`natix.data.hashmemo`), the others read, each rank reading a
    share of rank 0's list. Every rank gets rank 0's answer; rank 0 also gets the updated memo
    (None elsewhere) to save once it knows the directory can be written."""
    from natix.data.hashmemo import hash_with_memo, load_memo

    def read(todo: list | None) -> list:
        todo = job.broadcast(todo)
        if job.main and todo:
            say(f"hashing {len(todo):,} files" + (f" across {job.world} ranks" if job.world > 1 else ""),
                detail=len(todo) < 1000)
        return shared_hashes(job, todo, hash_files)

    if not job.main:
        read(None)
        return job.broadcast(None), None
    memo = load_memo(root)
    return job.broadcast(hash_with_memo(paths, memo, read, rehash=rehash)), memo


@contextlib.contextmanager
def open_writer(job: Job, root, identity: dict, table: list[dict], **kwargs) -> Iterator[CacheWriter]:
    """The cache writer of this rank: rank 0 takes the lock and cleans up first, then the others
    open as followers; when rank 0 cannot (e.g. another run holds the lock), every rank fails
    with its message."""
    if job.main:
        writer = CacheWriter(root, identity, table, **kwargs)
        try:
            writer.__enter__()
        except NatixError as exc:
            job.broadcast(str(exc))
            raise
        job.broadcast("")
        try:
            yield writer
        finally:
            writer.__exit__(None, None, None)
        return
    problem = job.broadcast(None)
    if problem:
        raise CacheError(problem)
    with CacheWriter(root, identity, table, follower=True, **kwargs) as writer:
        yield writer


def marker(cache_file: Path) -> Path:
    """The token file rank 0 writes next to the cache file for the other ranks to read back."""
    return cache_file.with_name(cache_file.name + ".job")


def check_job(job: Job, cache_file: Path, fingerprint: str) -> None:
    """Refuse, on every rank with the same line, a job whose ranks extract different things or do
    not see the cache directory rank 0 writes. Rank 0 must hold the lock already."""
    if job.world == 1:
        return
    fingerprints = job.gather(fingerprint)
    if len(set(fingerprints)) > 1:
        bad = next(r for r, f in enumerate(fingerprints) if f != fingerprints[0])
        raise ConfigError(f"rank {bad} would write cache {fingerprints[bad][:16]}, rank 0 cache {fingerprint[:16]}: "
                          "every rank must run the same command (backbone, views, options)")
    token = secrets.token_hex(16) if job.main else None
    if job.main:
        try:
            marker(cache_file).write_text(token)
        except OSError as exc:
            token = f"!cannot write {marker(cache_file).name}: {exc.strerror or exc}"
    token = job.broadcast(token)
    if token.startswith("!"):  # every rank fails with the same line
        raise CacheError(f"rank 0 {token[1:]} in '{cache_file.parent}': a torchrun job needs a cache directory "
                         "it can write; pass --cache DIR")
    seen = _sees(marker(cache_file), token)
    results = job.gather((seen, job.host))
    if job.main:
        marker(cache_file).unlink(missing_ok=True)
    for rank, (problem, host) in enumerate(results):
        if problem:
            raise CacheError(f"rank {rank} on {host} does not see the cache directory '{cache_file.parent}' that "
                             f"rank 0 writes ({problem}): give every rank the same --cache, on a filesystem every "
                             "node mounts at the same path (NFS, Lustre, ...)")


def _sees(path: Path, token: str) -> str:
    """"" when `path` holds `token`; else what is wrong."""
    try:
        return "" if path.read_text() == token else "it holds another job's token"
    except OSError as exc:
        return f"cannot read {path.name}: {exc.strerror or exc}"


class JobProgress:
    """Rank 0's progress bar over the whole job: a thread counts the part files of this run's
    chunks (numbers `base` ... `base` + chunks - 1) and moves the bar to the images they hold."""

    def __init__(self, bar, cache_file: Path, base: int, sizes: list[int], every: float = 0.5):
        self.bar, self.folder, self.base, self.sizes, self.every = bar, parts_dir(cache_file), base, sizes, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="natix-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.refresh()

    def refresh(self) -> None:
        done = 0
        if self.folder.is_dir():
            for name in os.listdir(self.folder):
                if name.startswith("part-") and name.endswith(".npz"):
                    c = int(name[5:-4]) - self.base
                    done += self.sizes[c] if 0 <= c < len(self.sizes) else 0
        self.bar.n = done
        self.bar.refresh()

    def update(self, n: int) -> None:
        """Called for rank 0's own batches like a tqdm bar's update; the thread counts those parts
        with the other ranks' ones, so nothing is added here."""

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.refresh()
        self.bar.close()


@dataclass(frozen=True)
class RankStats:
    """What one rank of the job extracted."""

    rank: int
    host: str
    device: str
    extracted: int
    failed: int
    seconds: float  # its model loop, from its first batch to its last

    @property
    def images_per_s(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"rank": self.rank, "host": self.host, "device": self.device, "extracted": self.extracted,
                "failed": self.failed, "seconds": self.seconds, "images_per_s": self.images_per_s}


def gather_stats(job: Job, device: str, extracted: int, failed: int, seconds: float) -> list[RankStats]:
    """Every rank's :class:`RankStats`, in rank order, on every rank."""
    mine = RankStats(job.rank, job.host, device, extracted, failed, seconds)
    return job.gather(mine)


__all__ = ["JobProgress", "RankStats", "check_job", "chunks", "file_ids", "gather_stats", "marker", "my_chunks",
           "open_writer", "shared_hashes"]
