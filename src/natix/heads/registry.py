"""Name → constructor registries for heads and view aggregators (timm's create_model, small).

Constructors name the arguments they use (no catch-all ``**kwargs``), so a misspelt
hyperparameter is a one-line error instead of a silent default. Each registry has one
*shared* argument every caller may pass, the feature width (``in_dim`` for heads, ``dim`` for
aggregators); a constructor that has no use for it is built without it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from natix.errors import ConfigError


class Registry:
    """A dict of constructors filled by a decorator; unknown names, duplicates and unknown arguments raise.

    Parameters
    ----------
    kind : what the registry holds, for messages ("head", "aggregator")
    shared : argument names any caller may pass; a constructor that does not take one is built
        without it
    """

    def __init__(self, kind: str, *, shared: tuple[str, ...] = ()):
        self.kind = kind
        self.shared = shared
        self._items: dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        """Decorator: register `fn` under `name` (refused when `fn` takes ``**kwargs``)."""

        def wrap(fn: Callable) -> Callable:
            if name in self._items:
                raise ConfigError(f"{self.kind} '{name}' is already registered")
            if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
                raise ConfigError(f"{self.kind} '{name}' takes **kwargs: name the arguments its constructor uses")
            self._items[name] = fn
            return fn

        return wrap

    def _get(self, name: str) -> Callable:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}': pass one of {', '.join(self.names())}")
        return self._items[name]

    def arguments(self, name: str) -> tuple[str, ...]:
        """The keyword arguments the constructor of `name` takes, in signature order."""
        params = inspect.signature(self._get(name)).parameters.values()
        return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def supported(self, name: str, options: dict) -> dict:
        """The entries of `options` that the constructor of `name` takes (the rest are not its own)."""
        takes = self.arguments(name)
        return {k: v for k, v in options.items() if k in takes}

    def create(self, name: str, **kwargs):
        """Build the registered object `name` with `kwargs`; an argument it does not take raises."""
        fn = self._get(name)
        takes = self.arguments(name)
        unknown = [k for k in kwargs if k not in takes and k not in self.shared]
        if unknown:
            valid = ", ".join(dict.fromkeys((*self.shared, *takes)))
            raise ConfigError(f"{self.kind} '{name}' has no argument '{unknown[0]}': pass only {valid}")
        return fn(**{k: v for k, v in kwargs.items() if k in takes})

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


HEADS = Registry("head", shared=("in_dim",))
# The names `natix.heads.modules` registers, known without importing torch (a test keeps them in step).
BUILTIN_HEADS = ("linear", "mlp")
BUILTIN_AGGREGATORS = ("global", "mean", "max", "topk", "attention", "gated-attention")
AGGREGATORS = Registry("aggregator", shared=("dim",))
register_head = HEADS.register
register_aggregator = AGGREGATORS.register


def ensure_builtins() -> None:
    """Importing the module registers the built-in heads and aggregators (imports torch)."""
    import natix.heads.modules  # noqa: F401


def create_head(name: str, **kwargs):
    """A head module by name: `in_dim` plus the hyperparameters it takes (any other raises)."""
    ensure_builtins()
    return HEADS.create(name, **kwargs)


def create_aggregator(name: str, **kwargs):
    """A view aggregator module by name: `dim` plus the hyperparameters it takes (any other raises)."""
    ensure_builtins()
    return AGGREGATORS.create(name, **kwargs)


def list_heads() -> list[str]:
    ensure_builtins()
    return HEADS.names()


def list_aggregators() -> list[str]:
    ensure_builtins()
    return AGGREGATORS.names()
