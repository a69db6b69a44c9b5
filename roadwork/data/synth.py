"""Procedural street scenes with and without work zones.

The toolkit's tests, benchmarks and offline demo need labelled street photos without a download,
so this module draws them: a perspective road seen from a car, scenery that depends on the scene
type, traffic and pedestrians, and on positives a work zone. Negatives carry look-alikes (orange
cars, school buses, striped awnings, amber lights, yellow warning signs, orange clothes) so that
colour alone cannot separate the classes. Each scene is planned first (all the randomness) and
drawn second (none), which makes images deterministic and lets a positive be redrawn without its
work zone to prove that the work zone is visible.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from roadwork.storage import atomic_write_bytes, atomic_write_text

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]
Point = tuple[float, float]
T = TypeVar("T")

SCENES = ("urban", "residential", "highway", "rural")
DAYTIMES = ("day", "dawn", "dusk", "night")
WEATHERS = ("clear", "cloudy", "rain", "fog")
CSV_COLUMNS = ("file_name", "label", "latitude", "longitude", "weather", "daytime", "scene", "description")
ROADWORK_KINDS = frozenset({"cone", "drum", "barrier", "work_sign", "worker", "excavator", "jersey_barrier"})

NULL_RATE = 0.6
# Look-alikes appear at the same rate in both classes: were they commoner in negatives, "school bus"
# would become a shortcut meaning "no roadwork"; the colour-only baseline is already near chance.
LOOKALIKES_PER_SCENE = 1.4
ODD_VALUE_RATE = 0.04
JPEG_QUALITY = 90


@dataclass(frozen=True)
class City:
    name: str
    latitude: float
    longitude: float
    drives_left: bool


CITIES = (
    City("San Francisco", 37.7749, -122.4194, drives_left=False),
    City("Berlin", 52.5200, 13.4050, drives_left=False),
    City("Sao Paulo", -23.5505, -46.6333, drives_left=False),
    City("Tokyo", 35.6762, 139.6503, drives_left=True),
)
# Scattered far points land around these regions (so a drawn road is not in mid-ocean).
FAR_REGIONS = (
    City("Chicago", 41.88, -87.63, drives_left=False),
    City("Mexico City", 19.43, -99.13, drives_left=False),
    City("Buenos Aires", -34.60, -58.38, drives_left=False),
    City("Madrid", 40.42, -3.70, drives_left=False),
    City("Warsaw", 52.23, 21.01, drives_left=False),
    City("Nairobi", -1.29, 36.82, drives_left=True),
    City("Johannesburg", -26.20, 28.05, drives_left=True),
    City("Mumbai", 19.08, 72.88, drives_left=True),
    City("Bangkok", 13.76, 100.50, drives_left=True),
    City("Sydney", -33.87, 151.21, drives_left=True),
)
FAR_POINT_RATE = 0.1
CITY_JITTER_KM = 4.0
FAR_JITTER_KM = 150.0

_SCENE_WEIGHTS_CITY = (0.45, 0.33, 0.15, 0.07)
_SCENE_WEIGHTS_FAR = (0.05, 0.15, 0.35, 0.45)
_DAYTIME_WEIGHTS = (0.5, 0.1, 0.17, 0.23)
_WEATHER_WEIGHTS = (0.45, 0.25, 0.17, 0.13)

_SUPERSAMPLE = 2
_GLOW_SCALE = 8
_FAR_Z = 450.0

_SHADOW = (18, 18, 20)
_TYRE = (24, 24, 26)
_GLASS = (48, 58, 72)
_PAINT = (232, 232, 226)
_REFLECTIVE = (245, 245, 240)
_POLE = (95, 98, 100)
_AMBER = (255, 165, 25)
_SAFETY_ORANGES = ((255, 98, 0), (250, 118, 18), (238, 84, 10))
_HIVIS = ((208, 250, 40), (255, 112, 22))
_SKIN = ((235, 195, 160), (200, 150, 110), (150, 100, 70), (95, 65, 45))
_HAIR = ((30, 25, 20), (90, 60, 30), (200, 170, 110), (120, 120, 120))
_CLOTHES = ((40, 45, 60), (200, 200, 205), (120, 30, 35), (60, 90, 140), (30, 30, 32), (150, 140, 110),
            (90, 110, 80), (170, 120, 150))
_CAR_COLOURS = ((235, 235, 235), (28, 28, 30), (168, 170, 174), (108, 110, 114), (30, 45, 92),
                (165, 24, 24), (40, 80, 160), (32, 70, 52), (200, 186, 150))
_LOOKALIKE_CAR_COLOURS = ((240, 108, 20), (246, 194, 18), (252, 140, 30))
_FOLIAGE = ((58, 100, 40), (75, 120, 45), (40, 80, 35), (95, 125, 50))
_AUTUMN_FOLIAGE = ((215, 110, 25), (225, 160, 35), (180, 70, 25))
_WALLS = ((170, 168, 160), (150, 72, 52), (205, 185, 145), (95, 112, 130), (220, 218, 210), (120, 110, 100))
_HOUSE_WALLS = ((225, 215, 195), (180, 200, 212), (200, 172, 150), (160, 80, 60), (235, 235, 228))
_ROOFS = ((70, 70, 75), (110, 70, 50), (178, 82, 50), (60, 60, 90))

_SKY = {
    "day": ((70, 130, 212), (192, 216, 240)),
    "dawn": ((92, 112, 172), (245, 192, 162)),
    "dusk": ((46, 50, 112), (250, 146, 72)),
    "night": ((6, 9, 22), (30, 34, 54)),
}
_OVERCAST = {"day": (178, 181, 188), "dawn": (152, 146, 156), "dusk": (118, 108, 114), "night": (32, 33, 40)}
_AMBIENT = {"day": (1.0, 1.0, 1.0), "dawn": (0.84, 0.78, 0.8), "dusk": (0.76, 0.58, 0.48), "night": (0.15, 0.16, 0.23)}
_WEATHER_LIGHT = {"clear": 1.0, "cloudy": 0.86, "rain": 0.7, "fog": 0.92}
_WEATHER_GREY = {"clear": 0.0, "cloudy": 0.75, "rain": 0.88, "fog": 1.0}
_VISIBILITY = {"clear": (1500.0, 3000.0), "cloudy": (700.0, 1500.0), "rain": (150.0, 400.0), "fog": (22.0, 70.0)}


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


def _scaled(rgb: RGB, k: float) -> RGB:
    return (min(255, int(rgb[0] * k)), min(255, int(rgb[1] * k)), min(255, int(rgb[2] * k)))


def _bounds(points: Sequence[Point]) -> Box:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _clip_to_slab(points: Sequence[Point], x_min: float, x_max: float) -> list[Point]:
    """Cut a convex polygon to x_min <= x <= x_max, so diagonal stripes stay inside their board."""
    for bound, keep_above in ((x_min, True), (x_max, False)):
        kept: list[Point] = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            current_in = current[0] >= bound if keep_above else current[0] <= bound
            previous_in = previous[0] >= bound if keep_above else previous[0] <= bound
            if current_in != previous_in:
                t = (bound - previous[0]) / (current[0] - previous[0])
                kept.append((bound, previous[1] + t * (current[1] - previous[1])))
            if current_in:
                kept.append(current)
        points = kept
        if not points:
            break
    return list(points)


# --------------------------------------------------------------------------------------------
# Camera, light and the canvas every drawer paints on
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """A pinhole camera above a flat road; u is metres across the road, z metres ahead."""

    width: int
    height: int
    focal: float
    horizon: float
    centre_x: float
    eye_height: float
    eye_u: float
    curve: float

    def project(self, u: float, y: float, z: float) -> Point:
        z = max(z, 0.5)
        x = u - self.eye_u + self.curve * z * z
        return self.centre_x + self.focal * x / z, self.horizon + self.focal * (self.eye_height - y) / z

    @property
    def near_z(self) -> float:
        return self.focal * self.eye_height / (self.height - self.horizon)


@dataclass(frozen=True)
class _Light:
    """Ambient colour, haze and headlights, applied to each colour as it is drawn."""

    ambient: tuple[float, float, float]
    fog: RGB
    visibility: float
    headlights: bool
    glow: float
    lights_on: bool

    def haze(self, z: float) -> float:
        return 1.0 - math.exp(-z / self.visibility)

    def _lit(self, rgb: RGB, boost: float, z: float) -> RGB:
        haze = self.haze(z)
        keep = 1.0 - haze
        amb, fog = self.ambient, self.fog
        return (
            min(255, int(rgb[0] * (amb[0] + boost) * keep + fog[0] * haze)),
            min(255, int(rgb[1] * (amb[1] + boost) * keep + fog[1] * haze)),
            min(255, int(rgb[2] * (amb[2] + boost * 0.9) * keep + fog[2] * haze)),
        )

    def surface(self, rgb: RGB) -> RGB:
        return self._lit(rgb, 0.0, 0.0)

    def shade(self, rgb: RGB, z: float) -> RGB:
        return self._lit(rgb, 0.85 * math.exp(-z / 18.0) if self.headlights else 0.0, z)

    def reflect(self, rgb: RGB, z: float) -> RGB:
        """Retroreflective tape shines back at the camera's headlights far beyond their lit pool."""
        return self._lit(rgb, 2.2 * math.exp(-z / 70.0) if self.headlights else 0.0, z)

    def emit(self, rgb: RGB, z: float) -> RGB:
        haze = self.haze(z) * 0.7
        return _mix(rgb, self.fog, haze)


class _Canvas:
    def __init__(self, image: Image.Image, camera: _Camera, light: _Light) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.camera = camera
        self.light = light
        self.glow = Image.new("RGB", (image.width // _GLOW_SCALE + 1, image.height // _GLOW_SCALE + 1))
        self.glow_draw = ImageDraw.Draw(self.glow)
        self.glowing = False

    def world_polygon(self, points: Sequence[tuple[float, float, float]], rgb: RGB, z: float) -> Box:
        xy = [self.camera.project(u, y, pz) for u, y, pz in points]
        self.draw.polygon(xy, fill=self.light.shade(rgb, z))
        return _bounds(xy)

    def ground_polygon(self, points: Sequence[tuple[float, float]], rgb: RGB) -> None:
        """Ground paint is lit here and hazed later, row by row, by the ground fog pass."""
        xy = [self.camera.project(u, 0.0, z) for u, z in points]
        self.draw.polygon(xy, fill=self.light.surface(rgb))

    def glow_oval(self, cx: float, cy: float, rx: float, ry: float, rgb: RGB) -> None:
        """Light scattered around a source; painted on a coarse layer that is blurred and added at the end."""
        self.glowing = True
        k = 1.0 / _GLOW_SCALE
        self.glow_draw.ellipse(((cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k),
                               fill=_scaled(rgb, self.light.glow))

    def glow_ground(self, points: Sequence[tuple[float, float]], rgb: RGB) -> None:
        self.glowing = True
        k = 1.0 / _GLOW_SCALE
        xy = [self.camera.project(u, 0.0, z) for u, z in points]
        self.glow_draw.polygon([(x * k, y * k) for x, y in xy], fill=_scaled(rgb, self.light.glow))

    def billboard(self, u: float, z: float, mirror: bool = False) -> _Billboard:
        return _Billboard(self, u, z, mirror)


class _Billboard:
    """Draws an upright object facing the camera; shapes are given in metres from its foot."""

    def __init__(self, canvas: _Canvas, u: float, z: float, mirror: bool) -> None:
        self.canvas = canvas
        self.z = z
        self.x, self.y = canvas.camera.project(u, 0.0, z)
        self.scale = canvas.camera.focal / z
        self.flip = -self.scale if mirror else self.scale
        self.box: Box = (math.inf, math.inf, -math.inf, -math.inf)

    def _screen(self, points: Sequence[Point]) -> list[Point]:
        xy = [(self.x + dx * self.flip, self.y - dy * self.scale) for dx, dy in points]
        self.box = _union(self.box, _bounds(xy))
        return xy

    def polygon(self, points: Sequence[Point], rgb: RGB, reflective: bool = False) -> None:
        light = self.canvas.light
        fill = light.reflect(rgb, self.z) if reflective else light.shade(rgb, self.z)
        self.canvas.draw.polygon(self._screen(points), fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, rgb: RGB, reflective: bool = False) -> None:
        self.polygon(((x0, y0), (x1, y0), (x1, y1), (x0, y1)), rgb, reflective)

    def oval(self, cx: float, cy: float, rx: float, ry: float, rgb: RGB) -> None:
        (x0, y0), (x1, y1) = self._screen(((cx - rx, cy + ry), (cx + rx, cy - ry)))
        self.canvas.draw.ellipse((min(x0, x1), y0, max(x0, x1), y1), fill=self.canvas.light.shade(rgb, self.z))

    def stroke(self, points: Sequence[Point], width: float, rgb: RGB) -> None:
        pixels = max(1, round(width * self.scale))
        fill = self.canvas.light.shade(rgb, self.z)
        self.canvas.draw.line(self._screen(points), fill=fill, width=pixels, joint="curve")

    def lamp(self, cx: float, cy: float, radius: float, rgb: RGB, lit: bool, glow: float = 6.0) -> None:
        """A light source: bright and haloed when lit, a dull lens otherwise."""
        (x, y), = self._screen(((cx, cy),))
        r = max(radius * self.scale, 0.8)
        light = self.canvas.light
        fill = light.emit(rgb, self.z) if lit else light.shade(_scaled(rgb, 0.45), self.z)
        self.canvas.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        if not lit:
            return
        halo = max(r * glow, 1.5 * _GLOW_SCALE)
        self.canvas.glow_oval(x, y, halo, halo, _scaled(rgb, 1.0 - 0.6 * self.canvas.light.haze(self.z)))


# --------------------------------------------------------------------------------------------
# Object drawers: each paints one object and returns its screen box (render pixels)
# --------------------------------------------------------------------------------------------


def _draw_cone(canvas: _Canvas, *, u: float, z: float, height: float, colour: RGB, bands: int) -> Box:
    b = canvas.billboard(u, z)
    k = height / 0.7
    top, base_half, top_half, foot = height, 0.15 * k, 0.025 * k, 0.045 * k

    def half_width(y: float) -> float:
        return base_half + (top_half - base_half) * (y - foot) / (top - foot)

    b.rect(-0.21 * k, 0.0, 0.21 * k, foot, _TYRE)
    b.polygon(((-base_half, foot), (base_half, foot), (top_half, top), (-top_half, top)), colour)
    shadow_side = ((0.35 * base_half, foot), (base_half, foot), (top_half, top), (0.3 * top_half, top))
    b.polygon(shadow_side, _scaled(colour, 0.78))
    for lower, upper in ((0.55, 0.72), (0.3, 0.43))[:bands]:
        y0, y1 = foot + lower * (top - foot), foot + upper * (top - foot)
        w0, w1 = half_width(y0), half_width(y1)
        b.polygon(((-w0, y0), (w0, y0), (w1, y1), (-w1, y1)), _REFLECTIVE, reflective=True)
    return b.box


def _draw_drum(canvas: _Canvas, *, u: float, z: float, colour: RGB) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.31, 0.0, 0.31, 0.08, _TYRE)
    b.rect(-0.27, 0.08, 0.27, 0.95, colour)
    b.rect(0.1, 0.08, 0.27, 0.95, _scaled(colour, 0.8))
    b.oval(0.0, 0.95, 0.27, 0.045, _scaled(colour, 0.9))
    for y0, y1 in ((0.62, 0.73), (0.36, 0.47)):
        b.rect(-0.27, y0, 0.27, y1, _REFLECTIVE, reflective=True)
    return b.box


def _striped_board(b: _Billboard, x0: float, x1: float, y0: float, y1: float, colours: tuple[RGB, RGB],
                   stripe: float, slant: float) -> None:
    height = y1 - y0
    start = x0 - abs(slant) * height - stripe
    index = 0
    while start < x1:
        shear = slant * height
        quad = ((start, y0), (start + stripe, y0), (start + stripe + shear, y1), (start + shear, y1))
        clipped = _clip_to_slab(quad, x0, x1)
        if len(clipped) >= 3:
            b.polygon(clipped, colours[index % 2], reflective=True)
        start += stripe
        index += 1


def _draw_barrier(canvas: _Canvas, *, u: float, z: float, width: float, colours: tuple[RGB, RGB],
                  boards: tuple[tuple[float, float], ...], slant: float, lamp: bool) -> Box:
    b = canvas.billboard(u, z)
    half = width / 2
    top = max(y1 for _, y1 in boards)
    for side in (-1.0, 1.0):
        leg = side * (half - 0.12)
        b.rect(leg - 0.035, 0.0, leg + 0.035, top, (215, 215, 210))
        b.rect(leg - 0.2, 0.0, leg + 0.2, 0.06, (60, 60, 62))
    for y0, y1 in boards:
        _striped_board(b, -half, half, y0, y1, colours, 0.22, slant)
    if lamp:
        b.rect(-half + 0.1, top, -half + 0.14, top + 0.12, _TYRE)
        b.lamp(-half + 0.12, top + 0.17, 0.07, _AMBER, canvas.light.lights_on, glow=5.0)
    return b.box


def _draw_warning_sign(canvas: _Canvas, *, u: float, z: float, size: float, post: float, shape: str,
                       face: RGB, pictogram: str) -> Box:
    b = canvas.billboard(u, z)
    centre = post + size
    b.rect(-0.035, 0.0, 0.035, centre, _POLE)
    if shape == "diamond":
        outer = ((0.0, centre + size), (size, centre), (0.0, centre - size), (-size, centre))
        inner = tuple((x * 0.88, centre + (y - centre) * 0.88) for x, y in outer)
        b.polygon(outer, _TYRE)
        b.polygon(inner, face, reflective=True)
    else:
        outer = ((-size, centre - 0.6 * size), (size, centre - 0.6 * size), (0.0, centre + 1.1 * size))
        inner = tuple((x * 0.72, centre + (y - centre) * 0.72) for x, y in outer)
        b.polygon(outer, (200, 25, 30), reflective=True)
        b.polygon(inner, face, reflective=True)
    if size * b.scale >= 5.0:
        _PICTOGRAMS[pictogram](b, centre, size * 0.62)
    return b.box


def _pictogram_worker(b: _Billboard, cy: float, d: float) -> None:
    ink = _TYRE
    b.oval(-0.2 * d, cy + 0.42 * d, 0.11 * d, 0.11 * d, ink)
    b.polygon(((-0.34 * d, cy + 0.26 * d), (-0.14 * d, cy + 0.3 * d), (0.08 * d, cy - 0.18 * d),
               (-0.1 * d, cy - 0.24 * d)), ink)
    b.polygon(((-0.1 * d, cy - 0.24 * d), (0.06 * d, cy - 0.18 * d), (0.22 * d, cy - 0.62 * d),
               (0.06 * d, cy - 0.62 * d)), ink)
    b.stroke(((-0.1 * d, cy + 0.12 * d), (0.42 * d, cy - 0.45 * d)), 0.05 * d, ink)
    b.polygon(((0.25 * d, cy - 0.62 * d), (0.7 * d, cy - 0.62 * d), (0.48 * d, cy - 0.34 * d)), ink)


def _pictogram_curve(b: _Billboard, cy: float, d: float) -> None:
    b.stroke(((-0.1 * d, cy - 0.6 * d), (-0.1 * d, cy), (0.2 * d, cy + 0.3 * d)), 0.14 * d, _TYRE)
    b.polygon(((0.05 * d, cy + 0.5 * d), (0.45 * d, cy + 0.55 * d), (0.38 * d, cy + 0.14 * d)), _TYRE)


def _pictogram_crossing(b: _Billboard, cy: float, d: float) -> None:
    b.oval(0.0, cy + 0.45 * d, 0.11 * d, 0.11 * d, _TYRE)
    b.polygon(((-0.14 * d, cy + 0.3 * d), (0.14 * d, cy + 0.3 * d), (0.1 * d, cy - 0.15 * d),
               (-0.1 * d, cy - 0.15 * d)), _TYRE)
    b.stroke(((-0.05 * d, cy - 0.15 * d), (-0.3 * d, cy - 0.6 * d)), 0.09 * d, _TYRE)
    b.stroke(((0.05 * d, cy - 0.15 * d), (0.3 * d, cy - 0.6 * d)), 0.09 * d, _TYRE)


_PICTOGRAMS: dict[str, Callable[[_Billboard, float, float], None]] = {
    "worker": _pictogram_worker,
    "curve": _pictogram_curve,
    "crossing": _pictogram_crossing,
}


@dataclass(frozen=True)
class _Outfit:
    shirt: RGB
    trousers: RGB
    skin: RGB
    hair: RGB
    hard_hat: RGB | None = None
    vest: RGB | None = None
    paddle: bool = False


def _draw_person(canvas: _Canvas, *, u: float, z: float, height: float, outfit: _Outfit, stride: float,
                 mirror: bool) -> Box:
    b = canvas.billboard(u, z, mirror)
    k = height / 1.75
    hip, shoulder = 0.86 * k, 1.43 * k
    b.oval(0.0, 0.0, 0.32 * k, 0.05 * k, _SHADOW)
    for side in (-1.0, 1.0):
        foot = side * (0.1 + stride) * k
        b.polygon(((side * 0.02 * k, hip), (side * 0.17 * k, hip), (foot + side * 0.06 * k, 0.04 * k),
                   (foot - side * 0.05 * k, 0.04 * k)), outfit.trousers)
        b.rect(foot - 0.07 * k, 0.0, foot + 0.07 * k, 0.05 * k, _TYRE)
        b.polygon(((side * 0.2 * k, shoulder), (side * 0.29 * k, shoulder - 0.03 * k),
                   (side * 0.27 * k, 0.93 * k), (side * 0.2 * k, 0.93 * k)), outfit.shirt)
        b.oval(side * 0.235 * k, 0.9 * k, 0.04 * k, 0.05 * k, outfit.skin)
    b.polygon(((-0.18 * k, hip), (0.18 * k, hip), (0.21 * k, shoulder), (-0.21 * k, shoulder)), outfit.shirt)
    if outfit.vest is not None:
        b.polygon(((-0.19 * k, 0.9 * k), (0.19 * k, 0.9 * k), (0.205 * k, 1.41 * k), (0.07 * k, 1.41 * k),
                   (0.0, 1.28 * k), (-0.07 * k, 1.41 * k), (-0.205 * k, 1.41 * k)), outfit.vest)
        for y0 in (1.0, 1.15):
            b.rect(-0.195 * k, y0 * k, 0.195 * k, (y0 + 0.045) * k, _REFLECTIVE, reflective=True)
    b.rect(-0.045 * k, 1.43 * k, 0.045 * k, 1.48 * k, outfit.skin)
    b.oval(0.0, 1.58 * k, 0.095 * k, 0.115 * k, outfit.skin)
    if outfit.hard_hat is not None:
        b.oval(0.0, 1.66 * k, 0.11 * k, 0.075 * k, outfit.hard_hat)
        b.rect(-0.14 * k, 1.635 * k, 0.14 * k, 1.66 * k, outfit.hard_hat)
    else:
        b.oval(0.0, 1.65 * k, 0.1 * k, 0.065 * k, outfit.hair)
    if outfit.paddle:
        b.stroke(((0.26 * k, 0.9 * k), (0.3 * k, 1.75 * k)), 0.03 * k, _POLE)
        b.oval(0.3 * k, 1.85 * k, 0.14 * k, 0.14 * k, (200, 25, 30))
    return b.box


def _draw_excavator(canvas: _Canvas, *, u: float, z: float, body: RGB, mirror: bool, lift: float) -> Box:
    b = canvas.billboard(u, z, mirror)
    b.oval(0.0, 0.0, 2.3, 0.2, _SHADOW)
    b.rect(-1.9, 0.0, 1.9, 0.85, _TYRE)
    for end in (-1.9, 1.9):
        b.oval(end, 0.425, 0.425, 0.425, _TYRE)
    for x in (-1.3, 0.0, 1.3):
        b.oval(x, 0.42, 0.22, 0.22, (80, 80, 82))
    b.rect(-1.55, 0.88, 1.35, 2.0, body)
    b.rect(-1.75, 0.95, -1.45, 1.9, _scaled(body, 0.7))
    b.rect(0.2, 2.0, 1.3, 3.35, body)
    b.rect(0.32, 2.15, 1.18, 3.2, _GLASS)
    elbow, tip = (2.7, 3.1 + lift), (3.7, 1.0 + 0.5 * lift)
    b.stroke(((1.1, 1.75), elbow, tip), 0.34, body)
    b.polygon(((tip[0] - 0.3, tip[1] + 0.2), (tip[0] + 0.35, tip[1] + 0.1), (tip[0] + 0.2, tip[1] - 0.55),
               (tip[0] - 0.3, tip[1] - 0.4)), (60, 60, 60))
    b.lamp(0.75, 3.45, 0.09, _AMBER, canvas.light.lights_on)
    return b.box


def _draw_jersey_barrier(canvas: _Canvas, *, u: float, z0: float, z1: float, colour: RGB) -> Box:
    side = 1.0 if u > canvas.camera.eye_u else -1.0
    face, top = u - side * 0.3, u - side * 0.1
    mid = (z0 + z1) / 2
    box = canvas.world_polygon(((face, 0.0, z0), (face, 0.0, z1), (top, 0.8, z1), (top, 0.8, z0)), colour, mid)
    box = _union(box, canvas.world_polygon(((top, 0.8, z0), (top, 0.8, z1), (u + side * 0.1, 0.8, z1),
                                             (u + side * 0.1, 0.8, z0)), _scaled(colour, 1.1), mid))
    b = canvas.billboard(u, z0)
    b.polygon(((-0.3, 0.0), (0.3, 0.0), (0.1, 0.8), (-0.1, 0.8)), _scaled(colour, 0.82))
    return _union(box, b.box)


_VEHICLE_SIZES = {"sedan": (1.8, 1.45), "suv": (1.9, 1.75), "van": (2.0, 2.3), "truck": (2.5, 3.4),
                  "bus": (2.55, 3.1), "school_bus": (2.45, 3.0)}


def _draw_vehicle(canvas: _Canvas, *, u: float, z: float, body: RGB, model: str, rear: bool) -> Box:
    width, height = _VEHICLE_SIZES[model]
    half = width / 2
    lights_on = canvas.light.lights_on
    b = canvas.billboard(u, z)
    b.oval(0.0, 0.0, half + 0.15, 0.12, _SHADOW)
    b.rect(-half + 0.08, 0.0, -half + 0.42, 0.45, _TYRE)
    b.rect(half - 0.42, 0.0, half - 0.08, 0.45, _TYRE)
    if model in ("sedan", "suv"):
        waist = height * 0.58
        b.rect(-half, 0.25, half, waist, body)
        b.polygon(((-half + 0.08, waist), (half - 0.08, waist), (half - 0.3, height), (-half + 0.3, height)), body)
        b.polygon(((-half + 0.2, waist + 0.05), (half - 0.2, waist + 0.05), (half - 0.36, height - 0.07),
                   (-half + 0.36, height - 0.07)), _GLASS)
        light_y = waist - 0.12
    else:
        b.rect(-half, 0.3, half, height, body)
        if model != "truck":
            b.rect(-half + 0.15, height * 0.55, half - 0.15, height * 0.88, _GLASS)
        light_y = 0.75
        if model == "school_bus":
            for y in (0.4, 0.48):
                b.rect(-half, height * y, half, height * y + 0.06, _TYRE)
            for x in (-half + 0.2, half - 0.2):
                b.lamp(x, height - 0.12, 0.08, _AMBER, lights_on)
    b.rect(-half - 0.02, 0.22, half + 0.02, 0.4, (40, 40, 42))
    b.rect(-0.26, 0.43, 0.26, 0.55, (225, 225, 220))
    for x in (-half + 0.22, half - 0.22):
        if rear:
            b.lamp(x, light_y, 0.1, (235, 20, 15), lights_on, glow=3.0)
        else:
            b.lamp(x, light_y, 0.12, (255, 245, 215), lights_on, glow=6.0)
    return b.box


def _draw_bin(canvas: _Canvas, *, u: float, z: float, colour: RGB) -> Box:
    b = canvas.billboard(u, z)
    b.oval(-0.2, 0.04, 0.06, 0.06, _TYRE)
    b.oval(0.2, 0.04, 0.06, 0.06, _TYRE)
    b.polygon(((-0.29, 0.06), (0.29, 0.06), (0.33, 1.0), (-0.33, 1.0)), colour)
    b.rect(-0.36, 1.0, 0.36, 1.08, _scaled(colour, 0.75))
    return b.box


def _draw_tree(canvas: _Canvas, *, u: float, z: float, trunk: float,
               crown: tuple[tuple[float, float, float, RGB], ...], conifer: bool) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.14, 0.0, 0.14, trunk + 0.4, (80, 58, 40))
    if conifer:
        for dx, dy, r, colour in crown:
            b.polygon(((-r, trunk + dy), (r, trunk + dy), (0.0, trunk + dy + 2.2 * r)), colour)
    else:
        for dx, dy, r, colour in crown:
            b.oval(dx, trunk + dy, r, r * 0.85, colour)
    return b.box


def _draw_street_lamp(canvas: _Canvas, *, u: float, z: float, reach: float, height: float) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.07, 0.0, 0.07, height, _POLE)
    b.stroke(((0.0, height), (reach, height + 0.2)), 0.08, _POLE)
    b.rect(reach - 0.35, height + 0.05, reach + 0.35, height + 0.28, _POLE)
    b.lamp(reach, height, 0.2, (255, 215, 150), canvas.light.lights_on and canvas.light.glow > 0.5, glow=4.0)
    if canvas.light.lights_on and canvas.light.glow > 0.5:
        cx, cy = canvas.camera.project(u + reach, 0.0, z)
        canvas.glow_oval(cx, cy, 5.0 * b.scale, 1.2 * b.scale, (60, 50, 34))
    return b.box


def _draw_traffic_light(canvas: _Canvas, *, u: float, z: float, reach: float, state: int) -> Box:
    b = canvas.billboard(u, z)
    top = 5.6
    b.rect(-0.08, 0.0, 0.08, top, _POLE)
    b.stroke(((0.0, top), (reach, top)), 0.12, _POLE)
    for x, y in ((reach, top - 0.15), (0.0, 3.2)):
        b.rect(x - 0.2, y - 1.05, x + 0.2, y, (30, 32, 30))
        for slot, colour in enumerate(((235, 30, 20), _AMBER, (40, 220, 110))):
            b.lamp(x, y - 0.2 - 0.32 * slot, 0.11, colour, slot == state, glow=5.0)
    return b.box


def _draw_building(canvas: _Canvas, *, u: float, side: float, z0: float, z1: float, height: float,
                   wall: RGB, storey: float, columns: int, shop: bool, lit: tuple[tuple[int, int], ...]) -> Box:
    back = u + side * 14.0
    box = canvas.world_polygon(((u, 0.0, z0), (back, 0.0, z0), (back, height, z0), (u, height, z0)),
                               _scaled(wall, 0.8), z0)
    mid = (z0 + z1) / 2
    box = _union(box, canvas.world_polygon(((u, 0.0, z0), (u, 0.0, z1), (u, height, z1), (u, height, z0)), wall, mid))
    glass = (70, 82, 96) if canvas.light.glow < 0.5 else (35, 40, 50)
    if shop:
        shop_window = ((u, 0.3, z0 + 0.8), (u, 0.3, z1 - 0.8), (u, 2.7, z1 - 0.8), (u, 2.7, z0 + 0.8))
        canvas.world_polygon(shop_window, glass, mid)
    floors = int((height - 1.0) / storey)
    if floors < 2 or z0 > 160.0:
        return box
    pitch = (z1 - z0) / columns
    for floor in range(1, floors):
        y0 = floor * storey + 0.9
        canvas.world_polygon(((u, y0, z0 + 0.6), (u, y0, z1 - 0.6), (u, y0 + 1.4, z1 - 0.6),
                              (u, y0 + 1.4, z0 + 0.6)), glass, mid)
    top = (floors - 1) * storey + 2.4
    for column in range(1, columns):
        zc = z0 + column * pitch
        canvas.world_polygon(((u, storey, zc - 0.45), (u, storey, zc + 0.45), (u, top, zc + 0.45),
                              (u, top, zc - 0.45)), wall, zc)
    for floor, column in lit:
        if floor >= floors:
            continue
        za, zb = z0 + column * pitch + 0.5, z0 + (column + 1) * pitch - 0.5
        y0 = floor * storey + 0.9
        xy = [canvas.camera.project(u, y, zz) for y, zz in ((y0, za), (y0, zb), (y0 + 1.4, zb), (y0 + 1.4, za))]
        canvas.draw.polygon(xy, fill=canvas.light.emit((230, 190, 120), zb))
    return box


def _draw_house(canvas: _Canvas, *, u: float, side: float, z0: float, z1: float, wall_height: float,
                depth: float, wall: RGB, roof: RGB, lit: bool) -> Box:
    ridge_u, back = u + side * depth / 2, u + side * depth
    ridge_y = wall_height + depth * 0.35
    mid = (z0 + z1) / 2
    box = canvas.world_polygon(((u, 0.0, z0), (back, 0.0, z0), (back, wall_height, z0), (ridge_u, ridge_y, z0),
                                (u, wall_height, z0)), _scaled(wall, 0.85), z0)
    box = _union(box, canvas.world_polygon(((u, 0.0, z0), (u, 0.0, z1), (u, wall_height, z1),
                                             (u, wall_height, z0)), wall, mid))
    box = _union(box, canvas.world_polygon(((u - side * 0.4, wall_height - 0.2, z0 - 0.3),
                                             (u - side * 0.4, wall_height - 0.2, z1 + 0.3),
                                             (ridge_u, ridge_y, z1 + 0.3), (ridge_u, ridge_y, z0 - 0.3)), roof, mid))
    length = z1 - z0
    door = z0 + length * 0.45
    canvas.world_polygon(((u, 0.0, door), (u, 0.0, door + 1.0), (u, 2.1, door + 1.0), (u, 2.1, door)),
                         _scaled(wall, 0.45), door)
    for za in (z0 + length * 0.15, z0 + length * 0.7):
        window = [(u, 1.0, za), (u, 1.0, za + 1.4), (u, 2.2, za + 1.4), (u, 2.2, za)]
        if lit:
            xy = [canvas.camera.project(*p) for p in window]
            canvas.draw.polygon(xy, fill=canvas.light.emit((230, 185, 110), za))
        else:
            canvas.world_polygon(window, _GLASS, za)
    return box


def _draw_awning(canvas: _Canvas, *, u: float, side: float, z0: float, z1: float, colours: tuple[RGB, RGB]) -> Box:
    outer = u - side * 1.4
    stripe = 0.6
    box: Box = (math.inf, math.inf, -math.inf, -math.inf)
    za, index = z0, 0
    while za < z1:
        zb = min(za + stripe, z1)
        colour = colours[index % 2]
        box = _union(box, canvas.world_polygon(((u, 3.1, za), (u, 3.1, zb), (outer, 2.5, zb), (outer, 2.5, za)),
                                               colour, za))
        canvas.world_polygon(((outer, 2.5, za), (outer, 2.5, zb), (outer, 2.2, zb), (outer, 2.2, za)),
                             _scaled(colour, 0.85), za)
        za, index = zb, index + 1
    return box


def _draw_gantry(canvas: _Canvas, *, u: float, z: float, span: float, signs: tuple[float, ...]) -> Box:
    b = canvas.billboard(u, z)
    half = span / 2
    for x in (-half, half):
        b.rect(x - 0.15, 0.0, x + 0.15, 6.6, _POLE)
    b.rect(-half, 6.2, half, 6.5, _POLE)
    for x in signs:
        b.rect(x - 1.6, 5.2, x + 1.6, 7.4, (235, 235, 235))
        b.rect(x - 1.5, 5.3, x + 1.5, 7.3, (20, 100, 55), reflective=True)
    return b.box


def _draw_utility_pole(canvas: _Canvas, *, u: float, z: float) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.12, 0.0, 0.12, 8.5, (92, 70, 50))
    b.rect(-1.1, 7.8, 1.1, 7.95, (92, 70, 50))
    return b.box


# --------------------------------------------------------------------------------------------
# The plan: everything random about a scene, decided before anything is drawn
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Road:
    lanes: int
    lane_width: float
    oncoming: int
    left_margin: float
    right_margin: float

    @property
    def width(self) -> float:
        return self.lanes * self.lane_width

    def lane_centre(self, lane: int) -> float:
        return (lane + 0.5) * self.lane_width


@dataclass
class _Item:
    kind: str
    depth: float
    roadwork: bool
    draw: Callable[[_Canvas], Box]
    foot: tuple[float, float] | None


@dataclass
class _Plan:
    scene: str
    daytime: str
    weather: str
    latitude: float
    longitude: float
    drives_left: bool
    camera: _Camera
    light: _Light
    road: _Road
    sky: tuple[RGB, RGB]
    ground: RGB
    post_seed: int
    backdrop: list[Callable[[_Canvas], None]] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    work_phrase: str | None = None
    sights: list[str] = field(default_factory=list)
    closed: tuple[float, float, float, float] | None = None

    def add(self, kind: str, depth: float, draw: Callable[..., Box], /, **params: object) -> None:
        """Queue ``draw(canvas, **params)``; items are painted far to near by ``depth``."""
        u, z = params.get("u"), params.get("z", params.get("z0"))
        foot = (float(u), float(z)) if isinstance(u, float) and isinstance(z, float) else None
        self.items.append(_Item(kind, depth, kind in ROADWORK_KINDS, partial(draw, **params), foot))

    def is_free(self, u: float, z: float) -> bool:
        """Whether a vehicle may stand at (u, z): outside a closed lane and not hiding a work-zone object.

        A positive whose work zone sits entirely behind a truck would be a mislabelled photo.
        """
        if self.closed is not None:
            u0, u1, z0, z1 = self.closed
            if u0 - 1.0 <= u <= u1 + 1.0 and z0 - 8.0 <= z <= z1 + 8.0:
                return False
        left, bottom = self.camera.project(u - 1.4, 0.0, z)
        right, top = self.camera.project(u + 1.4, 3.5, z)
        for item in self.items:
            if item.roadwork and item.foot is not None and item.foot[1] > z:
                x, y = self.camera.project(item.foot[0], 0.3, item.foot[1])
                if left <= x <= right and top <= y <= bottom:
                    return False
        return True


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _choose(rng: np.random.Generator, names: Sequence[str], weights: Sequence[float]) -> str:
    return names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]


def _plan_location(rng: np.random.Generator) -> tuple[float, float, bool, bool]:
    """Returns latitude, longitude, whether traffic drives on the left, and whether it is a city."""
    far = rng.random() < FAR_POINT_RATE
    places, jitter_km = (FAR_REGIONS, FAR_JITTER_KM) if far else (CITIES, CITY_JITTER_KM)
    place = places[int(rng.integers(len(places)))]
    north, east = rng.normal(0.0, jitter_km, 2)
    latitude = place.latitude + north / 111.0
    longitude = place.longitude + east / (111.0 * math.cos(math.radians(place.latitude)))
    return latitude, longitude, place.drives_left, not far


def _plan_light(rng: np.random.Generator, daytime: str, weather: str) -> tuple[_Light, tuple[RGB, RGB]]:
    top, bottom = _SKY[daytime]
    grey = _OVERCAST[daytime]
    greyness = _WEATHER_GREY[weather]
    sky = (_mix(top, grey, greyness), _mix(bottom, _scaled(grey, 1.08), greyness))
    exposure = rng.uniform(0.88, 1.12) * _WEATHER_LIGHT[weather]
    balance = rng.uniform(0.94, 1.06, 3)
    ambient = tuple(float(a * exposure * w) for a, w in zip(_AMBIENT[daytime], balance, strict=True))
    glow = {"day": 0.25, "dawn": 0.6, "dusk": 0.7, "night": 1.0}[daytime]
    light = _Light(
        ambient=(ambient[0], ambient[1], ambient[2]),
        fog=sky[1],
        visibility=float(rng.uniform(*_VISIBILITY[weather])),
        headlights=daytime == "night" or (daytime != "day" and rng.random() < 0.5),
        glow=glow + (0.15 if weather in ("rain", "fog") else 0.0),
        lights_on=daytime != "day" or weather in ("rain", "fog") or rng.random() < 0.2,
    )
    return light, sky


def _plan_road(rng: np.random.Generator, scene: str) -> tuple[_Road, int]:
    """Returns the road and the lane the camera drives in (lanes count from the left edge)."""
    if scene == "highway":
        lanes = int(rng.integers(2, 5))
        road = _Road(lanes, rng.uniform(3.5, 3.8), 0, rng.uniform(1.0, 2.5), rng.uniform(2.5, 3.5))
        return road, int(rng.integers(lanes))
    if scene == "urban":
        lanes = int(rng.integers(2, 5))
        road = _Road(lanes, rng.uniform(3.1, 3.5), lanes // 2, rng.uniform(3.0, 5.5), rng.uniform(3.0, 5.5))
    elif scene == "residential":
        road = _Road(2, rng.uniform(3.4, 4.2), 1, rng.uniform(4.0, 6.0), rng.uniform(4.0, 6.0))
    else:
        road = _Road(2, rng.uniform(2.8, 3.3), 1, rng.uniform(1.0, 2.5), rng.uniform(1.0, 2.5))
    return road, road.lanes - 1 if road.lanes - road.oncoming == 1 else int(rng.integers(road.oncoming, road.lanes))


def _plan(rng: np.random.Generator, width: int, height: int, positive: bool) -> _Plan:
    latitude, longitude, drives_left, in_city = _plan_location(rng)
    scene = _choose(rng, SCENES, _SCENE_WEIGHTS_CITY if in_city else _SCENE_WEIGHTS_FAR)
    daytime = _choose(rng, DAYTIMES, _DAYTIME_WEIGHTS)
    weather = _choose(rng, WEATHERS, _WEATHER_WEIGHTS)
    light, sky = _plan_light(rng, daytime, weather)
    road, camera_lane = _plan_road(rng, scene)
    render_w, render_h = width * _SUPERSAMPLE, height * _SUPERSAMPLE
    camera = _Camera(
        width=render_w,
        height=render_h,
        focal=render_w * rng.uniform(0.62, 0.95),
        horizon=render_h * rng.uniform(0.38, 0.52),
        centre_x=render_w * rng.uniform(0.46, 0.54),
        eye_height=rng.uniform(1.3, 2.3),
        eye_u=road.lane_centre(camera_lane) + rng.uniform(-0.4, 0.4),
        curve=rng.uniform(-0.0007, 0.0007) if rng.random() < 0.6 else 0.0,
    )
    ground = {"urban": (120, 118, 112), "residential": (86, 120, 60), "highway": (98, 122, 66),
              "rural": (110, 128, 64)}[scene]
    plan = _Plan(scene, daytime, weather, float(latitude), float(longitude), drives_left, camera, light, road,
                 sky, ground, post_seed=int(rng.integers(2**63)))
    plan.backdrop.append(partial(_draw_sky_details, sky=sky, daytime=daytime, weather=weather,
                                 clouds=_plan_clouds(rng, weather), sun_x=float(rng.uniform(0.1, 0.9))))
    _plan_ground(rng, plan)
    if positive:
        _plan_work_zone(rng, plan)
    _SCENERY[scene](rng, plan)
    _plan_traffic(rng, plan)
    _plan_lookalikes(rng, plan, count=int(rng.poisson(LOOKALIKES_PER_SCENE)))
    return plan


def _plan_clouds(rng: np.random.Generator, weather: str) -> tuple[tuple[float, float, float, float], ...]:
    count = int(rng.integers(0, 3)) if weather == "clear" else int(rng.integers(3, 8))
    return tuple((float(rng.uniform()), float(rng.uniform(0.05, 0.8)), float(rng.uniform(0.08, 0.25)),
                  float(rng.uniform(0.9, 1.15))) for _ in range(count))


# ---------- ground, markings and the far background ----------


def _depths(near: float, far: float, count: int) -> list[float]:
    return [near * (far / near) ** (i / (count - 1)) for i in range(count)]


def _strip(canvas: _Canvas, u0: float, u1: float, rgb: RGB, near: float = 0.0, far: float = _FAR_Z) -> None:
    near = max(near, canvas.camera.near_z * 0.9)
    if far <= near:
        return
    zs = _depths(near, far, 20)
    canvas.ground_polygon([(u0, z) for z in zs] + [(u1, z) for z in reversed(zs)], rgb)


def _dashes(canvas: _Canvas, u: float, dash: float, gap: float, phase: float, rgb: RGB) -> None:
    z = canvas.camera.near_z * 0.9 + phase
    while z < 140.0:
        _strip(canvas, u - 0.07, u + 0.07, rgb, z, z + dash)
        z += dash + gap


def _draw_ground(canvas: _Canvas, *, road: _Road, asphalt: RGB, verge: RGB, sidewalk: float,
                 paved_shoulders: bool, centre_line: RGB, dashed: bool, edges: bool, crossing: float | None,
                 phase: float) -> None:
    left, right = -road.left_margin, road.width + road.right_margin
    _strip(canvas, left - 300.0, right + 300.0, verge)
    if paved_shoulders:
        _strip(canvas, left, right, asphalt)
    if sidewalk > 0.0:
        pavement = (150, 148, 142)
        _strip(canvas, -sidewalk, 0.0, pavement)
        _strip(canvas, road.width, road.width + sidewalk, pavement)
        _strip(canvas, -0.25, 0.0, _scaled(pavement, 1.15))
        _strip(canvas, road.width, road.width + 0.25, _scaled(pavement, 1.15))
    _strip(canvas, 0.0, road.width, asphalt)
    paint = _scaled(_PAINT, 0.92)
    if edges:
        _strip(canvas, 0.15, 0.3, paint)
        _strip(canvas, road.width - 0.3, road.width - 0.15, paint)
    for lane in range(1, road.lanes):
        u = lane * road.lane_width
        if lane == road.oncoming:
            _strip(canvas, u - 0.2, u - 0.08, centre_line)
            _strip(canvas, u + 0.08, u + 0.2, centre_line)
        elif dashed:
            _dashes(canvas, u, 3.0, 9.0 if road.lanes > 2 else 6.0, phase, paint)
    if crossing is not None:
        u = 0.3
        while u < road.width - 0.5:
            _strip(canvas, u, u + 0.5, paint, crossing, crossing + 3.0)
            u += 1.0


def _fog_ground(canvas: _Canvas) -> None:
    """Haze the ground row by row: each row of a flat road lies at one known depth."""
    camera, light = canvas.camera, canvas.light
    top = int(math.ceil(camera.horizon))
    rows = np.arange(top, camera.height, dtype=np.float64) + 0.5
    depth = camera.focal * camera.eye_height / (rows - camera.horizon)
    alpha = ((1.0 - np.exp(-depth / light.visibility)) * 255.0).astype(np.uint8)
    mask = Image.fromarray(alpha[:, None], "L").resize((camera.width, len(rows)), Image.Resampling.NEAREST)
    canvas.image.paste(light.fog, (0, top, camera.width, camera.height), mask)


def _draw_headlight_beam(canvas: _Canvas) -> None:
    """The camera car's own headlights: nested pools on the road, brightest close in."""
    eye, near = canvas.camera.eye_u, canvas.camera.near_z
    for reach, rgb in ((40.0, (26, 25, 21)), (22.0, (30, 29, 24)), (12.0, (34, 33, 27))):
        spread = 0.1 * reach + 1.0
        canvas.glow_ground(((eye - 1.5, near), (eye + 1.5, near), (eye + spread, reach), (eye - spread, reach)), rgb)


def _draw_sky_details(canvas: _Canvas, *, sky: tuple[RGB, RGB], daytime: str, weather: str,
                      clouds: tuple[tuple[float, float, float, float], ...], sun_x: float) -> None:
    camera = canvas.camera
    w, horizon = camera.width, camera.horizon
    if weather == "clear" and daytime in ("dawn", "dusk"):
        x, y, r = sun_x * w, horizon - 0.08 * horizon, 0.025 * w
        canvas.draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 225, 170))
        canvas.glow_oval(x, y, 8 * r, 4 * r, (200, 110, 40))
    for cx, cy, size, shade in clouds:
        base = _scaled(_mix(sky[0], sky[1], cy), shade)
        x, y, r = cx * w, cy * horizon, size * w
        canvas.draw.ellipse((x - r, y - 0.35 * r, x + r, y + 0.35 * r), fill=base)
        canvas.draw.ellipse((x - 0.5 * r, y - 0.55 * r, x + 0.6 * r, y + 0.2 * r), fill=_scaled(base, 1.04))


def _draw_hills(canvas: _Canvas, *, heights: tuple[float, ...], colour: RGB) -> None:
    camera = canvas.camera
    step = camera.width / (len(heights) - 1)
    scale = camera.focal / 1500.0
    outline = [(i * step, camera.horizon - h * scale) for i, h in enumerate(heights)]
    canvas.draw.polygon(outline + [(camera.width, camera.horizon + 1), (0, camera.horizon + 1)],
                        fill=canvas.light.shade(colour, 1500.0))


def _draw_skyline(canvas: _Canvas, *, towers: tuple[tuple[float, float, float], ...], colour: RGB) -> None:
    camera = canvas.camera
    scale = camera.focal / 700.0
    fill = canvas.light.shade(colour, 700.0)
    for x, width, height in towers:
        left = x * camera.width
        canvas.draw.rectangle((left, camera.horizon - height * scale, left + width * scale, camera.horizon + 1),
                              fill=fill)


def _draw_guardrail(canvas: _Canvas, *, u: float) -> None:
    zs = _depths(canvas.camera.near_z * 0.8, 250.0, 18)
    for za, zb in zip(zs, zs[1:], strict=False):
        canvas.world_polygon(((u, 0.8, za), (u, 0.8, zb), (u, 0.5, zb), (u, 0.5, za)), (170, 172, 175), za)
    z = 4.0
    while z < 80.0:
        x, y = canvas.camera.project(u, 0.0, z)
        _, top = canvas.camera.project(u, 0.5, z)
        canvas.draw.line(((x, y), (x, top)), fill=canvas.light.shade((90, 90, 92), z),
                         width=max(1, round(0.12 * canvas.camera.focal / z)))
        z += 4.0


def _draw_median(canvas: _Canvas, *, u: float) -> None:
    zs = _depths(canvas.camera.near_z * 0.8, 300.0, 18)
    for za, zb in zip(zs, zs[1:], strict=False):
        canvas.world_polygon(((u + 0.3, 0.0, za), (u + 0.3, 0.0, zb), (u + 0.1, 0.85, zb), (u + 0.1, 0.85, za)),
                             (175, 173, 165), za)


def _draw_wires(canvas: _Canvas, *, u: float, zs: tuple[float, ...]) -> None:
    for offset in (-1.0, 1.0):
        points = [canvas.camera.project(u + offset, 7.9, z) for z in zs]
        canvas.draw.line(points, fill=canvas.light.shade((30, 30, 30), 30.0), width=1)


def _plan_ground(rng: np.random.Generator, plan: _Plan) -> None:
    road, scene = plan.road, plan.scene
    wet = plan.weather == "rain"
    asphalt = (92, 92, 96) if scene != "rural" else (104, 102, 100)
    asphalt = _scaled(asphalt, rng.uniform(0.8, 1.15) * (0.75 if wet else 1.0))
    sidewalk = {"urban": min(road.left_margin, road.right_margin), "residential": float(rng.uniform(1.5, 2.2))}
    centre = (232, 190, 40) if rng.random() < 0.5 else _PAINT
    crossing = float(rng.uniform(12.0, 35.0)) if scene == "urban" and rng.random() < 0.3 else None
    plan.backdrop.append(partial(
        _draw_ground, road=road, asphalt=asphalt, verge=plan.ground, sidewalk=sidewalk.get(scene, 0.0),
        paved_shoulders=scene == "highway", centre_line=centre,
        dashed=scene != "rural" or rng.random() < 0.5, edges=scene in ("highway", "rural") and rng.random() < 0.8,
        crossing=crossing, phase=float(rng.uniform(0.0, 9.0))))
    plan.backdrop.append(_fog_ground)
    if plan.light.headlights:
        plan.backdrop.append(_draw_headlight_beam)
    if scene in ("highway", "rural") or rng.random() < 0.3:
        points = 24
        heights = np.abs(np.cumsum(rng.normal(0.0, 9.0, points))) + rng.uniform(5.0, 30.0)
        plan.backdrop.append(partial(_draw_hills, heights=tuple(float(h) for h in heights),
                                     colour=_pick(rng, ((70, 100, 70), (90, 105, 95), (100, 110, 80)))))


# ---------- scenery per scene type ----------


def _plan_side_buildings(rng: np.random.Generator, plan: _Plan, u: float, side: float) -> None:
    z = float(rng.uniform(plan.camera.near_z, 12.0))
    while z < 180.0:
        length = float(rng.uniform(8.0, 25.0))
        storey = float(rng.uniform(3.0, 3.6))
        height = float(rng.uniform(8.0, 36.0))
        columns = max(2, int(length / rng.uniform(2.5, 3.6)))
        floors = int((height - 1.0) / storey)
        lit: tuple[tuple[int, int], ...] = ()
        if plan.light.glow > 0.5:
            lit = tuple((int(rng.integers(1, max(2, floors))), int(rng.integers(columns)))
                        for _ in range(int(rng.integers(0, 8))))
        shop = rng.random() < 0.7
        plan.add("building", z + length, _draw_building, u=u, side=side, z0=z, z1=z + length, height=height,
                 wall=_scaled(_pick(rng, _WALLS), rng.uniform(0.85, 1.1)), storey=storey, columns=columns,
                 shop=shop, lit=lit)
        if shop and rng.random() < 0.25:
            colours = _pick(rng, (((200, 30, 35), _PAINT), ((40, 90, 60), _PAINT), ((40, 60, 120), (40, 60, 120))))
            plan.add("awning", z + length - 1.0, _draw_awning, u=u, side=side, z0=z + 1.0, z1=z + length - 1.0,
                     colours=colours)
        z += length


def _plan_urban(rng: np.random.Generator, plan: _Plan) -> None:
    road = plan.road
    for u, side in ((-road.left_margin, -1.0), (road.width + road.right_margin, 1.0)):
        _plan_side_buildings(rng, plan, u, side)
    towers = tuple((float(rng.uniform(-0.05, 1.0)), float(rng.uniform(15, 60)), float(rng.uniform(20, 120)))
                   for _ in range(int(rng.integers(6, 16))))
    plan.backdrop.append(partial(_draw_skyline, towers=towers, colour=_pick(rng, ((120, 125, 135), (140, 135, 130)))))
    _plan_street_furniture(rng, plan, lamps=True)
    _plan_pedestrians(rng, plan, int(rng.integers(0, 9)))
    if rng.random() < 0.35:
        _plan_trees(rng, plan, (-0.8, road.width + 0.8), int(rng.integers(2, 6)), (6.0, 60.0))


def _plan_residential(rng: np.random.Generator, plan: _Plan) -> None:
    road = plan.road
    for side_u, side in ((-road.left_margin - 2.0, -1.0), (road.width + road.right_margin + 2.0, 1.0)):
        z = float(rng.uniform(0.0, 10.0))
        while z < 140.0:
            length = float(rng.uniform(8.0, 14.0))
            setback = float(rng.uniform(2.0, 9.0))
            plan.add("house", z + length, _draw_house, u=side_u + side * setback, side=side, z0=z, z1=z + length,
                     wall_height=float(rng.uniform(2.8, 6.0)), depth=float(rng.uniform(7.0, 11.0)),
                     wall=_pick(rng, _HOUSE_WALLS), roof=_pick(rng, _ROOFS),
                     lit=plan.light.glow > 0.5 and rng.random() < 0.6)
            z += length + float(rng.uniform(4.0, 12.0))
    _plan_trees(rng, plan, (-road.left_margin + 1.0, road.width + road.right_margin - 1.0),
                int(rng.integers(3, 10)), (5.0, 90.0))
    _plan_street_furniture(rng, plan, lamps=rng.random() < 0.6)
    _plan_pedestrians(rng, plan, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            _plan_bin(rng, plan, _pick(rng, ((40, 90, 50), (60, 62, 66), (40, 60, 120), (30, 30, 32))))


def _plan_highway(rng: np.random.Generator, plan: _Plan) -> None:
    road = plan.road
    plan.backdrop.append(partial(_draw_guardrail, u=road.width + road.right_margin - 0.2))
    plan.backdrop.append(partial(_draw_median, u=-road.left_margin - 0.2))
    _plan_trees(rng, plan, (-road.left_margin - 20.0, road.width + road.right_margin + 8.0),
                int(rng.integers(3, 12)), (15.0, 200.0), spread=15.0)
    if rng.random() < 0.35:
        z = float(rng.uniform(40.0, 150.0))
        signs = tuple(float(x) for x in rng.uniform(-road.width / 3, road.width / 3, int(rng.integers(1, 3))))
        plan.add("gantry", z, _draw_gantry, u=road.width / 2, z=z, span=road.width + 4.0, signs=signs)


def _plan_rural(rng: np.random.Generator, plan: _Plan) -> None:
    road = plan.road
    if rng.random() < 0.6:
        u = road.width + road.right_margin + 1.0 if rng.random() < 0.5 else -road.left_margin - 1.0
        zs = tuple(float(z) for z in np.arange(rng.uniform(5.0, 20.0), 300.0, 35.0))
        plan.backdrop.append(partial(_draw_wires, u=u, zs=zs))
        for z in zs:
            plan.add("utility_pole", z, _draw_utility_pole, u=u, z=z)
    plan.backdrop.insert(2, partial(_draw_fields, road=road, fields=tuple(
        (float(rng.uniform(0.0, 40.0)), _pick(rng, ((120, 140, 60), (170, 160, 80), (110, 90, 60), (90, 130, 55))))
        for _ in range(4))))
    _plan_trees(rng, plan, (-road.left_margin - 6.0, road.width + road.right_margin + 6.0),
                int(rng.integers(2, 10)), (8.0, 200.0), spread=12.0)
    if rng.random() < 0.4:
        z = float(rng.uniform(40.0, 120.0))
        side = 1.0 if rng.random() < 0.5 else -1.0
        u = road.width + 25.0 if side > 0 else -25.0
        plan.add("house", z + 15.0, _draw_house, u=u, side=side, z0=z, z1=z + 15.0, wall_height=5.0, depth=10.0,
                 wall=(150, 40, 35), roof=(70, 70, 75), lit=False)


def _draw_fields(canvas: _Canvas, *, road: _Road, fields: tuple[tuple[float, RGB], ...]) -> None:
    right, left = road.width + road.right_margin, -road.left_margin
    for index, (offset, colour) in enumerate(fields):
        if index % 2:
            _strip(canvas, right, right + 300.0, colour, near=offset)
        else:
            _strip(canvas, left - 300.0, left, colour, near=offset)
    rows = _scaled(fields[0][1], 0.8)
    for lateral in range(4, 60, 4):
        for u in (right + lateral, left - lateral):
            zs = _depths(max(canvas.camera.near_z, 3.0), 300.0, 8)
            canvas.draw.line([canvas.camera.project(u, 0.0, z) for z in zs], fill=canvas.light.surface(rows), width=1)


_SCENERY: dict[str, Callable[[np.random.Generator, _Plan], None]] = {
    "urban": _plan_urban,
    "residential": _plan_residential,
    "highway": _plan_highway,
    "rural": _plan_rural,
}


def _plan_trees(rng: np.random.Generator, plan: _Plan, sides: tuple[float, float], count: int,
                depth_range: tuple[float, float], spread: float = 0.0, autumn: bool = False) -> None:
    for _ in range(count):
        z = float(rng.uniform(*depth_range))
        left = rng.random() < 0.5
        u = (sides[0] - rng.uniform(0, spread)) if left else (sides[1] + rng.uniform(0, spread))
        conifer = plan.scene in ("rural", "highway") and rng.random() < 0.4
        palette = _AUTUMN_FOLIAGE if autumn else _FOLIAGE
        radius = float(rng.uniform(1.2, 2.8))
        crown = tuple((float(rng.uniform(-0.6, 0.6) * radius), float(rng.uniform(0.5, 1.6) * radius),
                       float(radius * rng.uniform(0.6, 1.0)), _scaled(_pick(rng, palette), rng.uniform(0.85, 1.1)))
                      for _ in range(3))
        kind = "autumn_tree" if autumn else "tree"
        plan.add(kind, z, _draw_tree, u=float(u), z=z, trunk=float(rng.uniform(1.5, 3.0)), crown=crown,
                 conifer=conifer and not autumn)


def _plan_street_furniture(rng: np.random.Generator, plan: _Plan, lamps: bool) -> None:
    road = plan.road
    if lamps:
        z = float(rng.uniform(5.0, 25.0))
        spacing = float(rng.uniform(25.0, 40.0))
        while z < 200.0:
            plan.add("street_lamp", z, _draw_street_lamp, u=road.width + 0.6, z=z, reach=-1.8,
                     height=float(rng.uniform(7.0, 9.0)))
            z += spacing


def _plan_pedestrians(rng: np.random.Generator, plan: _Plan, count: int, outfit: _Outfit | None = None,
                      kind: str = "pedestrian") -> None:
    road = plan.road
    for _ in range(count):
        z = float(rng.uniform(max(plan.camera.near_z + 1.0, 5.0), 70.0))
        if rng.random() < 0.5:
            u = -rng.uniform(0.6, max(0.8, road.left_margin - 0.5))
        else:
            u = road.width + rng.uniform(0.6, max(0.8, road.right_margin - 0.5))
        plan.add(kind, z, _draw_person, u=float(u), z=z, height=float(rng.uniform(1.55, 1.9)),
                 outfit=outfit or _random_outfit(rng), stride=float(rng.uniform(-0.08, 0.08)),
                 mirror=bool(rng.random() < 0.5))


def _random_outfit(rng: np.random.Generator) -> _Outfit:
    return _Outfit(shirt=_pick(rng, _CLOTHES), trousers=_pick(rng, _CLOTHES[:5]), skin=_pick(rng, _SKIN),
                   hair=_pick(rng, _HAIR))


def _plan_bin(rng: np.random.Generator, plan: _Plan, colour: RGB, kind: str = "bin") -> None:
    road = plan.road
    z = float(rng.uniform(max(plan.camera.near_z + 1.0, 5.0), 50.0))
    u = -0.6 if rng.random() < 0.4 else road.width + 0.6
    plan.add(kind, z, _draw_bin, u=u, z=z, colour=colour)


def _plan_traffic(rng: np.random.Generator, plan: _Plan) -> None:
    road = plan.road
    density = {"urban": 1.4, "residential": 0.5, "highway": 1.3, "rural": 0.4}[plan.scene]
    for lane in range(road.lanes):
        z = float(rng.uniform(6.0, 30.0))
        while z < 160.0:
            if rng.random() < density / 2:
                u = road.lane_centre(lane) + float(rng.uniform(-0.3, 0.3))
                spot = next((z + shift for shift in (0.0, 7.0, 14.0) if plan.is_free(u, z + shift)), None)
                if spot is not None:
                    _add_vehicle(rng, plan, u, spot, rear=lane >= road.oncoming)
                    z = spot
            z += float(rng.uniform(10.0, 35.0))
    if plan.scene in ("urban", "residential") and rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 5))):
            z = float(rng.uniform(8.0, 90.0))
            left = rng.random() < 0.3
            u = 1.0 if left else road.width - 1.0
            if plan.is_free(u, z):
                _add_vehicle(rng, plan, u, z, rear=not left)


def _add_vehicle(rng: np.random.Generator, plan: _Plan, u: float, z: float, rear: bool,
                 body: RGB | None = None, kind: str | None = None) -> None:
    if kind is None:
        weights = (0.55, 0.25, 0.1, 0.07, 0.03) if plan.scene != "highway" else (0.45, 0.25, 0.1, 0.17, 0.03)
        kind = _choose(rng, ("sedan", "suv", "van", "truck", "bus"), weights)
    if body is None:
        body = _scaled(_pick(rng, _CAR_COLOURS), rng.uniform(0.85, 1.08))
    label = "school_bus" if kind == "school_bus" else "vehicle"
    plan.add(label, z, _draw_vehicle, u=u, z=z, body=body, model=kind, rear=rear)


# ---------- look-alikes (mostly on negatives) ----------


def _free_lane_spot(rng: np.random.Generator, plan: _Plan, near: float, far: float) -> tuple[int, float] | None:
    for _ in range(4):
        lane, z = int(rng.integers(plan.road.lanes)), float(rng.uniform(near, far))
        if plan.is_free(plan.road.lane_centre(lane), z):
            return lane, z
    return None


def _lookalike_orange_vehicle(rng: np.random.Generator, plan: _Plan) -> str | None:
    spot = _free_lane_spot(rng, plan, 10.0, 60.0)
    if spot is None:
        return None
    lane, z = spot
    kind = _choose(rng, ("sedan", "suv", "van", "truck"), (0.4, 0.2, 0.2, 0.2))
    _add_vehicle(rng, plan, plan.road.lane_centre(lane), z, rear=lane >= plan.road.oncoming,
                 body=_pick(rng, _LOOKALIKE_CAR_COLOURS), kind=kind)
    return _pick(rng, ("an orange car ahead", "a yellow vehicle in traffic", "an orange van on the road"))


def _lookalike_school_bus(rng: np.random.Generator, plan: _Plan) -> str | None:
    spot = _free_lane_spot(rng, plan, 12.0, 70.0)
    if spot is None:
        return None
    lane, z = spot
    _add_vehicle(rng, plan, plan.road.lane_centre(lane), z, rear=lane >= plan.road.oncoming, body=(248, 188, 10),
                 kind="school_bus")
    return "a school bus on the road"


def _lookalike_bins(rng: np.random.Generator, plan: _Plan) -> str:
    for _ in range(int(rng.integers(1, 4))):
        _plan_bin(rng, plan, _pick(rng, ((245, 120, 20), (240, 200, 30), (230, 90, 20))), kind="orange_bin")
    return "orange bins on the curb"


def _lookalike_awning(rng: np.random.Generator, plan: _Plan) -> str:
    road = plan.road
    side = 1.0 if rng.random() < 0.5 else -1.0
    u = road.width + road.right_margin if side > 0 else -road.left_margin
    z = float(rng.uniform(max(plan.camera.near_z, 6.0), 40.0))
    colours = _pick(rng, (((245, 110, 20), _PAINT), ((225, 40, 30), _PAINT), ((250, 190, 20), (245, 110, 20))))
    plan.add("striped_awning", z + 6.0, _draw_awning, u=u, side=side, z0=z, z1=z + float(rng.uniform(4.0, 9.0)),
             colours=colours)
    return "striped awnings over the shops"


def _lookalike_traffic_light(rng: np.random.Generator, plan: _Plan) -> str:
    road = plan.road
    z = float(rng.uniform(15.0, 60.0))
    plan.add("traffic_light", z, _draw_traffic_light, u=road.width + 0.5, z=z,
             reach=-float(rng.uniform(2.5, min(6.0, road.width))), state=int(rng.choice(3, p=(0.35, 0.4, 0.25))))
    return "a traffic light turning amber"


def _lookalike_orange_pedestrian(rng: np.random.Generator, plan: _Plan) -> str:
    shirt = _pick(rng, ((250, 110, 20), (240, 90, 15), (210, 245, 45), (250, 200, 30)))
    outfit = replace(_random_outfit(rng), shirt=shirt)
    _plan_pedestrians(rng, plan, int(rng.integers(1, 3)), outfit, kind="orange_pedestrian")
    return "a pedestrian in a bright jacket"


def _lookalike_warning_sign(rng: np.random.Generator, plan: _Plan) -> str:
    road = plan.road
    z = float(rng.uniform(max(plan.camera.near_z + 2.0, 8.0), 80.0))
    shape = "diamond" if rng.random() < 0.7 else "triangle"
    face = (250, 205, 20) if shape == "diamond" and rng.random() < 0.7 else (250, 130, 20)
    if shape == "triangle":
        face = _PAINT
    plan.add("warning_sign", z, _draw_warning_sign, u=road.width + min(1.2, road.right_margin), z=z,
             size=float(rng.uniform(0.4, 0.6)), post=float(rng.uniform(1.5, 2.2)), shape=shape, face=face,
             pictogram=_pick(rng, ("curve", "crossing")))
    return "a warning sign by the road"


def _lookalike_autumn_trees(rng: np.random.Generator, plan: _Plan) -> str:
    road = plan.road
    _plan_trees(rng, plan, (-road.left_margin + 0.5, road.width + road.right_margin - 0.5),
                int(rng.integers(2, 6)), (8.0, 70.0), autumn=True)
    return "autumn trees along the road"


_LOOKALIKES: dict[str, tuple[Callable[[np.random.Generator, _Plan], str | None], tuple[float, float, float, float]]] = {
    # name: (planner, weight per scene in SCENES order)
    "orange_vehicle": (_lookalike_orange_vehicle, (1.0, 1.0, 1.5, 1.0)),
    "school_bus": (_lookalike_school_bus, (0.5, 0.8, 0.3, 0.6)),
    "bins": (_lookalike_bins, (0.8, 1.0, 0.0, 0.0)),
    "awning": (_lookalike_awning, (1.2, 0.0, 0.0, 0.0)),
    "traffic_light": (_lookalike_traffic_light, (1.2, 0.5, 0.0, 0.2)),
    "orange_pedestrian": (_lookalike_orange_pedestrian, (1.0, 0.8, 0.0, 0.2)),
    "warning_sign": (_lookalike_warning_sign, (0.5, 0.8, 1.0, 1.2)),
    "autumn_trees": (_lookalike_autumn_trees, (0.4, 1.0, 0.6, 1.0)),
}


def _plan_lookalikes(rng: np.random.Generator, plan: _Plan, count: int) -> None:
    names = list(_LOOKALIKES)
    weights = [_LOOKALIKES[name][1][SCENES.index(plan.scene)] for name in names]
    for _ in range(count):
        sight = _LOOKALIKES[_choose(rng, names, weights)][0](rng, plan)
        if sight is not None:
            plan.sights.append(sight)


# ---------- the work zone (positives only) ----------


def _add_cone_or_drum(rng: np.random.Generator, plan: _Plan, u: float, z: float, drums: bool, size: float) -> None:
    colour = _pick(rng, _SAFETY_ORANGES)
    if drums:
        plan.add("drum", z, _draw_drum, u=u, z=z, colour=colour)
    else:
        plan.add("cone", z, _draw_cone, u=u, z=z, height=size, colour=colour,
                 bands=int(rng.integers(1, 3)))


def _add_work_sign(rng: np.random.Generator, plan: _Plan, u: float, z: float) -> None:
    diamond = rng.random() < 0.7
    plan.add("work_sign", z, _draw_warning_sign, u=u, z=z, size=float(rng.uniform(0.45, 0.7)),
             post=float(rng.uniform(1.2, 2.0)), shape="diamond" if diamond else "triangle",
             face=_pick(rng, _SAFETY_ORANGES) if diamond else _PAINT, pictogram="worker")


def _add_workers(rng: np.random.Generator, plan: _Plan, u_range: tuple[float, float], z_range: tuple[float, float],
                 count: int) -> None:
    for _ in range(count):
        z = float(rng.uniform(*z_range))
        outfit = replace(_random_outfit(rng), shirt=_pick(rng, _CLOTHES[:6]), vest=_pick(rng, _HIVIS),
                         hard_hat=_pick(rng, ((250, 250, 245), (250, 200, 20), (245, 110, 20))),
                         paddle=bool(rng.random() < 0.15))
        plan.add("worker", z, _draw_person, u=float(rng.uniform(*u_range)), z=z,
                 height=float(rng.uniform(1.6, 1.9)), outfit=outfit, stride=float(rng.uniform(-0.06, 0.06)),
                 mirror=bool(rng.random() < 0.5))


def _add_excavator(rng: np.random.Generator, plan: _Plan, u: float, z: float) -> None:
    plan.add("excavator", z, _draw_excavator, u=u, z=z,
             body=_pick(rng, ((240, 178, 20), (235, 120, 20), (225, 200, 40))), mirror=bool(rng.random() < 0.5),
             lift=float(rng.uniform(-0.6, 0.8)))


def _add_barrier(rng: np.random.Generator, plan: _Plan, u: float, z: float, width: float) -> None:
    colours = _pick(rng, (((215, 30, 30), _REFLECTIVE), (_SAFETY_ORANGES[0], _REFLECTIVE)))
    boards = ((0.75, 1.0),) if rng.random() < 0.6 else ((0.3, 0.5), (0.8, 1.0))
    plan.add("barrier", z, _draw_barrier, u=u, z=z, width=width, colours=colours, boards=boards,
             slant=float(_pick(rng, (-1.0, 1.0))), lamp=bool(rng.random() < 0.5))


def _add_jersey_run(rng: np.random.Generator, plan: _Plan, u: float, z0: float, z1: float) -> None:
    plastic = rng.random() < 0.5
    z, index = z0, 0
    while z < z1:
        colour = ((_SAFETY_ORANGES[0] if index % 2 == 0 else _PAINT) if plastic else (178, 176, 168))
        plan.add("jersey_barrier", z + 2.0, _draw_jersey_barrier, u=u, z0=z, z1=z + 1.9, colour=colour)
        z += 2.0
        index += 1


def _work_depth(rng: np.random.Generator, plan: _Plan, nearest: float, farthest: float) -> float:
    """Where a work zone starts: anywhere up to ``farthest``, but more often near enough to see well."""
    nearest = max(nearest, plan.camera.near_z + 3.0)
    farthest = max(min(farthest, 0.9 * plan.light.visibility), nearest + 5.0)
    return nearest + (farthest - nearest) * float(rng.random()) ** 1.6


def _work_lane_closure(rng: np.random.Generator, plan: _Plan) -> str:
    road = plan.road
    kerb_lane, inner_lane = road.lanes - 1, road.oncoming
    lane = kerb_lane if kerb_lane == inner_lane or rng.random() < 0.75 else inner_lane
    lane_u0, lane_u1 = lane * road.lane_width, (lane + 1) * road.lane_width
    outer, inner = (lane_u1, lane_u0 + 0.3) if lane == road.lanes - 1 else (lane_u0, lane_u1 - 0.3)
    start = _work_depth(rng, plan, 10.0, 50.0)
    taper = float(rng.uniform(15.0, 35.0))
    end = start + taper + float(rng.uniform(15.0, 60.0))
    plan.closed = (lane_u0, lane_u1, start, end)
    drums = rng.random() < 0.25
    size = float(rng.uniform(0.45, 0.9))
    spacing = float(rng.uniform(3.0, 6.0))
    z = start
    while z < end:
        t = min(1.0, (z - start) / taper)
        _add_cone_or_drum(rng, plan, outer + (inner - outer) * t, z, drums, size)
        z += spacing
    middle = (lane_u0 + lane_u1) / 2
    if rng.random() < 0.4:
        _add_barrier(rng, plan, middle, start + taper + 1.0, road.lane_width * 0.8)
    if rng.random() < 0.3:
        _add_jersey_run(rng, plan, inner + (0.2 if inner > outer else -0.2), start + taper + 4.0,
                        start + taper + float(rng.uniform(8.0, 24.0)))
    crew = rng.random() < 0.7
    if crew:
        _add_workers(rng, plan, (lane_u0 + 0.6, lane_u1 - 0.6), (start + taper, end), int(rng.integers(1, 4)))
    if rng.random() < 0.4:
        _add_excavator(rng, plan, middle, float(rng.uniform(start + taper + 5.0, end + 5.0)))
    sign_z = start - float(rng.uniform(10.0, 30.0))
    if rng.random() < 0.6 and sign_z > plan.camera.near_z + 3.0:
        sign_u = road.width + 0.8 if lane == road.lanes - 1 else -0.8
        _add_work_sign(rng, plan, sign_u, sign_z)
    side = "right" if lane == kerb_lane else "left"
    phrases = [f"the {side} lane closed for road work", f"a work zone closing the {side} lane"]
    phrases.append("a lane closure with road workers" if crew else f"{'drums' if drums else 'cones'} "
                   f"narrowing the {side} lane")
    return _pick(rng, phrases)


def _roadside(rng: np.random.Generator, plan: _Plan) -> tuple[float, float, float, str]:
    """A strip beside the carriageway to work on: (inner u, outer u, direction, side name)."""
    road = plan.road
    if rng.random() < 0.7 or road.oncoming == 0:
        return road.width + 0.4, road.width + max(road.right_margin - 0.4, 0.8), 1.0, "right"
    return -0.4, -max(road.left_margin - 0.4, 0.8), -1.0, "left"


def _work_roadside(rng: np.random.Generator, plan: _Plan) -> str:
    inner, outer, direction, side = _roadside(rng, plan)
    start = _work_depth(rng, plan, 8.0, 55.0)
    length = float(rng.uniform(6.0, 25.0))
    kinds = rng.random(4)
    for z in np.arange(start, start + length, float(rng.uniform(3.0, 6.0))):
        _add_cone_or_drum(rng, plan, inner, float(z), rng.random() < 0.2, float(rng.uniform(0.45, 0.8)))
    crew = kinds[0] < 0.5
    if crew:
        _add_workers(rng, plan, (min(inner, outer), max(inner, outer)), (start, start + length),
                     int(rng.integers(1, 3)))
    if kinds[1] < 0.35:
        for z in np.arange(start, start + length, 2.0)[:4]:
            _add_barrier(rng, plan, (inner + outer) / 2, float(z), float(rng.uniform(1.0, 1.6)))
    if kinds[2] < 0.3:
        _add_excavator(rng, plan, outer + direction * 1.5, start + length / 2)
    if kinds[3] < 0.6:
        _add_work_sign(rng, plan, inner + direction * 0.4, max(start - 10.0, plan.camera.near_z + 3.0))
    where = "sidewalk" if plan.scene in ("urban", "residential") else "shoulder"
    crowd = f"cones and workers on the {side} {where}" if crew else f"a row of cones on the {side} {where}"
    return _pick(rng, (f"road work on the {side} {where}", f"construction on the {where}", crowd))


def _work_distant(rng: np.random.Generator, plan: _Plan) -> str:
    road = plan.road
    z = min(float(rng.uniform(30.0, 80.0)), max(plan.light.visibility, 30.0))
    u = road.width - 0.2 if rng.random() < 0.6 else road.width + 0.5
    choice = rng.random()
    if choice < 0.6:
        for index in range(int(rng.integers(1, 4))):
            _add_cone_or_drum(rng, plan, u, z + 4.0 * index, False, float(rng.uniform(0.55, 0.8)))
    elif choice < 0.8:
        _add_barrier(rng, plan, u, z, float(rng.uniform(1.0, 1.5)))
    else:
        _add_work_sign(rng, plan, road.width + 0.8, z)
    return _pick(rng, ("a few cones far ahead", "a work zone in the distance", "road work far down the road"))


def _work_machinery(rng: np.random.Generator, plan: _Plan) -> str:
    inner, outer, direction, side = _roadside(rng, plan)
    z = _work_depth(rng, plan, 12.0, 60.0)
    excavator = rng.random() < 0.7
    if excavator and plan.scene in ("urban", "residential"):
        kerbside = inner - direction * 1.8
        plan.closed = (kerbside - 1.5, kerbside + 1.5, z - 3.0, z + 3.0)
        _add_excavator(rng, plan, kerbside, z)
    elif excavator:
        _add_excavator(rng, plan, outer + direction * 1.0, z)
    else:
        _add_jersey_run(rng, plan, inner + direction * 0.3, z - 6.0, z + float(rng.uniform(6.0, 20.0)))
    if rng.random() < 0.5:
        _add_work_sign(rng, plan, inner + direction * 0.3, max(z - 15.0, plan.camera.near_z + 3.0))
    if rng.random() < 0.4:
        _add_workers(rng, plan, (min(inner, outer), max(inner, outer)), (z - 4.0, z + 4.0), 1)
    if excavator:
        return _pick(rng, (f"an excavator parked on the {side}", "construction equipment beside the road",
                           "heavy machinery at a work site"))
    return _pick(rng, (f"barriers along the {side} side", "temporary barriers beside the road"))


_WORK_ZONES: dict[str, tuple[Callable[[np.random.Generator, _Plan], str], float, float]] = {
    # name: (planner, weight, chance that the description mentions it)
    "lane_closure": (_work_lane_closure, 0.35, 0.85),
    "roadside": (_work_roadside, 0.3, 0.85),
    "distant": (_work_distant, 0.22, 0.35),
    "machinery": (_work_machinery, 0.13, 0.85),
}


def _plan_work_zone(rng: np.random.Generator, plan: _Plan) -> None:
    names = list(_WORK_ZONES)
    name = _choose(rng, names, [_WORK_ZONES[n][1] for n in names])
    planner, _, mention = _WORK_ZONES[name]
    phrase = planner(rng, plan)
    if not any(item.roadwork and _in_view(plan.camera, item) for item in plan.items):
        z = float(rng.uniform(15.0, 40.0))
        _add_cone_or_drum(rng, plan, plan.road.width - 0.3, z, False, float(rng.uniform(0.5, 0.8)))
    if rng.random() < mention:
        plan.work_phrase = phrase


def _in_view(camera: _Camera, item: _Item) -> bool:
    if item.foot is None or item.foot[1] < camera.near_z:
        return False
    x, _ = camera.project(item.foot[0], 0.0, item.foot[1])
    return 0.0 <= x <= camera.width


# ---------- description ----------

_WEATHER_WORDS = {"clear": ("Clear", "Sunny", "Bright"), "cloudy": ("Overcast", "Cloudy", "Grey"),
                  "rain": ("Rainy", "Wet", "Drizzly"), "fog": ("Foggy", "Misty", "Hazy")}
_DAYTIME_WORDS = {"day": ("afternoon", "day", "morning"), "dawn": ("dawn", "early morning"),
                  "dusk": ("dusk", "evening"), "night": ("night",)}
_SCENE_WORDS = {"urban": ("an urban street", "a city street", "a downtown avenue"),
                "residential": ("a residential street", "a quiet neighbourhood road", "a suburban street"),
                "highway": ("a highway", "a multi-lane motorway", "an expressway"),
                "rural": ("a country road", "a rural road", "a two-lane road through fields")}
_MIRRORED = {"left": "right", "right": "left"}
_GENERIC = ("Dashcam view of the road ahead.", "Street-level photo taken from a car.",
            "View through the windshield.", "Driving scene.")


def _describe(rng: np.random.Generator, plan: _Plan) -> str:
    if rng.random() < 0.12:
        return _pick(rng, _GENERIC)
    weather = _pick(rng, _WEATHER_WORDS[plan.weather])
    if plan.weather == "clear" and plan.daytime != "day":
        weather = "Clear"
    text = f"{weather} {_pick(rng, _DAYTIME_WORDS[plan.daytime])} on {_pick(rng, _SCENE_WORDS[plan.scene])}"
    extras = [plan.work_phrase] if plan.work_phrase else []
    if plan.sights and rng.random() < 0.5:
        extras.append(_pick(rng, plan.sights))
    if extras:
        text += ", with " + " and ".join(extras)
    if plan.drives_left:
        text = re.sub(r"\b(left|right)\b", lambda side: _MIRRORED[side.group(1)], text)
    return text + "."


# --------------------------------------------------------------------------------------------
# Drawing the plan and finishing the photo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrawnObject:
    """One object as it landed in the picture; ``box`` is (x0, y0, x1, y1) in image pixels."""

    kind: str
    roadwork: bool
    box: Box


@dataclass(frozen=True)
class RenderedScene:
    image: Image.Image
    metadata: dict[str, object]
    objects: tuple[DrawnObject, ...]


def _base_image(camera: _Camera, sky: tuple[RGB, RGB], ground: RGB, light: _Light) -> Image.Image:
    """Sky gradient over bare ground, built as one pixel column and stretched (fast)."""
    horizon = int(math.ceil(camera.horizon))
    t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None] ** 1.5
    top, bottom = np.asarray(sky[0], np.float32), np.asarray(sky[1], np.float32)
    column = np.empty((camera.height, 1, 3), np.uint8)
    column[:horizon, 0] = (top + (bottom - top) * t).astype(np.uint8)
    column[horizon:, 0] = light.surface(ground)
    return Image.fromarray(column, "RGB").resize((camera.width, camera.height), Image.Resampling.NEAREST)


def _rain(image: Image.Image, rng: np.random.Generator, light: _Light) -> Image.Image:
    width, height = image.size
    streaks = Image.new("L", image.size)
    draw = ImageDraw.Draw(streaks)
    count = int(width * height / 700)
    slant = rng.uniform(-0.3, 0.3)
    xs = rng.uniform(0, width, count)
    ys = rng.uniform(0, height, count)
    lengths = rng.uniform(0.02, 0.05, count) * height
    levels = rng.integers(40, 110, count)
    for x, y, length, level in zip(xs, ys, lengths, levels, strict=True):
        draw.line(((x, y), (x + slant * length, y + length)), fill=int(level), width=1)
    tint = _mix(light.fog, (235, 238, 242), 0.5)
    return Image.composite(Image.new("RGB", image.size, tint), image, streaks)


def _sensor_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Half-resolution noise, upsampled: real sensor noise is blotchy after demosaicking."""
    width, height = image.size
    half = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32) * sigma + 128.0
    noise = Image.fromarray(np.clip(half, 0.0, 255.0).astype(np.uint8), "RGB")
    noise = noise.resize((width, height), Image.Resampling.NEAREST)
    return ImageChops.add(image, noise, scale=1.0, offset=-128)


def _draw_plan(plan: _Plan, without_roadwork: bool) -> tuple[Image.Image, list[DrawnObject]]:
    camera = plan.camera
    image = _base_image(camera, plan.sky, plan.ground, plan.light)
    canvas = _Canvas(image, camera, plan.light)
    for draw in plan.backdrop:
        draw(canvas)
    limit = (0.0, 0.0, float(plan.camera.width), float(plan.camera.height))
    objects = []
    for item in sorted(plan.items, key=lambda item: -item.depth):
        if without_roadwork and item.roadwork:
            continue
        x0, y0, x1, y1 = item.draw(canvas)
        x0, y0, x1, y1 = max(x0, limit[0]), max(y0, limit[1]), min(x1, limit[2]), min(y1, limit[3])
        if x1 > x0 and y1 > y0:
            objects.append(DrawnObject(item.kind, item.roadwork, tuple(v / _SUPERSAMPLE for v in (x0, y0, x1, y1))))
    post = np.random.default_rng(plan.post_seed)
    width, height = camera.width // _SUPERSAMPLE, camera.height // _SUPERSAMPLE
    image = image.reduce(_SUPERSAMPLE)
    if canvas.glowing:
        halo = canvas.glow.filter(ImageFilter.GaussianBlur(2.5))
        image = ImageChops.add(image, halo.resize((width, height), Image.Resampling.BILINEAR))
    if plan.weather == "rain":
        image = _rain(image, post, plan.light)
    if plan.weather in ("rain", "fog") or post.random() < 0.25:
        image = image.filter(ImageFilter.BoxBlur(0.6))
    sigma = 2.0 + 4.0 * (plan.light.glow - 0.25) + float(post.uniform(0.0, 1.5))
    image = _sensor_noise(image, post, sigma)
    if plan.drives_left:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        objects = [replace(o, box=(width - o.box[2], o.box[1], width - o.box[0], o.box[3])) for o in objects]
    return image, objects


def render_scene_details(rng: np.random.Generator, width: int, height: int, positive: bool, *,
                         without_roadwork: bool = False) -> RenderedScene:
    """Render one scene and say what is in it.

    ``without_roadwork`` draws the very same scene minus its work zone: a matched counterfactual,
    used to prove that each positive's work zone is actually visible.
    """
    if width < 32 or height < 32:
        raise ValueError(f"image size must be at least 32x32, got {width}x{height}")
    plan = _plan(rng, width, height, positive)
    description = _describe(rng, plan)
    image, objects = _draw_plan(plan, without_roadwork)
    metadata: dict[str, object] = {
        "latitude": round(plan.latitude, 6),
        "longitude": round(plan.longitude, 6),
        "weather": plan.weather,
        "daytime": plan.daytime,
        "scene": plan.scene,
        "description": description,
    }
    return RenderedScene(image, metadata, tuple(objects))


def render_scene(rng: np.random.Generator, width: int, height: int, positive: bool
                 ) -> tuple[Image.Image, dict[str, object]]:
    """Render one street photo and its true metadata (never NULL here; the dataset writer blanks fields)."""
    scene = render_scene_details(rng, width, height, positive)
    return scene.image, scene.metadata


# --------------------------------------------------------------------------------------------
# The dataset folder
# --------------------------------------------------------------------------------------------

_NULL_SPELLINGS = ("NULL", "none", "nan", "null")


def _odd_category(rng: np.random.Generator, value: str) -> str:
    """Real metadata arrives with inconsistent case and stray spaces; keep a little of that."""
    return _pick(rng, (value.capitalize(), value.upper(), f" {value} "))


def _csv_row(rng: np.random.Generator, file_name: str, label: int, metadata: dict[str, object]) -> list[str]:
    def blank() -> str:
        return _pick(rng, _NULL_SPELLINGS) if rng.random() < 0.1 else ""

    if rng.random() < NULL_RATE:
        latitude = longitude = blank()
    elif rng.random() < ODD_VALUE_RATE:
        latitude, longitude = repr(float(metadata["latitude"])), repr(float(metadata["longitude"]))
    else:
        latitude, longitude = f"{metadata['latitude']:.6f}", f"{metadata['longitude']:.6f}"
    row = [file_name, str(label), latitude, longitude]
    for name in ("weather", "daytime", "scene", "description"):
        value = str(metadata[name])
        if rng.random() < NULL_RATE:
            row.append(blank())
        elif name != "description" and rng.random() < ODD_VALUE_RATE:
            row.append(_odd_category(rng, value))
        else:
            row.append(value)
    return row


def _balanced_labels(n: int, seed: int) -> np.ndarray:
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    return np.random.default_rng([seed]).permutation(labels)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_synthetic_dataset(out: Path, n: int, seed: int, width: int = 640, height: int = 480,
                            progress: Callable[[int], None] | None = None) -> Path:
    """Write an imagefolder dataset (images/ + metadata.csv) with NULLs as sparse as the target data.

    Each image depends only on (seed, index) and its label, so any subset can be re-rendered alone
    (or in parallel). The CSV is
    written last: a folder without it is an interrupted run, never a silently short dataset.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    out = Path(out)
    labels = _balanced_labels(n, seed)
    rows = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        label = int(labels[index])
        image, metadata = render_scene(rng, width, height, positive=bool(label))
        file_name = f"images/{index:06d}.jpg"
        atomic_write_bytes(out / file_name, _jpeg_bytes(image))
        rows.append(_csv_row(rng, file_name, label, metadata))
        if progress is not None:
            progress(index + 1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(out / "metadata.csv", buffer.getvalue())
    return out
