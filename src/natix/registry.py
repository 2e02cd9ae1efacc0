"""The one name → object registry behind every extension point of natix.

Heads, aggregators, calibrators, exit rules, backbone loaders and view layouts are each one
object registered under a name with a decorator (timm's ``register_model`` / ``create_model``)::

    @register_head("mine")
    class Mine(nn.Module): ...

An unknown name is a one-line error listing the valid names; registering a name twice is an
error (a silent replacement would change what an existing name means). Registered constructors
name the arguments they use (no catch-all ``**kwargs``), so :meth:`Registry.create` turns a
misspelt hyperparameter into a one-line error instead of a silent default.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

from natix.errors import ConfigError, NatixError

__all__ = ["Registry"]


class Registry:
    """Registered objects by name.

    Parameters
    ----------
    kind : what is registered, for messages ("head", "backbone loader", ...)
    error : the `NatixError` subclass raised for an unknown or duplicate name
    shared : argument names every caller of :meth:`create` may pass; a constructor that does not
        take one is built without it (e.g. the feature width of heads)
    hint : how a user passes a name, appended to the unknown-name message
    """

    def __init__(self, kind: str, *, error: type[NatixError] = ConfigError, shared: tuple[str, ...] = (),
                 hint: str = ""):
        self.kind = kind
        self.error = error
        self.shared = shared
        self.hint = hint
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: register the object under `name`, which must be new. A callable that takes
        ``**kwargs`` is refused: it must name the arguments it uses."""

        def add(obj: Callable) -> Callable:
            if name in self._items:
                raise self.error(f"{self.kind} '{name}' is already registered: pick another name")
            if callable(obj) and any(p.kind is p.VAR_KEYWORD for p in _parameters(obj)):
                raise self.error(f"{self.kind} '{name}' takes **kwargs: name the arguments it uses")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> Callable:
        """The object registered under `name`; an unknown name raises with the valid names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}: pass one of {', '.join(self.names())}"
                             f"{self.hint}") from None

    __getitem__ = get

    def arguments(self, name: str) -> tuple[str, ...]:
        """The keyword arguments the constructor of `name` takes, in signature order."""
        return tuple(p.name for p in _parameters(self.get(name))
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def supported(self, name: str, options: dict) -> dict:
        """The entries of `options` that the constructor of `name` takes (the rest are not its own)."""
        takes = self.arguments(name)
        return {k: v for k, v in options.items() if k in takes}

    def create(self, name: str, **kwargs):
        """Build the object `name` with `kwargs`; an argument it does not take raises."""
        fn = self.get(name)
        takes = self.arguments(name)
        unknown = [k for k in kwargs if k not in takes and k not in self.shared]
        if unknown:
            valid = ", ".join(dict.fromkeys((*self.shared, *takes)))
            raise self.error(f"{self.kind} '{name}' has no argument '{unknown[0]}': pass only {valid}")
        return fn(**{k: v for k, v in kwargs.items() if k in takes})

    def names(self) -> list[str]:
        """The registered names, sorted (iteration keeps the registration order)."""
        return sorted(self._items)

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"


def _parameters(obj) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return []
