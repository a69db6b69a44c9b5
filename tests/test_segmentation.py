"""The segmentation branch of backbone fine-tuning: its loss, masks that move with their photos, and
training on synthetic scenes' masks (and on none, with a clear error)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from roadwork.config import load_config
from roadwork.data.annotations import ImageAnnotations, ObjectAnnotation, roadwork_mask
from roadwork.data.augment import ViewAugmenter
from roadwork.data.records import DatasetError
from roadwork.data.synth import write_synthetic_dataset
from roadwork.losses import segmentation_loss
from roadwork.train.run import train

from conftest import orange_block_folder

SMALL = ["validation.groups=rows", "validation.folds=2", "validation.fraction=0.5", "model.type=probe",
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
