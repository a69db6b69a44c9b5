"""The detector expert: evidence read off boxes, open-vocabulary and closed-set detectors (tiny random
models saved with save_pretrained), and a run whose heads read the evidence on every path."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from roadwork.config import load_config
from roadwork.data.sources import load_samples
from roadwork.errors import RoadworkError
from roadwork.experts.detector import Found, concept_evidence, detector_source
from roadwork.experts.prompts import DEFAULT_PROMPTS, Prompt
from roadwork.serve.scorer import load_scorer
from roadwork.train.run import train

from conftest import orange_block_folder

SMALL = ["validation.groups=rows", "validation.folds=2", "validation.serve=folds", "validation.fraction=0.5",
         "model.type=probe",
         "backbone_training.mode=frozen", "data.input_size=64", "experts.detector_input_size=64"]


def test_evidence_per_concept_is_best_score_count_largest_area_and_nearest_edge():
    boxes = [[Found(0, 0.9, (0, 50, 20, 90)), Found(0, 0.2, (0, 0, 100, 100)), Found(1, 0.6, (-10, -10, 50, 150))],
             []]
    evidence = concept_evidence(boxes, concepts=2, threshold=0.5, side=100)
    assert torch.allclose(evidence[0], torch.tensor([0.9, 1, 0.08, 0.9,   # the 0.2 box counts for the score only
                                                     0.6, 1, 0.5, 1.0]))   # clipped to the view: 50 x 100
    assert torch.equal(evidence[1], torch.zeros(8))   # nothing found: zeros, not NULL (the detector did look)


def test_open_vocabulary_and_closed_set_detectors_give_their_concepts(tiny_owlv2_folder, tiny_yolos_folder, tmp_path):
    open_set = detector_source(str(tiny_owlv2_folder), None, 0.3, 64)
    assert open_set.prompts == tuple(Prompt.parse(p) for p in DEFAULT_PROMPTS)
    assert open_set.fields[:4] == ("detector.cone.score", "detector.cone.count", "detector.cone.area",
                                   "detector.cone.near") and len(open_set.fields) == 4 * 5
    closed = detector_source(str(tiny_yolos_folder), None, 0.3, 64)
    assert closed.prompts == () and {f.split(".")[1] for f in closed.fields} == {"cone", "worker"}   # not "car"
    with pytest.raises(RoadworkError, match="closed-set detector"):
        detector_source(str(tiny_yolos_folder), ["traffic cone=cone"], 0.3, 64)
    with pytest.raises(RoadworkError, match="not a detector folder"):
        detector_source(str(tmp_path), None, 0.3, 64)
    views = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    for source in (open_set, closed):
        evidence = source.load("cpu").features(views)
        assert evidence.shape == (3, len(source.fields)) and torch.isfinite(evidence).all()
        scores = evidence.reshape(3, -1, 4)[..., 0]
        assert ((scores >= 0) & (scores <= 1)).all() and scores.max() > 0   # it did score something


def test_a_run_with_a_detector_reads_its_evidence_on_every_path(tiny_owlv2_folder, tmp_path):
    photos = orange_block_folder(tmp_path / "data", 16, seed=4)
    config = load_config(None, [*SMALL, f"experts.detector={tiny_owlv2_folder}",
                                "experts.detector_prompts=[traffic cone=cone, worker=worker]"])
    metrics = train(str(photos), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False)
    assert metrics["extraction"]["detector"]["extracted"] == 16
    scorer = load_scorer(tmp_path / "run" / "bundle")
    bundle = scorer.bundle
    assert [e.kind for e in bundle.evidence_sources] == ["detector"] and bundle.member_evidence == [[0], [0]]
    assert bundle.evidence_fields() == tuple(f"detector.{c}.{f}" for c in ("cone", "worker")
                                             for f in ("score", "count", "area", "near"))
    assert all(member.evidence_fields == 8 for member in bundle.head.members)

    samples = load_samples(str(photos))
    cached, failures = scorer.predict_samples(samples, cache_dir=tmp_path / "cache")
    assert not failures and not scorer._backbones   # features and evidence both from the training cache
    uncached, _ = scorer.predict_samples(samples, use_cache=False)
    served = [p.probability for p in scorer.predict_images([s.path for s in samples])]
    np.testing.assert_allclose(served, uncached, atol=1e-6)
    np.testing.assert_allclose(cached, uncached, atol=2e-3)   # the cache holds float16

    features, _, _ = scorer.sample_features(samples, tmp_path / "cache")
    nulled = [features[0], [torch.full_like(e, float("nan")) for e in features[1]]]
    assert not torch.allclose(scorer.margins_from_features(nulled, samples), scorer.margins_from_features(features,
                                                                                                          samples))
    with pytest.raises(RoadworkError, match="detector"):   # the export covers the segmentation branch only
        from roadwork.serve.onnx import export_onnx

        export_onnx(tmp_path / "run" / "bundle", tmp_path / "onnx")


def test_detector_train_learns_synthetic_boxes_and_the_result_is_an_expert(tiny_yolos_folder, tmp_path):
    import csv

    from typer.testing import CliRunner

    from roadwork.cli import app
    from roadwork.data.annotations import CATEGORIES
    from roadwork.data.synth import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "synth", 16, seed=3, width=96, height=72)
    runner = CliRunner()
    base = ["detector", "train", "--data", str(data), "--model", str(tiny_yolos_folder), "--out", str(tmp_path / "det"),
            "--input-size", "64", "--batch-size", "8", "--device", "cpu"]
    result = runner.invoke(app, [*base, "--epochs", "4"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "det" / "logs" / "version_0" / "metrics.csv") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle) if r.get("train_loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]   # one value per epoch, and it falls
    source = detector_source(str(tmp_path / "det" / "detector"), None, 0.3, 64)
    assert {f.split(".")[1] for f in source.fields} == set(CATEGORIES)   # its labels are roadwork's categories
    assert source.load("cpu").features(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 4 * len(CATEGORIES))

    again = runner.invoke(app, [*base, "--epochs", "4"])   # the run folder is not silently replaced
    assert again.exit_code == 2 and "--resume" in again.output
    longer = runner.invoke(app, [*base, "--epochs", "5", "--resume"])   # continues from epoch 4's checkpoint
    assert longer.exit_code == 0, longer.output
    with open(tmp_path / "det" / "logs" / "version_1" / "metrics.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("train_loss")] == [4]

    evaluated = runner.invoke(app, ["detector", "evaluate", "--data", str(data), "--model",
                                    str(tmp_path / "det" / "detector"), "--input-size", "64", "--device", "cpu",
                                    "--out", str(tmp_path / "map.json")])
    assert evaluated.exit_code == 0, evaluated.output
    scored = json.loads((tmp_path / "map.json").read_text())
    assert scored["photos"] == 16 and 0.0 <= scored["map"] <= scored["map_50"] <= 1.0

    plain = orange_block_folder(tmp_path / "plain", 4, seed=1)   # no annotations.json
    refused = runner.invoke(app, ["detector", "train", "--data", str(plain), "--model", str(tiny_yolos_folder),
                                  "--out", str(tmp_path / "det2")])
    assert refused.exit_code == 2 and "annotations.json" in refused.output


class _Answers:
    """A stand-in detector expert that finds given boxes, photo after photo, in the evaluator's order."""

    def __init__(self, concepts: tuple[str, ...], answers: list[list[Found]]) -> None:
        self.concepts, self.answers = concepts, list(answers)

    def detect(self, views):
        found, self.answers = self.answers[: len(views)], self.answers[len(views):]
        return found


def test_map_is_one_for_the_truth_lower_for_shifted_boxes_and_ignores_what_was_not_labelled(tmp_path, monkeypatch):
    from roadwork.data.annotations import CATEGORIES, coco_document, read_annotations
    from roadwork.data.synth import write_synthetic_dataset
    from roadwork.evaluate.detection import detector_map
    from roadwork.experts.detector import DetectorSource
    from roadwork.storage import atomic_write_json

    data = write_synthetic_dataset(tmp_path / "synth", 12, seed=3, width=96, height=72)
    images = read_annotations(data)
    order = [s.file_name for s in load_samples(str(data))]
    concepts = ("cone", "drum", "barrier", "worker", "orange_vehicle", "school_bus")
    size = 64

    def truth(shift: float = 0.0, extra: bool = False) -> list[list[Found]]:
        answers = []
        for name in order:
            image, scale = images[name], (size / images[name].width, size / images[name].height)
            found = [Found(concepts.index(o.category), 0.9, (o.box[0] * scale[0] + shift, o.box[1] * scale[1],
                                                            o.box[2] * scale[0] + shift, o.box[3] * scale[1]))
                     for o in image.objects if o.category in concepts]
            if extra:   # a confident cone where there is none
                found.append(Found(0, 0.99, (0.0, 0.0, 8.0, 8.0)))
            answers.append(found)
        return answers

    source = DetectorSource("stand-in", input_size=size)

    def scored(answers: list[list[Found]], folder=data) -> dict:
        monkeypatch.setattr(DetectorSource, "load", lambda self, device: _Answers(concepts, answers))
        return detector_map(source, str(folder), batch_size=5)

    perfect = scored(truth())
    assert perfect["map"] == pytest.approx(1.0) and perfect["photos"] == 12
    assert set(perfect["map_per_category"]) <= set(concepts)   # categories it was not asked for are left out
    assert scored(truth(shift=6.0))["map"] < 0.9
    assert scored(truth(extra=True))["map"] < 1.0   # a false cone costs precision...
    partial = tmp_path / "partial"   # ...except on photos where cones were not labelled
    shutil.copytree(data / "images", partial / "images")
    (partial / "metadata.csv").write_text((data / "metadata.csv").read_text())
    unlabelled = [dataclasses.replace(images[n], labelled=tuple(c for c in CATEGORIES if c != "cone"),
                                      objects=tuple(o for o in images[n].objects if o.category != "cone"))
                  for n in order]
    atomic_write_json(partial / "annotations.json", coco_document(unlabelled, "cones not labelled"))
    assert scored(truth(extra=True), partial)["map"] == pytest.approx(1.0)   # its cones, true or false, unjudged
