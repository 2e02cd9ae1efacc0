"""The run directory: one writer, one reader."""

import json

import numpy as np
import pytest

from natix.errors import ConfigError, DataError
from natix.rundir import DERIVED, Run, check_out, confidence, write_run


class _Splits:
    def save(self, path):
        path.write_text(json.dumps({"ids": {}}))


def _pred(n, gate=False, seed=0):
    rng = np.random.default_rng(seed)
    pred = {"ids": np.array([f"i{k}" for k in range(n)]), "labels": rng.integers(0, 2, n), "prob": rng.random(n)}
    if gate:
        pred["gate"] = rng.normal(size=n)
    return pred


def _write(out, **kw):
    preds = {s: _pred(20, seed=k, **kw) for k, s in enumerate(("train", "val_select", "val_calib", "val_test"))}
    return write_run(out, config={"head": {"head": "linear"}, "cache": {"path": "c.h5"}},
                     state={"w": np.ones((2, 3), dtype=np.float32)}, splits=_Splits(), predictions=preds)


def test_write_then_read(tmp_path):
    metrics = _write(tmp_path / "run")
    run = Run(tmp_path / "run")
    assert run.config["head"] == {"head": "linear"} and run.cache["path"] == "c.h5"
    stored = run.metrics()
    assert stored["val_test"]["accuracy"] == metrics["val_test"]["accuracy"]
    undefined = [(s, k) for s, m in metrics.items() for k, v in m.items() if v != v]  # NaN in memory
    assert all(stored[s][k] is None for s, k in undefined)  # ... null on disk
    pred = run.predictions("val_test")
    assert pred["ids"].dtype.kind == "U" and set(pred) == {"ids", "labels", "prob"}
    np.testing.assert_array_equal(run.confidence("val_test"), np.maximum(pred["prob"], 1 - pred["prob"]))
    assert 0.0 <= run.prior() <= 1.0
    assert run.calibration() == (None, None) and run.failure() is None


def test_confidence_prefers_the_gate():
    pred = _pred(5, gate=True)
    np.testing.assert_array_equal(confidence(pred), pred["gate"])


def test_a_refit_removes_what_was_derived_from_the_old_model(tmp_path):
    out = tmp_path / "run"
    _write(out)
    for name in DERIVED:
        (out / name).write_text("{}")
    (out / "report").mkdir()
    _write(out)
    assert not any((out / name).exists() for name in DERIVED) and not (out / "report").exists()


def test_one_line_refusals(tmp_path):
    with pytest.raises(DataError, match="is not a natix run .no config.json."):
        Run(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a natix run"):
        check_out(tmp_path / "x")
    _write(tmp_path / "run")
    with pytest.raises(ConfigError, match="is the base run"):
        check_out(tmp_path / "run", base=tmp_path / "run")
    with pytest.raises(DataError, match="no predictions for split 'train_oof'.*--oof-folds"):
        Run(tmp_path / "run").predictions("train_oof")
    with pytest.raises(DataError, match="it has: train, val_calib, val_select, val_test"):
        Run(tmp_path / "run").predictions("nope")


def test_a_file_system_that_refuses_the_write_is_one_line(tmp_path, monkeypatch):
    import natix.rundir as rundir

    def refuse(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "write_predictions", refuse)
    with pytest.raises(DataError, match=r"cannot write run directory '.*run' \(No space left on device\): pass an --out"):
        _write(tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()
