"""Four disjoint, deterministic splits keyed by image id: train, val_select, val_calib, val_test.

Within each label, units (images, or groups when the data has a group column) are ordered by
``sha256(seed:unit)`` and cut at the cumulative ratios, so the assignment is stratified,
reproducible, independent of row order, and mostly stable when the dataset grows: a new image
does not move the others. A group never straddles two splits. Unlabeled rows are left out, and
so are images held out by the caller (listed with conflicting labels).

The split file itself (reading, digest, image ids → cache rows) is shared with the cache reader,
which answers ``cache.rows(split, run=...)`` without importing the heads:
:func:`natix.cache.reader.read_split_file` and :func:`~natix.cache.reader.split_rows`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.cache.reader import read_split_file, split_digest, split_rows
from natix.errors import ConfigError, DataError
from natix.jsonio import write_json

SPLITS = ("train", "val_select", "val_calib", "val_test")
DEFAULT_RATIOS = (0.6, 0.1, 0.15, 0.15)


@dataclass(frozen=True)
class Splits:
    """Image ids per split, with what they were made from."""

    ids: dict[str, list[str]]
    seed: int
    ratios: tuple[float, ...]
    fingerprint: str  # the cache they belong to
    grouped: bool

    @property
    def digest(self) -> str:
        """SHA-256 of the assignment (split → sorted ids)."""
        return split_digest(self.ids)

    def rows(self, image_ids, *, cache=None, owner: str | None = None) -> dict[str, np.ndarray]:
        """Row indices into a cache's per-row image ids, per split (in split order; every row of an
        image, e.g. each draw of a challenge cache, with its image).

        A split image the cache lacks raises a one-line `DataError`; with `cache` and `owner` (whose
        splits these are, e.g. "run 'runs/a'") it says that the cache must come from the same images.
        """
        return split_rows(self.ids, image_ids, cache=cache, owner=owner)

    def to_json(self) -> dict:
        return {"seed": self.seed, "ratios": list(self.ratios), "fingerprint": self.fingerprint,
                "grouped": self.grouped, "digest": self.digest, "ids": self.ids}

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, *, fingerprint: str | None = None) -> Splits:
        """Read a split file; refuse one made for another cache, or edited."""
        return cls(**read_split_file(path, names=SPLITS, fingerprint=fingerprint))


def _key(seed: int, unit: str) -> str:
    return hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()


def make_splits(ids, labels, groups=None, *, ratios=DEFAULT_RATIOS, seed: int = 0, fingerprint: str = "",
                min_per_class: int = 1, exclude=()) -> Splits:
    """Assign labeled images to the four splits.

    Parameters
    ----------
    ids : ``[N]`` image ids; labels : ``[N]`` in {-1, 0, 1} (-1 rows are skipped);
    groups : ``[N]`` group names ("" = none) or None; ratios : four fractions summing to 1.
    min_per_class : every split must receive at least this many images of each class.
    exclude : ids held out of every split (images listed with conflicting labels); the rest of
        a held-out image's group is assigned as usual.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 4 or not all(r > 0 and math.isfinite(r) for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(f"split ratios must be four positive fractions summing to 1, got {ratios}: "
                          "pass e.g. --ratios 0.6,0.1,0.15,0.15")
    ids = np.asarray(ids).astype(str)
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object) if groups is not None else np.full(len(ids), "", dtype=object)
    labeled = (labels >= 0) & ~np.isin(ids, np.asarray(list(exclude), dtype=str))
    grouped = bool(np.any(groups[labeled] != ""))
    # A unit is a group (when given) or a single image; its stratum is its majority label.
    units: dict[str, list[int]] = {}
    label_list = labels.tolist()
    for r, g, i in zip(np.flatnonzero(labeled).tolist(), groups[labeled].tolist(), ids[labeled].tolist()):
        units.setdefault(f"g:{g}" if g != "" else f"i:{i}", []).append(r)
    out = {k: [] for k in SPLITS}
    bounds = np.cumsum(ratios)
    keys = {u: _key(seed, u) for u in units}
    unit_label = {u: (label_list[rows[0]] if len(rows) == 1 else round(sum(label_list[r] for r in rows) / len(rows)))
                  for u, rows in units.items()}
    for label in (0, 1):
        members = [(u, rows) for u, rows in units.items() if unit_label[u] == label]
        members.sort(key=lambda ur: keys[ur[0]])
        total = sum(len(rows) for _, rows in members)
        done = 0
        for u, rows in members:
            # The split whose share of this stratum the unit's midpoint falls into.
            mid = (done + len(rows) / 2) / max(total, 1)
            k = int(np.searchsorted(bounds, mid, side="right"))
            out[SPLITS[min(k, 3)]].extend(ids[rows].tolist())
            done += len(rows)
    label_of = dict(zip(ids[labeled].tolist(), labels[labeled].tolist()))
    for name in SPLITS:
        counts = [sum(label_of[i] == c for i in out[name]) for c in (0, 1)]
        if min(counts) < min_per_class:
            raise DataError(
                f"split {name} would get {counts[1]} roadwork and {counts[0]} no_roadwork images (need >= "
                f"{min_per_class} of each): add labeled images or change --ratios"
            )
    order = {i: keys.get(f"i:{i}") or _key(seed, f"i:{i}") for v in out.values() for i in v}
    return Splits(ids={k: sorted(v, key=order.__getitem__) for k, v in out.items()}, seed=seed,
                  ratios=ratios, fingerprint=fingerprint, grouped=grouped)
