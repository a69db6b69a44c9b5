"""Look-alikes: orange cars, school buses, bins, striped awnings, amber lights, warning signs, bright clothes
and autumn trees, planned at the same rate in both classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from roadwork.data.synth.canvas import PAINT
from roadwork.data.synth.metadata import SCENES
from roadwork.data.synth.objects import draw_awning, draw_traffic_light, draw_warning_sign
from roadwork.data.synth.plan import Plan, choose, pick
from roadwork.data.synth.scenery import add_vehicle, plan_bin, plan_pedestrians, plan_trees, random_outfit

# Look-alikes appear at the same rate in both classes: were they commoner in negatives, "school bus"
# would become a shortcut meaning "no roadwork"; the colour-only baseline is already near chance.
LOOKALIKES_PER_SCENE = 1.4

_LOOKALIKE_CAR_COLOURS = ((240, 108, 20), (246, 194, 18), (252, 140, 30))


def _free_lane_spot(rng: np.random.Generator, plan: Plan, near: float, far: float) -> tuple[int, float] | None:
    for _ in range(4):
        lane, z = int(rng.integers(plan.road.lanes)), float(rng.uniform(near, far))
        if plan.is_free(plan.road.lane_centre(lane), z):
            return lane, z
    return None


def _lookalike_orange_vehicle(rng: np.random.Generator, plan: Plan) -> str | None:
    spot = _free_lane_spot(rng, plan, 10.0, 60.0)
    if spot is None:
        return None
    lane, z = spot
    kind = choose(rng, ("sedan", "suv", "van", "truck"), (0.4, 0.2, 0.2, 0.2))
    add_vehicle(rng, plan, plan.road.lane_centre(lane), z, rear=lane >= plan.road.oncoming,
                body=pick(rng, _LOOKALIKE_CAR_COLOURS), kind=kind, label="orange_vehicle")
    return pick(rng, ("an orange car ahead", "a yellow vehicle in traffic", "an orange van on the road"))


def _lookalike_school_bus(rng: np.random.Generator, plan: Plan) -> str | None:
    spot = _free_lane_spot(rng, plan, 12.0, 70.0)
    if spot is None:
        return None
    lane, z = spot
    add_vehicle(rng, plan, plan.road.lane_centre(lane), z, rear=lane >= plan.road.oncoming, body=(248, 188, 10),
                kind="school_bus")
    return "a school bus on the road"


def _lookalike_bins(rng: np.random.Generator, plan: Plan) -> str:
    for _ in range(int(rng.integers(1, 4))):
        plan_bin(rng, plan, pick(rng, ((245, 120, 20), (240, 200, 30), (230, 90, 20))), kind="orange_bin")
    return "orange bins on the curb"


def _lookalike_awning(rng: np.random.Generator, plan: Plan) -> str:
    road = plan.road
    side = 1.0 if rng.random() < 0.5 else -1.0
    u = road.width + road.right_margin if side > 0 else -road.left_margin
    z = float(rng.uniform(max(plan.camera.near_z, 6.0), 40.0))
    colours = pick(rng, (((245, 110, 20), PAINT), ((225, 40, 30), PAINT), ((250, 190, 20), (245, 110, 20))))
    plan.add("striped_awning", z + 6.0, draw_awning, u=u, side=side, z0=z, z1=z + float(rng.uniform(4.0, 9.0)),
             colours=colours)
    return "striped awnings over the shops"


def _lookalike_traffic_light(rng: np.random.Generator, plan: Plan) -> str:
    road = plan.road
    z = float(rng.uniform(15.0, 60.0))
    plan.add("traffic_light", z, draw_traffic_light, u=road.width + 0.5, z=z,
             reach=-float(rng.uniform(2.5, min(6.0, road.width))), state=int(rng.choice(3, p=(0.35, 0.4, 0.25))))
    return "a traffic light turning amber"


def _lookalike_orange_pedestrian(rng: np.random.Generator, plan: Plan) -> str:
    shirt = pick(rng, ((250, 110, 20), (240, 90, 15), (210, 245, 45), (250, 200, 30)))
    outfit = replace(random_outfit(rng), shirt=shirt)
    plan_pedestrians(rng, plan, int(rng.integers(1, 3)), outfit, kind="orange_pedestrian")
    return "a pedestrian in a bright jacket"


def _lookalike_warning_sign(rng: np.random.Generator, plan: Plan) -> str:
    road = plan.road
    z = float(rng.uniform(max(plan.camera.near_z + 2.0, 8.0), 80.0))
    shape = "diamond" if rng.random() < 0.7 else "triangle"
    face = (250, 205, 20) if shape == "diamond" and rng.random() < 0.7 else (250, 130, 20)
    if shape == "triangle":
        face = PAINT
    plan.add("warning_sign", z, draw_warning_sign, u=road.width + min(1.2, road.right_margin), z=z,
             size=float(rng.uniform(0.4, 0.6)), post=float(rng.uniform(1.5, 2.2)), shape=shape, face=face,
             pictogram=pick(rng, ("curve", "crossing")))
    return "a warning sign by the road"


def _lookalike_autumn_trees(rng: np.random.Generator, plan: Plan) -> str:
    road = plan.road
    plan_trees(rng, plan, (-road.left_margin + 0.5, road.width + road.right_margin - 0.5),
               int(rng.integers(2, 6)), (8.0, 70.0), autumn=True)
    return "autumn trees along the road"


_LOOKALIKES: dict[str, tuple[Callable[[np.random.Generator, Plan], str | None], tuple[float, float, float, float]]] = {
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


def plan_lookalikes(rng: np.random.Generator, plan: Plan, count: int) -> None:
    names = list(_LOOKALIKES)
    weights = [_LOOKALIKES[name][1][SCENES.index(plan.scene)] for name in names]
    for _ in range(count):
        sight = _LOOKALIKES[choose(rng, names, weights)][0](rng, plan)
        if sight is not None:
            plan.sights.append(sight)
