"""Deterministic synthetic street scenes for demos and tests.

`make_demo_images` writes a small labelled data set of dashcam-like JPEGs: a sky gradient,
a perspective road with lane marks, buildings and cars. Positive images (label 1) add one to
three *small* roadwork objects (traffic cones, striped barriers, diamond work signs); about
half of the negatives (label 0) add orange objects that are not roadwork (an orange car, a
ball or balloon, an awning, a trash bin) so that "any orange pixel" is not a usable shortcut.

The objects are deliberately small (3-8 % of the image height), so a view that tiles the
image into a 3x3 grid sees them roughly three times larger relative to its frame than the
whole-image view does; that is the effect the demo is meant to show.

Two knobs make an easier task: ``object_scale`` multiplies every object's height and
``hard_negatives`` sets the share of negatives that carry orange distractors (0 makes orange a
perfect cue). The fine-tuning demo uses ``object_scale=4, hard_negatives=0``: a task a randomly
initialised backbone cannot read frozen but learns in a few epochs of full fine-tuning. The
defaults give the same bytes as before the knobs existed.

Everything is a pure function of ``seed`` and the image index: image ``i`` is drawn from
``numpy.random.default_rng([seed, i])`` and its label and size from the pair index ``i // 2``,
so growing ``n`` only appends images and the same ``(n, seed)`` gives byte-identical files.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
from PIL import Image, ImageDraw

from natix.data.scene import add_noise, background, draw_buildings, draw_road, make_scene
from natix.data.scene_objects import Queue, add_cars, add_hard_negatives, add_roadwork
from natix.errors import DataError

__all__ = ["make_demo_images"]

SQUARE_SIZE = (224, 224)
DASHCAM_SIZE = (1280, 720)
JPEG_QUALITY = 90


def make_demo_images(
    out: str | os.PathLike[str],
    *,
    n: int = 200,
    seed: int = 0,
    square_fraction: float = 0.5,
    object_scale: float = 1.0,
    hard_negatives: float = 0.5,
) -> pathlib.Path:
    """Write n JPEGs plus `labels.csv` (header `path,label`, paths relative to `out`) into `out`; return the csv path.

    ``object_scale`` multiplies the height of every roadwork and distractor object (1: 3-8 % of
    the image height); ``hard_negatives`` is the probability that a negative carries orange
    objects that are not roadwork.
    """
    _validate(n, seed, square_fraction)
    _check_fraction("hard_negatives", hard_negatives)
    _check_scale(object_scale)
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # One phase per seed so different seeds do not all start with the same size pattern.
    phase = float(np.random.default_rng(seed).random())
    digits = max(5, len(str(n - 1)))
    rows = ["path,label"]
    for i in range(n):
        label, square = _assignment(i, seed, square_fraction, phase)
        size = SQUARE_SIZE if square else DASHCAM_SIZE
        image = _render(np.random.default_rng([seed, i]), size, label, float(object_scale), float(hard_negatives))
        name = f"img_{i:0{digits}d}.jpg"
        # Fixed quality, no EXIF, no optimisation pass: output bytes depend only on pixels.
        # 4:4:4 keeps the few-pixel-wide objects' colours from bleeding into the road.
        image.save(out_dir / name, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=0)
        rows.append(f"{name},{label}")

    csv_path = out_dir / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8", newline="\n")
    return csv_path


def _validate(n: object, seed: object, square_fraction: object) -> None:
    """Raise DataError for arguments that cannot produce a data set."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DataError(f"n must be an integer, got {n!r}: pass --n as a whole number such as 200")
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}: pass --n 1 or more")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(
            f"seed must be a non-negative integer, got {seed!r}: pass --seed 0 or another integer >= 0"
        )
    _check_fraction("square_fraction", square_fraction)


_NUMERIC = (int, float, np.floating, np.integer)


def _check_fraction(name: str, value: object) -> None:
    """Raise DataError unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, _NUMERIC):
        raise DataError(f"{name} must be a number, got {value!r}: pass a value between 0 and 1")
    if not 0.0 <= float(value) <= 1.0:
        raise DataError(f"{name} must be in [0, 1], got {value}: pass a value between 0 and 1")


def _check_scale(value: object) -> None:
    """Raise DataError unless the object scale is a number in (0, 8]."""
    if isinstance(value, bool) or not isinstance(value, _NUMERIC) or not 0.0 < float(value) <= 8.0:
        raise DataError(f"object_scale must be a number in (0, 8], got {value!r}: pass e.g. 1 (the default) or 4")


def _assignment(i: int, seed: int, square_fraction: float, phase: float) -> tuple[int, bool]:
    """Label and squareness of image ``i``, a function of its pair only so it does not depend on n."""
    pair = i // 2
    # Each pair holds one positive and one negative, so any even n is exactly balanced and
    # both classes see the same sequence of sizes.
    positive_first = bool(np.random.default_rng([seed, pair, 1]).random() < 0.5)
    label = int((i % 2 == 0) == positive_first)
    # Bresenham-style spread: the first m pairs hold round(m * fraction) squares, +-1.
    square = math.floor((pair + 1) * square_fraction + phase) > math.floor(pair * square_fraction + phase)
    return label, square


def _render(rng: np.random.Generator, size: tuple[int, int], label: int, object_scale: float,
            hard_negatives: float) -> Image.Image:
    """Draw one complete scene; ``label`` 1 adds roadwork, 0 adds orange distractors with
    probability ``hard_negatives``."""
    width, height = size
    scene = make_scene(rng, width, height, object_scale)
    canvas = background(rng, scene)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)

    buildings = draw_buildings(rng, draw, scene)
    draw_road(rng, draw, scene)

    # Draw back to front so nearer things overlap farther ones like in a real frame.
    queue = Queue()
    if label == 1:
        add_roadwork(rng, scene, queue)
    elif rng.random() < hard_negatives:
        add_hard_negatives(rng, scene, buildings, queue)
    add_cars(rng, scene, queue)
    queue.paint(image, draw)

    return Image.fromarray(add_noise(rng, np.asarray(image)), "RGB")
