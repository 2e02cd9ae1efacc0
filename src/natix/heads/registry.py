"""Name → constructor registries for heads and view aggregators (timm's create_model, small)."""

from __future__ import annotations

from collections.abc import Callable

from natix.errors import ConfigError


class Registry:
    """A dict of constructors filled by a decorator; unknown and duplicate names raise."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        """Decorator: register `fn` under `name`."""

        def wrap(fn: Callable) -> Callable:
            if name in self._items:
                raise ConfigError(f"{self.kind} '{name}' is already registered")
            self._items[name] = fn
            return fn

        return wrap

    def create(self, name: str, **kwargs):
        """Build the registered object `name` with `kwargs`."""
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}': pass one of {', '.join(self.names())}")
        return self._items[name](**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


HEADS = Registry("head")
AGGREGATORS = Registry("aggregator")
register_head = HEADS.register
register_aggregator = AGGREGATORS.register


def list_heads() -> list[str]:
    return HEADS.names()


def list_aggregators() -> list[str]:
    return AGGREGATORS.names()
