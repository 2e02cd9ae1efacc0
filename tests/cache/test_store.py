import subprocess
import sys

import h5py
import numpy as np
import pytest

from natix.cache.store import CacheWriter, Rows, list_caches, open_cache, resolve_cache_root, verify_cache
from natix.errors import CacheError

IDENTITY = {"extractor_version": 1, "backbone": {"weights_sha256": "0" * 64}, "store_dtype": "float16"}
TABLE = [{"name": "global", "box": [0, 0, 1, 1], "flip": False},
         {"name": "tile", "box": [0, 0, 0.5, 0.5], "flip": False}]


def _ids(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def _write(root, n=5, start=0, identity=IDENTITY):
    with CacheWriter(root, identity, TABLE, dim=3, source={"backbone": "test"}) as w:
        feats = np.arange(n * 2 * 3, dtype=np.float16).reshape(n, 2, 3) + start
        ids = _ids(n, start)
        w.add_part(feats, Rows(ids, [f"/img/{i}.jpg" for i in ids], [1] * n, [""] * n, [(10, 20)] * n),
                   [("f" * 64, "/img/bad.jpg", "corrupt")])
        return w.commit()


def test_write_read_round_trip_and_growth(tmp_path):
    path = _write(tmp_path)
    c = open_cache(path)
    assert c.shape == (5, 2, 3) and c.dtype == np.float16 and len(c) == 5
    assert list(c.ids) == _ids(5) and c.view_names == ["global", "tile"] and c.source == {"backbone": "test"}
    assert c.failures == [{"id": "f" * 64, "path": "/img/bad.jpg", "reason": "corrupt"}]
    np.testing.assert_array_equal(c.features(np.array([4, 0])), c.features()[[4, 0]])
    np.testing.assert_array_equal(c.pixel_boxes(0)[1], [0, 0, 10, 5])
    _write(tmp_path, n=3, start=5)
    c2 = open_cache(path)
    assert list(c2.ids) == _ids(8) and c2.attrs["created"] == c.attrs["created"]
    np.testing.assert_array_equal(c2.features()[:5], c.features())
    assert verify_cache(path)["ok"]
    [row] = list_caches(tmp_path)
    assert row["images"] == 8 and row["backbone"] == "test" and row["pending_parts"] == 0


def test_verify_detects_corrupted_features_and_pending_parts(tmp_path):
    path = _write(tmp_path)
    with h5py.File(path, "r+") as f:
        f["features"][0, 0, 0] = 123
    report = verify_cache(path)
    assert not report["ok"] and any("checksum" in p for p in report["problems"])
    with h5py.File(path, "r+") as f:
        f.attrs["fingerprint"] = "1" * 64
    assert any("does not match its identity" in p for p in verify_cache(path)["problems"])


def test_pending_parts_are_reported(tmp_path):
    path = _write(tmp_path)
    w = CacheWriter(tmp_path, IDENTITY, TABLE, dim=3)
    with w:
        w.add_part(np.zeros((1, 2, 3), np.float16), Rows(_ids(1, 50), ["/x"], [0], [""], [(1, 1)]), [])
    assert any("not merged yet" in p for p in verify_cache(path)["problems"])
    assert list_caches(tmp_path)[0]["pending_parts"] == 1


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"", "unreadable or incomplete"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "unreadable or incomplete"),
])
def test_open_refuses_missing_and_broken_files(tmp_path, content, match):
    path = tmp_path / "x.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CacheError, match=match):
        open_cache(path)


def test_open_refuses_foreign_hdf5_and_truncated_cache(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CacheError, match="not a natix feature cache"):
        open_cache(foreign)
    path = _write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="unreadable or incomplete"):
        open_cache(path)


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NATIX_CACHE", str(tmp_path / "env"))
    assert resolve_cache_root("flag") == resolve_cache_root("flag") and str(resolve_cache_root("flag")) == "flag"
    assert resolve_cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("NATIX_CACHE")
    assert str(resolve_cache_root(None)) == ".natix-cache"


def test_reading_a_cache_does_not_import_torch(tmp_path):
    path = _write(tmp_path)
    code = ("import sys; from natix.cache import open_cache; c = open_cache(sys.argv[1]); c.features(); "
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'natix.extract' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def test_features_with_repeated_and_unsorted_rows(tmp_path):
    path = _write(tmp_path)
    c = open_cache(path)
    full = c.features()
    rows = np.array([3, 1, 3, 0, 1])
    np.testing.assert_array_equal(c.features(rows), full[rows])
    assert c.features(np.array([], dtype=int)).shape == (0, 2, 3)


# --------------------------------------------------------------------------- merge: crash safety and checks


def _add(w, n, start, fails=()):
    feats = np.full((n, 2, 3), start, dtype=np.float16) + np.arange(n, dtype=np.float16)[:, None, None]
    ids = _ids(n, start)
    w.add_part(feats, Rows(ids, [f"/img/{i}.jpg" for i in ids], [0] * n, ["g"] * n, [(10, 20)] * n), list(fails))


def _content(path):
    with open_cache(path) as c:
        return (c.features(dtype=None).tobytes(), c.ids.tolist(), c.paths.tolist(), c.labels.tolist(),
                c.groups.tolist(), c.sizes.tolist(), c.failures, c.attrs["features_sha256"])


def test_a_merge_killed_before_its_swap_keeps_the_old_cache_and_resumes(tmp_path, monkeypatch):
    import os

    reference = _write(tmp_path / "ref")
    with CacheWriter(tmp_path / "ref", IDENTITY, TABLE, dim=3) as w:
        _add(w, 4, 100, [("", "/img/unreadable.jpg", "no such file")])
        w.commit()
    path = _write(tmp_path / "run")
    before = path.read_bytes()
    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith(".h5"):
            raise KeyboardInterrupt  # killed after the merged file is written, before the swap
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt), CacheWriter(tmp_path / "run", IDENTITY, TABLE, dim=3) as w:
        _add(w, 4, 100, [("", "/img/unreadable.jpg", "no such file")])
        w.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_bytes() == before  # the old cache is untouched
    assert len(list((tmp_path / "run").glob("*.h5.tmp-*"))) == 1  # what a kill leaves: the next run removes it
    assert len(list((tmp_path / "run").glob("*.parts/part-*.npz"))) == 1
    with CacheWriter(tmp_path / "run", IDENTITY, TABLE, dim=3) as w:
        assert not list((tmp_path / "run").glob("*.h5.tmp-*"))
        assert w.resumed_parts == 1 and set(_ids(4, 100)) <= w.done_ids and w.needs_commit()
        w.commit()
    assert _content(path) == _content(reference)
    assert verify_cache(path)["ok"] and not list((tmp_path / "run").glob("*.parts"))


def test_a_corrupt_cache_is_refused_at_merge_and_the_new_parts_are_kept(tmp_path):
    path = _write(tmp_path)
    with h5py.File(path, "r+") as f:
        f["features"][1, 0, 0] = 77
    before = path.read_bytes()
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        _add(w, 2, 100)
        with pytest.raises(CacheError, match="is corrupt .*move it away .*finished chunks are kept"):
            w.commit()
    assert path.read_bytes() == before
    assert len(list(tmp_path.glob("*.parts/part-*.npz"))) == 1 and not list(tmp_path.glob("*.h5.tmp-*"))


def test_a_merge_refuses_features_of_another_shape(tmp_path):
    path = _write(tmp_path)
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=4) as w:
        w.add_part(np.zeros((1, 2, 4), np.float16), Rows(_ids(1, 100), ["/x"], [0], [""], [(1, 1)]), [])
        with pytest.raises(CacheError, match=r"holds \[N, 2, 3\] features, this run makes \[N, 2, 4\]"):
            w.commit()
    assert open_cache(path).shape == (5, 2, 3)


def test_merge_keeps_first_rows_applies_metadata_and_drops_resolved_failures(tmp_path):
    path = _write(tmp_path)  # holds ids 0-4 and a failure of id f..f
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        w.set_metadata(_ids(1)[0], "/moved/0.jpg", 0, "grp")
        w.set_metadata(_ids(2, 1)[0], f"/img/{_ids(2, 1)[0]}.jpg", 1, "")  # unchanged: no update
        assert w.pending_metadata == 1
        _add(w, 3, 3, [("", "/img/missing.jpg", "no such file"), ("", "/img/later.jpg", "no such file")])
        w.add_part(np.ones((1, 2, 3), np.float16),
                   Rows(["f" * 64], ["/img/bad.jpg"], [1], [""], [(5, 5)]), [])  # the failed id now reads
        w.add_part(np.ones((1, 2, 3), np.float16),
                   Rows(_ids(1, 200), ["/img/later.jpg"], [1], [""], [(5, 5)]), [])  # the unreadable path now reads
        w.commit()
    with open_cache(path) as c:
        assert c.ids.tolist() == _ids(5) + [_ids(6)[5], "f" * 64, _ids(1, 200)[0]]  # ids 3, 4 kept from the file
        np.testing.assert_array_equal(c.features(np.arange(5)), np.arange(30, dtype=np.float16).reshape(5, 2, 3))
        assert (c.paths[0], c.labels[0], c.groups[0]) == ("/moved/0.jpg", 0, "grp")
        assert c.failures == [{"id": "", "path": "/img/missing.jpg", "reason": "no such file"}]
    assert verify_cache(path)["ok"]


# --------------------------------------------------------------------------- row selection


def test_features_accepts_a_boolean_mask_integer_rows_and_slices(tmp_path):
    path = _write(tmp_path, n=6)
    c = open_cache(path)
    full = c.features()
    mask = np.array([True, False, True, True, False, False])
    np.testing.assert_array_equal(c.features(mask), full[mask])
    np.testing.assert_array_equal(c.features(c.labels == 1), full)  # a mask of all rows, not rows 0 and 1
    np.testing.assert_array_equal(c.features(mask.tolist()), full[mask])
    np.testing.assert_array_equal(c.features([5, 0, 5]), full[[5, 0, 5]])
    np.testing.assert_array_equal(c.features(np.array([2, 1], dtype=np.uint8)), full[[2, 1]])
    np.testing.assert_array_equal(c.features(slice(1, 5, 2)), full[1:5:2])
    assert c.features(np.zeros(6, dtype=bool)).shape == (0, 2, 3)


@pytest.mark.parametrize("rows, match", [
    (np.ones(5, dtype=bool), r"boolean mask of 5 rows for a cache of 6 rows: pass a mask of length 6"),
    (np.ones((6, 1), dtype=bool), "row selection must be one-dimensional"),
    (np.array([0.0, 1.0]), "row selection of dtype float64"),
    (np.array(["0"]), "row selection of dtype <U1"),
    (3, "a single row"),
    ("rows", "row selection of type str"),
    ([0, 6], "row 6 is out of range for a cache of 6 rows"),
    (np.array([-1]), "row -1 is out of range for a cache of 6 rows"),
])
def test_features_refuses_other_row_selections_in_one_line(tmp_path, rows, match):
    from natix.errors import ConfigError

    c = open_cache(_write(tmp_path, n=6))
    with pytest.raises(ConfigError, match=match) as info:
        c.features(rows)
    assert "\n" not in str(info.value)
