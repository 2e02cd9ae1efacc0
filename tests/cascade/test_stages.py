"""Cascade stages: runs read as stages, joined by image id; external stages and their loader."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from natix.cascade.stages import ExternalStage, join_stages, load_callable, load_stage
from natix.errors import ConfigError, DataError


def _rewrite(run, split, edit):
    """Apply `edit(dict of arrays) -> dict of arrays` to a run's predictions/<split>.npz."""
    path = run / "predictions" / f"{split}.npz"
    with np.load(path) as z:
        pred = {k: z[k] for k in z.files}
    np.savez(path, **edit(pred))


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- loading and joining


def test_load_stage_gives_both_splits_with_max_prob_confidence(runs):
    st = load_stage(runs["stage1"])
    assert st["confidence"] == "max_prob" and st["cache"]["path"] == str(runs["cache"].resolve())
    for split in ("val_calib", "val_test"):
        part = st[split]
        z = np.load(runs["stage1"] / "predictions" / f"{split}.npz")
        np.testing.assert_array_equal(part["ids"], z["ids"])
        np.testing.assert_allclose(part["confidence"], np.maximum(z["prob"], 1 - z["prob"]))
        assert len(part["labels"]) == len(part["prob"]) == 225


def test_join_aligns_stages_whose_rows_are_in_another_order(runs, tmp_path):
    shuffled = _copy_run(runs["stage2"], tmp_path / "shuffled")
    perm = np.random.default_rng(1).permutation(225)
    for split in ("val_calib", "val_test"):
        _rewrite(shuffled, split, lambda d: {k: v[perm] for k, v in d.items()})
    s1, s2, s2_shuffled = load_stage(runs["stage1"]), load_stage(runs["stage2"]), load_stage(shuffled)
    assert not np.array_equal(s2_shuffled["val_test"]["ids"], s1["val_test"]["ids"])  # really out of order
    joined = join_stages([s1, s2_shuffled])
    reference = join_stages([s1, s2])
    for split in ("val_calib", "val_test"):
        np.testing.assert_array_equal(joined[1][split]["ids"], s1[split]["ids"])
        for key in ("labels", "prob", "confidence"):
            np.testing.assert_array_equal(joined[1][split][key], reference[1][split][key])
        # each id keeps its own probability
        own = dict(zip(s2[split]["ids"].tolist(), s2[split]["prob"].tolist()))
        assert joined[1][split]["prob"].tolist() == [own[i] for i in s1[split]["ids"].tolist()]


def test_join_names_the_count_of_missing_ids(runs, tmp_path):
    short = _copy_run(runs["stage2"], tmp_path / "short")
    _rewrite(short, "val_test", lambda d: {k: v[5:] for k, v in d.items()})
    with pytest.raises(DataError, match="stage 2 lacks 5 of 225 val_test image ids: runs must come from caches"):
        join_stages([load_stage(runs["stage1"]), load_stage(short)])


def test_join_refuses_disagreeing_labels(runs, tmp_path):
    relabeled = _copy_run(runs["stage2"], tmp_path / "relabeled")

    def flip(d):
        d = dict(d)
        d["labels"] = d["labels"].copy()
        d["labels"][:3] = 1 - d["labels"][:3]
        return d

    _rewrite(relabeled, "val_calib", flip)
    with pytest.raises(DataError, match="labels of 3 of 225 val_calib images"):
        join_stages([load_stage(runs["stage1"]), load_stage(relabeled)])



# --------------------------------------------------------------------------- external stages


@pytest.mark.parametrize("fn, match", [
    (lambda imgs: [-1.0] * len(imgs), "outside \\[0, 1\\]"),
    (lambda imgs: [0.5] * (len(imgs) + 1), "shape \\(4,\\) for 3 images"),
    (lambda imgs: [0.5, float("nan"), 0.5], "NaN or inf for 1 of 3"),
    (lambda imgs: np.full((3, 1), 0.5), "shape \\(3, 1\\)"),
    (lambda imgs: ["a", "b", "c"], "not numbers"),
])
def test_external_stage_validates_its_outputs(fn, match):
    with pytest.raises(DataError, match=match):
        ExternalStage(fn)(["a.jpg", "b.jpg", "c.jpg"])


def test_external_stage_passes_valid_outputs_and_skips_empty_calls():
    calls = []

    def fn(imgs):
        calls.append(imgs)
        return torch.tensor([0.0, 1.0])

    np.testing.assert_array_equal(ExternalStage(fn)(["x", "y"]), [0.0, 1.0])
    assert ExternalStage(fn)([]).shape == (0,) and len(calls) == 1


@pytest.mark.parametrize("spec, match", [
    ("no_colon", "module:function"),
    ("a:b:c", "module:function"),
    ("natix_no_such_module_xyz:f", "cannot import module 'natix_no_such_module_xyz'"),
    ("json:no_such_function", "has no attribute 'no_such_function'"),
    ("json:__doc__", "not callable"),
])
def test_load_callable_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_callable(spec)


def test_load_callable_imports_dotted_attributes():
    assert load_callable("json:JSONDecoder.decode") is json.JSONDecoder.decode
