"""Tests for the synthetic street-scene generator `natix.data.demo`."""

from __future__ import annotations

import csv
import hashlib
import pathlib

import numpy as np
import pytest
from PIL import Image

from natix.data.demo import make_demo_images
from natix.errors import DataError

N = 12
SQUARE = (224, 224)
DASHCAM = (1280, 720)
DEFAULT_DIGEST = "d9859afc0ab90f5480e187abb33da1b8055898c08faa23e55d19f42d738f1496"


def _rows(csv_path: pathlib.Path) -> list[dict[str, str]]:
    """labels.csv rows as dicts."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _orange_mask(path: pathlib.Path) -> np.ndarray:
    """Pixels in the roadwork-orange band used by the generator's palette."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 200) & (g > 80) & (g < 170) & (b < 80)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One generated data set shared by the read-only tests."""
    out = tmp_path_factory.mktemp("demo")
    return make_demo_images(out, n=N, seed=0)


def test_returns_labels_csv_with_header_and_sorted_relative_paths(demo: pathlib.Path) -> None:
    assert demo.name == "labels.csv"
    lines = demo.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path,label"
    rows = _rows(demo)
    assert [r["path"] for r in rows] == [f"img_{i:05d}.jpg" for i in range(N)]
    assert {r["label"] for r in rows} == {"0", "1"}
    for r in rows:
        assert (demo.parent / r["path"]).is_file()
    assert sorted(p.name for p in demo.parent.iterdir()) == sorted([r["path"] for r in rows] + ["labels.csv"])


def test_classes_are_exactly_balanced(demo: pathlib.Path) -> None:
    labels = [int(r["label"]) for r in _rows(demo)]
    assert labels.count(1) == labels.count(0) == N // 2
    # Shuffled, not one block of positives followed by one block of negatives.
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_images_are_rgb_with_both_sizes_in_both_classes(demo: pathlib.Path) -> None:
    sizes: dict[str, list[tuple[int, int]]] = {"0": [], "1": []}
    for r in _rows(demo):
        with Image.open(demo.parent / r["path"]) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            im.load()
            sizes[r["label"]].append(im.size)
    for label, got in sizes.items():
        assert set(got) <= {SQUARE, DASHCAM}
        # square_fraction=0.5 with 6 images per class: an equal split in each class.
        assert got.count(SQUARE) == got.count(DASHCAM) == N // 4, (label, got)


def test_positives_show_small_amounts_of_roadwork_orange(demo: pathlib.Path) -> None:
    for r in _rows(demo):
        if r["label"] != "1":
            continue
        mask = _orange_mask(demo.parent / r["path"])
        assert mask.sum() >= 5, f"{r['path']} has no visible roadwork orange"
        # The objects are meant to be small: a few per mille of the frame, never a big blob.
        assert mask.mean() < 0.03, f"{r['path']} orange covers {mask.mean():.2%}"


def test_some_negatives_are_hard_and_some_are_plain(demo: pathlib.Path) -> None:
    negatives = [r["path"] for r in _rows(demo) if r["label"] == "0"]
    orange = [int(_orange_mask(demo.parent / p).sum()) for p in negatives]
    assert any(c == 0 for c in orange), orange  # plain street scenes
    assert any(c >= 5 for c in orange), orange  # orange distractors that are not roadwork


def test_same_arguments_give_identical_bytes(tmp_path: pathlib.Path) -> None:
    a = make_demo_images(tmp_path / "a", n=6, seed=3)
    b = make_demo_images(tmp_path / "b", n=6, seed=3)
    names = sorted(p.name for p in a.parent.iterdir())
    assert names == sorted(p.name for p in b.parent.iterdir())
    for name in names:
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes(), name


def test_images_do_not_depend_on_n(tmp_path: pathlib.Path) -> None:
    small = make_demo_images(tmp_path / "small", n=4, seed=5)
    large = make_demo_images(tmp_path / "large", n=9, seed=5)
    assert _rows(large)[:4] == _rows(small)
    for r in _rows(small):
        assert (small.parent / r["path"]).read_bytes() == (large.parent / r["path"]).read_bytes()


def test_different_seeds_give_different_images(tmp_path: pathlib.Path) -> None:
    a = make_demo_images(tmp_path / "a", n=4, seed=0)
    b = make_demo_images(tmp_path / "b", n=4, seed=1)
    for r in _rows(a):
        assert (a.parent / r["path"]).read_bytes() != (b.parent / r["path"]).read_bytes()


def test_scenes_differ_within_one_data_set(demo: pathlib.Path) -> None:
    squares = [
        np.asarray(Image.open(demo.parent / r["path"]), dtype=np.int16)
        for r in _rows(demo)
        if Image.open(demo.parent / r["path"]).size == SQUARE
    ]
    assert len(squares) >= 2
    assert np.abs(squares[0] - squares[1]).mean() > 5


def test_odd_n_is_as_balanced_as_possible(tmp_path: pathlib.Path) -> None:
    labels = [int(r["label"]) for r in _rows(make_demo_images(tmp_path, n=5, seed=2))]
    assert len(labels) == 5
    assert abs(labels.count(1) - labels.count(0)) == 1


@pytest.mark.parametrize(("fraction", "expected"), [(0.0, {DASHCAM}), (1.0, {SQUARE})])
def test_square_fraction_extremes(tmp_path: pathlib.Path, fraction: float, expected: set) -> None:
    csv_path = make_demo_images(tmp_path, n=4, seed=0, square_fraction=fraction)
    assert {Image.open(tmp_path / r["path"]).size for r in _rows(csv_path)} == expected


def test_default_knobs_give_the_bytes_of_the_original_generator(tmp_path: pathlib.Path) -> None:
    # Digest of (name, bytes) of n=6, seed=0 as written before object_scale/hard_negatives existed.
    csv_path = make_demo_images(tmp_path, n=6, seed=0)
    explicit = make_demo_images(tmp_path / "explicit", n=6, seed=0, object_scale=1.0, hard_negatives=0.5)
    for r in _rows(csv_path):
        assert (tmp_path / r["path"]).read_bytes() == (explicit.parent / r["path"]).read_bytes()
    digest = hashlib.sha256()
    for r in _rows(csv_path):
        digest.update(r["path"].encode() + (tmp_path / r["path"]).read_bytes())
    assert digest.hexdigest() == DEFAULT_DIGEST


def test_object_scale_draws_larger_objects(tmp_path: pathlib.Path) -> None:
    small = make_demo_images(tmp_path / "s", n=8, seed=0, hard_negatives=0.0)
    large = make_demo_images(tmp_path / "l", n=8, seed=0, hard_negatives=0.0, object_scale=4.0)
    for r in _rows(small):
        if r["label"] == "1":
            a = _orange_mask(small.parent / r["path"]).sum()
            b = _orange_mask(large.parent / r["path"]).sum()
            assert b > 4 * a, (r["path"], a, b)  # 4x taller and wider: roughly 16x the area


@pytest.mark.parametrize(("share", "expect_orange"), [(0.0, False), (1.0, True)])
def test_hard_negatives_sets_the_share_of_orange_negatives(tmp_path: pathlib.Path, share: float,
                                                           expect_orange: bool) -> None:
    csv_path = make_demo_images(tmp_path, n=12, seed=0, hard_negatives=share)
    negatives = [r["path"] for r in _rows(csv_path) if r["label"] == "0"]
    assert [int(_orange_mask(tmp_path / p).sum()) >= 5 for p in negatives] == [expect_orange] * len(negatives)


def test_creates_missing_parents_and_overwrites_existing_files(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "deep" / "er"
    first = make_demo_images(out, n=2, seed=0)
    image = out / "img_00000.jpg"
    original = image.read_bytes()
    image.write_bytes(b"stale")
    second = make_demo_images(out, n=2, seed=0)
    assert second == first
    assert image.read_bytes() == original


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, r"n must be >= 1, got 0"),
        ({"n": -3}, r"n must be >= 1, got -3"),
        ({"n": 2.5}, r"n must be an integer"),
        ({"square_fraction": -0.1}, r"square_fraction must be in \[0, 1\], got -0.1"),
        ({"square_fraction": 1.5}, r"square_fraction must be in \[0, 1\], got 1.5"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
        ({"hard_negatives": 1.5}, r"hard_negatives must be in \[0, 1\], got 1.5"),
        ({"hard_negatives": "half"}, r"hard_negatives must be a number"),
        ({"object_scale": 0}, r"object_scale must be a number in \(0, 8\], got 0"),
        ({"object_scale": 9.0}, r"object_scale must be a number in \(0, 8\]"),
    ],
)
def test_invalid_arguments_raise_data_error(tmp_path: pathlib.Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        make_demo_images(tmp_path / "out", **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing is written for bad arguments
