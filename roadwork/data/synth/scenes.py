"""Planning one scene: place, scene type, daytime, weather, light, road and camera, then the ground, the work
zone, the scenery, traffic and look-alikes.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from roadwork.data.synth.backdrop import draw_ground, draw_headlight_beam, draw_hills, draw_sky_details, fog_ground
from roadwork.data.synth.canvas import PAINT, RGB, SUPERSAMPLE, Camera, Light, mix, scaled
from roadwork.data.synth.lookalikes import LOOKALIKES_PER_SCENE, plan_lookalikes
from roadwork.data.synth.metadata import DAYTIMES, SCENES, WEATHERS, plan_location
from roadwork.data.synth.plan import Plan, Road, choose, pick
from roadwork.data.synth.scenery import SCENERY, plan_traffic
from roadwork.data.synth.work_zones import plan_work_zone

_SCENE_WEIGHTS_CITY = (0.45, 0.33, 0.15, 0.07)
_SCENE_WEIGHTS_FAR = (0.05, 0.15, 0.35, 0.45)
_DAYTIME_WEIGHTS = (0.5, 0.1, 0.17, 0.23)
_WEATHER_WEIGHTS = (0.45, 0.25, 0.17, 0.13)

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


def _plan_light(rng: np.random.Generator, daytime: str, weather: str) -> tuple[Light, tuple[RGB, RGB]]:
    top, bottom = _SKY[daytime]
    grey = _OVERCAST[daytime]
    greyness = _WEATHER_GREY[weather]
    sky = (mix(top, grey, greyness), mix(bottom, scaled(grey, 1.08), greyness))
    exposure = rng.uniform(0.88, 1.12) * _WEATHER_LIGHT[weather]
    balance = rng.uniform(0.94, 1.06, 3)
    ambient = tuple(float(a * exposure * w) for a, w in zip(_AMBIENT[daytime], balance, strict=True))
    glow = {"day": 0.25, "dawn": 0.6, "dusk": 0.7, "night": 1.0}[daytime]
    light = Light(
        ambient=(ambient[0], ambient[1], ambient[2]),
        fog=sky[1],
        visibility=float(rng.uniform(*_VISIBILITY[weather])),
        headlights=daytime == "night" or (daytime != "day" and rng.random() < 0.5),
        glow=glow + (0.15 if weather in ("rain", "fog") else 0.0),
        lights_on=daytime != "day" or weather in ("rain", "fog") or rng.random() < 0.2,
    )
    return light, sky


def _plan_road(rng: np.random.Generator, scene: str) -> tuple[Road, int]:
    """Returns the road and the lane the camera drives in (lanes count from the left edge)."""
    if scene == "highway":
        lanes = int(rng.integers(2, 5))
        road = Road(lanes, rng.uniform(3.5, 3.8), 0, rng.uniform(1.0, 2.5), rng.uniform(2.5, 3.5))
        return road, int(rng.integers(lanes))
    if scene == "urban":
        lanes = int(rng.integers(2, 5))
        road = Road(lanes, rng.uniform(3.1, 3.5), lanes // 2, rng.uniform(3.0, 5.5), rng.uniform(3.0, 5.5))
    elif scene == "residential":
        road = Road(2, rng.uniform(3.4, 4.2), 1, rng.uniform(4.0, 6.0), rng.uniform(4.0, 6.0))
    else:
        road = Road(2, rng.uniform(2.8, 3.3), 1, rng.uniform(1.0, 2.5), rng.uniform(1.0, 2.5))
    return road, road.lanes - 1 if road.lanes - road.oncoming == 1 else int(rng.integers(road.oncoming, road.lanes))


def plan_scene(rng: np.random.Generator, width: int, height: int, positive: bool) -> Plan:
    latitude, longitude, drives_left, in_city = plan_location(rng)
    scene = choose(rng, SCENES, _SCENE_WEIGHTS_CITY if in_city else _SCENE_WEIGHTS_FAR)
    daytime = choose(rng, DAYTIMES, _DAYTIME_WEIGHTS)
    weather = choose(rng, WEATHERS, _WEATHER_WEIGHTS)
    light, sky = _plan_light(rng, daytime, weather)
    road, camera_lane = _plan_road(rng, scene)
    render_w, render_h = width * SUPERSAMPLE, height * SUPERSAMPLE
    camera = Camera(
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
    plan = Plan(scene, daytime, weather, float(latitude), float(longitude), drives_left, camera, light, road,
                sky, ground, post_seed=int(rng.integers(2**63)))
    plan.backdrop.append(partial(draw_sky_details, sky=sky, daytime=daytime, weather=weather,
                                 clouds=_plan_clouds(rng, weather), sun_x=float(rng.uniform(0.1, 0.9))))
    _plan_ground(rng, plan)
    if positive:
        plan_work_zone(rng, plan)
    SCENERY[scene](rng, plan)
    plan_traffic(rng, plan)
    plan_lookalikes(rng, plan, count=int(rng.poisson(LOOKALIKES_PER_SCENE)))
    return plan


def _plan_clouds(rng: np.random.Generator, weather: str) -> tuple[tuple[float, float, float, float], ...]:
    count = int(rng.integers(0, 3)) if weather == "clear" else int(rng.integers(3, 8))
    return tuple((float(rng.uniform()), float(rng.uniform(0.05, 0.8)), float(rng.uniform(0.08, 0.25)),
                  float(rng.uniform(0.9, 1.15))) for _ in range(count))


def _plan_ground(rng: np.random.Generator, plan: Plan) -> None:
    road, scene = plan.road, plan.scene
    wet = plan.weather == "rain"
    asphalt = (92, 92, 96) if scene != "rural" else (104, 102, 100)
    asphalt = scaled(asphalt, rng.uniform(0.8, 1.15) * (0.75 if wet else 1.0))
    sidewalk = {"urban": min(road.left_margin, road.right_margin), "residential": float(rng.uniform(1.5, 2.2))}
    centre = (232, 190, 40) if rng.random() < 0.5 else PAINT
    crossing = float(rng.uniform(12.0, 35.0)) if scene == "urban" and rng.random() < 0.3 else None
    plan.backdrop.append(partial(
        draw_ground, road=road, asphalt=asphalt, verge=plan.ground, sidewalk=sidewalk.get(scene, 0.0),
        paved_shoulders=scene == "highway", centre_line=centre,
        dashed=scene != "rural" or rng.random() < 0.5, edges=scene in ("highway", "rural") and rng.random() < 0.8,
        crossing=crossing, phase=float(rng.uniform(0.0, 9.0))))
    plan.backdrop.append(fog_ground)
    if plan.light.headlights:
        plan.backdrop.append(draw_headlight_beam)
    if scene in ("highway", "rural") or rng.random() < 0.3:
        points = 24
        heights = np.abs(np.cumsum(rng.normal(0.0, 9.0, points))) + rng.uniform(5.0, 30.0)
        plan.backdrop.append(partial(draw_hills, heights=tuple(float(h) for h in heights),
                                     colour=pick(rng, ((70, 100, 70), (90, 105, 95), (100, 110, 80)))))
