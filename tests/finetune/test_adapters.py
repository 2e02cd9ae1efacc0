"""Fine-tuning methods: what trains, and that what was trained is what extraction reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natix.cache.store import open_cache
from natix.config import Preprocess, RunOptions, ViewRecipe
from natix.data.decode import decode_image
from natix.errors import ConfigError
from natix.extract.backbones import load_backbone
from natix.extract.extractor import extract
from natix.extract.featurizer import Featurizer, as_chw
from natix.finetune import AdapterSpec, attach, merged, save_adapter

RECIPE = ViewRecipe(n_views=1)
OPTS = RunOptions(batch_size=4, workers=0, progress=False)


def _images(demo_images):
    paths = sorted(p for p in demo_images.iterdir() if p.suffix in (".jpg", ".png"))[:4]
    return paths, [as_chw(decode_image(p.read_bytes())) for p in paths]


def _train_a_little(backbone, spec, images):
    """A few AdamW steps on a made-up objective: enough to move every trainable weight."""
    torch.manual_seed(0)
    params = attach(backbone, spec)
    featurizer = Featurizer(backbone, RECIPE, Preprocess(), grad=True, store_dtype="float32")
    backbone.train()
    opt = torch.optim.AdamW(params, lr=5e-2)
    for _ in range(3):
        loss = (featurizer(images) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    backbone.eval()
    return params


@pytest.mark.parametrize("method", ["lora", "dora", "last-k", "full"])
def test_a_trained_adapter_is_what_extraction_reads_back(method, tiny_backbone, demo_images, tmp_path):
    paths, images = _images(demo_images)
    frozen = extract(demo_images, str(tiny_backbone), recipe=RECIPE, store_dtype="float32", cache_root=tmp_path / "c",
                     options=OPTS)
    backbone, _ = load_backbone(str(tiny_backbone))
    spec = AdapterSpec(method=method, rank=4)
    params = _train_a_little(backbone, spec, images)
    total = sum(p.numel() for p in backbone.parameters())
    trained = sum(p.numel() for p in params)
    assert 0 < trained <= total and (trained < total) == (method != "full")
    saved = save_adapter(backbone, spec, tmp_path / "adapter")
    with torch.no_grad():
        served = Featurizer(merged(backbone, spec), RECIPE, Preprocess(), store_dtype="float32").features(images)
    kwargs = {"--adapter": {"adapter": saved["path"]}, "--backbone": {}, "--checkpoint": {"checkpoint": saved["path"]}}
    name = saved["path"] if saved["option"] == "--backbone" else str(tiny_backbone)
    tuned = extract(demo_images, name, recipe=RECIPE, store_dtype="float32", cache_root=tmp_path / "c", options=OPTS,
                    **kwargs[saved["option"]])
    assert tuned.fingerprint != frozen.fingerprint and tuned.extracted == tuned.images  # a new cache, the old kept
    assert frozen.cache_file.is_file()
    with open_cache(tuned.cache_file) as c, open_cache(frozen.cache_file) as f:
        row = {p: r for r, p in enumerate(c.paths)}
        X = c.features([row[str(p)] for p in paths])
        assert not np.allclose(X, f.features([row[str(p)] for p in paths]), atol=1e-3)  # the weights moved
    np.testing.assert_allclose(X, served, rtol=1e-4, atol=1e-4)


def test_lora_trains_only_the_adapters_and_last_k_only_the_last_blocks(tiny_backbone):
    backbone, _ = load_backbone(str(tiny_backbone))
    params = attach(backbone, AdapterSpec(method="lora", rank=2, targets=("q_proj", "v_proj")))
    names = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in names)
    assert len(params) == len(names)
    backbone, _ = load_backbone(str(tiny_backbone))
    attach(backbone, AdapterSpec(method="last-k", unfreeze_last=1))
    names = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert any(".layer.1." in n for n in names) and not any(".layer.0." in n for n in names)
    assert any(n.startswith("model.norm.") for n in names)


@pytest.mark.parametrize(("spec", "match"), [
    (dict(method="qlora"), "unknown fine-tuning method 'qlora'.*--method one of lora, dora, last-k, full"),
    (dict(rank=0), "rank must be an integer >= 1"),
    (dict(alpha=0), "lora alpha must be a positive number"),
    (dict(dropout=1.0), r"lora dropout must lie in \[0, 1\)"),
    (dict(targets=()), "targets must be non-empty layer names"),
])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        AdapterSpec(**spec)


def test_targets_and_blocks_the_backbone_lacks_are_refused(tiny_backbone):
    backbone, _ = load_backbone(str(tiny_backbone))
    with pytest.raises(ConfigError, match="no linear layer of this backbone is named qkv.*e.g. down_proj"):
        attach(backbone, AdapterSpec(targets=("qkv",)))
    with pytest.raises(ConfigError, match="--unfreeze-last 5 is more than the backbone's 2 blocks"):
        attach(backbone, AdapterSpec(method="last-k", unfreeze_last=5))
