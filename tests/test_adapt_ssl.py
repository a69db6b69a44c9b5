"""Self-supervised adaptation (`roadwork adapt`, SimCLR): the contrastive loss, adaptation of a tiny
random ViT and the embedded convnet, and training on top of the adapted backbone."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from roadwork.config import AdaptConfig, load_config
from roadwork.errors import RoadworkError
from roadwork.features.source import adapted_source
from roadwork.losses import nt_xent
from roadwork.serve.bundle import load_bundle
from roadwork.train.adapt import adapt
from roadwork.train.run import train

from conftest import orange_block_folder


def test_nt_xent_is_low_when_twins_agree_and_high_when_they_do_not():
    torch.manual_seed(0)
    one = torch.randn(8, 16)
    agree = nt_xent(torch.cat([one, one + 0.01 * torch.randn(8, 16)]), temperature=0.1)
    shuffled = nt_xent(torch.cat([one, one[torch.randperm(8)]]), temperature=0.1)
    assert agree < 0.1 < shuffled
    assert torch.isfinite(nt_xent(torch.zeros(4, 3), temperature=0.2))   # degenerate: log(2N - 1), not NaN


@pytest.mark.parametrize("kind", ["vit", "convnet"])
def test_simclr_adapts_saves_and_its_features_never_reuse_the_frozen_cache(kind, tiny_vit_folder, tmp_path):
    photos = orange_block_folder(tmp_path / "data", 16, seed=6)
    backbone = f"hf:{tiny_vit_folder}" if kind == "vit" else "efficientnet-lite0"
    size = 32 if kind == "vit" else 64
    settings = AdaptConfig(epochs=3, batch_size=8, mode="full" if kind == "vit" else "last_blocks", augment="light")
    manifest = adapt([str(photos)], tmp_path / "adapted", settings, backbone=backbone, input_size=size,
                     device="cpu", progress=False)
    assert manifest["photos"] == 16 and manifest["changed_tensors"] > 0 and manifest["epochs"] == 3
    with open(tmp_path / "adapted" / "logs" / "version_0" / "metrics.csv") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle) if r.get("train_loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]

    source = adapted_source(tmp_path / "adapted")
    assert source.changed == manifest["changed_weights_sha256"] and source.spec.input_size == size
    views = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    again = adapted_source(tmp_path / "adapted").load("cpu").features(views)
    assert torch.allclose(source.load("cpu").features(views), again)   # saved and reloaded alike
    from roadwork.features.source import BackboneSource

    frozen = BackboneSource(source.spec)
    assert source.store(tmp_path / "cache").root != frozen.store(tmp_path / "cache").root
    assert not torch.allclose(frozen.load("cpu").features(views), again)   # it did change


def test_train_fits_on_the_adapted_backbone_and_the_bundle_serves_it(tmp_path):
    photos = orange_block_folder(tmp_path / "data", 16, seed=6)
    adapt([str(photos)], tmp_path / "adapted", AdaptConfig(epochs=2, batch_size=8, augment="light"),
          backbone="efficientnet-lite0", input_size=64, device="cpu", progress=False)
    common = ["validation.groups=rows", "validation.folds=2", "validation.serve=folds", "model.type=probe",
              "data.input_size=64",
              f"data.adapted={tmp_path / 'adapted'}"]
    train(str(photos), tmp_path / "frozen", load_config(None, [*common, "backbone_training.mode=frozen"]),
          cache_dir=tmp_path / "cache", progress=False)
    bundle = load_bundle(tmp_path / "frozen" / "bundle")
    assert [s.weights for s in bundle.sources] == ["backbone-0.safetensors"] and bundle.member_sources == [0, 0]
    stored = load_file(str(tmp_path / "frozen" / "bundle" / "backbone-0.safetensors"))
    assert set(stored) == set(load_file(str(tmp_path / "adapted" / "backbone.safetensors")))   # adapt's weights

    metrics = train(str(photos), tmp_path / "tuned", load_config(None, [*common, "backbone_training.mode=last_blocks",
                                                                         "backbone_training.epochs=1",
                                                                         "backbone_training.batch_size=8",
                                                                         "backbone_training.blocks=1"]),
                    cache_dir=tmp_path / "cache", progress=False)
    tuned = load_file(str(tmp_path / "tuned" / "bundle" / "backbone-0.safetensors"))
    assert set(stored) <= set(tuned)   # fine-tuning started from the adapted weights: it stores them too
    assert metrics["backbone_training"]["mode"] == "last_blocks"

    (tmp_path / "adapted" / "adapted.json").write_text(json.dumps({"backbone": {}}))
    with pytest.raises(RoadworkError, match="data.adapted"):
        train(str(photos), tmp_path / "bad", load_config(None, common), cache_dir=tmp_path / "cache", progress=False)


def test_explora_distils_itself_with_lora_everywhere_and_the_last_block_open(tiny_vit_folder, tmp_path):
    from roadwork.backbones.base import create_backbone
    from roadwork.losses import dino_loss

    photo = torch.tensor([[4.0, 0.0], [0.0, 4.0]])   # two photos, each with its own prototype
    teacher = photo.repeat(2, 1)   # the two global crops
    matching = dino_loss(photo.repeat(3, 1) * 10, teacher, torch.zeros(2), crops=3, student_temperature=0.1,
                         teacher_temperature=0.04)
    opposite = dino_loss(photo.flip(1).repeat(3, 1) * 10, teacher, torch.zeros(2), crops=3,
                         student_temperature=0.1, teacher_temperature=0.04)
    assert matching < 0.01 < opposite

    photos = orange_block_folder(tmp_path / "data", 16, seed=6)
    settings = AdaptConfig(method="explora", epochs=8, batch_size=8, blocks=1, local_crops=2, augment="light",
                           lr=1e-3, projection_dim=32, teacher_momentum=0.9)
    manifest = adapt([str(photos)], tmp_path / "adapted", settings, backbone=f"hf:{tiny_vit_folder}", input_size=32,
                     device="cpu", progress=False)
    with open(tmp_path / "adapted" / "logs" / "version_0" / "metrics.csv") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle) if r.get("train_loss")]
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])   # a moving target: compare epoch pairs
    changed = load_file(str(tmp_path / "adapted" / "backbone.safetensors"))
    base = create_backbone(f"hf:{tiny_vit_folder}", input_size=32)
    last = {name for name, p in base.named_parameters()
            if any(p is q for m in (base.blocks()[-1], *base.final_modules()) for q in m.parameters())}
    assert set(changed) - last   # earlier blocks changed too: their merged LoRA adapters
    assert manifest["method"] == "explora"
