"""The objects of a demo street scene: roadwork, orange things that are not roadwork, and cars.

Each ``add_*`` function draws positions, sizes and colours from the generator it is given and
queues drawers on a :class:`Queue`; the queue then paints them back to front, so nearer
objects overlap farther ones as in a real frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from natix.data.scene import (
    DARK,
    RW_RED,
    WHITE,
    Box,
    Drawer,
    Scene,
    corner_radius,
    ground_row,
    jitter,
    object_height,
    overlaps,
    roadwork_orange,
    shade,
    spot_at,
)

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


@dataclass
class Queue:
    """Drawers to paint back to front (by ground row, then by order queued) and the boxes they cover."""

    items: list[tuple[float, int, Drawer]] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)

    def add(self, depth: float, drawer: Drawer) -> None:
        """Queue `drawer` at ground row `depth` (larger is nearer the camera)."""
        self.items.append((depth, len(self.items), drawer))

    def paint(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        """Run every drawer, farthest first."""
        for _, _, drawer in sorted(self.items, key=lambda item: (item[0], item[1])):
            drawer(image, draw)


def add_roadwork(rng: np.random.Generator, scene: Scene, queue: Queue) -> None:
    """Queue 1-3 cones, barriers or diamond signs."""
    count = int(rng.integers(1, 4))
    kinds = rng.integers(0, 3, size=count)
    for k, kind in enumerate(kinds):
        # Depth first, so the size follows perspective, then x within the road at that depth.
        y = ground_row(rng, scene)
        obj_h = object_height(rng, scene, y)
        aspect = {0: 0.7, 1: rng.uniform(1.6, 2.6), 2: 0.72}[int(kind)]
        obj_w = obj_h * aspect
        x, _ = spot_at(rng, scene, y, obj_w)
        # The first object always carries orange so every positive shows the roadwork colour.
        red = int(kind) == 1 and k > 0 and rng.random() < 0.4
        orange = roadwork_orange(rng)
        if kind == 0:
            drawer = _cone(x, y, obj_h, orange)
        elif kind == 1:
            drawer = _barrier(x, y, obj_h, obj_w, RW_RED if red else orange)
        else:
            drawer = _sign(x, y, obj_h, orange)
        queue.add(y, drawer)
        queue.boxes.append((x - obj_w / 2, y - obj_h, x + obj_w / 2, y))


def _cone(cx: float, ground: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange triangle with two white bands on a dark square base."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        base_h = max(1.0, 0.12 * h)
        bw = 0.7 * h
        top = ground - h
        bottom = ground - base_h
        d.rectangle((cx - 0.5 * h, bottom, cx + 0.5 * h, ground), fill=DARK)
        d.polygon([(cx, top), (cx + bw / 2, bottom), (cx - bw / 2, bottom)], fill=orange)
        body = bottom - top
        for a, b in ((0.30, 0.45), (0.60, 0.75)):
            ya, yb = top + body * a, top + body * b
            wa, wb = bw / 2 * a, bw / 2 * b
            d.polygon([(cx - wa, ya), (cx + wa, ya), (cx + wb, yb), (cx - wb, yb)], fill=WHITE)

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
            d.rectangle((lx - 1.5 * leg_w, ground - max(1.0, 0.06 * h), lx + 2.5 * leg_w, ground), fill=DARK)
        # A separate sprite clips the stripes to the bar for free.
        bar = Image.new("RGB", (bar_w, bar_h), WHITE)
        bd = ImageDraw.Draw(bar)
        stripe = max(2.0, 0.8 * bar_h)
        x = -float(bar_h)
        while x < bar_w:
            stripe_poly = [(x, bar_h), (x + stripe, bar_h), (x + stripe + bar_h, 0), (x + bar_h, 0)]
            bd.polygon(stripe_poly, fill=colour)
            x += 2 * stripe
        if bar_h >= 5:
            bd.rectangle((0, 0, bar_w - 1, bar_h - 1), outline=DARK)
        image.paste(bar, (x0, y0))

    return draw_it


def _sign(cx: float, ground: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange diamond with a black border and a digging-worker glyph, on a grey post."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        r = 0.36 * h  # half-diagonal; the post takes the rest of the height
        cy = ground - h + r
        post = max(1.0, 0.06 * h)
        d.rectangle((cx - post / 2, cy, cx + post / 2, ground), fill=(120, 120, 125))
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=DARK)
        inner = r - max(1.0, 0.12 * r)
        d.polygon([(cx, cy - inner), (cx + inner, cy), (cx, cy + inner), (cx - inner, cy)], fill=orange)
        if r < 5:
            return  # below ~10 px a glyph is just a blot that hides the orange
        g = max(1, int(round(0.1 * r)))
        head = max(1.0, 0.1 * r)
        hx, hy = cx - 0.1 * r, cy - 0.45 * r
        d.ellipse((hx - head, hy - head, hx + head, hy + head), fill=DARK)
        d.line([(cx - 0.1 * r, cy - 0.3 * r), (cx - 0.05 * r, cy + 0.15 * r)], fill=DARK, width=g)
        d.line([(cx - 0.05 * r, cy + 0.15 * r), (cx - 0.3 * r, cy + 0.5 * r)], fill=DARK, width=g)
        d.line([(cx - 0.05 * r, cy + 0.15 * r), (cx + 0.15 * r, cy + 0.5 * r)], fill=DARK, width=g)
        d.line([(cx - 0.08 * r, cy - 0.15 * r), (cx + 0.35 * r, cy + 0.2 * r)], fill=DARK, width=g)  # shovel

    return draw_it


def add_hard_negatives(rng: np.random.Generator, scene: Scene, buildings: list[Box], queue: Queue) -> None:
    """Queue 1-2 orange objects that are not roadwork."""
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(0, 4))
        y = ground_row(rng, scene)
        obj_h = object_height(rng, scene, y)
        orange = roadwork_orange(rng)
        if kind == 2 and buildings:
            bx0, by0, bx1, by1 = buildings[int(rng.integers(len(buildings)))]
            aw = min(bx1 - bx0, obj_h * rng.uniform(1.5, 3.0))
            ax = rng.uniform(bx0, max(bx0, bx1 - aw))  # rounding can make bx1 - aw a hair below bx0
            ay = by1 - (by1 - by0) * rng.uniform(0.15, 0.35)
            # Facades sit behind everything on the ground, so awnings go first.
            striped = bool(rng.random() < 0.5)
            queue.add(-1.0, _awning(ax, ay, aw, obj_h * 0.6, orange, striped))
            continue
        if kind == 0:
            w = obj_h / 0.75
            x, _ = spot_at(rng, scene, y, w)
            drawer = _car(x, y, w, obj_h, orange, jitter(rng, (70, 90, 110), 10))
        elif kind == 1:
            w = obj_h
            x, _ = spot_at(rng, scene, y, w)
            if rng.random() < 0.5:
                drawer = _ball(x, y, obj_h, orange)
            else:
                # Balloons float: drawn lifted off the ground, but sorted by the ground row.
                lifted = y - rng.uniform(0.5, 3.0) * obj_h
                drawer = _balloon(x, lifted, obj_h, orange)
                queue.boxes.append((x - w / 2, lifted - obj_h, x + w / 2, lifted))
        else:
            w = obj_h * 0.6
            x, _ = spot_at(rng, scene, y, w)
            drawer = _bin(x, y, obj_h, orange)
        queue.add(y, drawer)
        queue.boxes.append((x - w / 2, y - obj_h, x + w / 2, y))


def _ball(cx: float, ground: float, h: float, orange: tuple[int, int, int]) -> Drawer:
    """Orange ball resting on the ground with a highlight."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        r = h / 2
        d.ellipse((cx - r, ground - h, cx + r, ground), fill=orange, outline=shade(orange, 0.7))
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
        d.rectangle((cx - 0.55 * w, ground - h, cx + 0.55 * w, ground - 0.88 * h), fill=shade(orange, 0.6))
        wr = max(1.0, 0.08 * h)
        for wx in (cx - w / 2 + wr, cx + w / 2 - wr):
            d.ellipse((wx - wr, ground - 2 * wr, wx + wr, ground), fill=DARK)

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
                    fill=WHITE,
                )

    return draw_it


def add_cars(rng: np.random.Generator, scene: Scene, queue: Queue) -> None:
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
            if not any(overlaps(box, other) for other in queue.boxes):
                break
        else:
            continue
        colour = jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 8)
        glass = jitter(rng, (50, 65, 80), 8)
        queue.add(y, _car(x, y, w, h, colour, glass))
        queue.boxes.append(box)


def _car(
    cx: float, ground: float, w: float, h: float, colour: tuple[int, int, int], glass: tuple[int, int, int]
) -> Drawer:
    """Rear view of a car: wheels, rounded body, cabin with a rear window, tail lights, plate."""

    def draw_it(_: Image.Image, d: ImageDraw.ImageDraw) -> None:
        x0, x1 = cx - w / 2, cx + w / 2
        wheel_w, wheel_h = 0.18 * w, 0.2 * h
        for wx in (x0 + 0.04 * w, x1 - 0.04 * w - wheel_w):
            wheel = (wx, ground - wheel_h, wx + wheel_w, ground)
            d.rounded_rectangle(wheel, radius=corner_radius(wheel_w, wheel_h, 0.3), fill=DARK)
        body = (x0, ground - 0.62 * h, x1, ground - 0.1 * h)
        d.rounded_rectangle(body, radius=corner_radius(w, 0.52 * h, 0.2), fill=colour)
        cabin = (x0 + 0.12 * w, ground - h, x1 - 0.12 * w, ground - 0.55 * h)
        d.rounded_rectangle(cabin, radius=corner_radius(0.76 * w, 0.45 * h, 0.3), fill=colour)
        window = (x0 + 0.18 * w, ground - 0.93 * h, x1 - 0.18 * w, ground - 0.62 * h)
        d.rounded_rectangle(window, radius=corner_radius(0.64 * w, 0.31 * h, 0.2), fill=glass)
        light_w = 0.14 * w
        for lx in (x0 + 0.04 * w, x1 - 0.04 * w - light_w):
            d.rectangle((lx, ground - 0.52 * h, lx + light_w, ground - 0.42 * h), fill=(200, 20, 25))
        plate = (cx - 0.12 * w, ground - 0.36 * h, cx + 0.12 * w, ground - 0.26 * h)
        d.rectangle(plate, fill=(235, 235, 225))

    return draw_it
