"""View geometry, recipe validation, batched view building and normalisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natix.config import ViewRecipe
from natix.errors import ViewSpecError
from natix.extract.views import build_views, normalize, pixel_boxes, tile_edges, view_table

GRIDS = (1, 2, 3, 4, 5)
OVERLAPS = (0.0, 0.125, 0.5, 0.9)
# (height, width): square, tall, wide, tiny, degenerate strips, odd primes, huge.
SIZES = [
    (1, 1), (2, 2), (3, 7), (7, 3), (5, 9), (16, 16), (10, 1000), (1000, 10), (97, 131),
    (224, 224), (333, 77), (720, 1280), (1280, 720), (1009, 1013), (4000, 3000), (3000, 4000),
]
MASK_LIMIT = 1_500_000  # pixels; above this the 2-D coverage mask is replaced by the 1-D check


def _recipes(flips: bool = False):
    for grid in GRIDS:
        for overlap in OVERLAPS:
            n = 1 + grid * grid
            yield ViewRecipe(n_views=2 * n if flips else n, grid=grid, overlap=overlap)


def _sizes(rng, n=12):
    """The fixed sizes plus random ones (the seeded `rng` fixture keeps them reproducible)."""
    extra = [(int(h), int(w)) for h, w in rng.integers(1, 2500, size=(n, 2))]
    return SIZES + extra


def _tile_grid(boxes, grid):
    """Tile boxes ``[grid, grid, 4]`` (row r, column c) from a recipe's pixel boxes."""
    return boxes[1:1 + grid * grid].reshape(grid, grid, 4)


def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


# ---------------------------------------------------------------- unit edges (closed form)

@pytest.mark.parametrize("grid, overlap, expected", [
    (1, 0.0, [[0, 1]]),
    (1, 0.5, [[0, 1]]),
    (3, 0.0, [[0, 1 / 3], [1 / 3, 2 / 3], [2 / 3, 1]]),
    (2, 0.5, [[0, 2 / 3], [1 / 3, 1]]),
    # t = 1 / (3 - 2/8) = 8/22, step = t * 7/8 = 7/22
    (3, 0.125, [[0, 8 / 22], [7 / 22, 15 / 22], [14 / 22, 1]]),
    # t = 1 / (4 - 3/2) = 2/5, step = 1/5
    (4, 0.5, [[0, 2 / 5], [1 / 5, 3 / 5], [2 / 5, 4 / 5], [3 / 5, 1]]),
])
def test_tile_edges_closed_form(grid, overlap, expected):
    edges = tile_edges(grid, overlap)
    assert edges.shape == (grid, 2)
    np.testing.assert_allclose(edges, expected, rtol=0, atol=1e-12)
    assert edges[0, 0] == 0.0 and edges[-1, 1] == 1.0  # exact, not just close


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("overlap", OVERLAPS)
def test_tile_edges_equal_tiles_equal_overlaps(grid, overlap):
    edges = tile_edges(grid, overlap)
    length = edges[:, 1] - edges[:, 0]
    np.testing.assert_allclose(length, length[0], atol=1e-12)
    shared = edges[:-1, 1] - edges[1:, 0]
    np.testing.assert_allclose(shared, overlap * length[0], atol=1e-12)
    assert edges[0, 0] == 0.0 and edges[-1, 1] == 1.0


# ---------------------------------------------------------------- view table

@pytest.mark.parametrize("recipe", list(_recipes()) + list(_recipes(flips=True)), ids=repr)
def test_view_table_names_order_and_flips(recipe):
    g = recipe.grid
    base = ["global"] + [f"tile_r{r}c{c}" for r in range(g) for c in range(g)]
    expected = base + [f"{n}_flip" for n in base] if recipe.flips else base
    table = view_table(recipe)
    assert [v.name for v in table] == expected
    assert len(table) == recipe.n_views
    assert [v.flip for v in table] == [n.endswith("_flip") for n in expected]
    assert [v.size for v in table] == [recipe.view_size if n.startswith("global") else recipe.tile_size
                                      for n in expected]
    assert table[0].box == (0.0, 0.0, 1.0, 1.0)
    if recipe.flips:
        half = len(base)
        assert [v.box for v in table[half:]] == [v.box for v in table[:half]]
    edges = tile_edges(g, recipe.overlap)
    for r in range(g):
        for c in range(g):  # row r is a y-interval, column c an x-interval
            assert table[1 + r * g + c].box == pytest.approx(
                (edges[c, 0], edges[r, 0], edges[c, 1], edges[r, 1]), abs=1e-12)


def test_global_only_table():
    table = view_table(ViewRecipe(n_views=1, grid=5, overlap=0.5, view_size=112, tile_size=448))
    assert [(v.name, v.box, v.flip, v.size) for v in table] == [("global", (0.0, 0.0, 1.0, 1.0), False, 112)]


# ---------------------------------------------------------------- pixel boxes

@pytest.mark.parametrize("recipe", list(_recipes(flips=True)), ids=repr)
def test_pixel_boxes_geometry(recipe, rng):
    g = recipe.grid
    for h, w in _sizes(rng):
        boxes = pixel_boxes(h, w, recipe)
        where = f"{h}x{w} {recipe}"
        assert boxes.dtype == np.int64 and boxes.shape == (recipe.n_views, 4), where
        # Inside the image, at least one pixel wide and high.
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all(), where
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), where
        # The global view is the whole image; flipped views keep their twin's box.
        assert boxes[0].tolist() == [0, 0, w, h], where
        half = recipe.n_views // 2
        np.testing.assert_array_equal(boxes[half:], boxes[:half], err_msg=where)
        tiles = _tile_grid(boxes, g)
        # A product grid: every tile of column c shares its x-interval, every tile of row r its y.
        assert (tiles[:, :, [0, 2]] == tiles[:1, :, [0, 2]]).all(), where
        assert (tiles[:, :, [1, 3]] == tiles[:, :1, [1, 3]]).all(), where
        xs, ys = tiles[0, :, [0, 2]].T, tiles[:, 0, [1, 3]]
        # 1-D coverage: first starts at 0, last ends at the border, no gap between neighbours.
        for iv, extent in ((xs, w), (ys, h)):
            assert iv[0, 0] == 0 and iv[-1, 1] == extent, where
            assert (iv[1:, 0] <= iv[:-1, 1]).all(), where
        if h * w <= MASK_LIMIT:
            covered = np.zeros((h, w), dtype=bool)
            for x0, y0, x1, y1 in tiles.reshape(-1, 4):
                covered[y0:y1, x0:x1] = True
            assert covered.all(), where


@pytest.mark.parametrize("recipe", [r for r in _recipes() if r.grid > 1], ids=repr)
def test_pixel_boxes_overlap_matches_recipe(recipe, rng):
    """Neighbours share overlap·tile side, and every tile has side t·extent, within 1 px."""
    g = recipe.grid
    t = 1.0 / (g - (g - 1) * recipe.overlap)
    for h, w in _sizes(rng):
        if min(h, w) < 64:
            continue  # the one-pixel floor of tiny images is checked above
        tiles = _tile_grid(pixel_boxes(h, w, recipe), g)
        for iv, extent in ((tiles[0, :, [0, 2]].T, w), (tiles[:, 0, [1, 3]], h)):
            side = iv[:, 1] - iv[:, 0]
            shared = iv[:-1, 1] - iv[1:, 0]
            assert np.abs(side - t * extent).max() <= 1.0, (h, w, side, t * extent)
            assert np.abs(shared - recipe.overlap * t * extent).max() <= 1.0, (h, w, shared)


def test_pixel_boxes_known_values():
    # grid 3, overlap 0.125 on 220×1100: unit edges 0, 7/22, 8/22, 14/22, 15/22, 1, i.e. multiples
    # of 50 px across and 10 px down.
    boxes = pixel_boxes(220, 1100, ViewRecipe())
    assert boxes[0].tolist() == [0, 0, 1100, 220]
    assert boxes[1].tolist() == [0, 0, 400, 80]  # tile_r0c0
    assert boxes[1 + 1].tolist() == [350, 0, 750, 80]  # tile_r0c1
    assert boxes[1 + 3 + 2].tolist() == [700, 70, 1100, 150]  # tile_r1c2
    assert boxes[9].tolist() == [700, 140, 1100, 220]  # tile_r2c2


# ---------------------------------------------------------------- recipe validation

@pytest.mark.parametrize("kwargs, match", [
    (dict(n_views=7), r"--views 7 does not fit a 3x3 grid: pass --views one of 1, 10, 20"),
    (dict(n_views=0), r"--views 0 does not fit"),
    (dict(n_views=20, grid=2), r"--views 20 does not fit a 2x2 grid: pass --views one of 1, 5, 10"),
    (dict(n_views=10, grid=1), r"one of 1, 2, 4"),
    (dict(grid=0), r"grid must be >= 1, got 0"),
    (dict(n_views=1, grid=-2), r"grid must be >= 1, got -2"),
    (dict(overlap=1.0), r"overlap must be in \[0, 1\), got 1.0"),
    (dict(overlap=-0.1), r"overlap must be in \[0, 1\), got -0.1"),
    (dict(overlap=float("nan")), r"overlap must be in \[0, 1\)"),
    (dict(overlap=float("inf")), r"overlap must be in \[0, 1\)"),
    (dict(overlap="0.1"), r"overlap must be a number"),
    (dict(overlap=None), r"overlap must be a number"),
    (dict(overlap=True), r"overlap must be a number"),
    (dict(view_size=0), r"view-size must be a positive multiple of the patch size 16, got 0"),
    (dict(view_size=-16), r"view-size must be a positive multiple"),
    (dict(view_size=8), r"view-size must be a positive multiple"),
    (dict(view_size=100), r"view-size must be a positive multiple.*got 100"),
    (dict(tile_size=120), r"tile-size must be a positive multiple.*got 120"),
    (dict(n_views=10.0), r"n_views must be an integer"),
    (dict(grid=3.0), r"grid must be an integer"),
    (dict(grid=True), r"grid must be an integer"),
    (dict(view_size="224"), r"view_size must be an integer"),
])
def test_recipe_rejects_bad_specs(kwargs, match):
    with pytest.raises(ViewSpecError, match=match):
        ViewRecipe(**kwargs)


@pytest.mark.parametrize("n_views, grid, tiles, flips", [
    (1, 3, False, False), (10, 3, True, False), (20, 3, True, True),
    (1, 1, False, False), (2, 1, True, False), (4, 1, True, True),
    (5, 2, True, False), (10, 2, True, True), (17, 4, True, False), (52, 5, True, True),
])
def test_recipe_tiles_and_flips(n_views, grid, tiles, flips):
    recipe = ViewRecipe(n_views=n_views, grid=grid)
    assert (recipe.tiles, recipe.flips) == (tiles, flips)
    assert len(view_table(recipe)) == n_views


def test_identity_of_global_only_ignores_tile_fields():
    a = ViewRecipe(n_views=1, grid=3, overlap=0.125, tile_size=224)
    b = ViewRecipe(n_views=1, grid=5, overlap=0.5, tile_size=112)
    assert a != b
    assert a.identity() == b.identity()
    assert a.identity() != ViewRecipe(n_views=1, view_size=112).identity()


@pytest.mark.parametrize("change", [dict(overlap=0.25), dict(tile_size=112), dict(n_views=20), dict(grid=2, n_views=5),
                                    dict(view_size=112)])
def test_identity_of_tiled_recipe_tracks_every_field(change):
    assert ViewRecipe(**{**dict(n_views=10), **change}).identity() != ViewRecipe(n_views=10).identity()


def test_identity_is_plain_json_and_type_stable():
    # Equal recipes must give byte-identical identities (they feed the cache fingerprint).
    a, b = ViewRecipe(overlap=0), ViewRecipe(overlap=0.0)
    assert a == b
    assert json.dumps(a.identity(), sort_keys=True) == json.dumps(b.identity(), sort_keys=True)
    assert json.loads(json.dumps(ViewRecipe(n_views=20).identity())) == ViewRecipe(n_views=20).identity()
    assert ViewRecipe(overlap=np.float32(0.5)).identity()["overlap"] == 0.5
    json.dumps(ViewRecipe(overlap=np.float32(0.5)).identity())  # numpy scalars must not leak


# ---------------------------------------------------------------- build_views

@pytest.mark.parametrize("n_views", [1, 10, 20])
def test_build_views_shapes_single_size(n_views):
    images = [_image(120, 200, seed=0), _image(120, 200, seed=1)]
    out = build_views(images, ViewRecipe(n_views=n_views))
    assert list(out) == [224]
    assert out[224].shape == (2, n_views, 3, 224, 224)
    assert out[224].dtype == torch.uint8


@pytest.mark.parametrize("n_views, n_global, n_tiles", [(10, 1, 9), (20, 2, 18)])
def test_build_views_two_sizes(n_views, n_global, n_tiles):
    recipe = ViewRecipe(n_views=n_views, tile_size=112)
    image = _image(150, 260)
    out = build_views([image, _image(90, 90, seed=3)], recipe)
    assert sorted(out) == [112, 224]
    assert out[224].shape == (2, n_global, 3, 224, 224)
    assert out[112].shape == (2, n_tiles, 3, 112, 112)
    # Each slot holds the right view: tile_r1c2 is the resize of its own pixel box.
    x0, y0, x1, y1 = pixel_boxes(150, 260, recipe)[1 + 3 + 2]
    expected = F.interpolate(image[None, :, y0:y1, x0:x1], size=(112, 112), mode="bilinear",
                             antialias=True, align_corners=False)[0]
    assert torch.equal(out[112][0, 5], expected)


def test_build_views_mixed_sizes_match_single_calls():
    images = [_image(224, 224, seed=0), _image(720, 1280, seed=1), _image(224, 224, seed=2),
              _image(5, 9, seed=3), _image(720, 1280, seed=4)]
    recipe = ViewRecipe(n_views=20, tile_size=112)
    batched = build_views(images, recipe)
    for b, image in enumerate(images):
        alone = build_views([image], recipe)
        for side in (112, 224):
            assert torch.equal(batched[side][b], alone[side][0]), (b, side)
    # Not trivially equal: different images give different views.
    assert not torch.equal(batched[224][0], batched[224][2])


@pytest.mark.parametrize("h, w", [(333, 517), (1, 1), (5, 9)])
def test_solid_colour_gives_that_colour_in_every_view(h, w):
    colour = torch.tensor([200, 17, 90], dtype=torch.uint8)
    image = colour.view(3, 1, 1).expand(3, h, w).contiguous()
    out = build_views([image], ViewRecipe(n_views=20, tile_size=112))
    for side, views in out.items():
        assert torch.equal(views, colour.view(1, 1, 3, 1, 1).expand_as(views)), side


def _marker_image(h=300, w=300, lo=250, hi=290):
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    image[:, lo:hi, lo:hi] = 255
    return image


def test_marker_in_bottom_right_tile_only():
    recipe = ViewRecipe(n_views=10)
    table = [v.name for v in view_table(recipe)]
    views = build_views([_marker_image()], recipe)[224][0]
    bright = (views.float().mean(dim=1) > 128).sum(dim=(-2, -1))  # bright pixels per view
    by_name = dict(zip(table, bright.tolist()))
    assert by_name["tile_r2c2"] > 0
    assert by_name["global"] > 0
    for name in table:
        if name not in ("global", "tile_r2c2"):
            assert by_name[name] == 0, name
    assert views[table.index("tile_r0c0")].max() == 0
    # The tile zooms in: ~(224/109)² vs (224/300)² of the marker's 40² pixels.
    assert by_name["tile_r2c2"] > 4 * by_name["global"]
    # And it sits in the tile's bottom-right quadrant.
    tile = views[table.index("tile_r2c2")].float().mean(dim=0)
    ys, xs = torch.nonzero(tile > 128, as_tuple=True)
    assert ys.min() > 112 and xs.min() > 112


def test_marker_orientation_non_square():
    # A wide image with the marker in the top-right: it shows up in tile_r0c2, not tile_r2c0.
    image = torch.zeros((3, 200, 600), dtype=torch.uint8)
    image[:, 10:40, 540:590] = 255
    recipe = ViewRecipe(n_views=10)
    table = [v.name for v in view_table(recipe)]
    views = build_views([image], recipe)[224][0]
    assert views[table.index("tile_r0c2")].max() == 255
    assert views[table.index("tile_r2c0")].max() == 0
    assert views[table.index("tile_r0c0")].max() == 0


def test_downsampling_is_antialiased():
    # A 1-px checkerboard shrunk 3×: point-sampled bilinear lands on single pixels and keeps a
    # full-contrast (aliased) pattern; the antialiased filter averages it to flat grey.
    yy, xx = torch.meshgrid(torch.arange(672), torch.arange(672), indexing="ij")
    board = (((yy + xx) % 2) * 255).to(torch.uint8).expand(3, 672, 672).contiguous()
    view = build_views([board], ViewRecipe(n_views=1))[224][0, 0].float()
    assert view.std() < 8, view.std()
    assert abs(view.mean() - 127.5) < 2


@pytest.mark.parametrize("tile_size", [224, 112])
@pytest.mark.parametrize("h, w", [(157, 243), (5, 9)])
def test_flipped_views_mirror_their_twin(tile_size, h, w):
    recipe = ViewRecipe(n_views=20, tile_size=tile_size)
    table = view_table(recipe)
    out = build_views([_image(h, w, seed=7), _image(h, w, seed=8)], recipe)
    slots = {}
    counters = {}
    for v in table:
        slots[v.name] = (v.size, counters.setdefault(v.size, 0))
        counters[v.size] += 1
    for v in table:
        if not v.flip:
            continue
        side, j = slots[v.name]
        twin_side, k = slots[v.name[: -len("_flip")]]
        assert side == twin_side
        flipped, twin = out[side][:, j], out[side][:, k]
        assert torch.equal(flipped, torch.flip(twin, dims=[-1])), v.name
        if h > 100:
            assert not torch.equal(flipped, twin), v.name  # random pixels are not symmetric


@pytest.mark.parametrize("h, w", [(1, 1), (3, 7), (5, 9), (10, 1000), (1000, 10)])
def test_images_smaller_than_a_tile(h, w):
    recipe = ViewRecipe(n_views=20)
    out = build_views([_image(h, w)], recipe)
    assert out[224].shape == (1, 20, 3, 224, 224)


def test_build_views_does_not_modify_input():
    image = _image(64, 80)
    copy = image.clone()
    build_views([image], ViewRecipe(n_views=20))
    assert torch.equal(image, copy)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_build_views_cuda_matches_cpu_within_one_level():
    images = [_image(224, 224, seed=0), _image(720, 1280, seed=1), _image(5, 9, seed=2)]
    recipe = ViewRecipe(n_views=20, tile_size=112)
    cpu = build_views(images, recipe)
    gpu = build_views([i.cuda() for i in images], recipe)
    assert sorted(gpu) == sorted(cpu)
    for side in cpu:
        assert gpu[side].dtype == torch.uint8 and gpu[side].device.type == "cuda"
        diff = (gpu[side].cpu().int() - cpu[side].int()).abs()
        assert diff.max() <= 1, side


# ---------------------------------------------------------------- normalize

def test_normalize_exact_values():
    views = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 1, 3).expand(2, 4, 3, 2, 3).contiguous()
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    out = normalize(views, mean, std)
    assert out.dtype == torch.float32 and out.shape == views.shape
    expected = torch.tensor([
        [(0 - 0.5) / 0.5, (0.2 - 0.5) / 0.5, (1 - 0.5) / 0.5],      # channel 0: -1, -0.6, 1
        [(0 - 0.25) / 0.25, (0.2 - 0.25) / 0.25, (1 - 0.25) / 0.25],  # channel 1: -1, -0.2, 3
        [0 / 2.0, 0.2 / 2.0, 1 / 2.0],                                # channel 2: 0, 0.1, 0.5
    ])
    torch.testing.assert_close(out, expected.view(1, 1, 3, 1, 3).expand_as(out), rtol=0, atol=1e-6)
    assert views.dtype == torch.uint8 and views[0, 0, 0, 0].tolist() == [0, 51, 255]  # input untouched


def test_normalize_dtype_and_imagenet_stats():
    from natix.config import IMAGENET_MEAN, IMAGENET_STD

    views = torch.full((1, 2, 3, 4, 4), 128, dtype=torch.uint8)
    out = normalize(views, IMAGENET_MEAN, IMAGENET_STD, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    for ch in range(3):
        value = (128 / 255 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch]
        assert math.isclose(out[:, :, ch].float().unique().item(), value, abs_tol=1e-2)
