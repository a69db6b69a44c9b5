"""Scenery per scene type, and the trees, people, bins and vehicles that scenery, traffic and look-alikes place."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from roadwork.data.synth.backdrop import draw_fields, draw_guardrail, draw_median, draw_skyline, draw_wires
from roadwork.data.synth.canvas import PAINT, RGB, scaled
from roadwork.data.synth.objects import (
    Outfit,
    draw_awning,
    draw_bin,
    draw_building,
    draw_gantry,
    draw_house,
    draw_person,
    draw_street_lamp,
    draw_tree,
    draw_utility_pole,
    draw_vehicle,
)
from roadwork.data.synth.plan import Plan, choose, pick

_SKIN = ((235, 195, 160), (200, 150, 110), (150, 100, 70), (95, 65, 45))
_HAIR = ((30, 25, 20), (90, 60, 30), (200, 170, 110), (120, 120, 120))
CLOTHES = ((40, 45, 60), (200, 200, 205), (120, 30, 35), (60, 90, 140), (30, 30, 32), (150, 140, 110),
           (90, 110, 80), (170, 120, 150))
_CAR_COLOURS = ((235, 235, 235), (28, 28, 30), (168, 170, 174), (108, 110, 114), (30, 45, 92),
                (165, 24, 24), (40, 80, 160), (32, 70, 52), (200, 186, 150))
_FOLIAGE = ((58, 100, 40), (75, 120, 45), (40, 80, 35), (95, 125, 50))
_AUTUMN_FOLIAGE = ((215, 110, 25), (225, 160, 35), (180, 70, 25))
_WALLS = ((170, 168, 160), (150, 72, 52), (205, 185, 145), (95, 112, 130), (220, 218, 210), (120, 110, 100))
_HOUSE_WALLS = ((225, 215, 195), (180, 200, 212), (200, 172, 150), (160, 80, 60), (235, 235, 228))
_ROOFS = ((70, 70, 75), (110, 70, 50), (178, 82, 50), (60, 60, 90))


def _plan_side_buildings(rng: np.random.Generator, plan: Plan, u: float, side: float) -> None:
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
        plan.add("building", z + length, draw_building, u=u, side=side, z0=z, z1=z + length, height=height,
                 wall=scaled(pick(rng, _WALLS), rng.uniform(0.85, 1.1)), storey=storey, columns=columns,
                 shop=shop, lit=lit)
        if shop and rng.random() < 0.25:
            colours = pick(rng, (((200, 30, 35), PAINT), ((40, 90, 60), PAINT), ((40, 60, 120), (40, 60, 120))))
            plan.add("awning", z + length - 1.0, draw_awning, u=u, side=side, z0=z + 1.0, z1=z + length - 1.0,
                     colours=colours)
        z += length


def _plan_urban(rng: np.random.Generator, plan: Plan) -> None:
    road = plan.road
    for u, side in ((-road.left_margin, -1.0), (road.width + road.right_margin, 1.0)):
        _plan_side_buildings(rng, plan, u, side)
    towers = tuple((float(rng.uniform(-0.05, 1.0)), float(rng.uniform(15, 60)), float(rng.uniform(20, 120)))
                   for _ in range(int(rng.integers(6, 16))))
    plan.backdrop.append(partial(draw_skyline, towers=towers, colour=pick(rng, ((120, 125, 135), (140, 135, 130)))))
    _plan_street_furniture(rng, plan, lamps=True)
    plan_pedestrians(rng, plan, int(rng.integers(0, 9)))
    if rng.random() < 0.35:
        plan_trees(rng, plan, (-0.8, road.width + 0.8), int(rng.integers(2, 6)), (6.0, 60.0))


def _plan_residential(rng: np.random.Generator, plan: Plan) -> None:
    road = plan.road
    for side_u, side in ((-road.left_margin - 2.0, -1.0), (road.width + road.right_margin + 2.0, 1.0)):
        z = float(rng.uniform(0.0, 10.0))
        while z < 140.0:
            length = float(rng.uniform(8.0, 14.0))
            setback = float(rng.uniform(2.0, 9.0))
            plan.add("house", z + length, draw_house, u=side_u + side * setback, side=side, z0=z, z1=z + length,
                     wall_height=float(rng.uniform(2.8, 6.0)), depth=float(rng.uniform(7.0, 11.0)),
                     wall=pick(rng, _HOUSE_WALLS), roof=pick(rng, _ROOFS),
                     lit=plan.light.glow > 0.5 and rng.random() < 0.6)
            z += length + float(rng.uniform(4.0, 12.0))
    plan_trees(rng, plan, (-road.left_margin + 1.0, road.width + road.right_margin - 1.0),
               int(rng.integers(3, 10)), (5.0, 90.0))
    _plan_street_furniture(rng, plan, lamps=rng.random() < 0.6)
    plan_pedestrians(rng, plan, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            plan_bin(rng, plan, pick(rng, ((40, 90, 50), (60, 62, 66), (40, 60, 120), (30, 30, 32))))


def _plan_highway(rng: np.random.Generator, plan: Plan) -> None:
    road = plan.road
    plan.backdrop.append(partial(draw_guardrail, u=road.width + road.right_margin - 0.2, phase=0.0))
    plan.backdrop.append(partial(draw_median, u=-road.left_margin - 0.2))
    plan_trees(rng, plan, (-road.left_margin - 20.0, road.width + road.right_margin + 8.0),
               int(rng.integers(3, 12)), (15.0, 200.0), spread=15.0)
    if rng.random() < 0.35:
        z = float(rng.uniform(40.0, 150.0))
        signs = tuple(float(x) for x in rng.uniform(-road.width / 3, road.width / 3, int(rng.integers(1, 3))))
        plan.add("gantry", z, draw_gantry, u=road.width / 2, z=z, span=road.width + 4.0, signs=signs)


def _plan_rural(rng: np.random.Generator, plan: Plan) -> None:
    road = plan.road
    if rng.random() < 0.6:
        u = road.width + road.right_margin + 1.0 if rng.random() < 0.5 else -road.left_margin - 1.0
        zs = tuple(float(z) for z in np.arange(rng.uniform(5.0, 20.0), 300.0, 35.0))
        plan.backdrop.append(partial(draw_wires, u=u, zs=zs))
        for z in zs:
            plan.add("utility_pole", z, draw_utility_pole, u=u, z=z)
    plan.backdrop.insert(2, partial(draw_fields, road=road, fields=tuple(
        (float(rng.uniform(0.0, 40.0)), pick(rng, ((120, 140, 60), (170, 160, 80), (110, 90, 60), (90, 130, 55))))
        for _ in range(4))))
    plan_trees(rng, plan, (-road.left_margin - 6.0, road.width + road.right_margin + 6.0),
               int(rng.integers(2, 10)), (8.0, 200.0), spread=12.0)
    if rng.random() < 0.4:
        z = float(rng.uniform(40.0, 120.0))
        side = 1.0 if rng.random() < 0.5 else -1.0
        u = road.width + 25.0 if side > 0 else -25.0
        plan.add("house", z + 15.0, draw_house, u=u, side=side, z0=z, z1=z + 15.0, wall_height=5.0, depth=10.0,
                 wall=(150, 40, 35), roof=(70, 70, 75), lit=False)


SCENERY: dict[str, Callable[[np.random.Generator, Plan], None]] = {
    "urban": _plan_urban,
    "residential": _plan_residential,
    "highway": _plan_highway,
    "rural": _plan_rural,
}


def plan_trees(rng: np.random.Generator, plan: Plan, sides: tuple[float, float], count: int,
               depth_range: tuple[float, float], spread: float = 0.0, autumn: bool = False) -> None:
    for _ in range(count):
        z = float(rng.uniform(*depth_range))
        left = rng.random() < 0.5
        u = (sides[0] - rng.uniform(0, spread)) if left else (sides[1] + rng.uniform(0, spread))
        conifer = plan.scene in ("rural", "highway") and rng.random() < 0.4
        palette = _AUTUMN_FOLIAGE if autumn else _FOLIAGE
        radius = float(rng.uniform(1.2, 2.8))
        crown = tuple((float(rng.uniform(-0.6, 0.6) * radius), float(rng.uniform(0.5, 1.6) * radius),
                       float(radius * rng.uniform(0.6, 1.0)), scaled(pick(rng, palette), rng.uniform(0.85, 1.1)))
                      for _ in range(3))
        kind = "autumn_tree" if autumn else "tree"
        plan.add(kind, z, draw_tree, u=float(u), z=z, trunk=float(rng.uniform(1.5, 3.0)), crown=crown,
                 conifer=conifer and not autumn)


def _plan_street_furniture(rng: np.random.Generator, plan: Plan, lamps: bool) -> None:
    road = plan.road
    if lamps:
        z = float(rng.uniform(5.0, 25.0))
        spacing = float(rng.uniform(25.0, 40.0))
        while z < 200.0:
            plan.add("street_lamp", z, draw_street_lamp, u=road.width + 0.6, z=z, reach=-1.8,
                     height=float(rng.uniform(7.0, 9.0)))
            z += spacing


def plan_pedestrians(rng: np.random.Generator, plan: Plan, count: int, outfit: Outfit | None = None,
                     kind: str = "pedestrian") -> None:
    road = plan.road
    for _ in range(count):
        z = float(rng.uniform(max(plan.camera.near_z + 1.0, 5.0), 70.0))
        if rng.random() < 0.5:
            u = -rng.uniform(0.6, max(0.8, road.left_margin - 0.5))
        else:
            u = road.width + rng.uniform(0.6, max(0.8, road.right_margin - 0.5))
        plan.add(kind, z, draw_person, u=float(u), z=z, height=float(rng.uniform(1.55, 1.9)),
                 outfit=outfit or random_outfit(rng), stride=float(rng.uniform(-0.08, 0.08)),
                 mirror=bool(rng.random() < 0.5))


def random_outfit(rng: np.random.Generator) -> Outfit:
    return Outfit(shirt=pick(rng, CLOTHES), trousers=pick(rng, CLOTHES[:5]), skin=pick(rng, _SKIN),
                  hair=pick(rng, _HAIR))


def plan_bin(rng: np.random.Generator, plan: Plan, colour: RGB, kind: str = "bin") -> None:
    road = plan.road
    z = float(rng.uniform(max(plan.camera.near_z + 1.0, 5.0), 50.0))
    u = -0.6 if rng.random() < 0.4 else road.width + 0.6
    plan.add(kind, z, draw_bin, u=u, z=z, colour=colour)


def plan_traffic(rng: np.random.Generator, plan: Plan) -> None:
    road = plan.road
    density = {"urban": 1.4, "residential": 0.5, "highway": 1.3, "rural": 0.4}[plan.scene]
    for lane in range(road.lanes):
        z = float(rng.uniform(6.0, 30.0))
        while z < 160.0:
            if rng.random() < density / 2:
                u = road.lane_centre(lane) + float(rng.uniform(-0.3, 0.3))
                spot = next((z + shift for shift in (0.0, 7.0, 14.0) if plan.is_free(u, z + shift)), None)
                if spot is not None:
                    add_vehicle(rng, plan, u, spot, rear=lane >= road.oncoming)
                    z = spot
            z += float(rng.uniform(10.0, 35.0))
    if plan.scene in ("urban", "residential") and rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 5))):
            z = float(rng.uniform(8.0, 90.0))
            left = rng.random() < 0.3
            u = 1.0 if left else road.width - 1.0
            if plan.is_free(u, z):
                add_vehicle(rng, plan, u, z, rear=not left)


def add_vehicle(rng: np.random.Generator, plan: Plan, u: float, z: float, rear: bool,
                body: RGB | None = None, kind: str | None = None, label: str | None = None) -> None:
    """A vehicle of model ``kind`` (drawn at random when None), planned as ``label`` (by default
    ``school_bus`` or ``vehicle``: what its annotation calls it)."""
    if kind is None:
        weights = (0.55, 0.25, 0.1, 0.07, 0.03) if plan.scene != "highway" else (0.45, 0.25, 0.1, 0.17, 0.03)
        kind = choose(rng, ("sedan", "suv", "van", "truck", "bus"), weights)
    if body is None:
        body = scaled(pick(rng, _CAR_COLOURS), rng.uniform(0.85, 1.08))
    label = label or ("school_bus" if kind == "school_bus" else "vehicle")
    plan.add(label, z, draw_vehicle, u=u, z=z, body=body, model=kind, rear=rear)
