"""make_splits and Splits: deterministic, disjoint, stratified, grouped, stable, checked on load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natix.errors import ConfigError, DataError
from natix.heads.splits import DEFAULT_RATIOS, SPLITS, Splits, make_splits


def _data(n=2000, pos=0.3, seed=0, prefix="img"):
    rng = np.random.default_rng(seed)
    ids = np.array([f"{prefix}{seed}-{i:05d}" for i in range(n)])
    labels = (rng.random(n) < pos).astype(np.int64)
    return ids, labels


def _assignment(s: Splits) -> dict[str, str]:
    return {i: k for k, v in s.ids.items() for i in v}


def test_deterministic_and_independent_of_row_order(rng):
    ids, labels = _data()
    a = make_splits(ids, labels, seed=3)
    b = make_splits(ids, labels, seed=3)
    assert a.ids == b.ids and a.digest == b.digest
    perm = rng.permutation(len(ids))
    c = make_splits(ids[perm], labels[perm], seed=3)
    assert c.ids == a.ids and c.digest == a.digest
    # another seed gives another assignment
    d = make_splits(ids, labels, seed=4)
    assert d.digest != a.digest


def test_disjoint_cover_and_unlabeled_excluded():
    ids, labels = _data(n=1000)
    labels[::7] = -1
    s = make_splits(ids, labels)
    all_ids = [i for k in SPLITS for i in s.ids[k]]
    assert len(all_ids) == len(set(all_ids)), "an id is in two splits"
    assert set(all_ids) == set(ids[labels >= 0])
    assert not set(all_ids) & set(ids[labels < 0])
    assert set(s.ids) == set(SPLITS)


@pytest.mark.parametrize("ratios", [DEFAULT_RATIOS, (0.4, 0.2, 0.2, 0.2), (0.7, 0.05, 0.05, 0.2)])
def test_stratified_and_ratios_respected(ratios):
    ids, labels = _data(n=2000, pos=0.3)
    s = make_splits(ids, labels, ratios=ratios)
    label_of = dict(zip(ids, labels))
    overall = labels.mean()
    n = len(ids)
    for name, r in zip(SPLITS, ratios):
        got = s.ids[name]
        assert abs(len(got) / n - r) < 0.01, (name, len(got) / n, r)
        frac = np.mean([label_of[i] for i in got])
        assert abs(frac - overall) < 0.02, (name, frac, overall)


def test_grouped_no_group_straddles_splits(rng):
    n = 1500
    ids = np.array([f"im{i}" for i in range(n)])
    groups = np.array([f"seq{g}" for g in rng.integers(0, 120, n)], dtype=object)
    # labels correlated with the group (a sequence is mostly roadwork or mostly not)
    group_pos = {f"seq{g}": rng.random() < 0.5 for g in range(120)}
    labels = np.array([int(group_pos[g]) if rng.random() < 0.9 else int(not group_pos[g]) for g in groups])
    groups[:50] = ""  # images without a group are their own units
    s = make_splits(ids, labels, groups)
    assert s.grouped
    where = _assignment(s)
    seen: dict[str, set] = {}
    for i, g in zip(ids, groups):
        if g:
            seen.setdefault(g, set()).add(where[i])
    assert all(len(v) == 1 for v in seen.values()), {g: v for g, v in seen.items() if len(v) > 1}
    assert set(where) == set(ids)
    # still roughly the ratios (groups are ~12 images each)
    for name, r in zip(SPLITS, DEFAULT_RATIOS):
        assert abs(len(s.ids[name]) / n - r) < 0.06
    # no group column -> not grouped
    assert not make_splits(ids, labels).grouped
    assert not make_splits(ids, labels, np.full(n, "", dtype=object)).grouped


def test_growth_keeps_old_images_in_place():
    ids, labels = _data(n=2000)
    new_ids, new_labels = _data(n=200, seed=9, prefix="new")
    before = _assignment(make_splits(ids, labels))
    after = _assignment(make_splits(np.concatenate([ids, new_ids]), np.concatenate([labels, new_labels])))
    stayed = np.mean([after[i] == before[i] for i in ids])
    assert stayed >= 0.9, stayed
    assert set(new_ids) <= set(after)


def test_save_load_round_trip(tmp_path):
    ids, labels = _data(n=400)
    s = make_splits(ids, labels, seed=5, fingerprint="f" * 64, ratios=(0.5, 0.2, 0.15, 0.15))
    path = s.save(tmp_path / "splits.json")
    back = Splits.load(path, fingerprint="f" * 64)
    assert back == s
    assert back.digest == s.digest
    assert Splits.load(path) == s  # no fingerprint given: no check
    assert json.loads(path.read_text())["digest"] == s.digest


def test_load_refuses_another_cache(tmp_path):
    ids, labels = _data(n=400)
    path = make_splits(ids, labels, fingerprint="a" * 64).save(tmp_path / "splits.json")
    with pytest.raises(DataError, match="made for cache aaaaaaaa"):
        Splits.load(path, fingerprint="b" * 64)


def test_load_refuses_an_edited_file(tmp_path):
    ids, labels = _data(n=400)
    path = make_splits(ids, labels, fingerprint="a" * 64).save(tmp_path / "splits.json")
    data = json.loads(path.read_text())
    data["ids"]["val_test"].append(data["ids"]["train"].pop())  # move one image, keep the old digest
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="edited"):
        Splits.load(path, fingerprint="a" * 64)


@pytest.mark.parametrize("text", ["not json", "{}", json.dumps({"ids": {"train": []}, "seed": 0})])
def test_load_refuses_an_unreadable_file(tmp_path, text):
    path = tmp_path / "splits.json"
    path.write_text(text)
    with pytest.raises(DataError, match="is unreadable|is not valid JSON"):
        Splits.load(path)


def test_rows_maps_ids_to_cache_rows(rng):
    ids, labels = _data(n=300)
    s = make_splits(ids, labels)
    perm = rng.permutation(len(ids))
    cache_ids = ids[perm]
    rows = s.rows(cache_ids)
    for name in SPLITS:
        assert cache_ids[rows[name]].tolist() == s.ids[name]
    with pytest.raises(DataError, match="not in this cache"):
        s.rows(cache_ids[1:])


def test_too_small_data_names_the_split():
    # 4 images per class: cumulative cut points 0.6/0.7/0.85 give train 2, val_select 1, val_calib 0, val_test 1
    ids = np.array([f"x{i}" for i in range(8)])
    labels = np.array([0, 1] * 4)
    with pytest.raises(DataError, match="split val_calib would get 0 roadwork and 0 no_roadwork"):
        make_splits(ids, labels)
    # one class missing entirely
    with pytest.raises(DataError, match="split train would get 0 roadwork"):
        make_splits(np.array([f"y{i}" for i in range(100)]), np.zeros(100, dtype=int))


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.7, 0.1, 0.1, 0.2), (1.0, 0.0, 0.0, 0.0),
                                    (0.7, -0.1, 0.2, 0.2), (0.25, 0.25, 0.25, 0.25, 0.0)])
def test_bad_ratios(ratios):
    ids, labels = _data(n=100)
    with pytest.raises(ConfigError, match="ratios must be four positive fractions summing to 1"):
        make_splits(ids, labels, ratios=ratios)


def test_held_out_images_are_in_no_split_and_the_others_do_not_move():
    ids, labels = _data(n=400)
    held = set(ids[[3, 50, 51, 399]].tolist())
    s = make_splits(ids, labels, exclude=held)
    assigned = _assignment(s)
    assert not held & set(assigned)
    assert len(assigned) == 400 - len(held)
    before = _assignment(make_splits(ids, labels))
    assert sum(before[i] != k for i, k in assigned.items()) < 20  # holding out four images moves few others


def test_a_held_out_image_leaves_its_group_to_the_others():
    ids, labels = _data(n=400)
    groups = np.array([f"g{i // 4}" for i in range(400)], dtype=object)
    s = make_splits(ids, labels, groups, exclude={ids[0]})
    where = _assignment(s)
    assert ids[0] not in where and len({where[i] for i in ids[1:4]}) == 1


@pytest.mark.parametrize("bad", [(float("nan"), 0.1, 0.15, 0.15), (float("inf"), 0.1, 0.15, 0.15)])
def test_non_finite_ratios_are_refused(bad):
    with pytest.raises(ConfigError, match="four positive fractions"):
        make_splits(["a", "b"], [0, 1], ratios=bad)
