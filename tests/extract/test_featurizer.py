"""The one featurizer: its steps, view order, the out-of-memory back-off, gradients, store rounding."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from natix.config import Preprocess, ViewRecipe
from natix.errors import ConfigError
from natix.extract import Featurizer
from natix.extract.backbones import load_backbone
from natix.extract.views import build_views, normalize, view_table

MIXED = ViewRecipe(n_views=20, tile_size=112)  # sides interleave in view-table order: 224, 112 ×9, 224, 112 ×9


def _images(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 40, 56), (3, 40, 56), (3, 33, 21), (3, 64, 64), (3, 17, 90)]
    return [torch.randint(0, 256, s, dtype=torch.uint8, generator=g) for s in shapes]


def _featurizer(tiny_backbone, recipe=ViewRecipe(), **kwargs) -> Featurizer:
    bb, _ = load_backbone(str(tiny_backbone))
    return Featurizer(bb, recipe, Preprocess(), **kwargs)


@pytest.mark.parametrize("recipe", [ViewRecipe(), MIXED, ViewRecipe(n_views=1)], ids=["10", "20-mixed", "1"])
def test_worker_views_then_forward_equal_the_whole_call_bit_for_bit(tiny_backbone, recipe):
    f = _featurizer(tiny_backbone, recipe, batch_size=2)
    images = _images()
    whole = f(images)
    per_image = [{s: v[0] for s, v in f.views([im]).items()} for im in images]  # as DataLoader workers build them
    stepwise = f.forward(f.stack(per_image))
    assert whole.dtype == torch.float32 and whole.shape == (5, recipe.n_views, 32)
    assert torch.equal(whole, stepwise)


def test_features_come_back_in_view_table_order(tiny_backbone):
    f = _featurizer(tiny_backbone, MIXED)
    ref, _ = load_backbone(str(tiny_backbone))  # unfolded
    img = _images()[2]
    got = f([img])[0]
    views = build_views([img], MIXED)
    seen = {224: 0, 112: 0}
    with torch.inference_mode():
        for i, view in enumerate(view_table(MIXED)):
            pixels = views[view.size][0, seen[view.size]]
            seen[view.size] += 1
            expected = ref(normalize(pixels[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))[0]
            torch.testing.assert_close(got[i], expected, rtol=1e-4, atol=1e-4, msg=view.name)


def test_out_of_memory_halves_the_same_images_and_keeps_the_size(tiny_backbone, oom_guard, caplog):
    bb, _ = load_backbone(f"oom-guard:{tiny_backbone}")
    f = Featurizer(bb, ViewRecipe(), Preprocess(), batch_size=4)
    reference = f(_images())
    oom_guard.calls.clear()
    f.batch_size, oom_guard.limit = 4, 10
    with caplog.at_level(logging.WARNING, logger="natix.extract.featurizer"):
        got = f(_images())
    assert oom_guard.calls == [40, 20, 10] + [10] * 4 and f.batch_size == 1  # 4 images → 2 → 1, kept for the rest
    assert caplog.messages == ["CUDA out of memory: retrying the same images 2 per forward",
                               "CUDA out of memory: retrying the same images 1 per forward"]
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    caplog.clear()
    f(_images()[:2])  # a later call starts at the reached size: no new out-of-memory
    assert not caplog.messages
    oom_guard.limit = 0
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one image that does not fit is not hidden
        f(_images()[:1])


def test_out_of_memory_on_one_image_is_raised_after_halving_once_per_size(tiny_backbone, oom_guard, caplog):
    bb, _ = load_backbone(f"oom-guard:{tiny_backbone}")
    f = Featurizer(bb, ViewRecipe(), Preprocess(), batch_size=4)
    oom_guard.limit = 0
    with caplog.at_level(logging.WARNING, logger="natix.extract.featurizer"), \
            pytest.raises(torch.cuda.OutOfMemoryError):
        f(_images())
    assert oom_guard.calls == [40, 20, 10] and f.batch_size == 1  # no retry at a size that already failed
    assert len(caplog.messages) == 2


def test_folding_only_in_fp32_inference(tiny_backbone):
    assert _featurizer(tiny_backbone).folded
    assert not _featurizer(tiny_backbone, precision="bf16").folded
    assert not _featurizer(tiny_backbone, grad=True).folded


def test_grad_mode_keeps_autograd_and_the_checkpoint_weights(tiny_backbone):
    frozen = _featurizer(tiny_backbone)
    f = _featurizer(tiny_backbone, grad=True)
    conv = f.backbone.patch_embedding()
    weights = conv.weight.detach().clone()
    for p in f.backbone.parameters():
        p.requires_grad_(True)
    out = f(_images()[:2])
    assert out.requires_grad and not torch.is_inference(out)
    out.square().mean().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert torch.equal(conv.weight.detach(), weights)  # not folded
    torch.testing.assert_close(out.detach(), frozen(_images()[:2]), rtol=1e-4, atol=1e-4)


def test_store_rounds_as_the_cache_and_leaves_overflow_to_the_caller(tiny_backbone):
    f = _featurizer(tiny_backbone, store_dtype="float16")
    x = torch.tensor([[[1.0, 1 / 3, 70000.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = f.store(x)
    assert stored.dtype == np.float16
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(stored, x.numpy().astype(np.float16))
    assert np.isinf(stored[0, 0, 2])
    assert f.features(_images()[:1]).dtype == np.float16


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch size must be >= 1"),
    ({"store_dtype": "int8"}, "unknown store dtype 'int8'"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_bad_options_are_one_line_errors(tiny_backbone, kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        _featurizer(tiny_backbone, **kwargs)
    assert "\n" not in str(info.value)


def test_no_images_give_no_features(tiny_backbone):
    f = _featurizer(tiny_backbone)
    assert f([]).shape == (0, 10, 32) and f.features([]).shape == (0, 10, 32)


def test_a_compiled_backbone_sees_one_batch_shape_and_the_same_features(tiny_backbone, monkeypatch):
    shapes = []

    def fake_compile(model):  # records the shapes a compiled graph would be specialised on
        def run(pixels):
            shapes.append(tuple(pixels.shape))
            return model(pixels)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    images = _images()  # 5 images: batches of 2, 2 and a short 1
    plain = _featurizer(tiny_backbone, batch_size=2)(images)
    compiled = _featurizer(tiny_backbone, batch_size=2, compile=True)(images)
    assert len(set(shapes)) == 1 and shapes[0][0] == 2 * ViewRecipe().n_views
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-6)
