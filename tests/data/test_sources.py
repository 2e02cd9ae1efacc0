"""Tests for `natix.data.sources`: class folders, plain folders, CSV/JSONL manifests, hashing."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from natix.data.sources import ImageRecord, discover, hash_bytes, hash_files
from natix.errors import DataError


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()  # discover() never opens the files, but they are real images all the same


def _img(path: Path, data: bytes = PNG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _triples(records: list[ImageRecord], root: Path) -> list[tuple[str, int | None, str | None]]:
    return [(r.path.relative_to(root).as_posix(), r.label, r.group) for r in records]


def _assert_sorted(records: list[ImageRecord]) -> None:
    keys = [str(r.path) for r in records]
    assert keys == sorted(keys)


# --- folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("pos", "neg"), [("roadwork", "no_roadwork"), ("1", "0")])
def test_class_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture, pos: str, neg: str) -> None:
    _img(tmp_path / pos / "z.jpg")
    _img(tmp_path / pos / "deep" / "a.PNG")
    _img(tmp_path / pos / ".hidden.jpg")
    _write(tmp_path / pos / "notes.txt", "not an image")
    _img(tmp_path / neg / "b.jpeg")
    _img(tmp_path / neg / ".cache" / "c.jpg")
    _img(tmp_path / "stray.jpg")  # outside the class folders: ignored, with a warning
    _img(tmp_path / "other" / "d.jpg")

    with caplog.at_level(logging.WARNING, logger="natix.data.sources"):
        records = discover(tmp_path)

    # Sorted by full path: "0/" < "1/" and "no_roadwork/" < "roadwork/".
    assert _triples(records, tmp_path) == [
        (f"{neg}/b.jpeg", 0, None),
        (f"{pos}/deep/a.PNG", 1, None),
        (f"{pos}/z.jpg", 1, None),
    ]
    _assert_sorted(records)
    assert "ignoring 2 images outside the class folders" in caplog.text


def test_one_class_folder_alone_is_still_labelled(tmp_path: Path) -> None:
    _img(tmp_path / "roadwork" / "a.jpg")
    _img(tmp_path / "b.jpg")
    assert _triples(discover(tmp_path), tmp_path) == [("roadwork/a.jpg", 1, None)]


def test_unlabeled_folder_is_read_recursively(tmp_path: Path) -> None:
    for rel in ["b.jpg", "a/c.png", "a/b/d.webp", "a/b/E.TIFF", "z.bmp", "m.gif", "n.jpeg", "o.tif"]:
        _img(tmp_path / rel)
    _img(tmp_path / ".hidden" / "x.jpg")  # hidden folder
    _img(tmp_path / "a" / ".y.png")  # hidden file
    _write(tmp_path / "readme.md", "hello")
    _write(tmp_path / "a" / "data.json", "{}")
    (tmp_path / "folder.jpg").mkdir()  # a directory with an image suffix

    records = discover(tmp_path)

    assert _triples(records, tmp_path) == [
        ("a/b/E.TIFF", None, None),
        ("a/b/d.webp", None, None),
        ("a/c.png", None, None),
        ("b.jpg", None, None),
        ("m.gif", None, None),
        ("n.jpeg", None, None),
        ("o.tif", None, None),
        ("z.bmp", None, None),
    ]


def test_folders_named_like_labels_below_the_top_do_not_label(tmp_path: Path) -> None:
    _img(tmp_path / "train" / "roadwork" / "a.jpg")
    assert _triples(discover(tmp_path), tmp_path) == [("train/roadwork/a.jpg", None, None)]


def test_hidden_parent_of_the_root_is_not_a_reason_to_skip(tmp_path: Path) -> None:
    root = tmp_path / ".data" / "images"
    _img(root / "a.jpg")
    assert _triples(discover(root), root) == [("a.jpg", None, None)]


# --- manifests -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["labels.csv", "manifest.csv", "manifest.jsonl"])
def test_folder_with_a_manifest_reads_the_manifest(tmp_path: Path, name: str) -> None:
    _img(tmp_path / "roadwork" / "a.jpg")  # class folders lose to the manifest
    _img(tmp_path / "unlisted.jpg")
    _img(tmp_path / "imgs" / "b.png")
    if name.endswith(".csv"):
        _write(tmp_path / name, "path,label\nroadwork/a.jpg,0\nimgs/b.png,roadwork\n")
    else:
        _write(tmp_path / name, '{"path": "roadwork/a.jpg", "label": 0}\n{"path": "imgs/b.png", "label": "roadwork"}\n')

    assert _triples(discover(tmp_path), tmp_path) == [("imgs/b.png", 1, None), ("roadwork/a.jpg", 0, None)]


def test_manifest_precedence_is_labels_then_manifest(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg")
    _write(tmp_path / "labels.csv", "path,label\na.jpg,1\n")
    _write(tmp_path / "manifest.csv", "path,label\na.jpg,0\n")
    assert discover(tmp_path)[0].label == 1


def test_csv_manifest_with_relative_absolute_paths_labels_and_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    outside = _img(tmp_path / "elsewhere" / "abs.jpg")
    for rel in ["x/c.jpg", "a.jpg", "b.png", "d.jpg", "e.jpg", "f.jpg"]:
        _img(data / rel)
    manifest = _write(
        data / "list.csv",
        "path,label,group\n"
        "x/c.jpg,1,seq-1\n"
        f"{outside},no_roadwork,seq-2\n"
        "a.jpg,ROADWORK, seq-1 \n"
        "b.png,,\n"
        " d.jpg ,1.0,\n"
        "e.jpg, 0 ,seq-3\n"
        "f.jpg,No_Roadwork,seq-3\n",
    )
    # Relative paths resolve against the manifest's folder, not the working directory.
    monkeypatch.chdir(tmp_path / "elsewhere")

    records = discover(manifest, allow_outside=True)  # `outside` is not under the manifest's folder

    by_path = {r.path: (r.label, r.group) for r in records}
    assert by_path == {
        data / "x/c.jpg": (1, "seq-1"),
        outside: (0, "seq-2"),
        data / "a.jpg": (1, "seq-1"),
        data / "b.png": (None, None),
        data / "d.jpg": (1, None),
        data / "e.jpg": (0, "seq-3"),
        data / "f.jpg": (0, "seq-3"),
    }
    assert len(records) == 7
    _assert_sorted(records)
    assert all(r.path.is_file() for r in records)


def test_csv_manifest_without_label_column_is_unlabeled(tmp_path: Path) -> None:
    _img(tmp_path / "b.jpg")
    _img(tmp_path / "a.jpg")
    manifest = _write(tmp_path / "m.csv", "path\nb.jpg\na.jpg\n")
    assert _triples(discover(manifest), tmp_path) == [("a.jpg", None, None), ("b.jpg", None, None)]


def test_csv_manifest_with_bom_and_crlf(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,label\r\na.jpg,1\r\n")
    assert _triples(discover(manifest), tmp_path) == [("a.jpg", 1, None)]


def test_jsonl_manifest(tmp_path: Path) -> None:
    for name in "abcdefg":
        _img(tmp_path / f"{name}.jpg")
    lines = [
        {"path": "g.jpg", "label": 1, "group": "s1"},
        {"path": "b.jpg", "label": 0},
        {"path": "c.jpg", "label": True},
        {"path": "d.jpg", "label": None},
        {"path": "e.jpg"},
        {"path": "f.jpg", "label": "no_roadwork", "group": ""},
        {"path": str(tmp_path / "a.jpg"), "label": 1.0, "group": 7},
    ]
    text = "\n".join(json.dumps(x) for x in lines[:3]) + "\n\n   \n" + "\n".join(json.dumps(x) for x in lines[3:])
    manifest = _write(tmp_path / "m.jsonl", text + "\n")

    assert _triples(discover(manifest), tmp_path) == [
        ("a.jpg", 1, "7"),
        ("b.jpg", 0, None),
        ("c.jpg", 1, None),
        ("d.jpg", None, None),
        ("e.jpg", None, None),
        ("f.jpg", 0, None),
        ("g.jpg", 1, "s1"),
    ]


def test_jsonl_manifest_with_bom(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg")
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'\xef\xbb\xbf{"path": "a.jpg", "label": "roadwork"}\n')
    assert _triples(discover(manifest), tmp_path) == [("a.jpg", 1, None)]


# --- symbolic links --------------------------------------------------------------------------


def _links(root: Path) -> dict[str, Path]:
    """A good image, a link to it, a dangling link, a link to itself and two links to each other."""
    good = _img(root / "good.jpg")
    (root / "to-good.jpg").symlink_to(good)
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    (root / "self.jpg").symlink_to(root / "self.jpg")
    (root / "ping.png").symlink_to(root / "pong.png")
    (root / "pong.png").symlink_to(root / "ping.png")
    return {p.name: p for p in root.iterdir()}


@pytest.mark.parametrize("layout", ["plain", "class-folders"])
def test_broken_symlinks_are_listed_and_hash_as_unreadable(tmp_path: Path, layout: str) -> None:
    """A dangling or looping link is an image the user meant to have: it is listed, and hashing
    reports why it cannot be read, so extraction records it as a failure instead of dropping it."""
    folder = tmp_path / ("roadwork" if layout == "class-folders" else "")
    links = _links(folder)
    records = discover(tmp_path)
    assert [r.path.name for r in records] == ["dangling.jpg", "good.jpg", "ping.png", "pong.png", "self.jpg",
                                              "to-good.jpg"]
    ids = dict(zip((r.path.name for r in records), hash_files([r.path for r in records])))
    assert ids["good.jpg"] == ids["to-good.jpg"] == hash_bytes(PNG)
    assert isinstance(ids["dangling.jpg"], OSError)
    assert ids["dangling.jpg"].strerror == f"broken symbolic link to '{links['dangling.jpg'].readlink()}'"
    for name in ("self.jpg", "ping.png", "pong.png"):
        assert isinstance(ids[name], OSError)
        assert ids[name].strerror.startswith("broken symbolic link to '")
        assert "loop" in ids[name].strerror


def test_a_folder_of_broken_symlinks_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert [r.path.name for r in discover(tmp_path)] == ["a.jpg"]


def test_manifest_row_naming_a_broken_symlink_says_so(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    manifest = _write(tmp_path / "m.csv", "path\na.jpg\nb.jpg\n")
    with pytest.raises(DataError, match=r"names 1 missing file\(s\) \(first: line 3 'b\.jpg', a broken symbolic link"):
        discover(manifest)


# --- manifest paths outside the manifest's folder ---------------------------------------------


@pytest.mark.parametrize("form", ["dotdot", "absolute", "dotdot-inside-out"])
def test_manifest_paths_outside_its_folder_need_allow_outside(tmp_path: Path, form: str) -> None:
    data = tmp_path / "data"
    _img(data / "in.jpg")
    secret = _img(tmp_path / "private" / "key.png")
    raw = {"dotdot": "../private/key.png", "absolute": str(secret),
           "dotdot-inside-out": "sub/../../private/key.png"}[form]
    (data / "sub").mkdir()
    manifest = _write(data / "labels.csv", f"path,label\nin.jpg,1\n{raw},0\n")

    for source in (manifest, data):
        with pytest.raises(DataError, match=rf"names 1 path\(s\) outside its folder \(first: line 3 '{re.escape(raw)}'\)"
                                            r".*--allow-outside") as info:
            discover(source)
        assert "\n" not in str(info.value)
    records = discover(manifest, allow_outside=True)
    assert sorted(r.path.name for r in records) == ["in.jpg", "key.png"]


def test_manifest_paths_that_stay_inside_are_fine(tmp_path: Path) -> None:
    _img(tmp_path / "a" / "x.jpg")
    _img(tmp_path / "y.jpg")
    manifest = _write(tmp_path / "m.csv", f"path\na/../a/x.jpg\n./y.jpg\n{tmp_path / 'a' / 'x.jpg'}\n")
    assert len(discover(manifest)) == 3


def test_outside_paths_are_refused_before_they_are_looked_at(tmp_path: Path) -> None:
    """Refused whether or not the file exists: the refusal tells nothing about what is outside."""
    _img(tmp_path / "data" / "a.jpg")
    manifest = _write(tmp_path / "data" / "m.csv", "path\na.jpg\n../nope.jpg\n")
    with pytest.raises(DataError, match="outside its folder"):
        discover(manifest)
    with pytest.raises(DataError, match="missing file"):
        discover(manifest, allow_outside=True)


# --- bad sources -----------------------------------------------------------------------------


def _case(
    root: Path, *images: str, dirs: tuple[str, ...] = (), name: str | None = None,
    text: str | None = None, raw: bytes | None = None, folder: bool = False,
) -> Path:
    """Lay out a source under `root`; return the manifest `name`, or `root` itself."""
    for image in images:
        _img(root / image)
    for d in dirs:
        (root / d).mkdir(parents=True)
    if name is None:
        return root
    manifest = root / name
    if raw is not None:
        manifest.write_bytes(raw)
    else:
        _write(manifest, text or "")
    return root if folder else manifest


BAD = [
    pytest.param(lambda t: t / "nope", r"'.*nope' does not exist", id="missing-path"),
    pytest.param(lambda t: t, r"no images found in", id="empty-folder"),
    pytest.param(lambda t: _case(t, ".b.jpg", name="a.txt", text="x", folder=True),
                 r"no images found in", id="folder-without-images"),
    pytest.param(lambda t: _case(t, dirs=("roadwork", "no_roadwork")), r"no images found in",
                 id="empty-class-folders"),
    pytest.param(lambda t: _case(t, name="m.csv", text="path,label\n"), r"no images found in", id="header-only-csv"),
    pytest.param(lambda t: _case(t, "a.jpg", name="m.csv", text="file,label\na.jpg,1\n"),
                 r"has no 'path' column", id="no-path-column"),
    pytest.param(lambda t: _case(t, name="m.csv", text=""), r"has no 'path' column", id="empty-csv"),
    pytest.param(lambda t: _case(t, "a.jpg", name="labels.csv", text="file\na.jpg\n", folder=True),
                 r"labels\.csv' has no 'path' column", id="folder-manifest-no-path-column"),
    pytest.param(lambda t: _case(t, "a.jpg", "b.jpg", name="m.csv", text="path,label\na.jpg,1\nb.jpg,maybe\n"),
                 r"m\.csv:3: label 'maybe' is not 0, 1, roadwork or no_roadwork", id="bad-label-csv"),
    pytest.param(lambda t: _case(t, "a.jpg", "b.jpg", name="m.jsonl",
                                 text='{"path": "a.jpg", "label": 1}\n\n{"path": "b.jpg", "label": 2}\n'),
                 r"m\.jsonl:3: label '2'", id="bad-label-jsonl-counts-blank-lines"),
    pytest.param(lambda t: _case(t, "a.jpg", name="m.csv",
                                 text="path,label\na.jpg,1\ngone1.jpg,0\nsub/gone2.png,1\n"),
                 r"names 2 missing file\(s\) \(first: line 3 'gone1\.jpg'\)", id="missing-files"),
    pytest.param(lambda t: _case(t, "a.jpg", dirs=("dir.jpg",), name="m.csv", text="path\na.jpg\ndir.jpg\n"),
                 r"names 1 missing file\(s\) \(first: line 3 'dir\.jpg'\)", id="directory-is-not-a-file"),
    pytest.param(lambda t: _case(t, "a.jpg", name="m.csv", text="path,label\n,1\n"),
                 r"m\.csv:2: empty path", id="empty-path"),
    pytest.param(lambda t: _case(t, name="m.jsonl", text='{"label": 1}\n'), r"m\.jsonl:1: empty path",
                 id="jsonl-without-path"),
    pytest.param(lambda t: _case(t, "a.jpg", name="m.jsonl", text='{"path": "a.jpg"}\n{"path": a.jpg}\n'),
                 r"m\.jsonl:2: not valid JSON", id="invalid-json-line"),
    pytest.param(lambda t: _case(t, name="m.jsonl", text='["a.jpg", 1]\n'),
                 r"m\.jsonl:1: expected a JSON object with 'path', got list", id="json-not-an-object"),
    pytest.param(lambda t: _case(t, "a.jpg", name="m.txt", text="path\na.jpg\n"),
                 r"neither \.csv nor \.jsonl", id="unknown-suffix"),
    pytest.param(lambda t: _img(t / "a.jpg"), r"neither \.csv nor \.jsonl", id="an-image-is-not-a-manifest"),
    pytest.param(lambda t: _case(t, "a.jpg", name="m.csv", raw="path,label\na.jpg,1\n# café\n".encode("latin-1")),
                 r"m\.csv' is not UTF-8 text", id="csv-not-utf8"),
    pytest.param(lambda t: _case(t, name="m.jsonl", raw=b'{"path": "\xff.jpg"}\n'),
                 r"m\.jsonl' is not UTF-8 text", id="jsonl-not-utf8"),
    pytest.param(lambda t: _case(t, name="m.csv", text="path\n" + "x" * 200_000 + "\n"),
                 r"m\.csv' is not a readable CSV", id="csv-field-too-large"),
]


@pytest.mark.parametrize(("build", "match"), BAD)
def test_bad_sources_raise_data_error(tmp_path: Path, build: Callable[[Path], Path], match: str) -> None:
    source = build(tmp_path)
    with pytest.raises(DataError, match=match):
        discover(source)


def test_data_error_messages_are_one_line(tmp_path: Path) -> None:
    for i, (build, _) in enumerate(p.values for p in BAD):
        case = tmp_path / str(i)
        case.mkdir()
        with pytest.raises(DataError) as info:
            discover(build(case))
        assert "\n" not in str(info.value)


# --- hashing ---------------------------------------------------------------------------------


def test_hash_bytes_is_sha256_hex() -> None:
    # The FIPS 180-2 test vector for SHA-256("abc").
    assert hash_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("threads", [0, 1, 4])
def test_hash_files_keeps_order_and_reports_unreadable_paths(tmp_path: Path, threads: int) -> None:
    big = np.random.default_rng(0).bytes(5 * (1 << 20) // 2)  # 2.5 MiB: several read blocks
    a = _img(tmp_path / "a.jpg")
    a_copy = _img(tmp_path / "sub" / "a-copy.png")
    other = _img(tmp_path / "other.jpg", PNG + b"\x00")
    large = _img(tmp_path / "large.bin", big)
    missing = tmp_path / "missing.jpg"
    folder = tmp_path / "sub"

    paths = [a, missing, a_copy, folder, other, large, a]
    ids = hash_files(paths, threads=threads)

    assert len(ids) == len(paths)
    assert ids[0] == ids[2] == ids[6] == hash_bytes(PNG)
    assert ids[4] == hash_bytes(PNG + b"\x00") != ids[0]
    assert ids[5] == hash_bytes(big)
    assert isinstance(ids[1], FileNotFoundError)
    assert isinstance(ids[3], OSError)
    for i in (0, 2, 4, 5, 6):
        assert isinstance(ids[i], str) and len(ids[i]) == 64


def test_hash_files_of_nothing_is_empty() -> None:
    assert hash_files([]) == []
