"""The one strict JSON writer: NaN as null, infinities as strings, never bare NaN."""

import json
import math

import numpy as np
import pytest

from natix.errors import DataError
from natix.jsonio import canonical, dumps, number, read_json, write_json


def test_nan_is_null_and_infinities_are_strings():
    text = dumps({"a": float("nan"), "b": np.float32("inf"), "c": -math.inf, "d": np.arange(2), "e": (1, 2.5)})
    assert json.loads(text) == {"a": None, "b": "inf", "c": "-inf", "d": [0, 1], "e": [1, 2.5]}
    assert "NaN" not in text and "Infinity" not in text
    assert [number(v) for v in ("inf", "-inf", 2)] == [math.inf, -math.inf, 2.0]
    assert math.isnan(number(None))


def test_canonical_is_independent_of_key_order():
    assert canonical({"b": 1, "a": [1.0, None]}) == canonical({"a": [1.0, None], "b": 1})


def test_write_and_read_round_trip_with_one_line_errors(tmp_path):
    path = write_json(tmp_path / "x.json", {"v": float("nan")})
    assert read_json(path, fix="rerun") == {"v": None}
    assert read_json(tmp_path / "missing.json", fix="rerun", missing_ok=True) is None
    with pytest.raises(DataError, match="missing.json' is missing: rerun natix calibrate"):
        read_json(tmp_path / "missing.json", fix="rerun natix calibrate")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_json(tmp_path / "bad.json", fix="rerun")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="binary.json' is not valid JSON .*: rerun"):
        read_json(tmp_path / "binary.json", fix="rerun")
    with pytest.raises(TypeError, match="object is not JSON data"):
        dumps(object())
