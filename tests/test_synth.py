"""The synthetic dataset must be reproducible, shaped like the target data, and honest: its labels
follow from visible work-zone objects, not from colour statistics or metadata alone."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from roadwork.data.records import normalize_category, normalize_coordinates, normalize_text
from roadwork.data.synth import render_frame_details, render_scene, render_scene_details, write_synthetic_dataset
from roadwork.data.synth.drive import plan_drive
from roadwork.data.synth.metadata import CITIES, CSV_COLUMNS, DAYTIMES, FAR_REGIONS, SCENES, WEATHERS, City
from roadwork.data.synth.plan import ROADWORK_KINDS

ROADWORK_WORDS = re.compile(r"cone|road work|construction|lane clos|closed|barrier|excavator|machinery|work zone|"
                            r"workers|work site", re.IGNORECASE)


def read_rows(folder: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((folder / "metadata.csv").read_text(encoding="utf-8"))))


def rendered(seed: int, count: int, width: int, height: int) -> list[tuple[int, Image.Image, dict[str, object]]]:
    scenes = []
    for index in range(count):
        label = index % 2
        image, metadata = render_scene(np.random.default_rng([seed, index]), width, height, positive=bool(label))
        scenes.append((label, image, metadata))
    return scenes


@pytest.fixture(scope="module")
def dataset_200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", n=200, seed=5, width=64, height=48)


def test_same_seed_writes_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    first = write_synthetic_dataset(tmp_path / "a", n=6, seed=3, width=96, height=72)
    again = write_synthetic_dataset(tmp_path / "b", n=6, seed=3, width=96, height=72)
    other = write_synthetic_dataset(tmp_path / "c", n=6, seed=4, width=96, height=72)
    names = sorted(p.name for p in (first / "images").iterdir())
    assert names == [f"{i:06d}.jpg" for i in range(6)]
    assert (first / "metadata.csv").read_bytes() == (again / "metadata.csv").read_bytes()
    for name in names:
        assert (first / "images" / name).read_bytes() == (again / "images" / name).read_bytes()
    assert (first / "metadata.csv").read_bytes() != (other / "metadata.csv").read_bytes()
    assert sum((first / "images" / n).read_bytes() != (other / "images" / n).read_bytes() for n in names) == 6
    leftovers = [p.name for p in first.rglob(".*")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def test_each_image_depends_only_on_seed_and_index(tmp_path: Path) -> None:
    """Any image can be re-rendered alone (e.g. in parallel) from (seed, index) and its label."""
    folder = write_synthetic_dataset(tmp_path / "d", n=8, seed=9, width=96, height=72)
    rows = read_rows(folder)
    index = 5
    image, _ = render_scene(np.random.default_rng([9, index]), 96, 72, positive=rows[index]["label"] == "1")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    assert rows[index]["file_name"] == "images/000005.jpg"
    assert (folder / rows[index]["file_name"]).read_bytes() == buffer.getvalue()


def test_single_frame_output_is_unchanged(tmp_path: Path) -> None:
    """frames_per_drive=1 writes what the writer wrote before drives existed (pins the random stream)."""
    folder = write_synthetic_dataset(tmp_path / "u", n=8, seed=3, width=64, height=48)
    digest = hashlib.sha256((folder / "metadata.csv").read_bytes()).hexdigest()
    assert digest == "fe6789fe58c647ed6ba589fb7bb3f1fa026746a44488df7786722a53c4b92bae"


@pytest.mark.parametrize("frames_per_drive", [1, 3])
def test_progress_is_reported_after_every_image(tmp_path: Path, frames_per_drive: int) -> None:
    seen: list[int] = []
    write_synthetic_dataset(tmp_path / "p", n=5, seed=1, width=48, height=40, progress=seen.append,
                            frames_per_drive=frames_per_drive)
    assert seen == [1, 2, 3, 4, 5]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n must be"):
        write_synthetic_dataset(tmp_path / "x", n=-1, seed=0)
    for frames in (0, -2, 2.5):
        with pytest.raises(ValueError, match="frames_per_drive must be an integer >= 1"):
            write_synthetic_dataset(tmp_path / "x", n=4, seed=0, frames_per_drive=frames)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 32x32"):
        write_synthetic_dataset(tmp_path / "x", n=4, seed=0, width=16, height=480, frames_per_drive=2)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="at least 32x32"):
        render_scene(np.random.default_rng(0), 16, 480, positive=True)


def test_csv_layout_labels_and_images(dataset_200: Path) -> None:
    header = (dataset_200 / "metadata.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join(CSV_COLUMNS)
    rows = read_rows(dataset_200)
    assert len(rows) == 200
    labels = [int(row["label"]) for row in rows]
    assert sum(labels) == 100
    assert labels[:100] != [1] * 100 and labels != sorted(labels) and labels != sorted(labels, reverse=True)
    for index, row in enumerate(rows):
        assert row["file_name"] == f"images/{index:06d}.jpg"
    with Image.open(dataset_200 / rows[17]["file_name"]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 48))


def test_each_field_is_null_about_sixty_percent_and_gps_blanks_together(dataset_200: Path) -> None:
    rows = read_rows(dataset_200)
    null_rates = {}
    for name in ("weather", "daytime", "scene", "description"):
        null_rates[name] = sum(normalize_text(row[name]) is None for row in rows) / len(rows)
    positions = [normalize_coordinates(row["latitude"], row["longitude"]) for row in rows]
    null_rates["gps"] = sum(lat is None for lat, _ in positions) / len(rows)
    assert all(0.45 <= rate <= 0.75 for rate in null_rates.values()), null_rates
    assert all((row["latitude"] == "") == (row["longitude"] == "") for row in rows)
    assert all((lat is None) == (lon is None) for lat, lon in positions)
    vocabularies = {"weather": WEATHERS, "daytime": DAYTIMES, "scene": SCENES}
    for name, vocabulary in vocabularies.items():
        present = [row[name] for row in rows if normalize_category(row[name]) is not None]
        assert all(normalize_category(value) in vocabulary for value in present), name
    raw = [row[name] for row in rows for name in vocabularies]
    odd_spellings = [v for v in raw if v and v not in WEATHERS + DAYTIMES + SCENES]
    assert 0 < len(odd_spellings) <= 0.1 * len(raw), odd_spellings


def test_gps_clusters_around_the_cities_with_some_far_points() -> None:
    def nearest_km(lat: float, lon: float, places: tuple[City, ...]) -> float:
        return min(111.0 * math.hypot(lat - p.latitude, (lon - p.longitude) * math.cos(math.radians(p.latitude)))
                   for p in places)

    near_city = 0
    for index in range(150):
        _, metadata = render_scene(np.random.default_rng([77, index]), 32, 32, positive=bool(index % 2))
        lat, lon = float(metadata["latitude"]), float(metadata["longitude"])
        if nearest_km(lat, lon, CITIES) < 25.0:
            near_city += 1
        else:
            assert nearest_km(lat, lon, FAR_REGIONS) < 800.0, (lat, lon)
    assert 0.8 <= near_city / 150 <= 0.97, near_city


def test_pictures_agree_with_their_metadata() -> None:
    brightness: dict[str, list[float]] = {"day": [], "night": []}
    contrast: dict[str, list[float]] = {"clear": [], "fog": []}
    first_words: list[tuple[str, str]] = []
    for _, image, metadata in rendered(seed=31, count=160, width=128, height=96):
        grey = np.asarray(image.convert("L"), dtype=np.float64)
        if metadata["daytime"] in brightness:
            brightness[str(metadata["daytime"])].append(grey.mean())
        if metadata["weather"] in contrast and metadata["daytime"] == "day":
            distant_half = grey[: grey.shape[0] // 2]
            contrast[str(metadata["weather"])].append(distant_half.std())
        first_words.append((str(metadata["description"]).split()[0], str(metadata["weather"])))
    assert min(len(v) for v in brightness.values()) >= 10 and min(len(v) for v in contrast.values()) >= 5
    assert np.mean(brightness["night"]) < 0.5 * np.mean(brightness["day"])
    assert max(brightness["night"]) < np.median(brightness["day"])
    assert np.mean(contrast["fog"]) < 0.8 * np.mean(contrast["clear"])
    weather_words = {"Foggy": "fog", "Misty": "fog", "Hazy": "fog", "Rainy": "rain", "Wet": "rain",
                     "Drizzly": "rain", "Overcast": "cloudy", "Cloudy": "cloudy", "Grey": "cloudy"}
    described = [(word, weather) for word, weather in first_words if word in weather_words]
    assert len(described) > 20
    assert all(weather_words[word] == weather for word, weather in described)


def test_scene_type_decides_the_scenery() -> None:
    seen: dict[str, int] = {scene: 0 for scene in SCENES}
    for index in range(80):
        scene = render_scene_details(np.random.default_rng([33, index]), 64, 48, positive=bool(index % 2))
        kind = str(scene.metadata["scene"])
        kinds = {o.kind for o in scene.objects}
        seen[kind] += 1
        if kind == "urban":
            assert "building" in kinds and "house" not in kinds
        elif kind == "residential":
            assert "house" in kinds and "building" not in kinds
        else:
            assert "building" not in kinds and "street_lamp" not in kinds
    assert min(seen.values()) >= 3, seen


def test_descriptions_name_roadwork_for_most_positives_and_never_for_negatives() -> None:
    mentions: dict[int, list[bool]] = {0: [], 1: []}
    for label, _, metadata in rendered(seed=41, count=300, width=32, height=32):
        mentions[label].append(bool(ROADWORK_WORDS.search(str(metadata["description"]))))
    positive_rate = np.mean(mentions[1])
    assert 0.55 <= positive_rate <= 0.9, positive_rate
    assert not any(mentions[0])


def test_every_positive_shows_a_work_zone_that_the_counterfactual_lacks() -> None:
    """Redrawing a positive without its work zone must change pixels inside the work-zone boxes."""
    subtle = 0
    for index in range(30):
        scene = render_scene_details(np.random.default_rng([51, index]), 640, 480, positive=True)
        without = render_scene_details(np.random.default_rng([51, index]), 640, 480, positive=True,
                                       without_roadwork=True)
        boxes = [o.box for o in scene.objects if o.roadwork]
        assert boxes and {o.kind for o in scene.objects if o.roadwork} <= ROADWORK_KINDS
        assert not any(o.roadwork for o in without.objects)
        changed = np.abs(np.asarray(scene.image, np.int16) - np.asarray(without.image, np.int16)).max(axis=2) > 20
        assert changed.sum() >= 4, f"scene {index}: work zone invisible"
        inside = np.zeros_like(changed)
        halo = 16  # warning lamps glow beyond their objects
        for x0, y0, x1, y1 in boxes:
            inside[max(0, int(y0) - halo): int(y1) + halo, max(0, int(x0) - halo): int(x1) + halo] = True
        assert changed[inside].sum() >= 0.9 * changed.sum(), f"scene {index}: boxes miss the drawn objects"
        subtle += max(y1 - y0 for _, y0, _, y1 in boxes) < 15
    assert 1 <= subtle <= 15, "some positives should carry only small, distant objects"


def test_negatives_hold_no_roadwork_but_do_hold_look_alikes() -> None:
    look_alikes = {"school_bus", "orange_bin", "striped_awning", "traffic_light", "orange_pedestrian",
                   "warning_sign", "autumn_tree"}
    kinds_seen: set[str] = set()
    with_look_alike = 0
    for index in range(60):
        scene = render_scene_details(np.random.default_rng([61, index]), 64, 48, positive=False)
        kinds = {o.kind for o in scene.objects}
        assert not kinds & ROADWORK_KINDS
        kinds_seen |= kinds & look_alikes
        with_look_alike += bool(kinds & look_alikes)
    assert kinds_seen == look_alikes
    assert with_look_alike >= 30


def colour_features(image: Image.Image) -> tuple[np.ndarray, float]:
    pixels = np.asarray(image)
    bins = (pixels // 32).astype(np.int64)
    histogram = np.bincount((bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2]).ravel(), minlength=512)
    hsv = np.asarray(image.convert("HSV")).astype(np.int64)
    orange = (hsv[..., 0] >= 8) & (hsv[..., 0] <= 30) & (hsv[..., 1] > 150) & (hsv[..., 2] > 120)
    return np.sqrt(histogram / histogram.sum()), float(orange.mean())


@pytest.mark.slow
def test_colour_statistics_alone_cannot_tell_the_classes_apart() -> None:
    """A logistic regression on colour histograms, or on the share of orange pixels, stays far from perfect,
    although the work zones are colourful: the same scene redrawn without its work zone has fewer orange
    pixels in most pairs (so the test cannot pass on a generator that draws no work zone)."""
    histograms, orange, labels = [], [], []
    for label, image, _ in rendered(seed=71, count=300, width=240, height=180):
        histogram, orange_share = colour_features(image)
        histograms.append(histogram)
        orange.append([math.log(orange_share + 1e-4)])
        labels.append(label)
    y = np.asarray(labels)
    for features in (np.asarray(histograms), np.asarray(orange)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        accuracy = cross_val_score(model, features, y, cv=5).mean()
        assert accuracy < 0.75, accuracy
    positives = [i for i in range(300) if y[i] == 1]
    more_orange = [orange[i][0] > math.log(colour_features(render_scene_details(
        np.random.default_rng([71, i]), 240, 180, positive=True, without_roadwork=True).image)[1] + 1e-4)
        for i in positives]
    assert np.mean(more_orange) >= 0.7, np.mean(more_orange)


@pytest.fixture(scope="module")
def drives_24(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six drives of four frames."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("drives") / "data", n=24, seed=2, width=160,
                                   height=120, frames_per_drive=4)


def test_drives_share_a_group_label_and_scene(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(tmp_path / "g", n=22, seed=4, width=64, height=48, frames_per_drive=4)
    header = (folder / "metadata.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == ",".join((*CSV_COLUMNS, "group"))
    rows = read_rows(folder)
    assert [row["file_name"] for row in rows] == [f"images/{i:06d}.jpg" for i in range(22)]
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    assert list(groups) == [f"drive-{d:06d}" for d in range(6)]
    assert [len(frames) for frames in groups.values()] == [4, 4, 4, 4, 4, 2]
    assert sum(frames[0]["label"] == "1" for frames in groups.values()) == 3, "half of the drives are positive"
    blank_mix = moved = 0
    for frames in groups.values():
        assert len({row["label"] for row in frames}) == 1
        for name in ("weather", "daytime", "scene"):
            assert len({normalize_category(row[name]) for row in frames} - {None}) <= 1, name
        assert len({normalize_text(row["description"]) for row in frames} - {None}) <= 1
        blank_mix += len({normalize_text(row["daytime"]) is None for row in frames}) == 2
        positions = [normalize_coordinates(row["latitude"], row["longitude"]) for row in frames]
        known = [(lat, lon) for lat, lon in positions if lat is not None and lon is not None]
        moved += len(set(known)) > 1
        for (lat0, lon0), (lat1, lon1) in itertools.combinations(known, 2):
            metres = 111_000 * math.hypot(lat1 - lat0, (lon1 - lon0) * math.cos(math.radians(lat0)))
            assert metres < 15.0, "one drive covers a few metres a frame"
    assert blank_mix >= 2, "NULLs are drawn per frame, not per drive"
    assert moved >= 2, "GPS follows the drive"


def test_frames_of_a_drive_look_alike_but_are_not_copies(drives_24: Path) -> None:
    """The leakage: every frame's nearest neighbour is a frame of its own drive."""
    rows = read_rows(drives_24)
    grey = []
    for row in rows:
        with Image.open(drives_24 / row["file_name"]) as image:
            grey.append(np.asarray(image.convert("L").resize((40, 30), Image.Resampling.BOX), np.float64))
    within, between = [], []
    nearest = [(math.inf, "")] * len(rows)
    for i, j in itertools.combinations(range(len(rows)), 2):
        distance = float(np.abs(grey[i] - grey[j]).mean())
        (within if rows[i]["group"] == rows[j]["group"] else between).append(distance)
        nearest[i] = min(nearest[i], (distance, rows[j]["group"]))
        nearest[j] = min(nearest[j], (distance, rows[i]["group"]))
    assert all(group == row["group"] for (_, group), row in zip(nearest, rows, strict=True))
    assert np.mean(within) < 0.35 * np.mean(between), (np.mean(within), np.mean(between))
    assert min(within) > 1.0, "frames are not copies: the camera moves and the noise differs"


def test_drives_are_deterministic_and_each_frame_renders_alone(drives_24: Path, tmp_path: Path) -> None:
    again = write_synthetic_dataset(tmp_path / "a", n=24, seed=2, width=160, height=120, frames_per_drive=4)
    other = write_synthetic_dataset(tmp_path / "o", n=8, seed=3, width=160, height=120, frames_per_drive=4)
    assert (drives_24 / "metadata.csv").read_bytes() == (again / "metadata.csv").read_bytes()
    names = [row["file_name"] for row in read_rows(drives_24)]
    assert all((drives_24 / name).read_bytes() == (again / name).read_bytes() for name in names)
    assert not any((drives_24 / name).read_bytes() == (other / name).read_bytes() for name in names[:8])
    row = read_rows(drives_24)[14]  # drive 3, frame 2
    drive = plan_drive(np.random.default_rng([2, 3]), 160, 120, positive=row["label"] == "1", frames=4)
    image = render_frame_details(drive, 2, np.random.default_rng([2, 3, 2])).image
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    assert (drives_24 / row["file_name"]).read_bytes() == buffer.getvalue()


def test_positive_drives_show_their_work_zone_in_every_frame() -> None:
    """The camera drives on, but never so far that the work zone leaves the picture or hides behind traffic.

    Driving these three at their wanted speed would lose the work zone in the last frames.
    """
    for number in (66, 67, 96):
        drive = plan_drive(np.random.default_rng([5, number]), 320, 240, positive=True, frames=10)
        assert drive.step > 0.0
        for frame in range(10):
            scene = render_frame_details(drive, frame, np.random.default_rng([5, number, frame]))
            without = render_frame_details(drive, frame, np.random.default_rng([5, number, frame]),
                                           without_roadwork=True)
            changed = np.abs(np.asarray(scene.image, np.int16) - np.asarray(without.image, np.int16)).max(axis=2)
            assert (changed > 20).sum() >= 4, f"drive {number}, frame {frame}: work zone invisible"
