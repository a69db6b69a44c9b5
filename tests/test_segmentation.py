"""The segmentation branch of backbone fine-tuning: its loss, masks that move with their photos, and
training on synthetic scenes' masks (and on none, with a clear error)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from roadwork.config import load_config
from roadwork.data.annotations import ImageAnnotations, ObjectAnnotation, read_annotations, roadwork_mask
from roadwork.data.augment import ViewAugmenter
from roadwork.data.records import DatasetError
from roadwork.data.sources import load_samples
from roadwork.data.synth import write_synthetic_dataset
from roadwork.losses import segmentation_loss
from roadwork.train.run import train

from conftest import orange_block_folder

SMALL = ["validation.groups=rows", "validation.folds=2", "validation.serve=folds", "validation.fraction=0.5",
         "model.type=probe",
         "backbone_training.mode=last_blocks", "backbone_training.epochs=3", "backbone_training.batch_size=8",
         "backbone_training.blocks=1", "backbone_training.augment=light", "data.input_size=64"]


def test_the_loss_rewards_the_right_pixels_and_an_empty_prediction_of_an_empty_mask():
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1.0
    right = (target * 2 - 1) * 8.0   # confident and right everywhere
    assert segmentation_loss(right, target) < 0.02
    assert segmentation_loss(-right, target) > 1.5
    empty = torch.zeros(1, 1, 8, 8)
    assert segmentation_loss(torch.full((1, 1, 8, 8), -8.0), empty) < 0.03   # nothing there, nothing seen
    assert segmentation_loss(torch.full((1, 1, 8, 8), 8.0), empty) > 1.0


def test_masks_are_moved_by_the_same_warp_as_their_photos():
    torch.manual_seed(0)
    views = torch.full((16, 3, 64, 64), 0.2)
    masks = torch.zeros(16, 1, 64, 64)
    views[:, :, 10:30, 5:25] = 0.9
    masks[:, :, 10:30, 5:25] = 1.0
    augment = ViewAugmenter("heavy", {op: 0.0 for op in ("brightness", "contrast", "saturation", "hue", "rain",
                                                          "fog", "shadow", "glare", "noise", "motion_blur", "blur")}
                            | {"flip": 0.5, "rotate": 1.0, "perspective": 1.0, "zoom": 1.0})
    moved, moved_masks = augment(views, masks)
    assert not torch.equal(moved_masks, masks)   # the warps did move them
    bright = moved.mean(1, keepdim=True) > 0.55
    inside = moved_masks > 0.5
    agreement = (bright == inside).float().mean()
    assert agreement > 0.97, agreement   # the square's pixels and its mask still coincide


def test_only_masks_that_are_known_make_a_target():
    full = np.zeros((4, 5), bool)
    full[1:3, 1:3] = True
    cone = ObjectAnnotation("cone", True, (1, 1, 3, 3), full)
    assert roadwork_mask(ImageAnnotations("a.jpg", 5, 4, (cone,))).sum() == 4
    assert roadwork_mask(ImageAnnotations("b.jpg", 5, 4, ())).sum() == 0   # every category labelled: none there
    assert roadwork_mask(ImageAnnotations("c.jpg", 5, 4, (), ("cone",))) is None   # only cones were looked for
    assert roadwork_mask(ImageAnnotations("d.jpg", 5, 4, (ObjectAnnotation("cone", True, (1, 1, 3, 3)),))) is None


def test_fine_tuning_learns_the_masks_of_synthetic_scenes(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", 24, seed=2, width=96, height=72)
    config = load_config(None, [*SMALL, "loss.dice_weight=1.0"])
    metrics = train(str(data), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False)
    fits = metrics["backbone_training"]["fits"]
    assert [f["photos_with_masks"] for f in fits] == [12, 12]   # each fold's training half, all annotated
    with open(tmp_path / "run" / "splits" / "backbone-0" / "logs" / "version_0" / "metrics.csv") as handle:
        losses = [float(r["train_segmentation"]) for r in csv.DictReader(handle) if r.get("train_segmentation")]
    assert len(losses) == 3 and losses[-1] < losses[0]   # one value per epoch, and it falls

    photos = orange_block_folder(tmp_path / "plain", 12, seed=1)   # no annotations anywhere
    with pytest.raises(DatasetError, match="no training photo has a mask"):
        train(str(photos), tmp_path / "run2", config, cache_dir=tmp_path / "cache", progress=False)


def test_the_branch_is_served_as_evidence_the_same_on_every_path(tmp_path):
    from roadwork.evaluate.run import evaluate
    from roadwork.serve.onnx import export_onnx
    from roadwork.serve.scorer import load_scorer

    data = write_synthetic_dataset(tmp_path / "synth", 24, seed=2, width=96, height=72)
    config = load_config(None, [*SMALL, "loss.dice_weight=1.0"])
    train(str(data), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False)
    scorer = load_scorer(tmp_path / "run" / "bundle")
    bundle = scorer.bundle
    assert [e.settings["reads"] for e in bundle.evidence_sources] == [0, 1] and bundle.member_evidence == [[0], [1]]
    assert bundle.evidence_fields(1) == ("segmentation.roadwork.max", "segmentation.roadwork.area")
    assert all(member.evidence_fields == 2 for member in bundle.head.members)

    samples = load_samples(str(data))
    features, good, _ = scorer.sample_features(samples, tmp_path / "cache2")
    evidence = torch.cat(features[2] + features[3])   # both branches, every photo
    assert evidence.shape == (48, 2) and ((evidence >= 0) & (evidence <= 1)).all()
    assert evidence[:, 0].std() > 1e-3   # it looks at each photo
    cached, _, _ = scorer.sample_margins(samples, tmp_path / "cache2")
    uncached, _ = scorer.predict_samples(samples, use_cache=False)
    served = [p.probability for p in scorer.predict_images([s.path for s in samples])]
    np.testing.assert_allclose(served, uncached, atol=1e-6)
    # The cache stores float16 features and evidence: the same answer within their rounding.
    np.testing.assert_allclose(scorer.calibration(cached).numpy(), uncached, atol=2e-3)

    # The ONNX export runs the branch too, and answers as the bundle does.
    export_onnx(tmp_path / "run" / "bundle", tmp_path / "onnx")
    exported = load_scorer(tmp_path / "onnx")
    assert sorted(p.name for p in (tmp_path / "onnx").glob("segmentation-*.onnx")) == \
        ["segmentation-0.onnx", "segmentation-1.onnx"]
    np.testing.assert_allclose([p.probability for p in exported.predict_images([s.path for s in samples])], served,
                               atol=1e-4)

    # evaluate measures the branch against the scenes' masks and tints the gallery where it saw roadwork.
    report = evaluate(tmp_path / "run" / "bundle", str(data), tmp_path / "report", cache_dir=tmp_path / "cache2",
                      resamples=50)
    agreement = report["segmentation"]
    shown = sum(bool(roadwork_mask(image).any()) for image in read_annotations(data).values())
    assert agreement["photos"] == 24 and agreement["photos_with_roadwork"] == shown > 8 and 0 <= agreement["iou"] <= 1
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Where the model saw roadwork" in page

    # The branch's evidence changes what the heads say: NULL evidence gives other margins.
    nulled = [list(f) for f in features[:2]] + [[torch.full_like(e, float("nan")) for e in f] for f in features[2:]]
    assert not torch.allclose(scorer.margins_from_features(nulled, samples), cached)

    train(str(data), tmp_path / "run-off", load_config(None, [*SMALL, "loss.dice_weight=1.0", "model.evidence=false"]),
          cache_dir=tmp_path / "cache", progress=False)
    assert load_scorer(tmp_path / "run-off" / "bundle").bundle.evidence_sources == []


def test_mask_agreement_counts_known_masks_only_and_pools_pixels():
    from roadwork.data.records import Sample
    from roadwork.evaluate.segmentation import mask_agreement

    def scene(name: str, box: tuple[int, int, int, int] | None) -> ImageAnnotations:
        mask = np.zeros((8, 8), dtype=bool)
        if box is not None:
            mask[box[1]:box[3], box[0]:box[2]] = True
        objects = (ObjectAnnotation("cone", True, (0, 0, 8, 8), mask),) if box is not None else ()
        return ImageAnnotations(name, 8, 8, objects)

    left = torch.zeros(4, 4)
    left[:, :2] = 1.0   # the left half of the photo, in the branch's coarse grid
    annotations = {"a.jpg": scene("a.jpg", (0, 0, 4, 8)), "b.jpg": scene("b.jpg", None),
                   "c.jpg": ImageAnnotations("c.jpg", 8, 8, (), labelled=("cone",))}   # barriers unknown
    samples = [Sample(n, 1) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")]
    found = mask_agreement(samples, [left, torch.zeros(4, 4), left, left], annotations)
    assert found == {"photos": 2, "photos_with_roadwork": 1, "iou": 1.0, "mean_iou_roadwork_photos": 1.0}
    found = mask_agreement(samples, [left, left, None, None], annotations)   # a false alarm on b
    assert found["iou"] == 0.5 and found["mean_iou_roadwork_photos"] == 1.0
    assert mask_agreement(samples[3:], [left], annotations) is None
