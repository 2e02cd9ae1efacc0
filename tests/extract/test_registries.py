"""Registries of tier 1: backbone loaders and view layouts (unknown, duplicate, a custom one end to end)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from natix.config import ViewRecipe
from natix.errors import BackboneError, ViewSpecError
from natix.extract.backbones import LOADERS, LoadedModel, load_backbone, register_loader, split_spec
from natix.extract.views import LAYOUTS, View, build_views, register_layout, view_table

FAST = dict(batch_size=4, workers=0, progress=False)


class ToyViT(torch.nn.Module):
    """A patch embedding, a CLS and two register tokens, one linear mixing layer: a ViT in shape only."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch = torch.nn.Conv2d(3, width, kernel_size=16, stride=16)
        self.prefix = torch.nn.Parameter(torch.randn(1, 3, width, generator=g))
        self.mix = torch.nn.Linear(width, width)
        with torch.no_grad():
            for p in (self.patch.weight, self.patch.bias, self.mix.weight, self.mix.bias):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, pixels):
        patches = self.patch(pixels).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(len(pixels), -1, -1), patches], dim=1)
        return torch.tanh(self.mix(tokens))


def _toy_tokens(model, pixels):
    return model(pixels)


@register_loader("toy")
def load_toy(name: str, *, checkpoint: str | None) -> LoadedModel:
    """``toy:<seed>``: a ToyViT of width 24 with weights drawn from the seed."""
    if checkpoint:
        raise BackboneError("toy backbones take no --checkpoint")
    model = ToyViT(24, int(name))
    return LoadedModel(model=model, arch={"toy_width": 24}, n_prefix=3, width=24, tokens=_toy_tokens,
                       patch_embed="patch")


@register_layout("centre")
def centre_layout(recipe: ViewRecipe) -> list[View]:
    """The global view and the central half of the image."""
    return [View("global", (0.0, 0.0, 1.0, 1.0), False, recipe.view_size),
            View("centre", (0.25, 0.25, 0.75, 0.75), False, recipe.tile_size)]


# --------------------------------------------------------------------------- backbone loaders


def test_loader_names_and_specs():
    assert {"timm", "toy", "transformers"} <= set(LOADERS.names())
    assert split_spec("facebook/dinov3-vitl16-pretrain-lvd1689m") == ("transformers", "facebook/dinov3-vitl16-pretrain-lvd1689m")
    assert split_spec("timm:local-dir:/m") == ("timm", "local-dir:/m")
    assert split_spec("transformers:org/model") == ("transformers", "org/model")
    assert split_spec("toy:3") == ("toy", "3")


def test_an_existing_path_with_a_colon_is_a_directory(tmp_path):
    odd = tmp_path / "toy:7"
    odd.mkdir()
    assert split_spec(str(odd)) == ("transformers", str(odd))


def test_unknown_loader_is_one_line_listing_the_valid_names():
    with pytest.raises(BackboneError, match="unknown backbone loader 'nope': pass one of .*timm, toy, transformers") as info:
        load_backbone("nope:something")
    assert "\n" not in str(info.value)


def test_duplicate_loader_name_is_refused():
    with pytest.raises(BackboneError, match="backbone loader 'toy' is already registered"):
        register_loader("toy")(load_toy)
    assert LOADERS.get("toy") is load_toy  # the first registration stands


def test_custom_loader_gives_a_backbone_with_identity_and_pooling():
    bb, ident = load_backbone("toy:1", pool="cls+mean")
    assert ident["loader"] == "toy" and ident["arch"] == {"toy_width": 24} and ident["n_prefix_tokens"] == 3
    assert bb.dim == 48 and not bb.training and not any(p.requires_grad for p in bb.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        tokens = bb.model(x)
        torch.testing.assert_close(bb(x), torch.cat([tokens[:, 0], tokens[:, 3:].mean(1)], dim=1))
    _, other = load_backbone("toy:2")
    assert other["weights_sha256"] != ident["weights_sha256"]
    with pytest.raises(BackboneError, match="no --checkpoint"):
        load_backbone("toy:1", checkpoint="w.pth")


def test_custom_loader_end_to_end_through_extract(demo_images, tmp_path):
    from natix.cache.store import open_cache
    from natix.config import RunOptions
    from natix.data.decode import decode_image
    from natix.extract.extractor import extract
    from natix.extract.featurizer import as_chw
    from natix.extract.views import normalize

    r = extract(demo_images, "toy:5", recipe=ViewRecipe(n_views=10), cache_root=tmp_path / "c",
                options=RunOptions(**FAST), store_dtype="float32")
    assert (r.extracted, r.dim, r.n_views) == (12, 24, 10)
    with open_cache(r.cache_file) as cache:
        assert cache.identity["backbone"]["loader"] == "toy"
        assert cache.source["backbone"] == "toy:5"
        path, got = cache.paths[0], cache.features(np.array([0]), dtype=None)[0]
    # By hand, unfolded: decode → views → normalise → the toy model's CLS.
    bb, _ = load_backbone("toy:5")
    views = build_views([as_chw(decode_image(open(path, "rb").read()))], ViewRecipe(n_views=10))[224][0]
    with torch.inference_mode():
        expected = bb(normalize(views, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- view layouts


def test_the_grid_identity_is_unchanged_by_the_layout_registry():
    # These identities feed the fingerprints of every existing cache: the layout name appears
    # only for layouts other than the grid.
    assert ViewRecipe().identity() == {"n_views": 10, "grid": 3, "overlap": 0.125, "view_size": 224,
                                       "tile_size": 224, "flips": False}
    assert ViewRecipe(n_views=1).identity() == {"n_views": 1, "grid": None, "overlap": None, "view_size": 224,
                                                "tile_size": None, "flips": False}
    assert ViewRecipe(layout="grid") == ViewRecipe()
    assert ViewRecipe(n_views=2, layout="centre").identity()["layout"] == "centre"


def test_unknown_layout_is_one_line_listing_the_valid_names():
    with pytest.raises(ViewSpecError, match="unknown view layout 'spiral': pass one of centre, grid") as info:
        view_table(ViewRecipe(n_views=2, layout="spiral"))
    assert "\n" not in str(info.value)


def test_duplicate_layout_name_is_refused():
    with pytest.raises(ViewSpecError, match="view layout 'grid' is already registered"):
        register_layout("grid")(centre_layout)
    assert "centre" in LAYOUTS


def test_a_layout_must_give_n_views_views():
    with pytest.raises(ViewSpecError, match="view layout 'centre' gives 2 views for n_views=3: pass n_views=2"):
        view_table(ViewRecipe(n_views=3, layout="centre"))


def test_custom_layout_builds_its_views_and_round_trips_its_identity():
    recipe = ViewRecipe(n_views=2, tile_size=112, layout="centre")
    assert [v.name for v in view_table(recipe)] == ["global", "centre"]
    img = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    views = build_views([img], recipe)
    assert views[224].shape == (1, 1, 3, 224, 224) and views[112].shape == (1, 1, 3, 112, 112)
    assert ViewRecipe.from_identity(recipe.identity()) == recipe


def test_custom_layout_end_to_end_has_its_own_fingerprint(demo_images, tiny_backbone, tmp_path):
    from natix.cache.store import open_cache
    from natix.config import RunOptions
    from natix.extract.extractor import extract

    options = RunOptions(**FAST)
    centre = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=2, tile_size=112, layout="centre"),
                     cache_root=tmp_path / "c", options=options)
    grid = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c",
                   options=options)
    assert centre.fingerprint != grid.fingerprint and centre.n_views == 2
    with open_cache(centre.cache_file) as a, open_cache(grid.cache_file) as b:
        assert [v.name for v in a.views] == ["global", "centre"]
        rows = {i: k for k, i in enumerate(b.ids)}
        order = np.array([rows[i] for i in a.ids])
        # the global view is the same view in both recipes
        np.testing.assert_array_equal(a.features(None, dtype=None)[:, 0], b.features(order, dtype=None)[:, 0])
