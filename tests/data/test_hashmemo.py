"""The hash memo: unchanged files (size, mtime, inode) are not read again; anything else is."""

from __future__ import annotations

import os
import shutil

from click.testing import CliRunner

from natix.cli import cli
from natix.data.hashmemo import MEMO_NAME, hash_with_memo, load_memo, save_memo
from natix.data.sources import hash_files


def _counting(calls: list):
    def hasher(paths):
        calls.append(list(paths))
        return hash_files(paths)
    return hasher


def test_unchanged_files_are_not_read_and_changed_ones_are(tmp_path):
    files = []
    for i in range(4):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(bytes([i]) * 100)
    memo, calls = {}, []
    first = hash_with_memo(files, memo, _counting(calls))
    assert (first.read, first.reused) == (4, 0) and first.ids == hash_files(files)
    save_memo(tmp_path, memo)
    memo = load_memo(tmp_path)
    again = hash_with_memo(files, memo, _counting(calls))
    assert (again.read, again.reused) == (0, 4) and again.ids == first.ids and calls[-1] == []
    files[1].write_bytes(b"new content")  # rewritten in place: size and mtime change
    st = files[2].stat()
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: mtime changes
    files[3].unlink()  # gone: its read error is not remembered
    changed = hash_with_memo(files, memo, _counting(calls))
    assert calls[-1] == files[1:]
    assert changed.ids[0] == first.ids[0] and changed.ids[1] != first.ids[1] and changed.ids[2] == first.ids[2]
    assert isinstance(changed.ids[3], OSError) and os.fspath(files[3].absolute()) not in memo
    forced = hash_with_memo(files[:3], memo, _counting(calls), rehash=True)
    assert forced.read == 3 and calls[-1] == files[:3]


def test_a_missing_or_damaged_memo_means_every_file_is_read(tmp_path):
    assert load_memo(tmp_path) == {}
    (tmp_path / MEMO_NAME).write_text("{not json")
    assert load_memo(tmp_path) == {}
    (tmp_path / MEMO_NAME).write_text('{"version": 1, "files": {"/a": [1, 2]}}')
    assert load_memo(tmp_path) == {}


def test_extract_reuses_hashes_of_an_unchanged_folder_and_rehash_reads_all(demo_images, tiny_backbone, tmp_path,
                                                                            monkeypatch):
    import natix.extract.extractor as ex

    data = tmp_path / "data"
    shutil.copytree(demo_images, data)
    calls: list = []
    monkeypatch.setattr(ex, "hash_files", _counting(calls))
    args = ["extract", str(data), "--backbone", str(tiny_backbone), "--views", "1", "--cache", str(tmp_path / "c"),
            "--workers", "0", "-q"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert len(calls[-1]) == 12 and "\nhashes " not in first.output
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert calls[-1] == [] and "hashes    12 files unchanged (size, mtime, inode): not read again; 0 read" in second.output
    assert "no model work" in second.output
    forced = CliRunner().invoke(cli, [*args, "--rehash"])
    assert forced.exit_code == 0 and len(calls[-1]) == 12 and "\nhashes " not in forced.output
