"""Deterministic synthetic street scenes for demos and tests.

`make_demo_images` writes a small labelled data set of dashcam-like JPEGs: a sky gradient,
a perspective road with lane marks, buildings and cars. Positive images (label 1) add one to
three *small* roadwork objects (traffic cones, striped barriers, diamond work signs); about
half of the negatives (label 0) add orange objects that are not roadwork (an orange car, a
ball or balloon, an awning, a trash bin) so that "any orange pixel" is not a usable shortcut.

The objects are deliberately small (3-8 % of the image height), so a view that tiles the
image into a 3x3 grid sees them roughly three times larger relative to its frame than the
whole-image view does; that is the effect the demo is meant to show.

Everything is a pure function of ``seed`` and the image index: image ``i`` is drawn from
``numpy.random.default_rng([seed, i])`` and its label and size from the pair index ``i // 2``,
so growing ``n`` only appends images and the same ``(n, seed)`` gives byte-identical files.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from natix.errors import DataError

__all__ = ["make_demo_images"]

SQUARE_SIZE = (224, 224)
DASHCAM_SIZE = (1280, 720)
JPEG_QUALITY = 90

# Roadwork-style orange, drawn from R 235-255, G 100-145, B 0-35: clear of sky, brick and
# tail-light colours, so a simple colour band finds it in tests.
_ORANGE_LO = np.array([235, 100, 0])
_ORANGE_HI = np.array([255, 145, 35])
_RW_RED = (215, 28, 32)
_WHITE = (242, 242, 238)
_DARK = (28, 28, 30)

# No orange or yellow bodies: orange is reserved for roadwork and the hard negatives.
_CAR_COLOURS = [
    (235, 235, 232),  # white
    (170, 172, 178),  # silver
    (35, 36, 40),  # black
    (30, 55, 120),  # dark blue
    (120, 20, 25),  # dark red
    (30, 80, 50),  # dark green
    (95, 98, 104),  # grey
    (120, 160, 200),  # light blue
]
_BUILDING_COLOURS = [
    (150, 150, 155),
    (190, 180, 160),
    (160, 75, 60),  # brick; R stays far below the orange test band
    (120, 125, 135),
    (205, 200, 190),
    (110, 100, 90),
]

Drawer = Callable[[Image.Image, ImageDraw.ImageDraw], None]


@dataclass(frozen=True)
class _Scene:
    """Geometry shared by everything drawn into one image."""

    width: int
    height: int
    horizon: float
    vx: float
    top_half: float
    bottom_left: float
    bottom_right: float

    def edges(self, y: float) -> tuple[float, float]:
        """Left and right road edge at row ``y`` (below the horizon)."""
        t = (y - self.horizon) / (self.height - self.horizon)
        left = (self.vx - self.top_half) + (self.bottom_left - (self.vx - self.top_half)) * t
        right = (self.vx + self.top_half) + (self.bottom_right - (self.vx + self.top_half)) * t
        return left, right


def make_demo_images(
    out: str | os.PathLike[str],
    *,
    n: int = 200,
    seed: int = 0,
    square_fraction: float = 0.5,
) -> pathlib.Path:
    """Write n JPEGs plus `labels.csv` (header `path,label`, paths relative to `out`) into `out`; return the csv path."""
    _validate(n, seed, square_fraction)
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # One phase per seed so different seeds do not all start with the same size pattern.
    phase = float(np.random.default_rng(seed).random())
    digits = max(5, len(str(n - 1)))
    rows = ["path,label"]
    for i in range(n):
        label, square = _assignment(i, seed, square_fraction, phase)
        size = SQUARE_SIZE if square else DASHCAM_SIZE
        image = _render(np.random.default_rng([seed, i]), size, label)
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
    numeric = (int, float, np.floating, np.integer)
    if isinstance(square_fraction, bool) or not isinstance(square_fraction, numeric):
        raise DataError(
            f"square_fraction must be a number, got {square_fraction!r}: pass a value between 0 and 1"
        )
    if not 0.0 <= float(square_fraction) <= 1.0:
        raise DataError(
            f"square_fraction must be in [0, 1], got {square_fraction}: pass a value between 0 and 1"
        )


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


def _render(rng: np.random.Generator, size: tuple[int, int], label: int) -> Image.Image:
    """Draw one complete scene; ``label`` 1 adds roadwork, 0 maybe adds orange distractors."""
    width, height = size
    scene = _make_scene(rng, width, height)
    canvas = _background(rng, scene)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)

    buildings = _draw_buildings(rng, draw, scene)
    _draw_road(rng, draw, scene)

    # Draw back to front so nearer things overlap farther ones like in a real frame.
    items: list[tuple[float, int, Drawer]] = []
    boxes: list[tuple[float, float, float, float]] = []
    if label == 1:
        _add_roadwork(rng, scene, items, boxes)
    elif rng.random() < 0.5:
        _add_hard_negatives(rng, scene, buildings, items, boxes)
    _add_cars(rng, scene, items, boxes)
    for _, _, drawer in sorted(items, key=lambda item: (item[0], item[1])):
        drawer(image, draw)

    return Image.fromarray(_add_noise(rng, np.asarray(image)), "RGB")


def _make_scene(rng: np.random.Generator, width: int, height: int) -> _Scene:
    """Pick horizon, vanishing point and road width."""
    horizon = height * rng.uniform(0.40, 0.50)
    vx = width * rng.uniform(0.42, 0.58)
    top_half = width * rng.uniform(0.010, 0.025)
    centre = vx + width * rng.uniform(-0.08, 0.08)
    half = width * rng.uniform(0.45, 0.62)
    return _Scene(width, height, horizon, vx, top_half, centre - half, centre + half)


def _background(rng: np.random.Generator, scene: _Scene) -> np.ndarray:
    """Sky gradient above the horizon and roadside ground below it, as an HxWx3 array."""
    h, w, horizon = scene.height, scene.width, int(round(scene.horizon))
    brightness = rng.uniform(0.75, 1.05)
    if rng.random() < 0.7:
        # Green at least as high as red keeps the blue from drifting into purple.
        red = rng.uniform(40, 110)
        top = np.array([red, red + rng.uniform(25, 70), rng.uniform(180, 250)])
    else:  # overcast
        g = rng.uniform(130, 200)
        top = np.array([g, g + 4, g + 12])
    # Hazy, pale horizon; kept low in saturation so the sky never reads as orange.
    low = np.array([rng.uniform(200, 235), rng.uniform(210, 238), rng.uniform(220, 245)])
    t = np.linspace(0.0, 1.0, max(horizon, 1))[:, None]
    sky = (top * (1 - t) + low * t) * brightness

    if rng.random() < 0.5:
        ground_far, ground_near = np.array([110, 140, 80]), np.array([70, 110, 50])  # grass
    else:
        ground_far, ground_near = np.array([175, 170, 160]), np.array([140, 135, 125])  # pavement
    t = np.linspace(0.0, 1.0, max(h - horizon, 1))[:, None]
    ground = (ground_far * (1 - t) + ground_near * t) * brightness

    column = np.concatenate([sky, ground])[:h]
    column = np.clip(column, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(column[:, None, :], (h, w, 3)))


def _draw_buildings(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, scene: _Scene
) -> list[tuple[float, float, float, float]]:
    """Facades with window grids along both sides of the road; returns their boxes."""
    w, h = scene.width, scene.height
    base = scene.horizon + h * 0.02
    gap = w * 0.08  # keep the vanishing point open so the road reads as receding
    boxes: list[tuple[float, float, float, float]] = []
    for lo, hi in ((0.0, scene.vx - gap), (scene.vx + gap, float(w))):
        x = lo - rng.uniform(0, w * 0.05)
        while x < hi:
            bw = w * rng.uniform(0.06, 0.16)
            x1 = min(x + bw, hi)
            if x1 - x < w * 0.02:
                break
            top = base - h * rng.uniform(0.10, 0.34)
            colour = _jitter(rng, _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))], 12)
            draw.rectangle((x, top, x1, base), fill=colour, outline=_shade(colour, 0.7))
            _draw_windows(rng, draw, (x, top, x1, base), h)
            boxes.append((x, top, x1, base))
            x = x1 + w * rng.uniform(0.0, 0.02)
    return boxes


def _draw_windows(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], h: int
) -> None:
    """A regular grid of dark or lit windows inside a facade."""
    x0, y0, x1, y1 = box
    win = max(2.0, h * rng.uniform(0.012, 0.02))
    step = win * rng.uniform(1.8, 2.4)
    cols = int((x1 - x0 - win) // step)
    rows = int((y1 - y0 - 2.5 * win) // step)
    if cols < 1 or rows < 1:
        return
    pad_x = (x1 - x0 - (cols - 1) * step - win) / 2
    lit = rng.random((rows, cols)) < 0.2
    dark = _jitter(rng, (60, 70, 85), 10)
    for r in range(rows):
        for c in range(cols):
            wx = x0 + pad_x + c * step
            wy = y0 + win + r * step
            draw.rectangle((wx, wy, wx + win, wy + win * 1.2), fill=(235, 225, 170) if lit[r, c] else dark)


def _draw_road(rng: np.random.Generator, draw: ImageDraw.ImageDraw, scene: _Scene) -> None:
    """Asphalt trapezoid with solid edge lines and dashed lane dividers."""
    h = scene.height
    grey = int(rng.uniform(70, 125))
    asphalt = (grey, grey, grey + 4)
    draw.polygon(
        [
            (scene.vx - scene.top_half, scene.horizon),
            (scene.vx + scene.top_half, scene.horizon),
            (scene.bottom_right, h),
            (scene.bottom_left, h),
        ],
        fill=asphalt,
    )
    line_w = scene.width * rng.uniform(0.006, 0.010)
    _draw_lane_line(draw, scene, 0.04, line_w, _WHITE, dashed=False)
    _draw_lane_line(draw, scene, 0.96, line_w, _WHITE, dashed=False)
    lanes = int(rng.integers(2, 4))
    divider = (230, 195, 55) if rng.random() < 0.4 else _WHITE
    phase = rng.uniform(0, 1)
    for k in range(1, lanes):
        _draw_lane_line(draw, scene, k / lanes, line_w, divider, dashed=True, phase=phase)


def _draw_lane_line(
    draw: ImageDraw.ImageDraw,
    scene: _Scene,
    across: float,
    width: float,
    colour: tuple[int, int, int],
    *,
    dashed: bool,
    phase: float = 0.0,
) -> None:
    """One line at fraction ``across`` of the road width, tapering towards the horizon."""
    span = scene.height - scene.horizon

    def point(t: float) -> tuple[float, float, float]:
        y = scene.horizon + span * t
        left, right = scene.edges(y)
        return left + (right - left) * across, y, width * t / 2

    # Dash spacing is uniform in depth z = 1/t, which is what makes dashes shrink with distance.
    if dashed:
        z, segments = 1.0 - phase * 2.0, []
        while z < 40:
            start = max(z, 1.0)
            end = z + 1.0
            if end > 1.0:
                segments.append((1.0 / end, 1.0 / start))
            z += 2.5
    else:
        segments = [(1.0 / 40, 1.0)]
    for t0, t1 in segments:
        xa, ya, wa = point(t0)
        xb, yb, wb = point(t1)
        draw.polygon([(xa - wa, ya), (xa + wa, ya), (xb + wb, yb), (xb - wb, yb)], fill=colour)


def _ground_row(rng: np.random.Generator, scene: _Scene) -> float:
    """Ground row for an object, from just below the horizon down to the bottom edge."""
    return min(scene.horizon + (scene.height - scene.horizon) * rng.uniform(0.12, 0.97), scene.height - 1.0)


def _object_height(rng: np.random.Generator, scene: _Scene, y: float) -> float:
    """3-8 % of the image height, larger when nearer the camera."""
    depth = (y - scene.horizon) / (scene.height - scene.horizon)
    frac = 0.03 + 0.05 * float(np.clip(0.6 * depth + 0.4 * rng.random(), 0.0, 1.0))
    return scene.height * frac


def _orange(rng: np.random.Generator) -> tuple[int, int, int]:
    """A roadwork-style orange with a little per-object variation."""
    return tuple(int(v) for v in rng.integers(_ORANGE_LO, _ORANGE_HI + 1))  # type: ignore[return-value]


def _add_roadwork(
    rng: np.random.Generator,
    scene: _Scene,
    items: list[tuple[float, int, Drawer]],
    boxes: list[tuple[float, float, float, float]],
) -> None:
    """Queue 1-3 cones, barriers or diamond signs."""
    count = int(rng.integers(1, 4))
    kinds = rng.integers(0, 3, size=count)
    for k, kind in enumerate(kinds):
        # Depth first, so the size follows perspective, then x within the road at that depth.
        y = _ground_row(rng, scene)
        obj_h = _object_height(rng, scene, y)
        aspect = {0: 0.7, 1: rng.uniform(1.6, 2.6), 2: 0.72}[int(kind)]
        obj_w = obj_h * aspect
        x, _ = _spot_at(rng, scene, y, obj_w)
        # The first object always carries orange so every positive shows the roadwork colour.
        red = int(kind) == 1 and k > 0 and rng.random() < 0.4
        orange = _orange(rng)
        if kind == 0:
            drawer = _cone(x, y, obj_h, orange)
        elif kind == 1:
            drawer = _barrier(x, y, obj_h, obj_w, _RW_RED if red else orange)
        else:
            drawer = _sign(x, y, obj_h, orange)
        items.append((y, len(items), drawer))
        boxes.append((x - obj_w / 2, y - obj_h, x + obj_w / 2, y))


def _spot_at(rng: np.random.Generator, scene: _Scene, y: float, obj_w: float) -> tuple[float, float]:
    """Centre x on the road or roadside at ground row ``y``."""
    left, right = scene.edges(y)
    margin = 0.25 * (right - left)
    lo = max(left - margin, obj_w / 2 + 1)
    hi = min(right + margin, scene.width - obj_w / 2 - 1)
    return (rng.uniform(lo, hi) if hi > lo else scene.width / 2), y


def _cone(cx: float, ground: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange triangle with two white bands on a dark square base."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        base_h = max(1.0, 0.12 * h)
        bw = 0.7 * h
        top = ground - h
        bottom = ground - base_h
        d.rectangle((cx - 0.5 * h, bottom, cx + 0.5 * h, ground), fill=_DARK)
        d.polygon([(cx, top), (cx + bw / 2, bottom), (cx - bw / 2, bottom)], fill=orange)
        body = bottom - top
        for a, b in ((0.30, 0.45), (0.60, 0.75)):
            ya, yb = top + body * a, top + body * b
            wa, wb = bw / 2 * a, bw / 2 * b
            d.polygon([(cx - wa, ya), (cx + wa, ya), (cx + wb, yb), (cx - wb, yb)], fill=_WHITE)

    return draw_it


def _barrier(cx: float, ground: float, h: float, w: float, colour: tuple[int, int, int]) -> Drawer:
    """Diagonally striped bar on two dark legs."""

    def draw_it(image: Image.Image, d: ImageDraw.ImageDraw) -> None:
        bar_h = max(3, int(round(0.34 * h)))
        bar_w = max(6, int(round(w)))
        x0 = int(round(cx - bar_w / 2))
        y0 = int(round(ground - h))
        leg_w = max(1.0, 0.07 * w)
        for lx in (x0 + 0.15 * bar_w, x0 + 0.85 * bar_w - leg_w):
            d.rectangle((lx, y0 + bar_h, lx + leg_w, ground), fill=(60, 60, 62))
            d.rectangle((lx - 1.5 * leg_w, ground - max(1.0, 0.06 * h), lx + 2.5 * leg_w, ground), fill=_DARK)
        # A separate sprite clips the stripes to the bar for free.
        bar = Image.new("RGB", (bar_w, bar_h), _WHITE)
        bd = ImageDraw.Draw(bar)
        stripe = max(2.0, 0.8 * bar_h)
        x = -float(bar_h)
        while x < bar_w:
            stripe_poly = [(x, bar_h), (x + stripe, bar_h), (x + stripe + bar_h, 0), (x + bar_h, 0)]
            bd.polygon(stripe_poly, fill=colour)
            x += 2 * stripe
        if bar_h >= 5:
            bd.rectangle((0, 0, bar_w - 1, bar_h - 1), outline=_DARK)
        image.paste(bar, (x0, y0))

    return draw_it


def _sign(cx: float, ground: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange diamond with a black border and a digging-worker glyph, on a grey post."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        r = 0.36 * h  # half-diagonal; the post takes the rest of the height
        cy = ground - h + r
        post = max(1.0, 0.06 * h)
        d.rectangle((cx - post / 2, cy, cx + post / 2, ground), fill=(120, 120, 125))
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=_DARK)
        inner = r - max(1.0, 0.12 * r)
        d.polygon([(cx, cy - inner), (cx + inner, cy), (cx, cy + inner), (cx - inner, cy)], fill=orange)
        if r < 5:
            return  # below ~10 px a glyph is just a blot that hides the orange
        g = max(1, int(round(0.1 * r)))
        head = max(1.0, 0.1 * r)
        hx, hy = cx - 0.1 * r, cy - 0.45 * r
        d.ellipse((hx - head, hy - head, hx + head, hy + head), fill=_DARK)
        d.line([(cx - 0.1 * r, cy - 0.3 * r), (cx - 0.05 * r, cy + 0.15 * r)], fill=_DARK, width=g)
        d.line([(cx - 0.05 * r, cy + 0.15 * r), (cx - 0.3 * r, cy + 0.5 * r)], fill=_DARK, width=g)
        d.line([(cx - 0.05 * r, cy + 0.15 * r), (cx + 0.15 * r, cy + 0.5 * r)], fill=_DARK, width=g)
        d.line([(cx - 0.08 * r, cy - 0.15 * r), (cx + 0.35 * r, cy + 0.2 * r)], fill=_DARK, width=g)  # shovel

    return draw_it


def _add_hard_negatives(
    rng: np.random.Generator,
    scene: _Scene,
    buildings: list[tuple[float, float, float, float]],
    items: list[tuple[float, int, Drawer]],
    boxes: list[tuple[float, float, float, float]],
) -> None:
    """Queue 1-2 orange objects that are not roadwork."""
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(0, 4))
        y = _ground_row(rng, scene)
        obj_h = _object_height(rng, scene, y)
        orange = _orange(rng)
        if kind == 2 and buildings:
            bx0, by0, bx1, by1 = buildings[int(rng.integers(len(buildings)))]
            aw = min(bx1 - bx0, obj_h * rng.uniform(1.5, 3.0))
            ax = rng.uniform(bx0, max(bx0, bx1 - aw))  # rounding can make bx1 - aw a hair below bx0
            ay = by1 - (by1 - by0) * rng.uniform(0.15, 0.35)
            # Facades sit behind everything on the ground, so awnings go first.
            striped = bool(rng.random() < 0.5)
            items.append((-1.0, len(items), _awning(ax, ay, aw, obj_h * 0.6, orange, striped)))
            continue
        if kind == 0:
            w = obj_h / 0.75
            x, _ = _spot_at(rng, scene, y, w)
            drawer = _car(x, y, w, obj_h, orange, _jitter(rng, (70, 90, 110), 10))
        elif kind == 1:
            w = obj_h
            x, _ = _spot_at(rng, scene, y, w)
            if rng.random() < 0.5:
                drawer = _ball(x, y, obj_h, orange)
            else:
                # Balloons float: drawn lifted off the ground, but sorted by the ground row.
                lifted = y - rng.uniform(0.5, 3.0) * obj_h
                drawer = _balloon(x, lifted, obj_h, orange)
                boxes.append((x - w / 2, lifted - obj_h, x + w / 2, lifted))
        else:
            w = obj_h * 0.6
            x, _ = _spot_at(rng, scene, y, w)
            drawer = _bin(x, y, obj_h, orange)
        items.append((y, len(items), drawer))
        boxes.append((x - w / 2, y - obj_h, x + w / 2, y))


def _ball(cx: float, ground: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange ball resting on the ground with a highlight."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        r = h / 2
        d.ellipse((cx - r, ground - h, cx + r, ground), fill=orange, outline=_shade(orange, 0.7))
        d.ellipse((cx - 0.5 * r, ground - 1.6 * r, cx - 0.1 * r, ground - 1.25 * r), fill=(255, 200, 150))

    return draw_it


def _balloon(cx: float, bottom: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange oval balloon on a thin string."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        bh = 0.7 * h
        d.line([(cx, bottom - h + bh), (cx + 0.1 * h, bottom)], fill=(60, 60, 60), width=1)
        d.ellipse((cx - 0.28 * h, bottom - h, cx + 0.28 * h, bottom - h + bh), fill=orange)

    return draw_it


def _bin(cx: float, ground: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange wheelie bin: body, darker lid, two wheels."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        w = 0.6 * h
        d.rectangle((cx - w / 2, ground - h, cx + w / 2, ground - 0.08 * h), fill=orange)
        d.rectangle((cx - 0.55 * w, ground - h, cx + 0.55 * w, ground - 0.88 * h), fill=_shade(orange, 0.6))
        wr = max(1.0, 0.08 * h)
        for wx in (cx - w / 2 + wr, cx + w / 2 - wr):
            d.ellipse((wx - wr, ground - 2 * wr, wx + wr, ground), fill=_DARK)

    return draw_it


def _awning(x: float, y: float, w: float, h: float, orange: tuple[int, int, int], striped: bool) -> Drawer:
    """Slanted shop awning, solid or vertically striped, over a ground-floor window."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        slant = 0.15 * w
        d.polygon([(x + slant, y), (x + w - slant, y), (x + w, y + h), (x, y + h)], fill=orange)
        if striped:
            n = max(3, int(w // max(2.0, 0.25 * h)))
            for k in range(1, n, 2):
                a, b = k / n, (k + 1) / n
                d.polygon(
                    [
                        (x + slant + (w - 2 * slant) * a, y),
                        (x + slant + (w - 2 * slant) * b, y),
                        (x + w * b, y + h),
                        (x + w * a, y + h),
                    ],
                    fill=_WHITE,
                )

    return draw_it


def _add_cars(
    rng: np.random.Generator,
    scene: _Scene,
    items: list[tuple[float, int, Drawer]],
    boxes: list[tuple[float, float, float, float]],
) -> None:
    """Queue 1-4 ordinary cars on the road, not covering the objects already placed."""
    span = scene.height - scene.horizon
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(8):
            y = scene.horizon + span * rng.uniform(0.08, 0.55)
            left, right = scene.edges(y)
            w = (right - left) * rng.uniform(0.22, 0.32)
            h = w * rng.uniform(0.7, 0.85)
            x = rng.uniform(left + w / 2, right - w / 2)
            box = (x - w / 2, y - h, x + w / 2, y)
            if not any(_overlaps(box, other) for other in boxes):
                break
        else:
            continue
        colour = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 8)
        glass = _jitter(rng, (50, 65, 80), 8)
        items.append((y, len(items), _car(x, y, w, h, colour, glass)))
        boxes.append(box)


def _car(
    cx: float, ground: float, w: float, h: float, colour: tuple[int, int, int], glass: tuple[int, int, int]
) -> Drawer:
    """Rear view of a car: wheels, rounded body, cabin with a rear window, tail lights, plate."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        x0, x1 = cx - w / 2, cx + w / 2
        wheel_w, wheel_h = 0.18 * w, 0.2 * h
        for wx in (x0 + 0.04 * w, x1 - 0.04 * w - wheel_w):
            wheel = (wx, ground - wheel_h, wx + wheel_w, ground)
            d.rounded_rectangle(wheel, radius=_radius(wheel_w, wheel_h, 0.3), fill=_DARK)
        body = (x0, ground - 0.62 * h, x1, ground - 0.1 * h)
        d.rounded_rectangle(body, radius=_radius(w, 0.52 * h, 0.2), fill=colour)
        cabin = (x0 + 0.12 * w, ground - h, x1 - 0.12 * w, ground - 0.55 * h)
        d.rounded_rectangle(cabin, radius=_radius(0.76 * w, 0.45 * h, 0.3), fill=colour)
        window = (x0 + 0.18 * w, ground - 0.93 * h, x1 - 0.18 * w, ground - 0.62 * h)
        d.rounded_rectangle(window, radius=_radius(0.64 * w, 0.31 * h, 0.2), fill=glass)
        light_w = 0.14 * w
        for lx in (x0 + 0.04 * w, x1 - 0.04 * w - light_w):
            d.rectangle((lx, ground - 0.52 * h, lx + light_w, ground - 0.42 * h), fill=(200, 20, 25))
        plate = (cx - 0.12 * w, ground - 0.36 * h, cx + 0.12 * w, ground - 0.26 * h)
        d.rectangle(plate, fill=(235, 235, 225))

    return draw_it


def _radius(w: float, h: float, frac: float) -> int:
    """Corner radius that Pillow accepts for a box of size w x h."""
    return max(0, int(min(w, h) * frac))


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two (x0, y0, x1, y1) boxes intersect."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    """Colour with each channel moved by up to ``amount``."""
    moved = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return int(moved[0]), int(moved[1]), int(moved[2])


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    """Darker (factor < 1) version of a colour."""
    return int(colour[0] * factor), int(colour[1] * factor), int(colour[2] * factor)


def _add_noise(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Mild luminance grain so JPEGs carry texture instead of flat, trivially compressible areas."""
    h, w, _ = pixels.shape
    # One channel of float32 noise is a third of the cost of full RGB noise and looks the same.
    grain = rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(2.5, 4.5))
    noisy = pixels.astype(np.float32) + grain[:, :, None]
    return np.clip(noisy, 0, 255).astype(np.uint8)
