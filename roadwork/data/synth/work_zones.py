"""The work zone (positives only): cones, drums, barriers, signs, workers and machinery in one of four layouts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from roadwork.data.synth.canvas import PAINT, Camera
from roadwork.data.synth.objects import (
    REFLECTIVE,
    draw_barrier,
    draw_cone,
    draw_drum,
    draw_excavator,
    draw_jersey_barrier,
    draw_person,
    draw_warning_sign,
)
from roadwork.data.synth.plan import Item, Plan, choose, pick
from roadwork.data.synth.scenery import CLOTHES, random_outfit

_SAFETY_ORANGES = ((255, 98, 0), (250, 118, 18), (238, 84, 10))
_HIVIS = ((208, 250, 40), (255, 112, 22))


def _add_cone_or_drum(rng: np.random.Generator, plan: Plan, u: float, z: float, drums: bool, size: float) -> None:
    colour = pick(rng, _SAFETY_ORANGES)
    if drums:
        plan.add("drum", z, draw_drum, u=u, z=z, colour=colour)
    else:
        plan.add("cone", z, draw_cone, u=u, z=z, height=size, colour=colour,
                 bands=int(rng.integers(1, 3)))


def _add_work_sign(rng: np.random.Generator, plan: Plan, u: float, z: float) -> None:
    diamond = rng.random() < 0.7
    plan.add("work_sign", z, draw_warning_sign, u=u, z=z, size=float(rng.uniform(0.45, 0.7)),
             post=float(rng.uniform(1.2, 2.0)), shape="diamond" if diamond else "triangle",
             face=pick(rng, _SAFETY_ORANGES) if diamond else PAINT, pictogram="worker")


def _add_workers(rng: np.random.Generator, plan: Plan, u_range: tuple[float, float], z_range: tuple[float, float],
                 count: int) -> None:
    for _ in range(count):
        z = float(rng.uniform(*z_range))
        outfit = replace(random_outfit(rng), shirt=pick(rng, CLOTHES[:6]), vest=pick(rng, _HIVIS),
                         hard_hat=pick(rng, ((250, 250, 245), (250, 200, 20), (245, 110, 20))),
                         paddle=bool(rng.random() < 0.15))
        plan.add("worker", z, draw_person, u=float(rng.uniform(*u_range)), z=z,
                 height=float(rng.uniform(1.6, 1.9)), outfit=outfit, stride=float(rng.uniform(-0.06, 0.06)),
                 mirror=bool(rng.random() < 0.5))


def _add_excavator(rng: np.random.Generator, plan: Plan, u: float, z: float) -> None:
    plan.add("excavator", z, draw_excavator, u=u, z=z,
             body=pick(rng, ((240, 178, 20), (235, 120, 20), (225, 200, 40))), mirror=bool(rng.random() < 0.5),
             lift=float(rng.uniform(-0.6, 0.8)))


def _add_barrier(rng: np.random.Generator, plan: Plan, u: float, z: float, width: float) -> None:
    colours = pick(rng, (((215, 30, 30), REFLECTIVE), (_SAFETY_ORANGES[0], REFLECTIVE)))
    boards = ((0.75, 1.0),) if rng.random() < 0.6 else ((0.3, 0.5), (0.8, 1.0))
    plan.add("barrier", z, draw_barrier, u=u, z=z, width=width, colours=colours, boards=boards,
             slant=float(pick(rng, (-1.0, 1.0))), lamp=bool(rng.random() < 0.5))


def _add_jersey_run(rng: np.random.Generator, plan: Plan, u: float, z0: float, z1: float) -> None:
    plastic = rng.random() < 0.5
    z, index = z0, 0
    while z < z1:
        colour = ((_SAFETY_ORANGES[0] if index % 2 == 0 else PAINT) if plastic else (178, 176, 168))
        plan.add("jersey_barrier", z + 2.0, draw_jersey_barrier, u=u, z0=z, z1=z + 1.9, colour=colour)
        z += 2.0
        index += 1


def _work_depth(rng: np.random.Generator, plan: Plan, nearest: float, farthest: float) -> float:
    """Where a work zone starts: anywhere up to ``farthest``, but more often near enough to see well."""
    nearest = max(nearest, plan.camera.near_z + 3.0)
    farthest = max(min(farthest, 0.9 * plan.light.visibility), nearest + 5.0)
    return nearest + (farthest - nearest) * float(rng.random()) ** 1.6


def _work_lane_closure(rng: np.random.Generator, plan: Plan) -> str:
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
    return pick(rng, phrases)


def _roadside(rng: np.random.Generator, plan: Plan) -> tuple[float, float, float, str]:
    """A strip beside the carriageway to work on: (inner u, outer u, direction, side name)."""
    road = plan.road
    if rng.random() < 0.7 or road.oncoming == 0:
        return road.width + 0.4, road.width + max(road.right_margin - 0.4, 0.8), 1.0, "right"
    return -0.4, -max(road.left_margin - 0.4, 0.8), -1.0, "left"


def _work_roadside(rng: np.random.Generator, plan: Plan) -> str:
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
    return pick(rng, (f"road work on the {side} {where}", f"construction on the {where}", crowd))


def _work_distant(rng: np.random.Generator, plan: Plan) -> str:
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
    return pick(rng, ("a few cones far ahead", "a work zone in the distance", "road work far down the road"))


def _work_machinery(rng: np.random.Generator, plan: Plan) -> str:
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
        return pick(rng, (f"an excavator parked on the {side}", "construction equipment beside the road",
                          "heavy machinery at a work site"))
    return pick(rng, (f"barriers along the {side} side", "temporary barriers beside the road"))


_WORK_ZONES: dict[str, tuple[Callable[[np.random.Generator, Plan], str], float, float]] = {
    # name: (planner, weight, chance that the description mentions it)
    "lane_closure": (_work_lane_closure, 0.35, 0.85),
    "roadside": (_work_roadside, 0.3, 0.85),
    "distant": (_work_distant, 0.22, 0.35),
    "machinery": (_work_machinery, 0.13, 0.85),
}


def plan_work_zone(rng: np.random.Generator, plan: Plan) -> None:
    names = list(_WORK_ZONES)
    name = choose(rng, names, [_WORK_ZONES[n][1] for n in names])
    planner, _, mention = _WORK_ZONES[name]
    phrase = planner(rng, plan)
    if not any(item.roadwork and _in_view(plan.camera, item) for item in plan.items):
        z = float(rng.uniform(15.0, 40.0))
        _add_cone_or_drum(rng, plan, plan.road.width - 0.3, z, False, float(rng.uniform(0.5, 0.8)))
    if rng.random() < mention:
        plan.work_phrase = phrase


def _in_view(camera: Camera, item: Item) -> bool:
    if item.foot is None or item.foot[1] < camera.near_z:
        return False
    x, _ = camera.project(item.foot[0], 0.0, item.foot[1])
    return 0.0 <= x <= camera.width
