"""Extraction by the ranks of a torchrun job (2–3 gloo processes on CPU): the same cache as one
process, resume after a killed rank at any world size, one line when ranks do not share the
cache directory, and the pieces (merge order, progress, lock message) on their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from natix.cache.layout import pending_parts
from natix.cache.lock import describe
from natix.cache.store import CacheWriter, Rows
from natix.cache.verify import verify_cache
from natix.config import RunOptions, ViewRecipe
from natix.distributed import Job
from natix.extract.extractor import extract
from natix.extract.ranks import JobProgress, chunks, my_chunks

N_IMAGES = 24
ARGS = ["--views", "10", "--batch-size", "3", "--workers", "0", "-q"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Runs the natix CLI with CacheWriter.add_part patched so that rank 1 dies by SIGKILL right after
# making its second part durable (what `kill -9` mid-run leaves behind).
KILLER = """
import os, signal, sys
from natix.cache.writer import CacheWriter
real, count = CacheWriter.add_part, [0]
def add_part(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    count[0] += 1
    if os.environ.get("RANK") == "1" and count[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
CacheWriter.add_part = add_part
from natix.cli import cli
cli.main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int, *args, script: list[str] | None = None) -> subprocess.CompletedProcess:
    target = script or ["-m", "natix"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *target, *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from natix.data.demo import make_demo_images

    out = tmp_path_factory.mktemp("dist") / "images"
    make_demo_images(out, n=N_IMAGES, seed=4)
    return out


@pytest.fixture(scope="module")
def single(images, tiny_backbone, tmp_path_factory):
    """The cache one plain process writes."""
    root = tmp_path_factory.mktemp("single")
    r = extract(images, str(tiny_backbone), recipe=ViewRecipe(n_views=10), cache_root=root,
                options=RunOptions(batch_size=3, workers=0, progress=False))
    return r.cache_file


def _contents(path: Path) -> dict:
    """Every dataset and attribute of a cache file but its timestamps."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out.update({f"@{k}": v for k, v in f.attrs.items() if k not in ("created", "updated")})
    return out


def _assert_same_cache(a: Path, b: Path) -> None:
    ca, cb = _contents(a), _contents(b)
    assert ca.keys() == cb.keys()
    for k in ca:
        assert np.array_equal(ca[k], cb[k]), k


def test_two_gloo_ranks_write_the_cache_one_process_writes(images, tiny_backbone, single, tmp_path):
    done = _torchrun(2, "extract", images, "--backbone", tiny_backbone, "--cache", tmp_path, *ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.count("cache     ") == 1  # rank 0 reports for the job
    assert "rank 0 " in out and "rank 1 " in out and "job       2 ranks: 24 images" in out
    (cache,) = tmp_path.glob("*.h5")
    assert cache.name == single.name and not pending_parts(cache)
    assert verify_cache(cache)["ok"]
    _assert_same_cache(cache, single)
    again = extract(images, str(tiny_backbone), recipe=ViewRecipe(n_views=10), cache_root=tmp_path,
                    options=RunOptions(batch_size=3, workers=0, progress=False))
    assert again.already_cached == N_IMAGES and not again.model_work  # another world size finds it all done


def test_a_killed_rank_leaves_its_parts_and_any_world_size_resumes(images, tiny_backbone, single, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cut = _torchrun(2, "extract", images, "--backbone", tiny_backbone, "--cache", tmp_path / "c", *ARGS,
                    script=[str(script)])
    assert cut.returncode != 0
    cache = tmp_path / "c" / single.name
    assert not cache.exists() and len(pending_parts(cache)) >= 2  # the finished chunks are kept
    resumed = _torchrun(3, "extract", images, "--backbone", tiny_backbone, "--cache", tmp_path / "c", *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    kept = int(resumed.stdout.split(" resumed from")[0].rsplit(", ", 1)[1])
    assert kept >= 6  # rank 1's two chunks of 3 at least
    assert f"{N_IMAGES - kept} extracted" in resumed.stdout
    _assert_same_cache(cache, single)


def test_ranks_that_do_not_see_one_cache_directory_fail_with_one_line(images, tiny_backbone, tmp_path):
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"}
        cmd = [sys.executable, "-m", "natix", "extract", str(images), "--backbone", str(tiny_backbone), "--cache",
               str(tmp_path / f"node{rank}"), *ARGS]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode != 0
        lines = [ln for ln in err.splitlines() if "does not see the cache directory" in ln]
        assert len(lines) == 1 and "rank 1 on" in lines[0] and "same --cache" in lines[0], err[-2000:]
    assert not list((tmp_path / "node0").glob("*.job"))  # rank 0 removed its token


def test_chunks_are_shared_by_rank_and_cover_the_work_once():
    n, batch = 23, 4
    parts = chunks(n, batch)
    assert [len(c) for c in parts] == [4, 4, 4, 4, 4, 3]
    for world in (1, 2, 3, 7):
        mine = [my_chunks(n, batch, Job(rank=r, world=world)) for r in range(world)]
        assert sorted(c for m in mine for c in m) == list(range(len(parts)))


def test_new_rows_are_merged_in_source_order_whatever_order_the_parts_came_in(tmp_path):
    table = [{"name": "global", "box": [0.0, 0.0, 1.0, 1.0], "flip": False}]
    identity = {"test": "merge-order"}
    rows = [(f"{i:064x}", f"img_{i:02d}.jpg") for i in range(6)]

    def write(root: Path, order: list[list[int]]) -> Path:
        with CacheWriter(root, identity, table, dim=2, store_dtype="float32") as w:
            for seq, part in reversed(list(enumerate(order))):  # written last part first, as ranks may
                feats = np.array([[[i, -i]] for i in part], dtype=np.float32)
                w.add_part(feats, Rows([rows[i][0] for i in part], [rows[i][1] for i in part], [0] * len(part),
                                       [""] * len(part), [(8, 8)] * len(part)), [], seq=seq)
            return w.commit()

    straight = write(tmp_path / "a", [[0, 1, 2, 3, 4, 5]])
    shuffled = write(tmp_path / "b", [[3, 4], [0, 5], [1, 2]])
    _assert_same_cache(straight, shuffled)
    with h5py.File(shuffled) as f:
        assert f["features"][:, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert verify_cache(shuffled)["ok"]


def test_job_progress_counts_every_ranks_parts(tmp_path):
    class Bar:
        n, closed = 0, False

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    cache = tmp_path / "abc.h5"
    parts = cache.with_suffix(".parts")
    parts.mkdir()
    (parts / "part-000007.npz").write_bytes(b"")  # an earlier run's part: not this run's work
    bar = Bar()
    progress = JobProgress(bar, cache, base=10, sizes=[4, 4, 2], every=60)
    for seq in (10, 12):
        (parts / f"part-{seq:06d}.npz").write_bytes(b"")
    progress.close()
    assert bar.n == 6 and bar.closed


def test_the_lock_message_names_the_torchrun_job():
    holder = {"pid": 12, "host": "node3", "since": "2026-01-01T00:00:00Z", "job": {"rank": 0, "world": 8,
                                                                                 "run_id": "feat-7"}}
    assert describe(holder) == ("pid 12 on node3 since 2026-01-01T00:00:00Z, rank 0 of 8 in a torchrun job "
                                "(run id feat-7)")
    assert describe({**holder, "job": {}}) == "pid 12 on node3 since 2026-01-01T00:00:00Z"
