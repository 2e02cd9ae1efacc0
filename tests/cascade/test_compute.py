"""Cascade compute: ViT GFLOPs of a cache's view recipe, expected GFLOPs of a routing."""

from __future__ import annotations

import numpy as np
import pytest

from natix.cache.store import CacheWriter, Rows
from natix.cascade.compute import expected_gflops, gflops_from_identity, gflops_per_image

# --------------------------------------------------------------------------- compute


def _identity(dim, depth, mlp, *, gated=False, views=None, loader="transformers"):
    views = views or {"n_views": 1, "grid": None, "overlap": None, "view_size": 224, "tile_size": None,
                      "flips": False}
    if loader == "transformers":
        arch = {"hidden_size": dim, "num_hidden_layers": depth, "intermediate_size": mlp, "patch_size": 16,
                "num_register_tokens": 4, "use_gated_mlp": gated}
    else:
        arch = {"architecture": "vit_large_patch16_dinov3", "embed_dim": dim, "depth": depth, "num_prefix_tokens": 5}
    return {"backbone": {"loader": loader, "arch": arch, "n_prefix_tokens": 5}, "views": views}


@pytest.mark.parametrize("dim, depth, mlp, gated, expected", [
    (384, 12, 1536, False, 9.4),  # DINOv3 S   (DESIGN §4)
    (768, 12, 3072, False, 35.9),  # B
    (1024, 24, 4096, False, 125.7),  # L
    (1280, 32, 5120, True, 344.2),  # H+ (SwiGLU)
])
def test_gflops_per_224_view_match_the_design_table(dim, depth, mlp, gated, expected):
    assert gflops_from_identity(_identity(dim, depth, mlp, gated=gated)) == pytest.approx(expected, rel=0.01)


def test_gflops_of_a_timm_identity_and_of_view_recipes():
    single = gflops_from_identity(_identity(1024, 24, 4096))
    assert gflops_from_identity(_identity(1024, 24, None, loader="timm")) == pytest.approx(single, rel=1e-12)
    ten = {"n_views": 10, "grid": 3, "overlap": 0.0, "view_size": 224, "tile_size": 224, "flips": False}
    twenty = {**ten, "n_views": 20, "flips": True}
    assert gflops_from_identity(_identity(1024, 24, 4096, views=ten)) == pytest.approx(10 * single)
    assert gflops_from_identity(_identity(1024, 24, 4096, views=twenty)) == pytest.approx(20 * single)
    small = gflops_from_identity(_identity(1024, 24, 4096, views={**ten, "tile_size": 112})) - single
    assert 0.24 < small / (9 * single) < 0.3  # a 112 tile costs about a quarter of a 224 view
    assert gflops_from_identity({"synthetic": {"n": 10}}) is None
    # A registered (non-grid) layout's view sizes are not in its identity: unknown, not an error.
    centre = {"n_views": 2, "grid": 3, "overlap": 0.125, "view_size": 224, "tile_size": 224, "layout": "centre"}
    assert gflops_from_identity(_identity(1024, 24, 4096, views=centre)) is None


def test_gflops_per_image_reads_the_cache_identity(runs, tmp_path):
    assert gflops_per_image(runs["cache"]) is None  # synthetic: unknown
    ident = {**_identity(1024, 24, 4096), "extractor_version": 0, "store_dtype": "float16"}
    table = [{"name": "global", "box": [0.0, 0.0, 1.0, 1.0], "flip": False}]
    with CacheWriter(tmp_path / "vitl", ident, table, dim=4) as w:
        w.add_part(np.zeros((2, 1, 4), np.float16), Rows(["a", "b"], ["a.jpg", "b.jpg"], [0, 1], ["", ""],
                                                         [(224, 224)] * 2), [])
        path = w.commit()
    assert gflops_per_image(path) == pytest.approx(125.7, rel=0.01)


def test_expected_gflops_weights_each_stage_by_its_reach():
    total, parts = expected_gflops([1.0, 0.25], [10.0, 40.0])
    assert total == pytest.approx(20.0) and parts == [10.0, 10.0]
    total, parts = expected_gflops([1.0, 0.25, 0.1], [10.0, 40.0, None])
    assert total is None and parts == [10.0, 10.0, None]
    assert expected_gflops([1.0, 0.0], [10.0, None])[0] == pytest.approx(10.0)  # never reached: no cost
