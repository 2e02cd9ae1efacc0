"""Extraction fixtures: a registered backbone loader that simulates CUDA out-of-memory on CPU."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from natix.extract.backbones import LOADERS, LoadedModel, register_loader

_GUARD = SimpleNamespace(limit=None, calls=[])


@register_loader("oom-guard")
def load_oom_guard(name: str, *, checkpoint: str | None) -> LoadedModel:
    """The transformers backbone at `name`, raising CUDA out-of-memory on forwards of more than
    ``_GUARD.limit`` views (none while the limit is None); every forward's view count is recorded."""
    base = LOADERS.get("transformers")(name, checkpoint=checkpoint)

    def tokens(model, pixels):
        _GUARD.calls.append(pixels.shape[0])
        if _GUARD.limit is not None and pixels.shape[0] > _GUARD.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return base.tokens(model, pixels)

    return dataclasses.replace(base, tokens=tokens)


@pytest.fixture
def oom_guard():
    """Set ``.limit`` (views per forward) and read ``.calls``; backbone spec ``oom-guard:<dir>``."""
    _GUARD.limit, _GUARD.calls = None, []
    yield _GUARD
    _GUARD.limit, _GUARD.calls = None, []
