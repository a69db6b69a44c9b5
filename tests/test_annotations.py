"""Object annotations: COCO masks round-trip, synthetic scenes annotate what shows (occlusion, mirrored
drives), deterministically, and the reader refuses what it cannot trust."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from roadwork.data.annotations import (
    CATEGORIES,
    ROADWORK_CATEGORIES,
    decode_mask,
    encode_mask,
    read_annotations,
)
from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.data.synth import annotations_of, write_synthetic_dataset
from roadwork.data.synth.objects import draw_cone, draw_vehicle
from roadwork.data.synth.render import RenderedScene, draw_plan
from roadwork.data.synth.scenes import plan_scene


def test_masks_round_trip_through_coco_run_lengths():
    rng = np.random.default_rng(0)
    for mask in (rng.random((7, 5)) < 0.4, np.ones((3, 4), bool), np.zeros((2, 2), bool), np.eye(4, dtype=bool)):
        rle = encode_mask(mask)
        assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
        assert np.array_equal(decode_mask(rle), mask)
    # COCO's convention: column-major runs that start with background (a mask starting on a pixel: 0 first).
    assert encode_mask(np.array([[1, 0], [1, 1]], bool))["counts"] == [0, 2, 1, 1]
    for _ in range(300):   # the encoder scans only the object's columns: the same runs as a scan of all
        mask = rng.random(tuple(rng.integers(1, 9, 2))) < rng.random()
        mask[:, : rng.integers(0, mask.shape[1] + 1)] &= rng.random() < 0.5
        flat = mask.ravel(order="F")
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[-1], flat, [-1]]))) ).tolist()
        assert encode_mask(mask)["counts"] == ([0, *runs] if flat[0] else runs)
    with pytest.raises(ValueError, match="cover 2x2"):
        decode_mask({"size": [2, 2], "counts": [1, 2]})


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(folder / "a", 16, seed=3, width=160, height=120)
    write_synthetic_dataset(folder / "b", 6, seed=4, width=160, height=120, frames_per_drive=3)
    return folder


def test_synthetic_datasets_annotate_every_image_deterministically(annotated, tmp_path):
    for name in ("a", "b"):
        samples = load_samples(str(annotated / name))
        found = read_annotations(annotated / name)
        assert sorted(found) == sorted(s.file_name for s in samples)
        for sample in samples:
            image = found[sample.file_name]
            roadwork = [o for o in image.objects if o.roadwork]
            assert (len(roadwork) > 0) == (sample.label == 1)   # every positive shows its work zone
            assert all(o.category in ROADWORK_CATEGORIES for o in roadwork)
            for item in image.objects:
                assert item.mask.shape == (image.height, image.width) and item.mask.any()
                rows, columns = np.nonzero(item.mask)
                x0, y0, x1, y1 = item.box   # the tight box of the visible pixels
                assert (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)
            covered = np.stack([o.mask for o in image.objects]).sum(0) if image.objects else np.zeros(1)
            assert covered.max() <= 1   # a pixel shows one object
    write_synthetic_dataset(tmp_path / "again", 16, seed=3, width=160, height=120)
    assert (tmp_path / "again" / "annotations.json").read_bytes() == (annotated / "a" / "annotations.json").read_bytes()
    document = json.loads((annotated / "a" / "annotations.json").read_text())
    assert [c["name"] for c in document["categories"]] == list(CATEGORIES)
    assert {c["supercategory"] for c in document["categories"]} == {"roadwork", "lookalike"}


KINDS = ("cone", "vehicle")


def _two_objects(drives_left: bool):
    """A cone 12 m ahead, most of it hidden behind a van 8 m ahead."""
    plan = plan_scene(np.random.default_rng(5), 320, 240, False)
    plan = dataclasses.replace(plan, items=[], drives_left=drives_left, weather="clear")
    u = plan.camera.eye_u
    plan.add("cone", 12.0, draw_cone, u=u + 1.5, z=12.0, height=0.7, colour=(255, 98, 0), bands=2)
    plan.add("vehicle", 8.0, draw_vehicle, u=u, z=8.0, body=(40, 60, 160), model="van", rear=True)
    return plan


def test_a_nearer_object_hides_part_of_a_farther_one_and_left_driving_mirrors_the_masks():
    plan = _two_objects(drives_left=False)
    scene = draw_plan(plan, without_roadwork=False, masked=KINDS)
    image, objects = scene.image, scene.objects
    cone, van = (next(o for o in objects if o.kind == k) for k in ("cone", "vehicle"))
    alone = dataclasses.replace(plan, items=[i for i in plan.items if i.kind == "cone"])
    (whole,) = draw_plan(alone, without_roadwork=False, masked=KINDS).objects
    hidden = whole.mask & van.mask
    assert hidden.sum() > 0.2 * whole.mask.sum()   # the van covers a good part of the cone
    assert np.array_equal(cone.mask, whole.mask & ~van.mask)
    (annotation,) = annotations_of("x.jpg", RenderedScene(image, {}, tuple(objects))).objects   # vans are not annotated
    assert annotation.category == "cone" and annotation.box[2] - annotation.box[0] <= cone.box[2] - cone.box[0]

    mirrored = draw_plan(_two_objects(drives_left=True), without_roadwork=False, masked=KINDS).objects
    for left, right in zip(objects, mirrored):
        assert np.array_equal(left.mask[:, ::-1], right.mask)
        assert right.box == pytest.approx((320 - left.box[2], left.box[1], 320 - left.box[0], left.box[3]))


def test_the_reader_refuses_annotations_it_cannot_trust(annotated, tmp_path):
    document = json.loads((annotated / "a" / "annotations.json").read_text())
    folder = tmp_path / "bad"
    folder.mkdir()
    with pytest.raises(DatasetError, match="no annotations.json"):
        read_annotations(folder)
    for breaking, message in (
        (lambda d: d["annotations"][0].update(category_id=999), "unknown image or category"),
        (lambda d: d["annotations"][0].update(bbox=[150.0, 0.0, 40.0, 10.0]), "outside its 160x120 image"),
        (lambda d: d["annotations"][0]["segmentation"].update(size=[10, 10]), "cover 10x10|mask size"),
        (lambda d: d.pop("images"), "images"),
    ):
        broken = json.loads(json.dumps(document))
        breaking(broken)
        (folder / "annotations.json").write_text(json.dumps(broken))
        with pytest.raises(DatasetError, match=message):
            read_annotations(folder)
