"""Shared fixtures: a temp cache root, seeded RNGs, a tiny random DINOv3, tiny image sets."""

from __future__ import annotations

import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Every test gets its own NATIX_CACHE and fixed seeds."""
    monkeypatch.setenv("NATIX_CACHE", str(tmp_path / "natix-cache"))
    random.seed(0)
    np.random.seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A tiny random DINOv3 ViT saved with save_pretrained (the local-directory loader path)."""
    from natix.extract.backbones import save_tiny_dinov3

    return save_tiny_dinov3(tmp_path_factory.mktemp("tiny-dinov3") / "model", seed=0)


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory):
    """12 generated street scenes (both sizes, both classes) with labels.csv."""
    from natix.data.demo import make_demo_images

    out = tmp_path_factory.mktemp("demo") / "images"
    make_demo_images(out, n=12, seed=0)
    return out


@pytest.fixture
def cache_root(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tier-2 and serving tests train or run tiny models: one torch thread avoids oversubscription."""
    if request.node.path.parent.name not in {"heads", "cascade", "serve", "calibrate", "finetune"}:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def dead_hub(monkeypatch):
    """A Hub endpoint that refuses connections at once (port 9 of this machine), not in offline mode."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
