"""View geometry (pure numpy) and batched view building (torch, any device).

A recipe's views come from its layout, a registered function ``recipe -> list[View]`` (the
view table: names, unit boxes, flips, sides); `build_views` cuts any table's views. The one
layout so far, ``grid``: the global view (the whole image), then the grid tiles row by row
(`tile_r0c0`, `tile_r0c1`, ...), then, when the recipe has flips, the same views mirrored
horizontally (`global_flip`, `tile_r0c0_flip`, ...). A flipped view has the box of its
unflipped twin; only the pixels are mirrored. A new layout is one function::

    @register_layout("centre")
    def centre(recipe: ViewRecipe) -> list[View]: ...
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from natix.config import ViewRecipe
from natix.errors import ViewSpecError
from natix.registry import Registry


@dataclass(frozen=True)
class View:
    """One row of the view table: a name, a box in unit coordinates and a flip flag."""

    name: str
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of width/height
    flip: bool
    size: int  # side of the square the box is resized to


def tile_edges(grid: int, overlap: float) -> np.ndarray:
    """Unit-interval edges of `grid` equal tiles that cover [0, 1] and overlap by `overlap`.

    Returns ``[grid, 2]`` (start, end). A tile has length ``t = 1 / (grid - (grid-1)·overlap)``
    and consecutive starts are ``t·(1 - overlap)`` apart, so neighbours share ``t·overlap``
    and the last tile ends exactly at 1.
    """
    length = 1.0 / (grid - (grid - 1) * overlap)
    starts = np.arange(grid) * length * (1.0 - overlap)
    edges = np.stack([starts, starts + length], axis=1)
    edges[-1, 1] = 1.0  # remove floating-point drift at the border
    return edges


LAYOUTS = Registry("view layout", error=ViewSpecError, hint=" as ViewRecipe(layout=...)")
register_layout = LAYOUTS.register


@functools.lru_cache(maxsize=64)
def _table(recipe: ViewRecipe) -> tuple[View, ...]:
    """Memoised view table of `recipe` (recipes are frozen, so hashable), checked against `n_views`."""
    views = tuple(LAYOUTS.get(recipe.layout)(recipe))
    if len(views) != recipe.n_views:
        raise ViewSpecError(f"view layout '{recipe.layout}' gives {len(views)} views for n_views="
                            f"{recipe.n_views}: pass n_views={len(views)}")
    return views


def view_table(recipe: ViewRecipe) -> list[View]:
    """The recipe's views with boxes in unit coordinates; length ``recipe.n_views``."""
    return list(_table(recipe))


@register_layout("grid")
def grid_layout(recipe: ViewRecipe) -> list[View]:
    """The global view, the ``grid × grid`` overlapping tiles row by row, then their flips."""
    views = [View("global", (0.0, 0.0, 1.0, 1.0), False, recipe.view_size)]
    if recipe.tiles:
        edges = tile_edges(recipe.grid, recipe.overlap)
        for r in range(recipe.grid):
            for c in range(recipe.grid):
                box = (float(edges[c, 0]), float(edges[r, 0]), float(edges[c, 1]), float(edges[r, 1]))
                views.append(View(f"tile_r{r}c{c}", box, False, recipe.tile_size))
    if recipe.flips:
        views += [View(f"{v.name}_flip", v.box, True, v.size) for v in views]
    return views


def pixel_boxes(height: int, width: int, recipe: ViewRecipe) -> np.ndarray:
    """Integer boxes ``[V, 4]`` (x0, y0, x1, y1), end-exclusive, in source-image pixels.

    Every box lies inside ``[0, width] × [0, height]`` and is at least one pixel wide and
    high, so images smaller than a tile (even 1×1) still give every view.
    """
    unit = np.array([v.box for v in _table(recipe)], dtype=np.float64)
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes = np.rint(unit * scale).astype(np.int64)
    # Tiny images: a rounded tile may collapse; give it at least one pixel inside the image.
    for lo, hi, extent in ((0, 2, width), (1, 3, height)):
        boxes[:, hi] = np.maximum(boxes[:, hi], boxes[:, lo] + 1)
        shift = np.maximum(boxes[:, hi] - extent, 0)
        boxes[:, lo] -= shift
        boxes[:, hi] -= shift
    return boxes


def build_views(images: list, recipe: ViewRecipe) -> dict:
    """Crop and resize every view of every image, batched over images of equal size.

    Parameters
    ----------
    images : list of uint8 tensors ``[3, H_i, W_i]``, all on one device.
    recipe : the view recipe.

    Returns
    -------
    dict mapping a view side ``S`` to a uint8 tensor ``[B, V_S, 3, S, S]`` holding, for each
    image, the views of that side in view-table order. Resampling is bilinear with antialias
    on uint8 (torch's fast path on CPU); on other devices the float result is rounded to the
    same uint8 grid so that both devices feed the model the same kind of input.
    """
    import torch
    import torch.nn.functional as F

    if not images:
        return {}
    table = _table(recipe)
    sizes = sorted({v.size for v in table})
    slot = _slots(recipe)
    device = images[0].device
    out = {sz: torch.empty((len(images), sum(v.size == sz for v in table), 3, sz, sz), dtype=torch.uint8,
                           device=device) for sz in sizes}
    groups: dict[tuple[int, int], list[int]] = {}
    for b, img in enumerate(images):
        groups.setdefault(tuple(img.shape[1:]), []).append(b)
    for (h, w), members in groups.items():
        if len(members) == 1:
            batch = images[members[0]].unsqueeze(0)  # no copy: keeps the caller's strides
        else:
            batch = torch.stack([images[b] for b in members])
        if batch.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)  # no-op for HWC-backed images
        else:
            batch = batch.float()
        contiguous = members == list(range(members[0], members[-1] + 1))
        rows = slice(members[0], members[-1] + 1) if contiguous else torch.as_tensor(members, device=device)
        boxes = pixel_boxes(h, w, recipe).tolist()
        done: dict[tuple, object] = {}
        for i, view in enumerate(table):
            x0, y0, x1, y1 = boxes[i]
            key = (x0, y0, x1, y1, view.size)
            if key not in done:  # a flipped view reuses its twin's resize
                crop = F.interpolate(batch[:, :, y0:y1, x0:x1], size=(view.size, view.size),
                                     mode="bilinear", antialias=True, align_corners=False)
                if crop.dtype != torch.uint8:
                    crop = crop.round_().clamp_(0, 255).to(torch.uint8)
                done[key] = crop
            crop = done[key]
            if view.flip:
                crop = torch.flip(crop, dims=[-1])
            out[view.size][rows, slot[i]] = crop
    return out


@functools.lru_cache(maxsize=64)
def _slots(recipe: ViewRecipe) -> dict[int, int]:
    """View index → its position among the views of the same side."""
    seen: dict[int, int] = {}
    slot = {}
    for i, v in enumerate(_table(recipe)):
        slot[i] = seen.get(v.size, 0)
        seen[v.size] = slot[i] + 1
    return slot


def normalize(views, mean, std, dtype=None):
    """uint8 ``[..., 3, S, S]`` → float ``(x/255 - mean) / std`` on the same device."""
    import torch

    x = views.to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    x = x.sub_(m).div_(s)
    return x if dtype is None else x.to(dtype)
