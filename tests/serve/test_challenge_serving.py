"""Serving a validator-style request: the 224×224 quality-75 JPEG of a challenge draw, sent to a
bundle, gets the features and the answer the challenge cache holds for that draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natix.cache.store import open_cache
from natix.config import RunOptions
from natix.data.challenge import challenge_recipe
from natix.data.decode import decode_image
from natix.extract.extractor import extract
from natix.heads.runs import fit_run
from natix.heads.train import HeadConfig, TrainConfig
from natix.rundir import Run
from natix.serve import export_bundle, load_bundle


@pytest.fixture(scope="module")
def e1_bundle(demo_images, tiny_backbone, tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("e1-serve")
    res = extract(demo_images, str(tiny_backbone), cache_root=root / "cache", challenge="validator-e1", draws=2,
                  options=RunOptions(batch_size=3, workers=0, progress=False))
    run = root / "run"
    fit_run(res.cache_file, run, head=HeadConfig(agg="global"), train=TrainConfig(max_epochs=3),
            ratios=(0.25, 0.25, 0.25, 0.25))
    bundle = export_bundle(run, root / "bundle")
    torch.set_num_threads(old)
    return res.cache_file, run, bundle, root


def test_a_challenge_jpeg_served_equals_its_cached_draw(e1_bundle):
    cache_file, run, bundle_dir, root = e1_bundle
    recipe = challenge_recipe("validator-e1")
    bundle = load_bundle(bundle_dir)
    test = Run(run).predictions("val_test")
    with open_cache(cache_file) as c:
        row_of = {i: r for r, i in enumerate(c.ids.tolist())}
        rows = [row_of[i] for i in test["ids"].tolist()]
        cached = c.features(rows, dtype=None)
        files = []
        for k, r in enumerate(rows):
            params = c.draws[r]["params"]
            source = decode_image(open(c.paths[r], "rb").read())
            jpeg = recipe.render(source, params)  # the bytes a validator would send
            assert jpeg[:2] == b"\xff\xd8"
            path = root / f"request_{k}.jpg"
            path.write_bytes(jpeg)
            files.append(path)
    served = bundle.features(files, batch_size=4)
    np.testing.assert_array_equal(served, cached)
    np.testing.assert_allclose(bundle.roadwork_probability(files), test["prob"], rtol=0, atol=1e-6)
