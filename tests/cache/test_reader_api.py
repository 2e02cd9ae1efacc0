"""The cache reader as an h5py/numpy user expects it: indexing, repr, context manager, iteration,
the rows of a run's split, and the README example (a torch Dataset and a scikit-learn pipeline)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from natix.cache.store import CacheWriter, Rows, open_cache
from natix.cache.synthetic import make_synthetic_cache
from natix.errors import CacheError, ConfigError, DataError, NatixError
from natix.heads.runs import fit_run
from natix.rundir import Run

TABLE = [{"name": "global", "box": [0, 0, 1, 1], "flip": False},
         {"name": "tile_1", "box": [0, 0, 0.5, 0.5], "flip": False},
         {"name": "tile_2", "box": [0.5, 0.5, 1, 1], "flip": False}]
N, V, D = 6, 3, 2


def _write(root, n=N) -> Path:
    """A cache of `n` rows whose features are all different (row r, view v, dim d = 6r + 2v + d)."""
    identity = {"extractor_version": 1, "backbone": {"weights_sha256": "0" * 64}, "store_dtype": "float16"}
    with CacheWriter(root, identity, TABLE, dim=D, source={"backbone": "test"}) as w:
        ids = [f"{i:064x}" for i in range(n)]
        labels = [i % 2 for i in range(n)]
        w.add_part(np.arange(n * V * D, dtype=np.float16).reshape(n, V, D),
                   Rows(ids, [f"/img/{i}.jpg" for i in range(n)], labels, [""] * n, [(10, 20)] * n), [])
        return w.commit()


@pytest.fixture
def path(tmp_path):
    return _write(tmp_path / "cache")


@pytest.fixture
def cache(path):
    with open_cache(path) as c:
        yield c


# --------------------------------------------------------------------------------------- indexing

MASK = np.array([True, False, True, True, False, False])


@pytest.mark.parametrize("key", [
    0, -1, np.int64(2), np.uint8(5), slice(None), slice(1, 5, 2), slice(None, None, -1), slice(-2, None), slice(4, 1),
    [5, 0, 5], [-1, 0, -6], np.array([2, 1], dtype=np.uint8), np.array([-2, 3]), MASK, MASK.tolist(),
    np.zeros(N, dtype=bool), range(1, 4), [],
    (slice(None), 0), (slice(None), -1), (MASK, slice(1, None)), ([0, 2], 2), (3, [0, 2]), (-1, 1), (-1, [-1]),
    (slice(None), np.array([True, False, True])), (slice(4, 0, -2), [-1, -3]), (MASK, slice(None, None, -1)),
], ids=repr)
def test_indexing_reads_what_numpy_reads_from_the_whole_array_as_float32(cache, key):
    whole = cache[:]
    assert whole.dtype == np.float32 and whole.shape == (N, V, D)
    np.testing.assert_array_equal(whole, np.arange(N * V * D, dtype=np.float32).reshape(N, V, D))
    got = cache[key]
    assert got.dtype == np.float32
    expected = whole[key]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_a_single_row_is_views_by_dims_and_a_single_view_drops_the_view_axis(cache):
    whole = cache[:]
    assert cache[4].shape == (V, D)
    np.testing.assert_array_equal(cache[-2], whole[4])
    assert cache[:, 1].shape == (N, D)
    assert cache[4, 1].shape == (D,)


def test_views_by_name(cache):
    whole = cache[:]
    np.testing.assert_array_equal(cache[:, "global"], whole[:, 0])
    np.testing.assert_array_equal(cache[2, "tile_2"], whole[2, 2])
    np.testing.assert_array_equal(cache[[5, 1], "tile_2"], whole[[5, 1], 2])
    np.testing.assert_array_equal(cache[4, ["tile_2", "global"]], whole[4, [2, 0]])
    np.testing.assert_array_equal(cache[:, ("tile_1",)], whole[:, [1]])
    np.testing.assert_array_equal(cache[1:3, np.array(["tile_1", "global"])], whole[1:3][:, [1, 0]])


def test_a_boolean_mask_of_every_row_is_not_rows_0_and_1(cache):
    assert cache[cache.labels >= 0].shape == (N, V, D)
    assert cache[cache.labels == 1].shape == (N // 2, V, D)
    np.testing.assert_array_equal(cache[cache.labels == 1], cache[:][1::2])


@pytest.mark.parametrize("rows", [MASK, [5, 0, 5], slice(1, 5, 2), np.array([3, 1]), None])
def test_indexing_agrees_with_features(cache, rows):
    key = slice(None) if rows is None else rows
    np.testing.assert_array_equal(cache[key], cache.features(rows))


def test_features_stays_the_strict_form_that_refuses_negative_rows(cache):
    np.testing.assert_array_equal(cache[[-1]], cache.features([N - 1]))
    with pytest.raises(ConfigError, match=r"row -1 is out of range for a cache of 6 rows: pass indices in \[0, 6\)"):
        cache.features([-1])


@pytest.mark.parametrize("key, match", [
    (6, r"row 6 is out of range for a cache of 6 rows: pass an index in \[-6, 6\)"),
    (-7, r"row -7 is out of range for a cache of 6 rows: pass an index in \[-6, 6\)"),
    ([0, 6], r"row 6 is out of range for a cache of 6 rows: pass indices in \[-6, 6\)"),
    (np.array([-7, 0]), r"row -7 is out of range for a cache of 6 rows: pass indices in \[-6, 6\)"),
    (np.ones(5, dtype=bool), "boolean mask of 5 rows for a cache of 6 rows: pass a mask of length 6"),
    ([True] * 7, "boolean mask of 7 rows for a cache of 6 rows: pass a mask of length 6"),
    (np.ones((6, 1), dtype=bool), r"row selection must be one-dimensional, got shape \(6, 1\): pass an int, a slice"),
    (1.0, "row selection of type float is not a row selection: pass an int, a slice, an integer array or a "
          "boolean mask of length 6"),
    (np.float64(2), "row selection of type float64 is not a row selection: pass an int"),
    (np.array([0.0, 1.0]), "row selection of dtype float64 is neither integer indices nor a boolean mask: pass"),
    (True, "row selection of type bool is not a row selection"),
    ("rows", "row selection of type str is not a row selection"),
    (None, r"cache\[None\] is not a row selection: pass cache\[:\] for every row"),
    (Ellipsis, "row selection of type ellipsis is not a row selection"),
    ((0, 0, 0), r"cache\[...\] takes rows or rows, views; got 3 indices: select feature dims on the result"),
    ((0, "nope"), "has no view 'nope': pass one of global, tile_1, tile_2"),
    ((0, ["global", "nope"]), "has no view 'nope': pass one of global, tile_1, tile_2"),
    ((0, 3), r"view 3 is out of range for a cache of 3 views: pass an index in \[-3, 3\)"),
    ((0, [0, -4]), r"view -4 is out of range for a cache of 3 views: pass indices in \[-3, 3\)"),
    ((0, [True, False]), "boolean mask of 2 views for a cache of 3 views: pass a mask of length 3"),
    ((0, 1.5), "view selection of type float is not a view selection: pass a name, an int, a slice"),
    ((0, None), r"cache\[rows, None\] is not a view selection: pass a view name"),
    (([0, 2], [2, 0]), r"with a list or mask for both is ambiguous \(numpy pairs them, h5py crosses them\): make "
                       r"one an int, a name or a slice, e.g. cache\[rows\]\[:, views\]"),
    ((MASK, ["global"]), "is ambiguous"),
    ((range(2), np.array([True, False, True])), "is ambiguous"),
])
def test_bad_indices_are_one_line_errors_naming_the_fix(cache, key, match):
    with pytest.raises(ConfigError, match=match) as info:
        cache[key]
    assert "\n" not in str(info.value)


# -------------------------------------------------------------------------- iteration and arrays


def test_iteration_yields_the_rows_across_read_blocks(tmp_path):
    path = make_synthetic_cache(tmp_path, n=4100, n_views=2, dim=3, seed=1)  # past one 4,096-row block
    with open_cache(path) as c:
        whole = c.features()
        rows = list(c)
        assert len(rows) == len(c) == 4100
        assert all(r.shape == (2, 3) and r.dtype == np.float32 for r in rows[::500])
        np.testing.assert_array_equal(np.stack(rows), whole)
        # a view selection over rows in several blocks, in any order
        pick = np.array([4099, 0, 4097, 4096, 4095, 0])
        np.testing.assert_array_equal(c[pick, "tile_1"], whole[pick, 1])
        np.testing.assert_array_equal(c[4000:, [1, 0]], whole[4000:][:, [1, 0]])


def test_an_implicit_conversion_to_an_array_refuses_to_read_everything(cache):
    with pytest.raises(ConfigError, match=r"is not converted to an array implicitly \(that reads all 6 rows\): "
                                          r"read cache\[:\] or cache\[rows\] explicitly") as info:
        np.asarray(cache)
    assert "\n" not in str(info.value)


def test_errors_are_natix_errors_the_cli_reports_in_one_line(cache):
    with pytest.raises(NatixError):
        cache[100]


# -------------------------------------------------------------------------------- repr, closing


def test_repr_says_what_the_cache_holds_without_reading_features(path, monkeypatch):
    c = open_cache(path)
    monkeypatch.setattr(type(c), "_features", lambda self: pytest.fail("repr read the features"))
    assert repr(c) == f"<FeatureCache '{path}' 6 rows × 3 views × 2 float16, backbone test>"
    monkeypatch.undo()
    c.close()
    assert repr(c) == f"<FeatureCache '{path}' (closed) 6 rows × 3 views × 2 float16, backbone test>"


def test_repr_of_a_large_challenge_cache(tmp_path):
    path = make_synthetic_cache(tmp_path, n=700, n_views=2, dim=4, seed=1, draws=2)
    with open_cache(path) as c:
        assert repr(c) == (f"<FeatureCache '{path}' 1,400 rows × 2 views × 4 float16, backbone synthetic, "
                           "challenge synthetic-validator ×2>")


def test_the_context_manager_closes_the_file_even_on_an_error(path):
    with open_cache(path) as c:
        assert not c.closed
        assert c[0].shape == (V, D)
    assert c.closed
    assert "(closed)" in repr(c)
    assert c.labels.tolist() == [0, 1, 0, 1, 0, 1]  # the small arrays stay readable
    for read in (lambda: c[0], lambda: c.features(), lambda: list(c)):
        with pytest.raises(CacheError, match="is closed: open it again with open_cache"):
            read()
    with pytest.raises(RuntimeError, match="boom"):
        with open_cache(path) as c2:
            raise RuntimeError("boom")
    assert c2.closed


# ---------------------------------------------------------------------------- rows of a run's split

SPLIT_NAMES = ["train", "val_select", "val_calib", "val_test"]
RN, RV, RD = 400, 3, 16


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A clean cache, a 2-draw challenge cache of the same images, and a run fit by natix.heads on the clean one.

    The global view carries a strong signal, so a classifier on it alone is far better than chance."""
    root = tmp_path_factory.mktemp("fitted")
    clean = make_synthetic_cache(root / "cache", n=RN, n_views=RV, dim=RD, seed=5, global_strength=2.0)
    drawn = make_synthetic_cache(root / "cache", n=RN, n_views=RV, dim=RD, seed=5, global_strength=2.0, draws=2)
    run = fit_run(clean, root / "run").out
    return clean, drawn, run


def _split_ids(run: Path) -> dict[str, set[str]]:
    return {k: set(v) for k, v in json.loads((run / "splits.json").read_text())["ids"].items()}


def test_rows_of_each_split_are_the_rows_of_its_images_in_cache_order(fitted):
    clean, _, run = fitted
    ids = _split_ids(run)
    with open_cache(clean) as c:
        seen = []
        for name in SPLIT_NAMES:
            rows = c.rows(name, run=run)
            assert rows.dtype == np.int64
            assert np.all(np.diff(rows) > 0)  # cache order, no repeats
            np.testing.assert_array_equal(rows, np.flatnonzero(np.isin(c.ids, list(ids[name]))))
            np.testing.assert_array_equal(c.rows(name, run=run / "splits.json"), rows)  # the file itself
            seen.append(rows)
        every = np.concatenate(seen)
        assert len(every) == len(set(every.tolist())) == int(np.sum(c.labels >= 0))  # disjoint, every labeled row
        # the rows the run itself predicted on
        test = c.rows("val_test", run=run)
        assert set(c.ids[test].tolist()) == set(Run(run).predictions("val_test")["ids"].tolist())


def test_rows_on_a_challenge_cache_take_every_draw_of_a_split_image(fitted):
    clean, drawn, run = fitted
    ids = _split_ids(run)
    with open_cache(drawn) as c:
        assert c.fingerprint != open_cache(clean).fingerprint  # another cache of the same images
        for name in SPLIT_NAMES:
            rows = c.rows(name, run=run)
            assert len(rows) == 2 * len(ids[name])
            assert np.all(np.diff(rows) > 0)
            assert set(c.image_ids[rows].tolist()) == ids[name]
            assert sorted({i.rpartition(":")[2] for i in c.ids[rows].tolist()}) == ["0", "1"]
        assert c[c.rows("val_test", run=run)].shape == (2 * len(ids["val_test"]), RV, RD)


def test_rows_refuses_what_it_cannot_answer_in_one_line(fitted, tmp_path):
    clean, _, run = fitted
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    no_splits = tmp_path / "no-splits"
    no_splits.mkdir()
    shutil.copy(run / "config.json", no_splits / "config.json")
    edited = tmp_path / "edited.json"
    data = json.loads((run / "splits.json").read_text())
    data["ids"]["val_test"].append(data["ids"]["train"].pop())
    edited.write_text(json.dumps(data))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [
        ("val_test", tmp_path / "nowhere", DataError, "does not exist: pass a run directory written by natix fit-head "
                                                      "or its splits.json"),
        ("val_test", not_a_run, DataError, r"is not a natix run \(no config.json\)"),
        ("val_test", no_splits, DataError, "splits.json' is missing: pass a splits.json written by natix"),
        ("val_test", edited, DataError, r"was edited \(its digest does not match\): regenerate it"),
        ("val_test", broken, DataError, "is not valid JSON"),
        ("test", run, ConfigError, "no split 'test' in .*splits.json': pass one of train, val_select, val_calib, "
                                   "val_test"),
        (["train"], run, ConfigError, r"no split \['train'\] in"),
    ]
    with open_cache(clean) as c:
        for split, where, error, match in cases:
            with pytest.raises(error, match=match) as info:
                c.rows(split, run=where)
            assert "\n" not in str(info.value)


def test_rows_refuses_a_cache_of_other_or_fewer_images(fitted, tmp_path):
    _, _, run = fitted
    n_test = len(_split_ids(run)["val_test"])
    other = make_synthetic_cache(tmp_path / "other", n=RN, n_views=RV, dim=RD, seed=6)  # other images
    with open_cache(other) as c, pytest.raises(DataError, match=f"lacks all {n_test} split images of run '{run}': "
                                                               "extract it from the same image source"):
        c.rows("val_test", run=run)
    fewer = make_synthetic_cache(tmp_path / "fewer", n=RN // 2, n_views=RV, dim=RD, seed=5)  # the first half
    with open_cache(fewer) as c, pytest.raises(DataError, match=r"lacks \d+ of the split images of split file "):
        c.rows("val_test", run=run / "splits.json")


# ------------------------------------------------------------------------------- the README example

CACHE_IN_README = "caches/l10/*.h5"
RUN_IN_README = "runs/mlp-att-gate"
README_EXAMPLE = '''\
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from natix.cache import open_cache


class CachedRows(torch.utils.data.Dataset):
    """(features [V, D], label) of some cache rows, read from the file on demand."""

    def __init__(self, cache, rows):
        self.cache, self.rows = cache, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        return torch.from_numpy(self.cache[row]), int(self.cache.labels[row])


with open_cache("caches/l10/*.h5") as cache:
    print(cache)  # <FeatureCache '...h5' 1,200 rows × 10 views × 1024 float16, backbone ...>
    train = cache.rows("train", run="runs/mlp-att-gate")  # row indices of the run's splits
    test = cache.rows("val_test", run="runs/mlp-att-gate")

    # scikit-learn on the global view: cache[rows, "global"] is float32 [n, D]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(cache[train, "global"], cache.labels[train])
    print(f"val_test accuracy {clf.score(cache[test, 'global'], cache.labels[test]):.3f}")

    # torch: batches of every view, x float32 [64, V, D], y int64 [64]
    loader = torch.utils.data.DataLoader(CachedRows(cache, train), batch_size=64, shuffle=True)
    for x, y in loader:
        ...  # a training step of your own model
'''


def _readme_example() -> str | None:
    """The README's Python block that reads a run's split rows from a cache, when the README has one."""
    readme = Path(__file__).resolve().parents[2] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S) if readme.is_file() else []
    return next((b for b in blocks if "cache.rows(" in b), None)


def test_the_readme_example_feeds_a_torch_dataset_and_a_sklearn_pipeline(fitted, capsys):
    import torch

    clean, _, run = fitted
    code = README_EXAMPLE.replace(CACHE_IN_README, str(clean)).replace(RUN_IN_README, str(run))
    assert code.count(str(clean)) == 1 and code.count(str(run)) == 2
    scope: dict = {"__name__": "readme_example"}
    exec(compile(code, "README example", "exec"), scope)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"<FeatureCache '{clean}' 400 rows × 3 views × 16 float16")
    accuracy = float(out[1].removeprefix("val_test accuracy "))
    assert accuracy > 0.8  # rows and labels line up: misaligned rows would score about 0.5
    x, y, train = scope["x"], scope["y"], scope["train"]
    assert x.dtype == torch.float32 and x.shape[1:] == (RV, RD) and y.dtype == torch.int64
    assert len(scope["loader"].dataset) == len(train)
    assert scope["cache"].closed
    with open_cache(clean) as c:  # the dataset serves the same features and labels as the cache
        item = scope["CachedRows"](c, train)[3]
        np.testing.assert_array_equal(item[0].numpy(), c.features([train[3]])[0])
        assert item[1] == c.labels[train[3]]


def test_the_readme_shows_the_tested_example():
    assert _readme_example() == README_EXAMPLE


def test_a_glob_that_matches_one_cache_file_opens_it(tmp_path):
    from natix.cache.reader import cache_file
    from natix.cache.synthetic import make_synthetic_cache
    from natix.errors import CacheError

    one = make_synthetic_cache(tmp_path / "a", n=20, n_views=2, dim=4, seed=0)
    assert cache_file(tmp_path / "a" / "*.h5") == one
    with open_cache(str(tmp_path / "a" / "*.h5")) as c:
        assert c.path == one and len(c) == 20
    make_synthetic_cache(tmp_path / "a", n=20, n_views=2, dim=4, seed=1)
    with pytest.raises(CacheError, match=r"matches 2 files .*: name one cache file"):
        cache_file(tmp_path / "a" / "*.h5")
    with pytest.raises(CacheError, match="does not exist"):
        cache_file(tmp_path / "b" / "*.h5")
