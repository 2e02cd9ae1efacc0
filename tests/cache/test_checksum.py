"""What the checksum covers: features, ids, labels, the view table and failures; old files still open."""

import h5py
import numpy as np
import pytest

from natix.cache.store import CacheWriter, Rows, features_digest, open_cache, verify_cache
from natix.errors import CacheError

IDENTITY = {"extractor_version": 1, "backbone": {"weights_sha256": "0" * 64}, "store_dtype": "float16"}
TABLE = [{"name": "global", "box": [0, 0, 1, 1], "flip": False},
         {"name": "tile", "box": [0, 0, 0.5, 0.5], "flip": False}]
V2_ATTRS = ("checksum_version", "ids_sha256", "labels_sha256", "views_sha256", "failures_sha256")


def _ids(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def _write(root, n=6):
    with CacheWriter(root, IDENTITY, TABLE, dim=3, source={"backbone": "test"}) as w:
        feats = np.arange(n * 2 * 3, dtype=np.float16).reshape(n, 2, 3)
        ids = _ids(n)
        w.add_part(feats, Rows(ids, [f"/img/{i}.jpg" for i in ids], [i % 2 for i in range(n)], ["g"] * n,
                               [(10, 20)] * n), [("f" * 64, "/img/bad.jpg", "corrupt")])
        return w.commit()


def _set(path, name, index, value):
    with h5py.File(path, "r+") as f:
        f[name][index] = value


def _edit_features_and_checksum(path, value):
    """An edit that also rewrites the features checksum: only the other checks can see it."""
    _set(path, "features", (0, 0, 0), value)
    with open_cache(path) as c:
        digest = features_digest(c)
    with h5py.File(path, "r+") as f:
        f.attrs["features_sha256"] = digest


def _duplicate_id(path):
    with h5py.File(path, "r+") as f:
        ids = f["ids"][()]
        ids[1] = ids[0]
        f["ids"][...] = ids


def _invert_labels(path):
    with h5py.File(path, "r+") as f:
        f["labels"][...] = 1 - f["labels"][()]


DAMAGE = {
    "flipped feature": (lambda p: _set(p, "features", (1, 0, 0), 99), "features checksum differs"),
    "NaN feature": (lambda p: _edit_features_and_checksum(p, np.nan), "features contain NaN or inf"),
    "inf feature": (lambda p: _edit_features_and_checksum(p, np.inf), "features contain NaN or inf"),
    "label of 7": (lambda p: _set(p, "labels", 2, 7), "labels outside {-1, 0, 1}"),
    "inverted labels": (_invert_labels, "labels, paths or groups differ from their checksum"),
    "edited path": (lambda p: _set(p, "paths", 0, "/elsewhere.jpg"), "labels, paths or groups differ"),
    "edited group": (lambda p: _set(p, "groups", 3, "other"), "labels, paths or groups differ"),
    "duplicate id": (_duplicate_id, "image ids are not unique"),
    "edited size": (lambda p: _set(p, "sizes", 0, [1, 1]), "ids, image sizes or draw records differ from their checksum"),
    "renamed view": (lambda p: _set(p, "views/name", 1, "tampered"), "view table differs from its checksum"),
    "moved view box": (lambda p: _set(p, "views/box", 1, [0, 0, 1, 1]), "view table differs from its checksum"),
    "edited failure": (lambda p: _set(p, "failures/reasons", 0, "fine"), "failures differ from their checksum"),
}


def test_a_new_cache_records_a_v2_checksum_and_says_what_it_covers(tmp_path):
    path = _write(tmp_path)
    with open_cache(path) as c:
        assert c.attrs["checksum_version"] == 2 and all(k in c.attrs for k in V2_ATTRS)
    report = verify_cache(path)
    assert report["ok"], report
    assert any(s.startswith("checksum v2 (features; ids, sizes; labels, paths, groups") and "view table" in s
               for s in report["checked"]), report["checked"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_verify_finds_each_kind_of_damage(tmp_path, kind):
    path = _write(tmp_path)
    damage, says = DAMAGE[kind]
    damage(path)
    report = verify_cache(path)
    assert not report["ok"] and any(says in p for p in report["problems"]), report["problems"]


def test_a_cache_written_before_v2_still_opens_and_says_what_its_checksum_covers(tmp_path):
    path = _write(tmp_path)
    with h5py.File(path, "r+") as f:
        for k in V2_ATTRS:
            del f.attrs[k]
    report = verify_cache(path)
    assert report["ok"], report
    assert any(s.startswith("checksum v1 (features only") for s in report["checked"]), report["checked"]
    _invert_labels(path)  # not covered by a v1 checksum: nothing can tell
    assert verify_cache(path)["ok"]
    _set(path, "labels", 0, 7)  # but a label that cannot be is still found
    assert not verify_cache(path)["ok"]


def test_merging_into_a_v1_cache_records_v2(tmp_path):
    path = _write(tmp_path)
    with h5py.File(path, "r+") as f:
        for k in V2_ATTRS:
            del f.attrs[k]
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        w.add_part(np.ones((1, 2, 3), np.float16), Rows(_ids(1, 50), ["/x"], [0], [""], [(1, 1)]), [])
        w.commit()
    with open_cache(path) as c:
        assert c.attrs["checksum_version"] == 2
    assert verify_cache(path)["ok"]


@pytest.mark.parametrize("kind", ["label of 7", "inverted labels", "duplicate id", "edited size", "edited path"])
def test_a_merge_refuses_damage_no_source_listed_and_keeps_the_new_chunk(tmp_path, kind):
    path = _write(tmp_path)
    DAMAGE[kind][0](path)
    before = path.read_bytes()
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        w.add_part(np.ones((1, 2, 3), np.float16), Rows(_ids(1, 50), ["/x"], [0], [""], [(1, 1)]), [])
        with pytest.raises(CacheError, match=rf"cache file '{path}' .*natix cache verify {path}") as info:
            w.commit()
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before and len(list(tmp_path.glob("*.parts/part-*.npz"))) == 1


@pytest.mark.parametrize("kind", ["renamed view", "moved view box", "edited failure"])
def test_a_merge_repairs_what_it_rewrites_anyway(tmp_path, kind):
    path = _write(tmp_path)
    DAMAGE[kind][0](path)
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        w.add_part(np.ones((1, 2, 3), np.float16), Rows(_ids(1, 50), ["/x"], [0], [""], [(1, 1)]), [])
        w.commit()
    assert verify_cache(path)["ok"]
    with open_cache(path) as c:
        assert c.view_names == ["global", "tile"] and c.views[1].box == (0, 0, 0.5, 0.5)
        assert all(f["reason"] != "fine" for f in c.failures)


def test_a_merge_refuses_nan_features_even_under_a_matching_checksum(tmp_path):
    path = _write(tmp_path)
    _edit_features_and_checksum(path, np.nan)
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        w.add_part(np.ones((1, 2, 3), np.float16), Rows(_ids(1, 50), ["/x"], [0], [""], [(1, 1)]), [])
        with pytest.raises(CacheError, match="NaN or inf"):
            w.commit()


@pytest.mark.parametrize("block", [1, 2, 4, 4096])
def test_read_checked_returns_the_rows_asked_for(tmp_path, block):
    from natix.cache.verify import read_checked

    path = _write(tmp_path, n=9)
    with open_cache(path) as c:
        for rows in (np.arange(9), np.array([0, 3, 4, 8]), np.array([], dtype=int), np.array([5])):
            np.testing.assert_array_equal(read_checked(c, rows, block=block), c.features(rows, dtype=None))
    _set(path, "features", (8, 1, 2), 5)
    with open_cache(path) as c, pytest.raises(CacheError, match="features checksum differs"):
        read_checked(c, np.array([0]), block=block)


def test_cli_verify_refuses_in_one_line_that_lists_every_problem(tmp_path):
    from click.testing import CliRunner

    from natix.cli import cli

    path = _write(tmp_path)
    _duplicate_id(path)
    _set(path, "labels", 2, 7)
    r = CliRunner().invoke(cli, ["cache", "verify", str(path)])
    lines = r.output.splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith(f"Error: {path} failed verification (4 problems): image ids are not unique; ")
    assert "labels outside {-1, 0, 1}" in lines[0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_reads_the_exponent_bits(dtype, bad):
    from natix.cache.checksum import all_finite

    x = np.linspace(-60000, 60000, 1001, dtype=np.float64).astype(dtype)
    assert all_finite(x) and all_finite(x[:0])
    y = x.copy()
    y[500] = bad
    assert not all_finite(y) and not all_finite(y[::-1])  # a non-contiguous view too
    assert all_finite(np.arange(5)) and not all_finite(np.array([1.0, np.nan]))
