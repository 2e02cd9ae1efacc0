"""Damaged part files: one line naming the file and the fix, found before anything is merged."""

import numpy as np
import pytest

from natix.cache.parts import read_part
from natix.cache.store import CacheWriter, Rows, open_cache, verify_cache
from natix.errors import CacheError

IDENTITY = {"extractor_version": 1, "backbone": {"weights_sha256": "0" * 64}, "store_dtype": "float16"}
TABLE = [{"name": "global", "box": [0, 0, 1, 1], "flip": False},
         {"name": "tile", "box": [0, 0, 0.5, 0.5], "flip": False}]


def _ids(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def _rows(n, start):
    ids = _ids(n, start)
    return Rows(ids, [f"/img/{i}.jpg" for i in ids], [1] * n, [""] * n, [(10, 20)] * n)


def _part(w, n, start, dim=3):
    feats = (np.arange(n * 2 * dim, dtype=np.float16).reshape(n, 2, dim) + start)
    return w.add_part(feats, _rows(n, start), [("", f"/img/gone-{start}.jpg", "no such file")])


def _cache_and_parts(root):
    """A committed cache of 4 rows, then two parts of a run that stopped before its merge."""
    with CacheWriter(root, IDENTITY, TABLE, dim=3) as w:
        _part(w, 4, 0)
        path = w.commit()
    with CacheWriter(root, IDENTITY, TABLE, dim=3) as w:
        parts = [_part(w, 3, 100), _part(w, 2, 200)]
    return path, parts


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _features_offset(part):
    """A byte inside the stored features of a part file."""
    data = part.read_bytes()
    magic = data.index(b"\x93NUMPY", data.index(b"features.npy"))
    header = 10 + int.from_bytes(data[magic + 8:magic + 10], "little")  # .npy format 1.0
    return magic + header + 5


def _damage(kind, part, tmp_path):
    if kind == "flipped":
        _flip(part, _features_offset(part))
    elif kind == "truncated":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    elif kind == "empty":
        part.write_bytes(b"")
    elif kind == "not a zip":
        part.write_bytes(b"garbage" * 50)
    elif kind == "width":
        with CacheWriter(tmp_path / "other", IDENTITY, TABLE, dim=4) as w:
            part.write_bytes(_part(w, 3, 100, dim=4).read_bytes())
    elif kind == "member missing":
        arrays = read_part(part)
        del arrays["labels"]
        with open(part, "wb") as fh:
            np.savez(fh, **arrays)
    elif kind == "rows disagree":
        arrays = read_part(part)
        arrays["labels"] = arrays["labels"][:1]
        with open(part, "wb") as fh:
            np.savez(fh, **arrays)


KINDS = ["flipped", "truncated", "empty", "not a zip", "width", "member missing", "rows disagree"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_part_is_named_with_its_fix_before_anything_is_merged(tmp_path, kind):
    path, (first, second) = _cache_and_parts(tmp_path)
    before = path.read_bytes()
    _damage(kind, first, tmp_path)
    with pytest.raises(CacheError, match=rf"part file '{first}' is damaged .*: delete it and rerun") as info:
        with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
            w.commit()
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before  # nothing merged, nothing lost
    assert second.is_file() and first.is_file() and not list(tmp_path.glob("*.h5.tmp-*"))
    first.unlink()  # the fix the message names
    with CacheWriter(tmp_path, IDENTITY, TABLE, dim=3) as w:
        w.commit()
    with open_cache(path) as c:
        assert c.ids.tolist() == _ids(4) + _ids(2, 200)
    assert verify_cache(path)["ok"]


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_a_damaged_part(tmp_path, kind):
    path, (first, _) = _cache_and_parts(tmp_path)
    _damage(kind, first, tmp_path)
    problems = verify_cache(path)["problems"]
    assert any(f"part file '{first}' is damaged" in p and "delete it and rerun" in p for p in problems), problems


def test_every_flipped_byte_of_a_part_is_caught_or_harmless(tmp_path):
    """A flip anywhere either raises the one-line error or leaves the arrays as written (zip timestamps)."""
    _, (part, _) = _cache_and_parts(tmp_path)
    good = part.read_bytes()
    want = read_part(part)
    for offset in range(len(good)):
        _flip(part, offset)
        try:
            got = read_part(part)
        except CacheError as exc:
            assert f"part file '{part}' is damaged" in str(exc) and "\n" not in str(exc)
        else:
            assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want), offset
        part.write_bytes(good)


@pytest.mark.parametrize("field, offset, bit", [("compression method", 10, 0x63), ("encryption flag", 8, 0x01)])
def test_a_zip_directory_that_lies_about_a_member_is_caught(tmp_path, field, offset, bit):
    """A member's central directory entry claims a compression method natix never writes, or
    encryption alone (a RuntimeError asking for a password, before the encryption check)."""
    _, (part, _) = _cache_and_parts(tmp_path)
    data = bytearray(part.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first central directory entry
    data[entry + offset] ^= bit
    part.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=f"part file '.*' is damaged .*{'compression' if 'method' in field else 'encrypted'}"):
        read_part(part)
