"""Object drawers: each paints one object and returns its screen box (render pixels)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roadwork.data.synth.canvas import RGB, Billboard, Box, Canvas, Point, scaled, union

_SHADOW = (18, 18, 20)
_TYRE = (24, 24, 26)
_GLASS = (48, 58, 72)
REFLECTIVE = (245, 245, 240)
_POLE = (95, 98, 100)
_AMBER = (255, 165, 25)


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


def draw_cone(canvas: Canvas, *, u: float, z: float, height: float, colour: RGB, bands: int) -> Box:
    b = canvas.billboard(u, z)
    k = height / 0.7
    top, base_half, top_half, foot = height, 0.15 * k, 0.025 * k, 0.045 * k

    def half_width(y: float) -> float:
        return base_half + (top_half - base_half) * (y - foot) / (top - foot)

    b.rect(-0.21 * k, 0.0, 0.21 * k, foot, _TYRE)
    b.polygon(((-base_half, foot), (base_half, foot), (top_half, top), (-top_half, top)), colour)
    shadow_side = ((0.35 * base_half, foot), (base_half, foot), (top_half, top), (0.3 * top_half, top))
    b.polygon(shadow_side, scaled(colour, 0.78))
    for lower, upper in ((0.55, 0.72), (0.3, 0.43))[:bands]:
        y0, y1 = foot + lower * (top - foot), foot + upper * (top - foot)
        w0, w1 = half_width(y0), half_width(y1)
        b.polygon(((-w0, y0), (w0, y0), (w1, y1), (-w1, y1)), REFLECTIVE, reflective=True)
    return b.box


def draw_drum(canvas: Canvas, *, u: float, z: float, colour: RGB) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.31, 0.0, 0.31, 0.08, _TYRE)
    b.rect(-0.27, 0.08, 0.27, 0.95, colour)
    b.rect(0.1, 0.08, 0.27, 0.95, scaled(colour, 0.8))
    b.oval(0.0, 0.95, 0.27, 0.045, scaled(colour, 0.9))
    for y0, y1 in ((0.62, 0.73), (0.36, 0.47)):
        b.rect(-0.27, y0, 0.27, y1, REFLECTIVE, reflective=True)
    return b.box


def _striped_board(b: Billboard, x0: float, x1: float, y0: float, y1: float, colours: tuple[RGB, RGB],
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


def draw_barrier(canvas: Canvas, *, u: float, z: float, width: float, colours: tuple[RGB, RGB],
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


def draw_warning_sign(canvas: Canvas, *, u: float, z: float, size: float, post: float, shape: str,
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


def _pictogram_worker(b: Billboard, cy: float, d: float) -> None:
    ink = _TYRE
    b.oval(-0.2 * d, cy + 0.42 * d, 0.11 * d, 0.11 * d, ink)
    b.polygon(((-0.34 * d, cy + 0.26 * d), (-0.14 * d, cy + 0.3 * d), (0.08 * d, cy - 0.18 * d),
               (-0.1 * d, cy - 0.24 * d)), ink)
    b.polygon(((-0.1 * d, cy - 0.24 * d), (0.06 * d, cy - 0.18 * d), (0.22 * d, cy - 0.62 * d),
               (0.06 * d, cy - 0.62 * d)), ink)
    b.stroke(((-0.1 * d, cy + 0.12 * d), (0.42 * d, cy - 0.45 * d)), 0.05 * d, ink)
    b.polygon(((0.25 * d, cy - 0.62 * d), (0.7 * d, cy - 0.62 * d), (0.48 * d, cy - 0.34 * d)), ink)


def _pictogram_curve(b: Billboard, cy: float, d: float) -> None:
    b.stroke(((-0.1 * d, cy - 0.6 * d), (-0.1 * d, cy), (0.2 * d, cy + 0.3 * d)), 0.14 * d, _TYRE)
    b.polygon(((0.05 * d, cy + 0.5 * d), (0.45 * d, cy + 0.55 * d), (0.38 * d, cy + 0.14 * d)), _TYRE)


def _pictogram_crossing(b: Billboard, cy: float, d: float) -> None:
    b.oval(0.0, cy + 0.45 * d, 0.11 * d, 0.11 * d, _TYRE)
    b.polygon(((-0.14 * d, cy + 0.3 * d), (0.14 * d, cy + 0.3 * d), (0.1 * d, cy - 0.15 * d),
               (-0.1 * d, cy - 0.15 * d)), _TYRE)
    b.stroke(((-0.05 * d, cy - 0.15 * d), (-0.3 * d, cy - 0.6 * d)), 0.09 * d, _TYRE)
    b.stroke(((0.05 * d, cy - 0.15 * d), (0.3 * d, cy - 0.6 * d)), 0.09 * d, _TYRE)


_PICTOGRAMS: dict[str, Callable[[Billboard, float, float], None]] = {
    "worker": _pictogram_worker,
    "curve": _pictogram_curve,
    "crossing": _pictogram_crossing,
}


@dataclass(frozen=True)
class Outfit:
    shirt: RGB
    trousers: RGB
    skin: RGB
    hair: RGB
    hard_hat: RGB | None = None
    vest: RGB | None = None
    paddle: bool = False


def draw_person(canvas: Canvas, *, u: float, z: float, height: float, outfit: Outfit, stride: float,
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
            b.rect(-0.195 * k, y0 * k, 0.195 * k, (y0 + 0.045) * k, REFLECTIVE, reflective=True)
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


def draw_excavator(canvas: Canvas, *, u: float, z: float, body: RGB, mirror: bool, lift: float) -> Box:
    b = canvas.billboard(u, z, mirror)
    b.oval(0.0, 0.0, 2.3, 0.2, _SHADOW)
    b.rect(-1.9, 0.0, 1.9, 0.85, _TYRE)
    for end in (-1.9, 1.9):
        b.oval(end, 0.425, 0.425, 0.425, _TYRE)
    for x in (-1.3, 0.0, 1.3):
        b.oval(x, 0.42, 0.22, 0.22, (80, 80, 82))
    b.rect(-1.55, 0.88, 1.35, 2.0, body)
    b.rect(-1.75, 0.95, -1.45, 1.9, scaled(body, 0.7))
    b.rect(0.2, 2.0, 1.3, 3.35, body)
    b.rect(0.32, 2.15, 1.18, 3.2, _GLASS)
    elbow, tip = (2.7, 3.1 + lift), (3.7, 1.0 + 0.5 * lift)
    b.stroke(((1.1, 1.75), elbow, tip), 0.34, body)
    b.polygon(((tip[0] - 0.3, tip[1] + 0.2), (tip[0] + 0.35, tip[1] + 0.1), (tip[0] + 0.2, tip[1] - 0.55),
               (tip[0] - 0.3, tip[1] - 0.4)), (60, 60, 60))
    b.lamp(0.75, 3.45, 0.09, _AMBER, canvas.light.lights_on)
    return b.box


def draw_jersey_barrier(canvas: Canvas, *, u: float, z0: float, z1: float, colour: RGB) -> Box:
    side = 1.0 if u > canvas.camera.eye_u else -1.0
    face, top = u - side * 0.3, u - side * 0.1
    mid = (z0 + z1) / 2
    box = canvas.world_polygon(((face, 0.0, z0), (face, 0.0, z1), (top, 0.8, z1), (top, 0.8, z0)), colour, mid)
    box = union(box, canvas.world_polygon(((top, 0.8, z0), (top, 0.8, z1), (u + side * 0.1, 0.8, z1),
                                             (u + side * 0.1, 0.8, z0)), scaled(colour, 1.1), mid))
    if z0 < 1.0:  # a drive is passing it: its end face is beside or behind the camera
        return box
    b = canvas.billboard(u, z0)
    b.polygon(((-0.3, 0.0), (0.3, 0.0), (0.1, 0.8), (-0.1, 0.8)), scaled(colour, 0.82))
    return union(box, b.box)


_VEHICLE_SIZES = {"sedan": (1.8, 1.45), "suv": (1.9, 1.75), "van": (2.0, 2.3), "truck": (2.5, 3.4),
                  "bus": (2.55, 3.1), "school_bus": (2.45, 3.0)}


def draw_vehicle(canvas: Canvas, *, u: float, z: float, body: RGB, model: str, rear: bool) -> Box:
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


def draw_bin(canvas: Canvas, *, u: float, z: float, colour: RGB) -> Box:
    b = canvas.billboard(u, z)
    b.oval(-0.2, 0.04, 0.06, 0.06, _TYRE)
    b.oval(0.2, 0.04, 0.06, 0.06, _TYRE)
    b.polygon(((-0.29, 0.06), (0.29, 0.06), (0.33, 1.0), (-0.33, 1.0)), colour)
    b.rect(-0.36, 1.0, 0.36, 1.08, scaled(colour, 0.75))
    return b.box


def draw_tree(canvas: Canvas, *, u: float, z: float, trunk: float,
              crown: tuple[tuple[float, float, float, RGB], ...], conifer: bool) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.14, 0.0, 0.14, trunk + 0.4, (80, 58, 40))
    if conifer:
        for _, dy, r, colour in crown:
            b.polygon(((-r, trunk + dy), (r, trunk + dy), (0.0, trunk + dy + 2.2 * r)), colour)
    else:
        for dx, dy, r, colour in crown:
            b.oval(dx, trunk + dy, r, r * 0.85, colour)
    return b.box


def draw_street_lamp(canvas: Canvas, *, u: float, z: float, reach: float, height: float) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.07, 0.0, 0.07, height, _POLE)
    b.stroke(((0.0, height), (reach, height + 0.2)), 0.08, _POLE)
    b.rect(reach - 0.35, height + 0.05, reach + 0.35, height + 0.28, _POLE)
    b.lamp(reach, height, 0.2, (255, 215, 150), canvas.light.lights_on and canvas.light.glow > 0.5, glow=4.0)
    if canvas.light.lights_on and canvas.light.glow > 0.5:
        cx, cy = canvas.camera.project(u + reach, 0.0, z)
        canvas.glow_oval(cx, cy, 5.0 * b.scale, 1.2 * b.scale, (60, 50, 34))
    return b.box


def draw_traffic_light(canvas: Canvas, *, u: float, z: float, reach: float, state: int) -> Box:
    b = canvas.billboard(u, z)
    top = 5.6
    b.rect(-0.08, 0.0, 0.08, top, _POLE)
    b.stroke(((0.0, top), (reach, top)), 0.12, _POLE)
    for x, y in ((reach, top - 0.15), (0.0, 3.2)):
        b.rect(x - 0.2, y - 1.05, x + 0.2, y, (30, 32, 30))
        for slot, colour in enumerate(((235, 30, 20), _AMBER, (40, 220, 110))):
            b.lamp(x, y - 0.2 - 0.32 * slot, 0.11, colour, slot == state, glow=5.0)
    return b.box


def draw_building(canvas: Canvas, *, u: float, side: float, z0: float, z1: float, height: float,
                  wall: RGB, storey: float, columns: int, shop: bool, lit: tuple[tuple[int, int], ...]) -> Box:
    back = u + side * 14.0
    box = canvas.world_polygon(((u, 0.0, z0), (back, 0.0, z0), (back, height, z0), (u, height, z0)),
                               scaled(wall, 0.8), z0)
    mid = (z0 + z1) / 2
    box = union(box, canvas.world_polygon(((u, 0.0, z0), (u, 0.0, z1), (u, height, z1), (u, height, z0)), wall, mid))
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


def draw_house(canvas: Canvas, *, u: float, side: float, z0: float, z1: float, wall_height: float,
               depth: float, wall: RGB, roof: RGB, lit: bool) -> Box:
    ridge_u, back = u + side * depth / 2, u + side * depth
    ridge_y = wall_height + depth * 0.35
    mid = (z0 + z1) / 2
    box = canvas.world_polygon(((u, 0.0, z0), (back, 0.0, z0), (back, wall_height, z0), (ridge_u, ridge_y, z0),
                                (u, wall_height, z0)), scaled(wall, 0.85), z0)
    box = union(box, canvas.world_polygon(((u, 0.0, z0), (u, 0.0, z1), (u, wall_height, z1),
                                             (u, wall_height, z0)), wall, mid))
    box = union(box, canvas.world_polygon(((u - side * 0.4, wall_height - 0.2, z0 - 0.3),
                                             (u - side * 0.4, wall_height - 0.2, z1 + 0.3),
                                             (ridge_u, ridge_y, z1 + 0.3), (ridge_u, ridge_y, z0 - 0.3)), roof, mid))
    length = z1 - z0
    door = z0 + length * 0.45
    canvas.world_polygon(((u, 0.0, door), (u, 0.0, door + 1.0), (u, 2.1, door + 1.0), (u, 2.1, door)),
                         scaled(wall, 0.45), door)
    for za in (z0 + length * 0.15, z0 + length * 0.7):
        window = [(u, 1.0, za), (u, 1.0, za + 1.4), (u, 2.2, za + 1.4), (u, 2.2, za)]
        if lit:
            xy = [canvas.camera.project(*p) for p in window]
            canvas.draw.polygon(xy, fill=canvas.light.emit((230, 185, 110), za))
        else:
            canvas.world_polygon(window, _GLASS, za)
    return box


def draw_awning(canvas: Canvas, *, u: float, side: float, z0: float, z1: float, colours: tuple[RGB, RGB]) -> Box:
    outer = u - side * 1.4
    stripe = 0.6
    box: Box = (math.inf, math.inf, -math.inf, -math.inf)
    za, index = z0, 0
    while za < z1:
        zb = min(za + stripe, z1)
        colour = colours[index % 2]
        box = union(box, canvas.world_polygon(((u, 3.1, za), (u, 3.1, zb), (outer, 2.5, zb), (outer, 2.5, za)),
                                              colour, za))
        canvas.world_polygon(((outer, 2.5, za), (outer, 2.5, zb), (outer, 2.2, zb), (outer, 2.2, za)),
                             scaled(colour, 0.85), za)
        za, index = zb, index + 1
    return box


def draw_gantry(canvas: Canvas, *, u: float, z: float, span: float, signs: tuple[float, ...]) -> Box:
    b = canvas.billboard(u, z)
    half = span / 2
    for x in (-half, half):
        b.rect(x - 0.15, 0.0, x + 0.15, 6.6, _POLE)
    b.rect(-half, 6.2, half, 6.5, _POLE)
    for x in signs:
        b.rect(x - 1.6, 5.2, x + 1.6, 7.4, (235, 235, 235))
        b.rect(x - 1.5, 5.3, x + 1.5, 7.3, (20, 100, 55), reflective=True)
    return b.box


def draw_utility_pole(canvas: Canvas, *, u: float, z: float) -> Box:
    b = canvas.billboard(u, z)
    b.rect(-0.12, 0.0, 0.12, 8.5, (92, 70, 50))
    b.rect(-1.1, 7.8, 1.1, 7.95, (92, 70, 50))
    return b.box
