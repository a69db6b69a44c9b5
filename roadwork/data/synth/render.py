"""Drawing the plan and finishing the photo."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from roadwork.data.synth.canvas import RGB, SUPERSAMPLE, Box, Camera, Canvas, Light, mix
from roadwork.data.synth.plan import Plan


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


def _base_image(camera: Camera, sky: tuple[RGB, RGB], ground: RGB, light: Light) -> Image.Image:
    """Sky gradient over bare ground, built as one pixel column and stretched (fast)."""
    horizon = int(math.ceil(camera.horizon))
    t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None] ** 1.5
    top, bottom = np.asarray(sky[0], np.float32), np.asarray(sky[1], np.float32)
    column = np.empty((camera.height, 1, 3), np.uint8)
    column[:horizon, 0] = (top + (bottom - top) * t).astype(np.uint8)
    column[horizon:, 0] = light.surface(ground)
    return Image.fromarray(column, "RGB").resize((camera.width, camera.height), Image.Resampling.NEAREST)


def _rain(image: Image.Image, rng: np.random.Generator, light: Light) -> Image.Image:
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
    tint = mix(light.fog, (235, 238, 242), 0.5)
    return Image.composite(Image.new("RGB", image.size, tint), image, streaks)


def _sensor_noise(image: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    """Half-resolution noise, upsampled: real sensor noise is blotchy after demosaicking."""
    width, height = image.size
    half = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32) * sigma + 128.0
    noise = Image.fromarray(np.clip(half, 0.0, 255.0).astype(np.uint8), "RGB")
    noise = noise.resize((width, height), Image.Resampling.NEAREST)
    return ImageChops.add(image, noise, scale=1.0, offset=-128)


def draw_plan(plan: Plan, without_roadwork: bool) -> tuple[Image.Image, list[DrawnObject]]:
    camera = plan.camera
    image = _base_image(camera, plan.sky, plan.ground, plan.light)
    canvas = Canvas(image, camera, plan.light)
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
            objects.append(DrawnObject(item.kind, item.roadwork, tuple(v / SUPERSAMPLE for v in (x0, y0, x1, y1))))
    post = np.random.default_rng(plan.post_seed)
    width, height = camera.width // SUPERSAMPLE, camera.height // SUPERSAMPLE
    image = image.reduce(SUPERSAMPLE)
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
