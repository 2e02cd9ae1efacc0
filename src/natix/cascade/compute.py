"""The compute a cascade stage costs: backbone GFLOPs per image of a cache's view recipe.

:func:`gflops_per_image` counts the backbone forward pass of a cache's views (2 × multiply-
accumulates of a ViT, DESIGN §4); heads cost nothing by comparison. A stage whose cache has the
same fingerprint as an earlier stage's reuses those features: its marginal cost is 0
(:func:`stage_compute`). Synthetic caches (no backbone) and external stages have unknown compute
(``None``), and the output says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from natix.errors import CacheError, DataError

log = logging.getLogger(__name__)

__all__ = ["expected_gflops", "gflops_from_identity", "gflops_per_image", "stage_compute", "vit_gflops"]

_DEFAULT_PATCH = 16
_DEFAULT_PREFIX = 5  # DINOv3: 1 CLS + 4 registers


def vit_gflops(side: int, *, dim: int, depth: int, mlp_dim: int, patch: int = _DEFAULT_PATCH,
               n_prefix: int = _DEFAULT_PREFIX, gated: bool = False) -> float:
    """Forward GFLOPs (2 × multiply-accumulates) of a ViT on one ``side × side`` view.

    ``patches = (side // patch)²``, ``tokens = patches + n_prefix``; per layer
    ``tokens·(4·D² + 2·D·I) + 2·tokens²·D`` MACs (QKV and output projections, the MLP, QKᵀ and
    AV; ``3·D·I`` for a gated MLP), plus the patch embedding ``patches·3·patch²·D``. Norms,
    softmax, RoPE and biases are ignored (< 1 %).
    """
    patches = (int(side) // int(patch)) ** 2
    tokens = patches + int(n_prefix)
    mlp = (3 if gated else 2) * dim * mlp_dim
    per_layer = tokens * (4 * dim * dim + mlp) + 2 * tokens * tokens * dim
    macs = depth * per_layer + patches * 3 * patch * patch * dim
    return 2.0 * macs / 1e9


def _view_sides(views: dict) -> list[int]:
    """The side of every view of a cache's recipe identity (global, tiles, flips)."""
    n_views = int(views["n_views"])
    mult = 2 if views.get("flips") else 1
    sides = [int(views["view_size"])] * mult
    if n_views > 1:
        grid = int(views.get("grid") or 0)
        sides += [int(views.get("tile_size") or views["view_size"])] * (grid * grid * mult)
    if len(sides) != n_views:
        raise DataError(f"view recipe {views} describes {len(sides)} views, not n_views={n_views}")
    return sides


def _vit_sizes(backbone: dict) -> dict | None:
    """``dim, depth, mlp_dim, patch, n_prefix, gated`` of a backbone identity; None if not a known ViT config."""
    arch = backbone.get("arch") or {}
    if "hidden_size" in arch:  # transformers config
        prefix = backbone.get("n_prefix_tokens", 1 + arch["num_register_tokens"]
                              if "num_register_tokens" in arch else _DEFAULT_PREFIX)
        return {"dim": arch["hidden_size"], "depth": arch.get("num_hidden_layers"),
                "mlp_dim": arch.get("intermediate_size"), "patch": arch.get("patch_size", _DEFAULT_PATCH),
                "n_prefix": prefix, "gated": bool(arch.get("use_gated_mlp", False))}
    if "embed_dim" in arch:  # timm: no MLP width is stored, assume the standard ratio 4
        found = re.search(r"patch(\d+)", str(arch.get("architecture", "")))
        return {"dim": arch["embed_dim"], "depth": arch.get("depth"), "mlp_dim": 4 * arch["embed_dim"],
                "patch": int(found.group(1)) if found else _DEFAULT_PATCH,
                "n_prefix": backbone.get("n_prefix_tokens", arch.get("num_prefix_tokens", _DEFAULT_PREFIX)),
                "gated": False}
    return None


def _gflops_and_reason(identity: dict) -> tuple[float | None, str]:
    """GFLOPs per image of a cache identity, or None and why it is unknown."""
    backbone = identity.get("backbone")
    if not backbone:
        return None, "unknown: the cache has no backbone in its identity (synthetic features)"
    sizes = _vit_sizes(backbone)
    if sizes is None:
        arch = backbone.get("arch") or {}
        return None, f"unknown: backbone architecture {sorted(arch)} is not a ViT config natix knows"
    if not sizes["depth"] or not sizes["mlp_dim"]:
        return None, "unknown: the backbone architecture lacks its depth or MLP width"
    views = identity.get("views")
    if not views:
        return None, "unknown: the cache identity has no view recipe"
    if views.get("layout", "grid") != "grid":
        return None, f"unknown: view layout '{views['layout']}' (only the grid's view sizes are known here)"
    sides = _view_sides(views)
    total = sum(vit_gflops(s, dim=int(sizes["dim"]), depth=int(sizes["depth"]), mlp_dim=int(sizes["mlp_dim"]),
                           patch=int(sizes["patch"]), n_prefix=int(sizes["n_prefix"]), gated=sizes["gated"])
                for s in sides)
    return total, (f"{len(sides)} views at sides {sorted(set(sides))}, ViT D={sizes['dim']} L={sizes['depth']} "
                   f"I={sizes['mlp_dim']}")


def gflops_from_identity(identity: dict) -> float | None:
    """Backbone GFLOPs per image for a cache identity (all its views); None when unknown.

    Unknown means: a synthetic cache (no ``backbone`` in the identity) or an architecture dict
    without ViT sizes. Transformers configs give ``hidden_size``, ``num_hidden_layers``,
    ``intermediate_size``, ``patch_size`` and ``use_gated_mlp``; timm identities give
    ``embed_dim`` and ``depth`` only (MLP width 4·D, patch size from the name, else 16). Prefix
    tokens: ``backbone["n_prefix_tokens"]``, else 5 (CLS + 4 registers).
    """
    return _gflops_and_reason(identity)[0]


def gflops_per_image(cache_path: str | Path) -> float | None:
    """Backbone GFLOPs per image of a feature cache (see :func:`gflops_from_identity`); None when unknown."""
    from natix.cache.store import open_cache

    with open_cache(cache_path) as cache:
        value, reason = _gflops_and_reason(cache.identity)
    if value is None:
        log.info("compute of cache '%s' is %s", cache_path, reason)
    return value


def expected_gflops(reach: Sequence[float], gflops: Sequence[float | None]) -> tuple[float | None, list]:
    """Expected GFLOPs per image ``Σ_k P(reach k)·gflops_k``.

    Parameters
    ----------
    reach : K fractions of images that reach each stage (stage 1: 1.0)
    gflops : K marginal GFLOPs per image, None where unknown

    Returns
    -------
    total : float, or None when any stage that is reached has unknown compute
    parts : list of K floats (None where unknown)
    """
    if len(reach) != len(gflops):
        raise DataError(f"{len(reach)} reach fractions for {len(gflops)} stages")
    parts = [None if g is None else float(r) * float(g) for r, g in zip(reach, gflops)]
    unknown = any(p is None and r > 0 for p, r in zip(parts, reach))
    return (None if unknown else float(sum(p for p in parts if p is not None))), parts


def stage_compute(stages: Sequence[dict]) -> tuple[list, list, list]:
    """Per run stage: standalone GFLOPs, marginal GFLOPs (0 when the features are reused), a note.

    Parameters
    ----------
    stages : :func:`natix.cascade.stages.load_stage` dicts (their ``cache`` entries are read)

    Returns
    -------
    three lists of ``len(stages)``: GFLOPs per image (None when unknown), marginal GFLOPs, notes
    """
    from natix.cache.store import open_cache

    gflops, marginal, notes = [], [], []
    for k, st in enumerate(stages):
        try:
            with open_cache(st["cache"]["path"]) as cache:
                value, note = _gflops_and_reason(cache.identity)
                fp = cache.fingerprint
        except CacheError as exc:
            value, note, fp = None, f"unknown: {exc}", st["cache"].get("fingerprint")
            log.warning("compute of stage %d is %s", k + 1, note)
        earlier = [j for j in range(k) if stages[j]["cache"].get("fingerprint") == fp]
        gflops.append(value)
        if earlier:
            marginal.append(0.0)
            note = f"reuses the features of stage {earlier[0] + 1} (same cache): only the head runs"
        else:
            marginal.append(value)
        notes.append(note)
    return gflops, marginal, notes
