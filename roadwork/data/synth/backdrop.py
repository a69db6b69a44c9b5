"""Ground, markings and the far background: what is painted before any object (road, paint, ground haze,
the camera car's headlight pool, sky details, hills, skyline, rails, wires and fields).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from roadwork.data.synth.canvas import PAINT, RGB, Canvas, mix, scaled
from roadwork.data.synth.plan import Road

_FAR_Z = 450.0


def _depths(near: float, far: float, count: int) -> list[float]:
    return [near * (far / near) ** (i / (count - 1)) for i in range(count)]


def _strip(canvas: Canvas, u0: float, u1: float, rgb: RGB, near: float = 0.0, far: float = _FAR_Z) -> None:
    near = max(near, canvas.camera.near_z * 0.9)
    if far <= near:
        return
    zs = _depths(near, far, 20)
    canvas.ground_polygon([(u0, z) for z in zs] + [(u1, z) for z in reversed(zs)], rgb)


def _dashes(canvas: Canvas, u: float, dash: float, gap: float, phase: float, rgb: RGB) -> None:
    z = canvas.camera.near_z * 0.9 + phase
    while z < 140.0:
        _strip(canvas, u - 0.07, u + 0.07, rgb, z, z + dash)
        z += dash + gap


def draw_ground(canvas: Canvas, *, road: Road, asphalt: RGB, verge: RGB, sidewalk: float,
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
        _strip(canvas, -0.25, 0.0, scaled(pavement, 1.15))
        _strip(canvas, road.width, road.width + 0.25, scaled(pavement, 1.15))
    _strip(canvas, 0.0, road.width, asphalt)
    paint = scaled(PAINT, 0.92)
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


def fog_ground(canvas: Canvas) -> None:
    """Haze the ground row by row: each row of a flat road lies at one known depth."""
    camera, light = canvas.camera, canvas.light
    top = int(math.ceil(camera.horizon))
    rows = np.arange(top, camera.height, dtype=np.float64) + 0.5
    depth = camera.focal * camera.eye_height / (rows - camera.horizon)
    alpha = ((1.0 - np.exp(-depth / light.visibility)) * 255.0).astype(np.uint8)
    mask = Image.fromarray(alpha[:, None], "L").resize((camera.width, len(rows)), Image.Resampling.NEAREST)
    canvas.image.paste(light.fog, (0, top, camera.width, camera.height), mask)


def draw_headlight_beam(canvas: Canvas) -> None:
    """The camera car's own headlights: nested pools on the road, brightest close in."""
    eye, near = canvas.camera.eye_u, canvas.camera.near_z
    for reach, rgb in ((40.0, (26, 25, 21)), (22.0, (30, 29, 24)), (12.0, (34, 33, 27))):
        spread = 0.1 * reach + 1.0
        canvas.glow_ground(((eye - 1.5, near), (eye + 1.5, near), (eye + spread, reach), (eye - spread, reach)), rgb)


def draw_sky_details(canvas: Canvas, *, sky: tuple[RGB, RGB], daytime: str, weather: str,
                     clouds: tuple[tuple[float, float, float, float], ...], sun_x: float) -> None:
    camera = canvas.camera
    w, horizon = camera.width, camera.horizon
    if weather == "clear" and daytime in ("dawn", "dusk"):
        x, y, r = sun_x * w, horizon - 0.08 * horizon, 0.025 * w
        canvas.draw.ellipse((x - r, y - r, x + r, y + r), fill=(255, 225, 170))
        canvas.glow_oval(x, y, 8 * r, 4 * r, (200, 110, 40))
    for cx, cy, size, shade in clouds:
        base = scaled(mix(sky[0], sky[1], cy), shade)
        x, y, r = cx * w, cy * horizon, size * w
        canvas.draw.ellipse((x - r, y - 0.35 * r, x + r, y + 0.35 * r), fill=base)
        canvas.draw.ellipse((x - 0.5 * r, y - 0.55 * r, x + 0.6 * r, y + 0.2 * r), fill=scaled(base, 1.04))


def draw_hills(canvas: Canvas, *, heights: tuple[float, ...], colour: RGB) -> None:
    camera = canvas.camera
    step = camera.width / (len(heights) - 1)
    scale = camera.focal / 1500.0
    outline = [(i * step, camera.horizon - h * scale) for i, h in enumerate(heights)]
    canvas.draw.polygon(outline + [(camera.width, camera.horizon + 1), (0, camera.horizon + 1)],
                        fill=canvas.light.shade(colour, 1500.0))


def draw_skyline(canvas: Canvas, *, towers: tuple[tuple[float, float, float], ...], colour: RGB) -> None:
    camera = canvas.camera
    scale = camera.focal / 700.0
    fill = canvas.light.shade(colour, 700.0)
    for x, width, height in towers:
        left = x * camera.width
        canvas.draw.rectangle((left, camera.horizon - height * scale, left + width * scale, camera.horizon + 1),
                              fill=fill)


def draw_guardrail(canvas: Canvas, *, u: float, phase: float) -> None:
    """``phase`` shifts the posts, 4 m apart, toward the camera as a drive goes on."""
    zs = _depths(canvas.camera.near_z * 0.8, 250.0, 18)
    for za, zb in zip(zs, zs[1:], strict=False):
        canvas.world_polygon(((u, 0.8, za), (u, 0.8, zb), (u, 0.5, zb), (u, 0.5, za)), (170, 172, 175), za)
    z = 4.0 + phase % 4.0
    while z < 80.0:
        x, y = canvas.camera.project(u, 0.0, z)
        _, top = canvas.camera.project(u, 0.5, z)
        canvas.draw.line(((x, y), (x, top)), fill=canvas.light.shade((90, 90, 92), z),
                         width=max(1, round(0.12 * canvas.camera.focal / z)))
        z += 4.0


def draw_median(canvas: Canvas, *, u: float) -> None:
    zs = _depths(canvas.camera.near_z * 0.8, 300.0, 18)
    for za, zb in zip(zs, zs[1:], strict=False):
        canvas.world_polygon(((u + 0.3, 0.0, za), (u + 0.3, 0.0, zb), (u + 0.1, 0.85, zb), (u + 0.1, 0.85, za)),
                             (175, 173, 165), za)


def draw_wires(canvas: Canvas, *, u: float, zs: tuple[float, ...]) -> None:
    for offset in (-1.0, 1.0):
        points = [canvas.camera.project(u + offset, 7.9, z) for z in zs]
        canvas.draw.line(points, fill=canvas.light.shade((30, 30, 30), 30.0), width=1)


def draw_fields(canvas: Canvas, *, road: Road, fields: tuple[tuple[float, RGB], ...]) -> None:
    right, left = road.width + road.right_margin, -road.left_margin
    for index, (offset, colour) in enumerate(fields):
        if index % 2:
            _strip(canvas, right, right + 300.0, colour, near=offset)
        else:
            _strip(canvas, left - 300.0, left, colour, near=offset)
    rows = scaled(fields[0][1], 0.8)
    for lateral in range(4, 60, 4):
        for u in (right + lateral, left - lateral):
            zs = _depths(max(canvas.camera.near_z, 3.0), 300.0, 8)
            canvas.draw.line([canvas.camera.project(u, 0.0, z) for z in zs], fill=canvas.light.surface(rows), width=1)
