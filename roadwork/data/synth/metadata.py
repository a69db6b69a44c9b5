"""What the CSV says about a scene: its categories and location, a description, and the sparse NULLs and odd
spellings that real metadata has.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from roadwork.data.synth.plan import Plan, pick

SCENES = ("urban", "residential", "highway", "rural")
DAYTIMES = ("day", "dawn", "dusk", "night")
WEATHERS = ("clear", "cloudy", "rain", "fog")
CSV_COLUMNS = ("file_name", "label", "latitude", "longitude", "weather", "daytime", "scene", "description")
GROUP_COLUMN = "group"  # drives only: frames that a validation split must keep together

NULL_RATE = 0.6
ODD_VALUE_RATE = 0.04


@dataclass(frozen=True)
class City:
    name: str
    latitude: float
    longitude: float
    drives_left: bool


CITIES = (
    City("San Francisco", 37.7749, -122.4194, drives_left=False),
    City("Berlin", 52.5200, 13.4050, drives_left=False),
    City("Sao Paulo", -23.5505, -46.6333, drives_left=False),
    City("Tokyo", 35.6762, 139.6503, drives_left=True),
)
# Scattered far points land around these regions (so a drawn road is not in mid-ocean).
FAR_REGIONS = (
    City("Chicago", 41.88, -87.63, drives_left=False),
    City("Mexico City", 19.43, -99.13, drives_left=False),
    City("Buenos Aires", -34.60, -58.38, drives_left=False),
    City("Madrid", 40.42, -3.70, drives_left=False),
    City("Warsaw", 52.23, 21.01, drives_left=False),
    City("Nairobi", -1.29, 36.82, drives_left=True),
    City("Johannesburg", -26.20, 28.05, drives_left=True),
    City("Mumbai", 19.08, 72.88, drives_left=True),
    City("Bangkok", 13.76, 100.50, drives_left=True),
    City("Sydney", -33.87, 151.21, drives_left=True),
)
FAR_POINT_RATE = 0.1
CITY_JITTER_KM = 4.0
FAR_JITTER_KM = 150.0


def plan_location(rng: np.random.Generator) -> tuple[float, float, bool, bool]:
    """Returns latitude, longitude, whether traffic drives on the left, and whether it is a city."""
    far = rng.random() < FAR_POINT_RATE
    places, jitter_km = (FAR_REGIONS, FAR_JITTER_KM) if far else (CITIES, CITY_JITTER_KM)
    place = places[int(rng.integers(len(places)))]
    north, east = rng.normal(0.0, jitter_km, 2)
    latitude = place.latitude + north / 111.0
    longitude = place.longitude + east / (111.0 * math.cos(math.radians(place.latitude)))
    return latitude, longitude, place.drives_left, not far


_WEATHER_WORDS = {"clear": ("Clear", "Sunny", "Bright"), "cloudy": ("Overcast", "Cloudy", "Grey"),
                  "rain": ("Rainy", "Wet", "Drizzly"), "fog": ("Foggy", "Misty", "Hazy")}
_DAYTIME_WORDS = {"day": ("afternoon", "day", "morning"), "dawn": ("dawn", "early morning"),
                  "dusk": ("dusk", "evening"), "night": ("night",)}
_SCENE_WORDS = {"urban": ("an urban street", "a city street", "a downtown avenue"),
                "residential": ("a residential street", "a quiet neighbourhood road", "a suburban street"),
                "highway": ("a highway", "a multi-lane motorway", "an expressway"),
                "rural": ("a country road", "a rural road", "a two-lane road through fields")}
_MIRRORED = {"left": "right", "right": "left"}
_GENERIC = ("Dashcam view of the road ahead.", "Street-level photo taken from a car.",
            "View through the windshield.", "Driving scene.")


def describe(rng: np.random.Generator, plan: Plan) -> str:
    if rng.random() < 0.12:
        return pick(rng, _GENERIC)
    weather = pick(rng, _WEATHER_WORDS[plan.weather])
    if plan.weather == "clear" and plan.daytime != "day":
        weather = "Clear"
    text = f"{weather} {pick(rng, _DAYTIME_WORDS[plan.daytime])} on {pick(rng, _SCENE_WORDS[plan.scene])}"
    extras = [plan.work_phrase] if plan.work_phrase else []
    if plan.sights and rng.random() < 0.5:
        extras.append(pick(rng, plan.sights))
    if extras:
        text += ", with " + " and ".join(extras)
    if plan.drives_left:
        text = re.sub(r"\b(left|right)\b", lambda side: _MIRRORED[side.group(1)], text)
    return text + "."


_NULL_SPELLINGS = ("NULL", "none", "nan", "null")


def _odd_category(rng: np.random.Generator, value: str) -> str:
    """Real metadata arrives with inconsistent case and stray spaces; keep a little of that."""
    return pick(rng, (value.capitalize(), value.upper(), f" {value} "))


def csv_row(rng: np.random.Generator, file_name: str, label: int, metadata: dict[str, object]) -> list[str]:
    def blank() -> str:
        return pick(rng, _NULL_SPELLINGS) if rng.random() < 0.1 else ""

    if rng.random() < NULL_RATE:
        latitude = longitude = blank()
    elif rng.random() < ODD_VALUE_RATE:
        latitude, longitude = repr(float(metadata["latitude"])), repr(float(metadata["longitude"]))
    else:
        latitude, longitude = f"{metadata['latitude']:.6f}", f"{metadata['longitude']:.6f}"
    row = [file_name, str(label), latitude, longitude]
    for name in ("weather", "daytime", "scene", "description"):
        value = str(metadata[name])
        if rng.random() < NULL_RATE:
            row.append(blank())
        elif name != "description" and rng.random() < ODD_VALUE_RATE:
            row.append(_odd_category(rng, value))
        else:
            row.append(value)
    return row
