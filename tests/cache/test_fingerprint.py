import math

import pytest

from natix.cache.fingerprint import canonical_json, fingerprint
from natix.errors import CacheError


def test_key_order_and_whitespace_do_not_matter():
    a = {"b": 1, "a": {"y": [1, 2.5], "x": None}}
    b = {"a": {"x": None, "y": [1, 2.5]}, "b": 1}
    assert canonical_json(a) == canonical_json(b) == '{"a":{"x":null,"y":[1,2.5]},"b":1}'
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 64


@pytest.mark.parametrize("change", [
    lambda d: d.update(b=2),
    lambda d: d["a"].update(x=0),
    lambda d: d["a"]["y"].append(3),
    lambda d: d["a"].update(y=[1, 2.5000001]),
])
def test_any_value_change_changes_the_fingerprint(change):
    base = {"b": 1, "a": {"y": [1, 2.5], "x": None}}
    changed = {"b": 1, "a": {"y": [1, 2.5], "x": None}}
    change(changed)
    assert fingerprint(base) != fingerprint(changed)


@pytest.mark.parametrize("bad, match", [
    ({"x": object()}, "identity.x has type object"),
    ({"x": {1: "a"}}, "non-string key"),
    ({"x": [math.nan]}, "no canonical form"),
    ({"x": math.inf}, "no canonical form"),
    ({"x": {1, 2}}, "type set"),
])
def test_unhashable_values_raise_instead_of_falling_back(bad, match):
    with pytest.raises(CacheError, match=match):
        fingerprint(bad)
