"""Name → function registries for tier 1's extension points: backbone loaders and view layouts.

A new backbone loader or view layout is one function under a decorator::

    @register_loader("mine")
    def load_mine(name, *, checkpoint): ...

An unknown name is a one-line error that lists the valid names; registering a name twice is an
error too (a silent replacement would change what an existing spec means).
"""

from __future__ import annotations

from collections.abc import Callable

from natix.errors import NatixError


class Registry:
    """Registered functions by name; `error` is the `NatixError` subclass raised for a bad name.

    Parameters
    ----------
    kind : what is registered, for messages ("backbone loader", "view layout")
    error : the error class for unknown and duplicate names
    hint : how a user passes a name, appended to the unknown-name message
    """

    def __init__(self, kind: str, *, error: type[NatixError], hint: str = ""):
        self.kind = kind
        self.error = error
        self.hint = hint
        self._fns: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator: register the function under `name`, which must be new."""
        def add(fn: Callable) -> Callable:
            if name in self._fns:
                raise self.error(f"{self.kind} '{name}' is already registered: pick another name")
            self._fns[name] = fn
            return fn
        return add

    def get(self, name: str) -> Callable:
        """The function registered under `name`; an unknown name raises with the valid names."""
        try:
            return self._fns[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} '{name}': pass one of {', '.join(self.names())}"
                             f"{self.hint}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns
