"""Camera, light and the canvas every drawer paints on, with the colour and geometry helpers they share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]
Point = tuple[float, float]

SUPERSAMPLE = 2
_GLOW_SCALE = 8

PAINT = (232, 232, 226)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


def scaled(rgb: RGB, k: float) -> RGB:
    return (min(255, int(rgb[0] * k)), min(255, int(rgb[1] * k)), min(255, int(rgb[2] * k)))


def _bounds(points: Sequence[Point]) -> Box:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def union(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


@dataclass(frozen=True)
class Camera:
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
class Light:
    """Ambient colour, haze and headlights, applied to each colour as it is drawn."""

    ambient: tuple[float, float, float]
    fog: RGB
    visibility: float
    headlights: bool
    glow: float
    lights_on: bool

    def haze(self, z: float) -> float:
        """Zero beside the camera: a drive passes things whose far end is still ahead."""
        return 1.0 - math.exp(-max(z, 0.0) / self.visibility)

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
        return self._lit(rgb, 0.85 * math.exp(-max(z, 0.0) / 18.0) if self.headlights else 0.0, z)

    def reflect(self, rgb: RGB, z: float) -> RGB:
        """Retroreflective tape shines back at the camera's headlights far beyond their lit pool."""
        return self._lit(rgb, 2.2 * math.exp(-max(z, 0.0) / 70.0) if self.headlights else 0.0, z)

    def emit(self, rgb: RGB, z: float) -> RGB:
        haze = self.haze(z) * 0.7
        return mix(rgb, self.fog, haze)


class Canvas:
    def __init__(self, image: Image.Image, camera: Camera, light: Light) -> None:
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
                               fill=scaled(rgb, self.light.glow))

    def glow_ground(self, points: Sequence[tuple[float, float]], rgb: RGB) -> None:
        self.glowing = True
        k = 1.0 / _GLOW_SCALE
        xy = [self.camera.project(u, 0.0, z) for u, z in points]
        self.glow_draw.polygon([(x * k, y * k) for x, y in xy], fill=scaled(rgb, self.light.glow))

    def billboard(self, u: float, z: float, mirror: bool = False) -> Billboard:
        return Billboard(self, u, z, mirror)


class Billboard:
    """Draws an upright object facing the camera; shapes are given in metres from its foot."""

    def __init__(self, canvas: Canvas, u: float, z: float, mirror: bool) -> None:
        self.canvas = canvas
        self.z = z
        self.x, self.y = canvas.camera.project(u, 0.0, z)
        self.scale = canvas.camera.focal / z
        self.flip = -self.scale if mirror else self.scale
        self.box: Box = (math.inf, math.inf, -math.inf, -math.inf)

    def _screen(self, points: Sequence[Point]) -> list[Point]:
        xy = [(self.x + dx * self.flip, self.y - dy * self.scale) for dx, dy in points]
        self.box = union(self.box, _bounds(xy))
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
        fill = light.emit(rgb, self.z) if lit else light.shade(scaled(rgb, 0.45), self.z)
        self.canvas.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        if not lit:
            return
        halo = max(r * glow, 1.5 * _GLOW_SCALE)
        self.canvas.glow_oval(x, y, halo, halo, scaled(rgb, 1.0 - 0.6 * self.canvas.light.haze(self.z)))
