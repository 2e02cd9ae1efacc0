"""The writer lock of a cache file: one writer at a time, and who it is, for readers too.

An exclusive ``flock`` on ``<stem>.h5.lock`` (released by the OS when the holder dies); the
holder writes its pid, host, start time and command into the file. Readers (`natix cache
verify`) look without taking it: a shared lock held for an instant tells a live run from an
interrupted one, and a writer that meets such a probe waits a moment instead of failing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from natix.cache.layout import utc_now
from natix.errors import CacheLockedError

_PROBE_WAIT = 1.0  # seconds a writer waits for a lock held by a reader's probe (it says no holder)


class CacheLock:
    """An exclusive, non-blocking writer lock on a cache file (released by the OS on death)."""

    def __init__(self, cache_file: Path):
        self.path = cache_file.with_name(cache_file.name + ".lock")
        self._fd = None

    def acquire(self) -> None:
        """Take the lock, or raise a `CacheLockedError` naming the writer that holds it."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + _PROBE_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                if holder or time.monotonic() > deadline:  # a writer (it says who), or a probe that lingers
                    os.close(fd)
                    raise locked(self.path.with_suffix(""), holder) from None
                time.sleep(0.01)
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(),
                           "argv": sys.argv[:8], "job": _job()}).encode()
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

    def holder(self) -> dict | None:
        """The writer holding the lock now (``pid``, ``host``, ``since``), or None; never takes it for long."""
        with self.probe() as holder:
            return holder

    @contextlib.contextmanager
    def probe(self) -> Iterator[dict | None]:
        """Yield the live writer, or None while holding a shared lock that keeps writers out meanwhile.

        Opens the lock file read-only (works in a read-only folder); a missing lock file means no
        writer ever ran, and nothing is held.
        """
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                free = True
            except BlockingIOError:
                free = False
            if not free:
                yield _holder(fd) or {}
                return
            try:
                yield None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def locked(cache_file: Path, holder: dict | None) -> CacheLockedError:
    """The one-line error for a cache file that a live writer holds."""
    return CacheLockedError(f"cache '{cache_file}' is being written by {describe(holder)}: wait for that run to "
                            "finish or stop it, then rerun")


def describe(holder: dict | None) -> str:
    """A lock holder in words: ``pid N on HOST since T`` (``, rank 0 of 4 in a torchrun job``), or
    ``another process``."""
    if not holder:
        return "another process"
    job = holder.get("job") or {}
    where = ""
    if isinstance(job, dict) and job.get("world", 1) > 1:
        run = f" (run id {job['run_id']})" if job.get("run_id") not in (None, "", "none") else ""
        where = f", rank {job.get('rank', 0)} of {job['world']} in a torchrun job{run}"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}{where}"


def _job() -> dict:
    """This process's place in a torchrun job, as the lock file records it."""
    from natix.distributed import job_env
    from natix.errors import ConfigError

    try:
        rank, world, _, _, run_id = job_env()
    except (ConfigError, ValueError):  # a malformed environment: the job itself reports it
        return {}
    return {"rank": rank, "world": world, "run_id": run_id} if world > 1 else {}


def _holder(fd: int) -> dict:
    """What the holder wrote into the lock file ({} while it has not, or after it let go)."""
    try:
        value = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}
    return value if isinstance(value, dict) else {}
