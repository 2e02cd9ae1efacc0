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
# The names `natix.heads.modules` registers, known without importing torch (a test keeps them in step).
BUILTIN_HEADS = ("linear", "mlp")
BUILTIN_AGGREGATORS = ("global", "mean", "max", "topk", "attention", "gated-attention")
AGGREGATORS = Registry("aggregator")
register_head = HEADS.register
register_aggregator = AGGREGATORS.register


def ensure_builtins() -> None:
    """Importing the module registers the built-in heads and aggregators (imports torch)."""
    import natix.heads.modules  # noqa: F401


def create_head(name: str, **kwargs):
    """A head module by name (`in_dim` plus its hyperparameters)."""
    ensure_builtins()
    return HEADS.create(name, **kwargs)


def create_aggregator(name: str, **kwargs):
    """A view aggregator module by name (`dim` plus its hyperparameters)."""
    ensure_builtins()
    return AGGREGATORS.create(name, **kwargs)


def list_heads() -> list[str]:
    ensure_builtins()
    return HEADS.names()


def list_aggregators() -> list[str]:
    ensure_builtins()
    return AGGREGATORS.names()
