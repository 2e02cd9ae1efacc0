"""Frozen configuration dataclasses.

Identity fields (those that change the extracted features) live in `ViewRecipe` and
`Preprocess`; they enter the cache fingerprint. Speed-only fields (batch size, device,
workers) live in `RunOptions` and never do.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from natix.errors import ConfigError, ViewSpecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VIEW_COUNTS = (1, 10, 20)
POOLS = ("cls", "cls+mean")
STORE_DTYPES = ("float16", "float32")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_LAYOUT = "grid"  # global view + grid tiles (+ flips): the view layout of every cache so far


@dataclass(frozen=True)
class ViewRecipe:
    """Which views of an image are extracted.

    With the default layout ``"grid"``, `n_views` is 1 (the global view), 1 + grid² (global +
    tiles) or 2·(1 + grid²) (the same plus horizontal flips). The CLI's `--views 10|20` assume
    the default 3×3 grid. Another `layout` is a view-table builder registered with
    `natix.extract.views.register_layout`, which reads the fields it needs and must give
    `n_views` views.
    """

    n_views: int = 10
    grid: int = 3
    overlap: float = 0.125  # fraction of a tile's side shared with its neighbour
    view_size: int = 224  # side of the global view fed to the backbone
    tile_size: int = 224  # side of each tile fed to the backbone
    layout: str = DEFAULT_LAYOUT  # the registered view-table builder

    def __post_init__(self) -> None:
        for name in ("n_views", "grid", "view_size", "tile_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ViewSpecError(f"{name} must be an integer, got {value!r}")
        if not isinstance(self.layout, str) or not self.layout:
            raise ViewSpecError(f"layout must be a registered view layout name, got {self.layout!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, numbers.Real):
            raise ViewSpecError(f"overlap must be a number, got {self.overlap!r}: pass e.g. --overlap 0.125")
        # Equal recipes must have equal identities: overlap 0 and 0.0 give one fingerprint.
        object.__setattr__(self, "overlap", float(self.overlap))
        if self.grid < 1:
            raise ViewSpecError(f"grid must be >= 1, got {self.grid}: pass --grid 1 or more")
        if not 0.0 <= self.overlap < 1.0:
            raise ViewSpecError(
                f"overlap must be in [0, 1), got {self.overlap}: pass e.g. --overlap 0.125"
            )
        tiles = self.grid * self.grid
        valid = (1, 1 + tiles, 2 * (1 + tiles))
        if self.layout == DEFAULT_LAYOUT and self.n_views not in valid:
            raise ViewSpecError(
                f"--views {self.n_views} does not fit a {self.grid}x{self.grid} grid: "
                f"pass --views one of {', '.join(map(str, valid))}"
            )
        for name in ("view_size", "tile_size"):
            size = getattr(self, name)
            if size < 16 or size % 16:
                raise ViewSpecError(
                    f"{name.replace('_', '-')} must be a positive multiple of the patch size 16, "
                    f"got {size}: pass e.g. 224 or 112"
                )

    @property
    def tiles(self) -> bool:
        """Whether the recipe includes the grid tiles."""
        return self.n_views > 1

    @property
    def flips(self) -> bool:
        """Whether every view is also taken horizontally flipped."""
        return self.n_views == 2 * (1 + self.grid * self.grid) and self.n_views > 2

    def identity(self) -> dict:
        """The fields that change the features, as plain JSON values.

        The layout is named only when it is not the grid, so caches written before layouts were
        registered keep their fingerprints.
        """
        ident = {
            "n_views": self.n_views,
            "grid": self.grid if self.tiles else None,
            "overlap": self.overlap if self.tiles else None,
            "view_size": self.view_size,
            "tile_size": self.tile_size if self.tiles else None,
            "flips": self.flips,
        }
        if self.layout != DEFAULT_LAYOUT:
            ident["layout"] = self.layout
        return ident

    @classmethod
    def from_identity(cls, ident: dict) -> ViewRecipe:
        """The recipe whose `identity` is `ident`; raises `ViewSpecError` when none is."""
        def build(ident: dict) -> ViewRecipe:
            tiles = ident["n_views"] > 1
            return cls(n_views=ident["n_views"], grid=ident["grid"] if tiles else 3,
                       overlap=ident["overlap"] if tiles else 0.125, view_size=ident["view_size"],
                       tile_size=ident["tile_size"] if tiles else ident["view_size"],
                       layout=ident.get("layout", DEFAULT_LAYOUT))

        return _from_identity(ident, build, "view recipe", ViewSpecError)


def _from_identity(ident: dict, build, what: str, error: type[ConfigError]):
    """`build(ident)` when its identity is `ident` again; `error` naming `what` otherwise."""
    try:
        made = build(ident)
    except (KeyError, TypeError, AttributeError, ConfigError):
        made = None
    if made is None or made.identity() != ident:
        raise error(f"{what} {ident} is not one this natix implements: upgrade natix")
    return made


@dataclass(frozen=True)
class Preprocess:
    """How pixels become backbone input. Pinned per recipe and recorded in the cache."""

    # Every view is its box resized to a square (no aspect-preserving crop): the global view
    # must keep objects near the image border, which a centre crop would cut off.
    resize: str = "squash"
    # Integer boxes are resized with torch's bilinear interpolation with antialias on uint8
    # (a widened triangle filter when shrinking, plain bilinear when enlarging).
    sampler: str = "bilinear-antialias-uint8"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    decode: str = "pil-rgb-exif"

    def identity(self) -> dict:
        """The fields that change the features, as plain JSON values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_identity(cls, ident: dict) -> Preprocess:
        """The preprocessing whose `identity` is `ident`; raises `ConfigError` when none is."""
        return _from_identity(ident, lambda d: cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}),
                              "preprocessing", ConfigError)


@dataclass(frozen=True)
class RunOptions:
    """Speed-only knobs: they never change the features and never enter the fingerprint."""

    batch_size: int = 32  # images per model step (views per forward = batch_size · n_views)
    workers: int = 2  # DataLoader processes decoding images and building views
    device: str = "auto"  # auto → cuda when available, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}: pass --batch-size 1 or more")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}: pass --workers 0 or more")
