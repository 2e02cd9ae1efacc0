"""The writer lock as readers see it: a live run is not an interrupted one; leftovers are tidied."""

import os
import threading
import time

import numpy as np
import pytest

from natix.cache.store import CacheLock, CacheWriter, Rows, list_caches, verify_cache
from natix.errors import CacheLockedError

IDENTITY = {"extractor_version": 1, "backbone": {"weights_sha256": "0" * 64}, "store_dtype": "float16"}
TABLE = [{"name": "global", "box": [0, 0, 1, 1], "flip": False}]


def _ids(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def _add(w, n, start):
    ids = _ids(n, start)
    w.add_part(np.ones((n, 1, 3), np.float16), Rows(ids, ["/x"] * n, [0] * n, [""] * n, [(1, 1)] * n), [])


def _cache(root):
    with CacheWriter(root, IDENTITY, TABLE, dim=3) as w:
        _add(w, 3, 0)
        return w.commit()


def test_verify_during_a_live_run_names_the_writer_not_an_interrupted_run(tmp_path):
    path = _cache(tmp_path)
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        _add(w, 2, 10)
        report = verify_cache(path)
    assert report["ok"], report["problems"]
    assert not any("interrupted" in p for p in report["problems"])
    assert any(f"being written by pid {os.getpid()}" in n and "1 finished chunk" in n for n in report["notes"])
    report = verify_cache(path)  # the run stopped before its merge: now it is an interrupted run
    assert not report["ok"] and any("interrupted run" in p for p in report["problems"])


def test_the_holder_is_read_without_taking_the_lock(tmp_path):
    path = _cache(tmp_path)
    lock = CacheLock(path)
    assert lock.holder() is None
    with CacheLock(path):
        assert lock.holder()["pid"] == os.getpid()
    assert lock.holder() is None
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3):  # a probe in between leaves the lock free
        pass


def test_a_writer_waits_out_a_reader_probing_the_lock(tmp_path):
    path = _cache(tmp_path)
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            CacheLock(path).holder()

    t = threading.Thread(target=probe)
    t.start()
    try:
        for _ in range(20):
            with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3):
                pass
    finally:
        stop.set()
        t.join()


def test_a_live_writer_is_still_refused_after_the_wait(tmp_path):
    path = _cache(tmp_path)
    with CacheLock(path):
        t0 = time.monotonic()
        with pytest.raises(CacheLockedError, match=f"being written by pid {os.getpid()}"):
            CacheLock(path).acquire()
        assert time.monotonic() - t0 < 1  # a holder that says who it is is not waited for


def test_an_empty_parts_folder_left_by_a_kill_is_removed(tmp_path):
    path = _cache(tmp_path)
    parts = path.with_suffix(".parts")
    parts.mkdir()
    (parts / "part-000003.tmp").write_bytes(b"half a chunk")  # killed before its rename
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        assert not w.needs_commit()
    assert not parts.exists()
    parts.mkdir()  # killed between creating the folder and its first chunk
    assert verify_cache(path)["ok"] and not parts.exists()
    parts.mkdir()
    with CacheLock(path):  # but never under a live writer, which may be about to fill it
        verify_cache(path)
        assert parts.is_dir()
    assert list_caches(tmp_path)[0]["pending_parts"] == 0


def test_cli_verify_notes_a_run_in_progress(tmp_path):
    from click.testing import CliRunner

    from natix.cli import cli

    path = _cache(tmp_path)
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        _add(w, 2, 10)
        r = CliRunner().invoke(cli, ["cache", "verify", str(path)])
    assert r.exit_code == 0, r.output
    assert f"note: being written by pid {os.getpid()}" in r.output and r.output.count("ok: 3 images") == 1
