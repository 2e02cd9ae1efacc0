"""The registries of heads and view aggregators (:class:`natix.registry.Registry`).

Each has one *shared* argument every caller may pass, the feature width (``in_dim`` for heads,
``dim`` for aggregators); a constructor that has no use for it is built without it.
"""

from __future__ import annotations

from natix.registry import Registry

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
