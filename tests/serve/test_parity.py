"""What is served is what was cached: bundles and `natix extract` run the same Featurizer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from natix.config import RunOptions
from natix.extract import Featurizer
from natix.extract.extractor import extract
from natix.serve import export_bundle, load_bundle

CONFIGS = {  # name: (store dtype, precision, extraction workers)
    "float16-fp32": ("float16", "fp32", 0),
    "float32-fp32": ("float32", "fp32", 2),
    "float32-bf16": ("float32", "bf16", 0),
}


def _cache(cache_file):
    from natix.cache.store import open_cache

    with open_cache(cache_file) as cache:
        return list(cache.paths), cache.features(None, dtype=None)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, demo_images, tiny_backbone, tmp_path_factory):
    """Demo images → cache (store dtype, precision) → a 10-view mean-pooled run → its bundle."""
    from natix.config import ViewRecipe
    from natix.heads.runs import fit_run
    from natix.heads.train import HeadConfig, TrainConfig

    store_dtype, precision, workers = CONFIGS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    res = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=10), store_dtype=store_dtype,
                  precision=precision, cache_root=root / "cache",
                  options=RunOptions(batch_size=4, workers=workers, progress=False))
    fit_run(res.cache_file, root / "run", head=HeadConfig(agg="mean"), train=TrainConfig(max_epochs=2),
            ratios=(0.25, 0.25, 0.25, 0.25))
    bundle = export_bundle(root / "run", root / "bundle")
    paths, X = _cache(res.cache_file)
    return SimpleNamespace(name=request.param, bundle=bundle, paths=paths, X=X, store_dtype=store_dtype)


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_bundle_features_equal_the_cache_bit_for_bit(exported, batch_size):
    bundle = load_bundle(exported.bundle)
    F = bundle.features(exported.paths, batch_size=batch_size)
    assert F.dtype == np.dtype(exported.store_dtype) and F.shape == exported.X.shape
    assert F.tobytes() == exported.X.tobytes()


def test_extraction_and_serving_run_the_same_featurizer_code(exported, demo_images, tiny_backbone, tmp_path,
                                                              monkeypatch):
    """Doubling the output of `Featurizer.forward` doubles both the cached and the served features."""
    calls = []
    real = Featurizer.forward

    def doubled(self, views):
        calls.append(self)
        return real(self, views) * 2

    monkeypatch.setattr(Featurizer, "forward", doubled)
    store_dtype, precision, _ = CONFIGS[exported.name]
    res = extract(demo_images, str(tiny_backbone), store_dtype=store_dtype, precision=precision,
                  cache_root=tmp_path / "cache", options=RunOptions(batch_size=4, workers=0, progress=False))
    extracting = len(calls)
    paths, X = _cache(res.cache_file)
    served = load_bundle(exported.bundle).features(paths)
    assert extracting > 0 and len(calls) > extracting  # both paths went through Featurizer.forward
    by_path = dict(zip(exported.paths, exported.X))
    np.testing.assert_array_equal(X, 2 * np.stack([by_path[p] for p in paths]))  # the patch reached the cache
    assert served.tobytes() == X.tobytes()  # ... and the bundle, identically
