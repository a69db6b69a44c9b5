"""Fine-tuning end to end: every backbone training mode on a tiny random ViT (saved with save_pretrained)
and on the embedded convnet trains, saves, reloads and predicts identically; adapted features live in
their own cache namespace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from roadwork.backbones.base import BATCHNORM, BackboneSpec, create_backbone
from roadwork.config import ConfigError, load_config
from roadwork.data.sources import load_samples
from roadwork.features.extract import content_keys
from roadwork.features.source import BackboneSource
from roadwork.serve.bundle import BundleError, load_bundle
from roadwork.serve.predictor import Predictor
from roadwork.train.run import train

from conftest import orange_block_folder

SMALL = ["validation.groups=rows", "validation.folds=2", "validation.serve=folds", "validation.fraction=0.5",
         "model.type=probe",
         "backbone_training.epochs=1", "backbone_training.batch_size=8", "backbone_training.blocks=1",
         "backbone_training.rank=4", "backbone_training.augment=light"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return orange_block_folder(tmp_path_factory.mktemp("finetune") / "data", 16, seed=3)


def _backbone_settings(kind: str, vit_folder) -> list[str]:
    if kind == "vit":
        return [f"data.backbone=hf:{vit_folder}", "data.input_size=32"]
    return ["data.input_size=64"]


def _train(photos, out, cache, kind, mode, vit_folder, *extra):
    config = load_config(None, [*SMALL, f"backbone_training.mode={mode}", *_backbone_settings(kind, vit_folder),
                                *extra])
    return train(str(photos), out, config, cache_dir=cache, progress=False), config


@pytest.mark.parametrize("kind", ["vit", "convnet"])
@pytest.mark.parametrize("mode", ["last_blocks", "lora", "dora", "full"])
def test_mode_trains_saves_reloads_and_predicts_identically(mode, kind, photos, tmp_path, tiny_vit_folder):
    metrics, config = _train(photos, tmp_path / "run", tmp_path / "cache", kind, mode, tiny_vit_folder)
    assert metrics["backbone_training"]["mode"] == mode
    fits = metrics["backbone_training"]["fits"]
    assert len(fits) == 2 and all(f["changed_tensors"] > 0 for f in fits)
    assert fits[0]["digest"] != fits[1]["digest"]   # each fold fine-tuned its own backbone

    bundle = load_bundle(tmp_path / "run" / "bundle")
    assert [s.weights for s in bundle.sources] == ["backbone-0.safetensors", "backbone-1.safetensors"]
    assert bundle.member_sources == [0, 1] and bundle.manifest["backbone_training"]["mode"] == mode
    source = bundle.feature_source(0)
    changed = load_file(str(source.weights_file))
    assert source.changed == fits[0]["digest"] and source.describe()["kind"] == "adapted_backbone"
    base = create_backbone(config.data.backbone, input_size=config.data.input_size)
    base_state = base.state_dict()
    assert set(changed) <= set(base_state)
    if mode == "full":   # every weight but the frozen BatchNorm layers' (a few ViT tensors get no gradient)
        norms = {id(p) for m in base.modules() if isinstance(m, BATCHNORM) for p in m.parameters()}
        weights = {name for name, p in base.named_parameters() if id(p) not in norms}
        assert set(changed) <= weights and len(changed) > 0.8 * len(weights)
    elif mode == "last_blocks":
        last = {id(p) for m in (base.blocks()[-1], *base.final_modules()) for p in m.parameters()}
        trainable = {name for name, p in base.named_parameters() if id(p) in last}
        assert set(changed) <= trainable
    else:   # merged adapters change only the targeted layers' weights
        targets = base.lora_targets
        assert all(name.endswith(".weight") and name.rsplit(".", 2)[-2] in targets for name in changed)

    samples = load_samples(str(photos))
    cached_predictor = Predictor(bundle)
    cached, failures = cached_predictor.predict_samples(samples, cache_dir=tmp_path / "cache")
    assert not failures and not cached_predictor._backbones   # served from the features training cached
    fresh, _ = Predictor.load(tmp_path / "run" / "bundle").predict_samples(samples, use_cache=False)
    np.testing.assert_allclose(np.array(cached), np.array(fresh), atol=1e-5)
    assert np.std(fresh) > 0


def test_adapted_features_never_reuse_frozen_cache_entries(photos, tmp_path, tiny_vit_folder):
    cache = tmp_path / "cache"
    _train(photos, tmp_path / "frozen", cache, "convnet", "frozen", tiny_vit_folder)
    metrics, _ = _train(photos, tmp_path / "full", cache, "convnet", "full", tiny_vit_folder)
    again, _ = _train(photos, tmp_path / "other-seed", cache, "convnet", "full", tiny_vit_folder, "seed=1")
    digests = [f["digest"] for m in (metrics, again) for f in m["backbone_training"]["fits"]]
    assert len(set(digests)) == 4

    samples = load_samples(str(photos))
    key = content_keys(samples[:1])[0][0]
    frozen = BackboneSource(BackboneSpec("efficientnet-lite0", None, 64, 1280, "auto")).store(cache)
    stores = [
        BackboneSource(BackboneSpec("efficientnet-lite0", None, 64, 1280, "auto"), changed=d).store(cache)
        for d in digests
    ]
    assert len({frozen.root, *(s.root for s in stores)}) == 5
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted(s.root.name for s in [frozen, *stores])
    reference = frozen.load([key])[key]
    for store in stores:
        assert not torch.allclose(store.load([key])[key], reference)


def test_resume_reuses_finished_fine_tuning_only_for_the_same_settings(photos, tmp_path, tiny_vit_folder):
    first, _ = _train(photos, tmp_path / "run", tmp_path / "cache", "convnet", "last_blocks", tiny_vit_folder)
    # head and loader settings: the fine-tuned backbones still apply
    config = load_config(None, [*SMALL, "backbone_training.mode=last_blocks", "data.input_size=64",
                                "optim.epochs=3", "data.metadata_dropout=0.2", "data.num_workers=0"])
    resumed = train(str(photos), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False, resume=True)
    assert all(f.get("resumed") for f in resumed["backbone_training"]["fits"])
    assert [f["digest"] for f in resumed["backbone_training"]["fits"]] == \
        [f["digest"] for f in first["backbone_training"]["fits"]]
    changed = load_config(None, [*SMALL, "backbone_training.mode=last_blocks", "data.input_size=64",
                                 "backbone_training.epochs=2"])
    refit = train(str(photos), tmp_path / "run", changed, cache_dir=tmp_path / "cache", progress=False, resume=True)
    assert not any(f.get("resumed") for f in refit["backbone_training"]["fits"])
    assert all(f["epochs"] == 2 for f in refit["backbone_training"]["fits"])


def test_sources_that_do_not_fit_the_heads_are_refused_and_format_2_bundles_still_load(photos, tmp_path,
                                                                                       tiny_vit_folder):
    from roadwork.serve.bundle import MANIFEST, manifest_digest

    _train(photos, tmp_path / "run", tmp_path / "cache", "convnet", "lora", tiny_vit_folder)
    path = tmp_path / "run" / "bundle"
    samples = load_samples(str(photos))[:6]
    expected, _ = Predictor.load(path).predict_samples(samples, use_cache=False)
    manifest = json.loads((path / MANIFEST).read_text())

    def rewrite(**changes):
        edited = {**manifest, **changes}
        edited = {k: v for k, v in edited.items() if v is not None}
        edited["manifest_sha256"] = manifest_digest(edited)
        (path / MANIFEST).write_text(json.dumps(edited))

    rewrite(member_sources=[0, 2])
    with pytest.raises(BundleError, match="member_sources must name one of the 2 sources"):
        load_bundle(path)
    rewrite(member_sources=[0, 0])   # source 1 would be stored and never read
    with pytest.raises(BundleError, match="every source must be read"):
        load_bundle(path)
    rewrite(sources=[{"name": "x", "kind": "adapted_backbone", "weights": "elsewhere.safetensors"},
                     manifest["sources"][1]])
    with pytest.raises(BundleError, match="verified file"):
        load_bundle(path)
    # Format 2, as release 0.1.0 wrote fine-tuned bundles: one adapted backbone per head.
    old = {"format_version": 2, "sources": None, "member_sources": None,
           "adapted_backbones": ["backbone-0.safetensors", "backbone-1.safetensors"]}
    rewrite(**old)
    bundle = load_bundle(path)
    assert [s.weights for s in bundle.sources] == old["adapted_backbones"] and bundle.member_sources == [0, 1]
    assert Predictor(bundle).predict_samples(samples, use_cache=False)[0] == pytest.approx(expected, abs=1e-6)
    rewrite(**{**old, "adapted_backbones": ["backbone-0.safetensors"]})   # one file for two heads
    with pytest.raises(BundleError, match="adapted_backbones"):
        load_bundle(path)
    rewrite(**{**old, "adapted_backbones": None}, backbone_training=None)  # from before fine-tuning existed
    bundle = load_bundle(path)
    assert [s.weights for s in bundle.sources] == [None] and bundle.member_sources == [0, 0]


def test_backbone_training_settings_are_validated_and_auto_is_announced(photos, tmp_path, capsys):
    with pytest.raises(ConfigError, match="backbone_training.crop_scale"):
        load_config(None, ["backbone_training.crop_scale=[0.8, 0.3]"])
    with pytest.raises(ConfigError, match="backbone_training.mode"):
        load_config(None, ["backbone_training.mode=half"])
    config = load_config(None, [*SMALL, "backbone_training.mode=auto", "data.input_size=64"])
    metrics = train(str(photos), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False)
    assert metrics["backbone_training"]["mode"] in ("frozen", "last_blocks", "lora", "dora", "full")
    assert f"backbone training: {metrics['backbone_training']['mode']}" in capsys.readouterr().err


def test_an_interrupted_fine_tuning_continues_from_its_last_epoch(photos, tmp_path, tiny_vit_folder, monkeypatch):
    from roadwork.train.finetune import FinetuneModule

    def crash(module):
        if module.current_epoch == 1:   # the first epoch's checkpoint is written; the run dies in the second
            raise RuntimeError("killed")

    settings = ["backbone_training.epochs=3", "validation.folds=1"]
    with monkeypatch.context() as patch:
        patch.setattr(FinetuneModule, "on_train_epoch_end", crash, raising=False)
        with pytest.raises(RuntimeError, match="killed"):
            _train(photos, tmp_path / "run", tmp_path / "cache", "convnet", "full", tiny_vit_folder, *settings)
    assert not (tmp_path / "run" / "bundle").exists()
    config = load_config(None, [*SMALL, "backbone_training.mode=full", "data.input_size=64", *settings])
    resumed = train(str(photos), tmp_path / "run", config, cache_dir=tmp_path / "cache", progress=False, resume=True)
    (fit,) = resumed["backbone_training"]["fits"]
    assert fit["continued_from_epoch"] == 1 and fit["epochs"] == 3


def test_auto_fine_tunes_only_what_was_measured_and_only_where_it_is_affordable():
    from roadwork.backbones.base import BackboneSpec
    from roadwork.config import BackboneTrainingConfig
    from roadwork.train.finetune import AUTO_MAX_PHOTOS_ON_CPU, AUTO_MODES, resolve_mode

    auto = BackboneTrainingConfig()
    embedded = BackboneSpec("efficientnet-lite0", None, 224, 1280, "auto")
    mode = AUTO_MODES["efficientnet-lite0"]
    assert resolve_mode(auto, embedded, 400, "cpu")[0].mode == mode != "frozen"
    assert resolve_mode(auto, embedded, AUTO_MAX_PHOTOS_ON_CPU + 1, "cpu")[0].mode == "frozen"
    assert resolve_mode(auto, embedded, AUTO_MAX_PHOTOS_ON_CPU + 1, "cuda")[0].mode == mode
    vit = BackboneSpec("dinov3-vit7b16", None, 512, 8192, "auto")
    assert resolve_mode(auto, vit, 400, "cuda")[0].mode == "frozen"
    chosen, why = resolve_mode(BackboneTrainingConfig(mode="dora"), vit, 400, "cpu")
    assert chosen.mode == "dora" and why == "as configured"


MULTIVIEW = ["model.type=multiview", "model.d_model=16", "model.heads=2", "model.attention_layers=1",
             "model.prune_k=null", "optim.epochs=3", "optim.batch_size=8"]


@pytest.mark.parametrize(("mode", "head"), [("frozen", "probe"), ("frozen", "multiview"), ("last_blocks", "probe")])
def test_refit_serves_one_backbone_and_one_head_fitted_on_every_photo(mode, head, photos, tmp_path, tiny_vit_folder):
    heads = MULTIVIEW if head == "multiview" else []
    folds, _ = _train(photos, tmp_path / "folds", tmp_path / "cache", "convnet", mode, tiny_vit_folder, *heads)
    metrics, _ = _train(photos, tmp_path / "refit", tmp_path / "cache", "convnet", mode, tiny_vit_folder, *heads,
                        "validation.serve=refit")
    assert metrics["serving"]["model"] == "refit" and metrics["serving"]["heads"] == 1
    assert folds["serving"] == {"model": "folds", "heads": 2}
    # The estimate and the calibration are the folds': refitting changes what is served, not what was measured.
    assert metrics["validation"]["mcc"] == folds["validation"]["mcc"]
    assert metrics["calibration"] == folds["calibration"]
    bundle = load_bundle(tmp_path / "refit" / "bundle")
    assert bundle.manifest["kind"] == "head" and len(bundle.head.members) == 1
    if mode == "frozen":
        assert [s.weights for s in bundle.sources] == [None]
    else:   # one backbone fine-tuned on all 16 photos, none of the folds'
        assert [s.weights for s in bundle.sources] == ["backbone-0.safetensors"]
        digests = {f["digest"] for f in folds["backbone_training"]["fits"]}
        assert metrics["serving"]["backbone"]["digest"] not in digests
        assert (tmp_path / "refit" / "refit" / "backbone-0" / "backbone.safetensors").is_file()
        from roadwork.serve.onnx import export_onnx

        exported = export_onnx(tmp_path / "refit" / "bundle", tmp_path / "onnx")
        assert sorted(exported["files"]) == ["backbone-0.onnx", "head-0.onnx"]   # one backbone graph
    samples = load_samples(str(photos))
    refit, failures = Predictor(bundle).predict_samples(samples, use_cache=False)
    assert not failures and np.std(refit) > 0
    # The refit head learnt from every photo: its fingerprints are the folds' (the same photos).
    assert bundle.training_fingerprints() == load_bundle(tmp_path / "folds" / "bundle").training_fingerprints()
