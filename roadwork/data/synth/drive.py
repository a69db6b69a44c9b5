"""Drives: one planned scene seen in several consecutive dashcam frames.

Real datasets hold runs of near-identical frames from one drive; a split that puts some of them in
training and others in validation measures memory, not generalisation. A drive reuses one plan
(place, light, road, work zone, label) and moves the scene toward the camera frame by frame:
standing things come closer, traffic in our direction keeps its distance, the camera sways a little
and each frame gets its own sensor noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from roadwork.data.synth.canvas import Camera
from roadwork.data.synth.metadata import describe
from roadwork.data.synth.objects import draw_vehicle
from roadwork.data.synth.plan import Item, Plan, hides
from roadwork.data.synth.scenes import plan_scene

STEP_METRES = (2.0, 4.0)
# Keyword arguments of planned drawers that are depths ahead of the camera (floats, or tuples holding them).
_DEPTH_KEYWORDS = frozenset({"z", "z0", "z1", "zs", "crossing", "phase", "fields"})
_LANE_HALF_WIDTH = 1.45  # half the widest vehicle, with a margin: kerbside poles and bins stay clear
_STOPPING_GAP = 6.0  # from the camera, or a vehicle's rear, to anything standing ahead in its lane
_PASSED = 1.0  # metres: an item whose far end is nearer than this has gone past the camera
_METRES_PER_DEGREE = 111_000.0


@dataclass(frozen=True)
class Drive:
    """Everything a drive shares; each frame adds only its sway and noise."""

    plan: Plan
    description: str
    step: float  # metres driven between frames
    sway: float  # 1, or 0 where swaying could push a work zone at the image edge out of view
    heading: float  # radians clockwise from north, for the GPS track


def plan_drive(rng: np.random.Generator, width: int, height: int, positive: bool, frames: int) -> Drive:
    """Plan the scene once and how far to drive: a few metres a frame, but never into something in the
    lane, and on positives only while some work-zone object stays well in view and unhidden."""
    plan = plan_scene(rng, width, height, positive)
    description = describe(rng, plan)
    step, heading = float(rng.uniform(*STEP_METRES)), float(rng.uniform(0.0, 2.0 * math.pi))
    step = min(step, max(_free_run(plan), 0.0) / max(frames - 1, 1))
    while positive and step > 0.0 and not all(_shows_work_zone(plan, f * step) for f in range(1, frames)):
        step = step - 0.5 if step > 0.5 else 0.0
    sway = 1.0 if not positive or _shows_work_zone(plan, 0.0) else 0.0
    return Drive(plan, description, step, sway, heading)


def frame_plan(drive: Drive, frame: int, rng: np.random.Generator) -> Plan:
    """The plan as seen ``frame`` steps down the road; ``rng`` draws only what differs between frames."""
    plan, travel, sway = drive.plan, frame * drive.step, drive.sway
    camera = plan.camera
    swayed = replace(camera, centre_x=camera.centre_x + sway * camera.width * float(rng.normal(0.0, 0.008)),
                     horizon=camera.horizon + sway * camera.height * float(rng.normal(0.0, 0.005)),
                     eye_u=camera.eye_u + sway * float(rng.normal(0.0, 0.08)))
    items = [_moved(item, travel) for item in plan.items]
    north, east = travel * math.cos(drive.heading), travel * math.sin(drive.heading)
    return replace(
        plan, camera=swayed, post_seed=int(rng.integers(2**63)),
        latitude=plan.latitude + north / _METRES_PER_DEGREE,
        longitude=plan.longitude + east / (_METRES_PER_DEGREE * math.cos(math.radians(plan.latitude))),
        backdrop=[_nearer(draw, travel) if isinstance(draw, partial) else draw for draw in plan.backdrop],
        items=[item for item in items if item.depth > _PASSED])


def _is_vehicle(item: Item) -> bool:
    return item.draw.func is draw_vehicle


def _rides_along(item: Item) -> bool:
    """Vehicles seen from behind drive our way at our speed."""
    return _is_vehicle(item) and bool(item.draw.keywords["rear"])


def _moved(item: Item, metres: float) -> Item:
    if _rides_along(item):
        return item
    foot = None if item.foot is None else (item.foot[0], item.foot[1] - metres)
    return replace(item, depth=item.depth - metres, draw=_nearer(item.draw, metres), foot=foot)


def _nearer(draw: partial, metres: float) -> partial:
    keywords = {name: _minus(value, metres) if name in _DEPTH_KEYWORDS else value
                for name, value in draw.keywords.items()}
    return partial(draw.func, *draw.args, **keywords)


def _minus(value: object, metres: float) -> object:
    if isinstance(value, float):
        return value - metres
    if isinstance(value, tuple):
        return tuple(_minus(v, metres) for v in value)
    return value


def _free_run(plan: Plan) -> float:
    """How far the camera, and the traffic that rides along, can drive before coming too close to
    something standing in its lane."""
    drivers = [(plan.camera.eye_u, 0.0)] + [item.foot for item in plan.items if item.foot and _rides_along(item)]
    standing = [item.foot for item in plan.items
                if item.foot and not _rides_along(item) and item.kind != "gantry"]  # gantries span the road
    return min((z - driver_z - _STOPPING_GAP for driver_u, driver_z in drivers for u, z in standing
                if z > driver_z and abs(u - driver_u) < _LANE_HALF_WIDTH), default=math.inf)


def _shows_work_zone(plan: Plan, travel: float) -> bool:
    """Whether, ``travel`` metres on, some work-zone object stands well in view and no vehicle hides it."""
    vehicles = [(item.foot[0], item.foot[1] if _rides_along(item) else item.foot[1] - travel)
                for item in plan.items if item.foot is not None and _is_vehicle(item)]
    vehicles = [(u, z) for u, z in vehicles if z > _PASSED]
    for item in plan.items:
        if item.roadwork and item.foot is not None:
            foot = (item.foot[0], item.foot[1] - travel)
            if _well_in_view(plan.camera, *foot) and not any(hides(plan.camera, v, foot) for v in vehicles):
                return True
    return False


def _well_in_view(camera: Camera, u: float, z: float) -> bool:
    """Standing on the visible road, clear of the image edges that camera sway could push it over."""
    if z < camera.near_z + 2.0:
        return False
    x, _ = camera.project(u, 0.0, z)
    return 0.1 * camera.width <= x <= 0.9 * camera.width
