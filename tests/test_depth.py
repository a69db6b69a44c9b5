"""Depth: synthetic scenes' true depth maps (geometry, occlusion, mirrored drives, the PNG encoding), the
evidence read off a depth map and a detector's boxes (a toy-sized cone does not fit), and a depth model
(tiny random Depth Anything saved with save_pretrained) as an expert on every serving path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from roadwork.config import ConfigError, load_config
from roadwork.data.annotations import encode_depth, read_annotations, read_depth
from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.data.synth import write_synthetic_dataset
from roadwork.data.synth.canvas import SUPERSAMPLE
from roadwork.data.synth.objects import draw_cone, draw_vehicle
from roadwork.data.synth.render import draw_plan
from roadwork.data.synth.scenes import plan_scene
from roadwork.errors import RoadworkError
from roadwork.experts.depth import DepthSource, object_depths
from roadwork.experts.detector import Found, detector_source
from roadwork.serve.scorer import load_scorer
from roadwork.train.run import train

from conftest import orange_block_folder, tiny_depth_anything


def _street(cones: list[tuple[float, float]], drives_left: bool = False):
    """An empty street with a van 8 m ahead and cones (offset across the road, height) 12 m ahead."""
    plan = plan_scene(np.random.default_rng(5), 320, 240, False)
    plan = dataclasses.replace(plan, items=[], drives_left=drives_left, weather="clear")
    u = plan.camera.eye_u
    for offset, height in cones:
        plan.add("cone", 12.0, draw_cone, u=u + offset, z=12.0, height=height, colour=(255, 98, 0), bands=2)
    plan.add("vehicle", 8.0, draw_vehicle, u=u, z=8.0, body=(40, 60, 160), model="van", rear=True)
    return plan


def test_the_true_depth_map_holds_the_road_the_objects_and_their_occlusion():
    plan = _street([(1.5, 0.7)])
    scene = draw_plan(plan, without_roadwork=False, masked=("cone", "vehicle"), depth=True)
    cone, van = (next(o for o in scene.objects if o.kind == k) for k in ("cone", "vehicle"))
    depth, camera = scene.depth, plan.camera
    assert depth.shape == (240, 320) and depth.dtype == np.float32
    assert np.all(depth[cone.mask] == 12.0) and np.all(depth[van.mask] == 8.0)   # visible pixels only
    free = ~(cone.mask | van.mask)
    rows = np.nonzero(free.all(axis=1))[0]
    sky, road = rows[rows * SUPERSAMPLE + 0.5 < camera.horizon], rows[rows * SUPERSAMPLE + 0.5 > camera.horizon + 4]
    assert np.all(depth[sky] == 0) and len(road)   # no depth in the sky
    expected = camera.focal * camera.eye_height / (road * SUPERSAMPLE + 0.5 - camera.horizon)
    np.testing.assert_allclose(depth[road, 0], expected, rtol=1e-5)   # a flat road: depth by row
    assert np.all(np.diff(depth[road, 0]) < 0)   # lower rows are nearer

    mirrored = draw_plan(_street([(1.5, 0.7)], drives_left=True), without_roadwork=False,
                         masked=("cone", "vehicle"), depth=True)
    np.testing.assert_array_equal(mirrored.depth, depth[:, ::-1])


def test_a_cones_size_at_its_true_distance_gives_its_height_and_a_toy_cone_stands_apart():
    plan = _street([(2.0, 0.7), (-2.5, 0.2)])   # a real cone and a toy-sized one, both 12 m ahead
    scene = draw_plan(plan, without_roadwork=False, masked=("cone",), depth=True)
    real, toy = sorted((o for o in scene.objects if o.kind == "cone"), key=lambda o: -(o.box[3] - o.box[1]))
    side = 240
    found = [[Found(0, 0.9, real.box), Found(1, 0.9, toy.box)]]   # concept 0: the real one, 1: the toy
    square = torch.from_numpy(scene.depth[:, :side].copy() if real.box[2] <= side and toy.box[2] <= side else
                              scene.depth[:, -side:].copy())
    shift = 0 if real.box[2] <= side and toy.box[2] <= side else 320 - side
    found = [[dataclasses.replace(f, box=(f.box[0] - shift, f.box[1], f.box[2] - shift, f.box[3])) for f in found[0]]]
    evidence = object_depths(square[None], found, concepts=2, threshold=0.5).view(2, 2)
    assert evidence[:, 0].tolist() == pytest.approx([12.0, 12.0])   # both at their true distance
    focal = plan.camera.focal / SUPERSAMPLE   # in photo pixels: size x distance / focal = metres
    heights = (evidence[:, 1] * side / focal).tolist()
    assert heights[0] == pytest.approx(0.7, rel=0.2) and heights[1] == pytest.approx(0.2, rel=0.35)
    assert heights[0] > 2.5 * heights[1]


def test_evidence_takes_the_nearest_box_per_concept_and_is_null_without_one():
    depth = torch.full((2, 100, 100), 30.0)
    depth[0, 60:100, 0:20] = 5.0
    depth[0, 0:10, 0:10] = float("nan")   # unknown depth (sky) inside a box is left out of its median
    boxes = [[Found(0, 0.9, (0, 0, 10, 20)), Found(0, 0.8, (0, 60, 20, 100)), Found(1, 0.2, (0, 0, 50, 50))], []]
    evidence = object_depths(depth, boxes, concepts=2, threshold=0.5)
    assert evidence[0, :2].tolist() == pytest.approx([5.0, 0.4 * 5.0])   # the nearer cone, 40 rows tall
    assert torch.isnan(evidence[0, 2:]).all() and torch.isnan(evidence[1]).all()   # below threshold, nothing found


def test_depth_maps_are_written_beside_synthetic_scenes_and_read_back(tmp_path):
    folder = write_synthetic_dataset(tmp_path / "s", 6, seed=2, width=160, height=120, frames_per_drive=3,
                                     depth=True)
    images, skies = read_annotations(folder), []
    for sample in load_samples(str(folder)):
        image = images[sample.file_name]
        depth = read_depth(folder, image)
        assert depth.shape == (120, 160) and (depth[-1] > 0).all()   # the road at the bottom
        skies.append(np.isnan(depth[: 120 // 3]).mean())
        for item in image.objects:   # an object stands nearer than the road behind its top edge
            assert np.nanmedian(depth[item.mask]) <= np.nanmax(depth[int(item.box[1])]) + 1e-3
    assert min(skies) > 0.2   # the sky (or most of it) has no depth
    plain = write_synthetic_dataset(tmp_path / "p", 3, seed=2, width=160, height=120)
    assert all(i.depth_file is None for i in read_annotations(plain).values()) and not (plain / "depth").exists()
    with pytest.raises(DatasetError, match="no depth map"):
        read_depth(plain, next(iter(read_annotations(plain).values())))
    metres = np.array([[0.0, np.nan, 1e-4, 2.5, 1000.0]], np.float32)
    (tmp_path / "d.png").write_bytes(encode_depth(metres))
    image = dataclasses.replace(next(iter(images.values())), width=5, height=1, depth_file="d.png")
    back = read_depth(tmp_path, image)
    assert np.isnan(back[0, :2]).all() and back[0, 2] > 0 and back[0, 3] == 2.5
    assert back[0, 4] == pytest.approx(65535 / 256)   # the farthest a 16-bit map holds


@pytest.mark.parametrize("kind", ["metric", "relative"])
def test_a_depth_model_measures_the_detectors_boxes(kind, tiny_owlv2_folder, tmp_path):
    folder = tiny_depth_anything(tmp_path / "depth", kind)
    detector = detector_source(str(tiny_owlv2_folder), ["traffic cone=cone", "worker=worker"], 0.0, 64)
    source = DepthSource(str(folder), detector)
    assert source.fields == ("depth.cone.distance", "depth.cone.height", "depth.worker.distance",
                             "depth.worker.height")
    expert = source.load("cpu")
    views = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    depth = expert.depth(views)
    assert depth.shape == (2, 64, 64)
    if kind == "relative":   # relative to the nearest point of each view
        assert torch.allclose(torch.nan_to_num(depth, nan=np.inf).flatten(1).amin(1), torch.ones(2))
    evidence = expert.features(views)
    assert evidence.shape == (2, 4) and not torch.isnan(evidence[:, :2]).any()   # threshold 0: every box counts
    expected = object_depths(depth, expert.detector.detect(views), 2, 0.0)
    torch.testing.assert_close(evidence, expected, equal_nan=True)
    assert source.store(tmp_path / "c").root != DepthSource(str(folder), dataclasses.replace(
        detector, threshold=0.5)).store(tmp_path / "c").root   # another detector setting, another cache
    with pytest.raises(RoadworkError, match="not a depth model folder"):
        DepthSource(str(tmp_path), detector).load("cpu")


def test_depth_needs_a_detector_and_a_run_with_one_serves_its_evidence_alike(tiny_owlv2_folder, tmp_path):
    with pytest.raises(ConfigError, match="experts.depth"):
        load_config(None, ["experts.depth=somewhere"])
    photos = orange_block_folder(tmp_path / "data", 16, seed=4)
    model = tiny_depth_anything(tmp_path / "depth", "metric")
    config = load_config(None, ["validation.groups=rows", "validation.folds=2", "validation.fraction=0.5",
                                "model.type=probe", "backbone_training.mode=frozen", "data.input_size=64",
                                "experts.detector_input_size=64", f"experts.detector={tiny_owlv2_folder}",
                                "experts.detector_prompts=[traffic cone=cone]", "experts.detector_threshold=0.01",
                                f"experts.depth={model}"])
    metrics = train(str(photos), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False)
    assert metrics["extraction"]["depth"]["extracted"] == 16
    scorer = load_scorer(tmp_path / "run" / "bundle")
    bundle = scorer.bundle
    assert [e.kind for e in bundle.evidence_sources] == ["detector", "depth"]
    assert bundle.evidence_fields() == ("detector.cone.score", "detector.cone.count", "detector.cone.area",
                                        "detector.cone.near", "depth.cone.distance", "depth.cone.height")
    samples = load_samples(str(photos))
    cached, failures = scorer.predict_samples(samples, cache_dir=tmp_path / "cache")
    assert not failures and not scorer._backbones   # features and evidence from the training cache
    uncached, _ = scorer.predict_samples(samples, use_cache=False)
    served = [p.probability for p in scorer.predict_images([s.path for s in samples])]
    np.testing.assert_allclose(served, uncached, atol=1e-6)
    np.testing.assert_allclose(cached, uncached, atol=2e-3)   # the cache holds float16
