"""The one registry behind every extension point."""

import pytest

from natix.errors import BackboneError, ConfigError
from natix.registry import Registry


def test_unknown_duplicate_and_catch_all_names_are_one_line_errors():
    reg = Registry("widget", error=BackboneError, hint=" as --widget NAME")
    reg.register("b")(lambda *, x: x)
    reg.register("a")(lambda *, x: x)
    with pytest.raises(BackboneError, match=r"^unknown widget 'c': pass one of a, b as --widget NAME$"):
        reg.get("c")
    with pytest.raises(BackboneError, match="widget 'a' is already registered: pick another name"):
        reg.register("a")(lambda *, x: None)
    with pytest.raises(BackboneError, match=r"widget 'k' takes \*\*kwargs: name the arguments it uses"):
        reg.register("k")(lambda **kw: kw)
    assert list(reg) == ["b", "a"] and reg.names() == ["a", "b"] and len(reg) == 2 and "k" not in reg


def test_create_passes_shared_arguments_only_to_constructors_that_take_them():
    reg = Registry("widget", shared=("dim",))
    reg.register("w")(lambda *, k=2: {"k": k})
    assert reg.create("w", dim=8, k=5) == {"k": 5}
    with pytest.raises(ConfigError, match=r"^widget 'w' has no argument 'kk': pass only dim, k$"):
        reg.create("w", dim=8, kk=5)
    assert dict(reg) == {"w": reg["w"]} and reg.supported("w", {"k": 1, "q": 2}) == {"k": 1}
