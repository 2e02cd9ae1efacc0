"""Street-scene geometry and the drawing of everything but the objects: sky, ground, buildings, road.

A scene is a perspective road under a horizon (:class:`Scene`); the helpers here place objects
on it (ground row, size by depth, x within the road) and pick their colours. Every function
draws from the ``numpy`` generator it is given, in a fixed order: the demo images are a pure
function of their seed (see :mod:`natix.data.demo`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
Drawer = Callable[[Image.Image, ImageDraw.ImageDraw], None]

# Roadwork-style orange, drawn from R 235-255, G 100-145, B 0-35: clear of sky, brick and
# tail-light colours, so a simple colour band finds it in tests.
_ORANGE_LO = np.array([235, 100, 0])
_ORANGE_HI = np.array([255, 145, 35])
RW_RED = (215, 28, 32)
WHITE = (242, 242, 238)
DARK = (28, 28, 30)

_BUILDING_COLOURS = [
    (150, 150, 155),
    (190, 180, 160),
    (160, 75, 60),  # brick; R stays far below the orange test band
    (120, 125, 135),
    (205, 200, 190),
    (110, 100, 90),
]


@dataclass(frozen=True)
class Scene:
    """Geometry shared by everything drawn into one image."""

    width: int
    height: int
    horizon: float
    vx: float
    top_half: float
    bottom_left: float
    bottom_right: float
    object_scale: float = 1.0  # multiplies every roadwork and distractor object's height

    def edges(self, y: float) -> tuple[float, float]:
        """Left and right road edge at row ``y`` (below the horizon)."""
        t = (y - self.horizon) / (self.height - self.horizon)
        left = (self.vx - self.top_half) + (self.bottom_left - (self.vx - self.top_half)) * t
        right = (self.vx + self.top_half) + (self.bottom_right - (self.vx + self.top_half)) * t
        return left, right


def make_scene(rng: np.random.Generator, width: int, height: int, object_scale: float = 1.0) -> Scene:
    """Pick horizon, vanishing point and road width; objects are drawn ``object_scale`` times their usual height."""
    horizon = height * rng.uniform(0.40, 0.50)
    vx = width * rng.uniform(0.42, 0.58)
    top_half = width * rng.uniform(0.010, 0.025)
    centre = vx + width * rng.uniform(-0.08, 0.08)
    half = width * rng.uniform(0.45, 0.62)
    return Scene(width, height, horizon, vx, top_half, centre - half, centre + half, object_scale)


def background(rng: np.random.Generator, scene: Scene) -> np.ndarray:
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


def draw_buildings(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, scene: Scene
) -> list[Box]:
    """Facades with window grids along both sides of the road; returns their boxes."""
    w, h = scene.width, scene.height
    base = scene.horizon + h * 0.02
    gap = w * 0.08  # keep the vanishing point open so the road reads as receding
    boxes: list[Box] = []
    for lo, hi in ((0.0, scene.vx - gap), (scene.vx + gap, float(w))):
        x = lo - rng.uniform(0, w * 0.05)
        while x < hi:
            bw = w * rng.uniform(0.06, 0.16)
            x1 = min(x + bw, hi)
            if x1 - x < w * 0.02:
                break
            top = base - h * rng.uniform(0.10, 0.34)
            colour = jitter(rng, _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))], 12)
            draw.rectangle((x, top, x1, base), fill=colour, outline=shade(colour, 0.7))
            _draw_windows(rng, draw, (x, top, x1, base), h)
            boxes.append((x, top, x1, base))
            x = x1 + w * rng.uniform(0.0, 0.02)
    return boxes


def _draw_windows(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, box: Box, h: int
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
    dark = jitter(rng, (60, 70, 85), 10)
    for r in range(rows):
        for c in range(cols):
            wx = x0 + pad_x + c * step
            wy = y0 + win + r * step
            draw.rectangle((wx, wy, wx + win, wy + win * 1.2), fill=(235, 225, 170) if lit[r, c] else dark)


def draw_road(rng: np.random.Generator, draw: ImageDraw.ImageDraw, scene: Scene) -> None:
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
    _draw_lane_line(draw, scene, 0.04, line_w, WHITE, dashed=False)
    _draw_lane_line(draw, scene, 0.96, line_w, WHITE, dashed=False)
    lanes = int(rng.integers(2, 4))
    divider = (230, 195, 55) if rng.random() < 0.4 else WHITE
    phase = rng.uniform(0, 1)
    for k in range(1, lanes):
        _draw_lane_line(draw, scene, k / lanes, line_w, divider, dashed=True, phase=phase)


def _draw_lane_line(
    draw: ImageDraw.ImageDraw,
    scene: Scene,
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


def ground_row(rng: np.random.Generator, scene: Scene) -> float:
    """Ground row for an object, from just below the horizon down to the bottom edge."""
    return min(scene.horizon + (scene.height - scene.horizon) * rng.uniform(0.12, 0.97), scene.height - 1.0)


def object_height(rng: np.random.Generator, scene: Scene, y: float) -> float:
    """3-8 % of the image height (times the scene's object scale), larger when nearer the camera."""
    depth = (y - scene.horizon) / (scene.height - scene.horizon)
    frac = 0.03 + 0.05 * float(np.clip(0.6 * depth + 0.4 * rng.random(), 0.0, 1.0))
    return scene.height * frac * scene.object_scale


def roadwork_orange(rng: np.random.Generator) -> tuple[int, int, int]:
    """A roadwork-style orange with a little per-object variation."""
    return tuple(int(v) for v in rng.integers(_ORANGE_LO, _ORANGE_HI + 1))  # type: ignore[return-value]


def spot_at(rng: np.random.Generator, scene: Scene, y: float, obj_w: float) -> tuple[float, float]:
    """Centre x on the road or roadside at ground row ``y``."""
    left, right = scene.edges(y)
    margin = 0.25 * (right - left)
    lo = max(left - margin, obj_w / 2 + 1)
    hi = min(right + margin, scene.width - obj_w / 2 - 1)
    return (rng.uniform(lo, hi) if hi > lo else scene.width / 2), y


def corner_radius(w: float, h: float, frac: float) -> int:
    """Corner radius that Pillow accepts for a box of size w x h."""
    return max(0, int(min(w, h) * frac))


def overlaps(a: Box, b: Box) -> bool:
    """Whether two (x0, y0, x1, y1) boxes intersect."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    """Colour with each channel moved by up to ``amount``."""
    moved = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return int(moved[0]), int(moved[1]), int(moved[2])


def shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    """Darker (factor < 1) version of a colour."""
    return int(colour[0] * factor), int(colour[1] * factor), int(colour[2] * factor)


def add_noise(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Mild luminance grain so JPEGs carry texture instead of flat, trivially compressible areas."""
    h, w, _ = pixels.shape
    # One channel of float32 noise is a third of the cost of full RGB noise and looks the same.
    grain = rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(2.5, 4.5))
    noisy = pixels.astype(np.float32) + grain[:, :, None]
    return np.clip(noisy, 0, 255).astype(np.uint8)
