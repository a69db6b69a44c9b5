"""The plan: everything random about a scene, decided before anything is drawn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np

from roadwork.data.synth.canvas import RGB, Box, Camera, Canvas, Light

T = TypeVar("T")

ROADWORK_KINDS = frozenset({"cone", "drum", "barrier", "work_sign", "worker", "excavator", "jersey_barrier"})


@dataclass(frozen=True)
class Road:
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
class Item:
    kind: str
    depth: float
    roadwork: bool
    draw: partial[Box]  # called with the canvas; its keywords say where the item stands
    foot: tuple[float, float] | None


@dataclass
class Plan:
    scene: str
    daytime: str
    weather: str
    latitude: float
    longitude: float
    drives_left: bool
    camera: Camera
    light: Light
    road: Road
    sky: tuple[RGB, RGB]
    ground: RGB
    post_seed: int
    backdrop: list[Callable[[Canvas], None]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    work_phrase: str | None = None
    sights: list[str] = field(default_factory=list)
    closed: tuple[float, float, float, float] | None = None

    def add(self, kind: str, depth: float, draw: Callable[..., Box], /, **params: object) -> None:
        """Queue ``draw(canvas, **params)``; items are painted far to near by ``depth``."""
        u, z = params.get("u"), params.get("z", params.get("z0"))
        foot = (float(u), float(z)) if isinstance(u, float) and isinstance(z, float) else None
        self.items.append(Item(kind, depth, kind in ROADWORK_KINDS, partial(draw, **params), foot))

    def is_free(self, u: float, z: float) -> bool:
        """Whether a vehicle may stand at (u, z): outside a closed lane and not hiding a work-zone object.

        A positive whose work zone sits entirely behind a truck would be a mislabelled photo.
        """
        if self.closed is not None:
            u0, u1, z0, z1 = self.closed
            if u0 - 1.0 <= u <= u1 + 1.0 and z0 - 8.0 <= z <= z1 + 8.0:
                return False
        return not any(item.roadwork and item.foot is not None and hides(self.camera, (u, z), item.foot)
                       for item in self.items)


def hides(camera: Camera, vehicle: tuple[float, float], foot: tuple[float, float]) -> bool:
    """Whether a vehicle standing at ``vehicle`` (u, z) covers the foot of an object farther ahead."""
    u, z = vehicle
    if foot[1] <= z:
        return False
    left, bottom = camera.project(u - 1.4, 0.0, z)
    right, top = camera.project(u + 1.4, 3.5, z)
    x, y = camera.project(foot[0], 0.3, foot[1])
    return left <= x <= right and top <= y <= bottom


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def choose(rng: np.random.Generator, names: Sequence[str], weights: Sequence[float]) -> str:
    return names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]
