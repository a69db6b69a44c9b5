"""Backbone registry and loaders: real weights for the offline default, tiny random models elsewhere."""

from __future__ import annotations

import json

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from skimage import data, transform
from transformers import AutoModel, Dinov2Config, Dinov2WithRegistersConfig, DINOv3ViTConfig

from roadwork.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsUnavailableError,
    create_backbone,
    list_backbones,
)
from roadwork.errors import RoadworkError


def _normalise(views: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return (views - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet-lite0")


@pytest.fixture
def offline(monkeypatch):
    """Force hub offline mode even when the variable was not set before import."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_registry_names_and_unknown_name():
    names = list_backbones()
    expected = {"efficientnet-lite0", "convnextv2-tiny", "dinov2-small", "hf:<model id or local path>"}
    expected |= {f"dinov3-{v}" for v in ("vits16", "vitb16", "vitl16", "vith16plus", "vit7b16")}
    assert expected <= set(names)
    with pytest.raises(ValueError, match="unknown backbone 'resnet-9000'.*dinov3-vits16.*efficientnet-lite0"):
        create_backbone("resnet-9000")


def test_efficientnet_lite0_classifies_imagenet_photos(lite0):
    photos = [transform.resize(p, (224, 224), anti_aliasing=True) for p in (data.chelsea(), data.coffee())]
    views = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float()
    assert lite0.logits(views).argmax(dim=1).tolist() == [285, 967]  # Egyptian cat, espresso
    pooled, tokens = lite0.features(views, return_tokens=True)
    assert (lite0.feature_dim, lite0.input_size) == (1280, 224)
    assert pooled.shape == (2, 1280) and pooled.dtype == torch.float32
    assert tokens.shape == (2, 7 * 7, 1280)
    torch.testing.assert_close(pooled, tokens.mean(dim=1))  # global average pool of the head's map
    assert lite0.mean == pytest.approx((127 / 255,) * 3) and lite0.std == pytest.approx((128 / 255,) * 3)
    as_bytes = (views * 255).round().to(torch.uint8)
    torch.testing.assert_close(lite0.features(as_bytes), lite0.features(as_bytes.float() / 255))


def test_features_reject_wrong_view_size_and_feed_autograd(lite0):
    with pytest.raises(ValueError, match=r"\[N, 3, 224, 224\]"):
        lite0.features(torch.rand(1, 3, 112, 112))
    head = torch.nn.Linear(lite0.feature_dim, 1)
    head(lite0.features(torch.rand(2, 3, 224, 224, dtype=torch.float64))).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lite0.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_convnextv2_loads_local_checkpoint(tmp_path, suffix):
    torch.manual_seed(0)
    reference = timm.create_model("convnextv2_atto", pretrained=False).eval()
    path = tmp_path / f"atto{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    backbone = create_backbone("convnextv2-atto", weights=path, input_size=64)
    assert (backbone.feature_dim, backbone.input_size) == (320, 64)
    assert backbone.mean == IMAGENET_MEAN and backbone.std == IMAGENET_STD
    views = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feature_map = reference.forward_features(_normalise(views, IMAGENET_MEAN, IMAGENET_STD))
        expected = reference.forward_head(feature_map, pre_logits=True)
    torch.testing.assert_close(backbone.features(views), expected, rtol=1e-4, atol=1e-4)


def _dinov3():
    return DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        patch_size=16, num_register_tokens=4, image_size=64,
    )  # fmt: skip


def _dinov2():
    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56)


def _dinov2_registers():
    return Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56, num_register_tokens=4
    )


@pytest.mark.parametrize(
    ("make_config", "name", "size", "registers"),
    [(_dinov3, "dinov3-vits16", 64, 4), (_dinov2, "dinov2-small", 56, 0), (_dinov2_registers, "hf:", 56, 4)],
)
def test_vit_pools_cls_and_patch_mean_without_registers(tmp_path, make_config, name, size, registers):
    torch.manual_seed(0)
    AutoModel.from_config(make_config()).save_pretrained(tmp_path)
    raw = AutoModel.from_pretrained(tmp_path).eval()
    name, weights = (f"hf:{tmp_path}", None) if name == "hf:" else (name, tmp_path)
    backbone = create_backbone(name, weights=weights, input_size=size)
    assert backbone.model.config._attn_implementation == "sdpa"
    assert (backbone.feature_dim, backbone.input_size) == (64, size)

    views = torch.rand(3, 3, size, size)
    pooled, tokens = backbone.features(views, return_tokens=True)
    n_patches = (size // raw.config.patch_size) ** 2
    assert pooled.shape == (3, 64) and tokens.shape == (3, n_patches, 32)
    with torch.no_grad():
        hidden = raw(pixel_values=_normalise(views, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state
    assert hidden.shape[1] == 1 + registers + n_patches
    patches = hidden[:, 1 + registers :]
    torch.testing.assert_close(tokens, patches, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, torch.cat([hidden[:, 0], patches.mean(dim=1)], dim=-1), rtol=1e-4, atol=1e-5)
    if registers:
        with_registers = torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=-1)
        assert not torch.allclose(pooled, with_registers, atol=1e-3)
    one_by_one = torch.cat([backbone.features(view[None]) for view in views])
    torch.testing.assert_close(one_by_one, pooled, rtol=1e-4, atol=1e-5)


def test_vit_default_and_rounded_input_sizes(tmp_path):
    AutoModel.from_config(_dinov3()).save_pretrained(tmp_path / "v3")
    AutoModel.from_config(_dinov2()).save_pretrained(tmp_path / "v2")
    assert create_backbone(f"hf:{tmp_path / 'v3'}").input_size == 512  # patch 16: 512, not DINOv2's 518
    assert create_backbone("dinov2-base", weights=tmp_path / "v2").input_size == 224
    assert create_backbone("dinov3-vitb16", weights=tmp_path / "v3", input_size=518).input_size == 512
    assert create_backbone("dinov3-vitb16", weights=tmp_path / "v3", input_size=5).input_size == 16
    assert create_backbone("dinov2-base", weights=tmp_path / "v2", input_size=230).input_size == 224


def test_vit_normalisation_comes_from_the_image_processor_config(tmp_path):
    AutoModel.from_config(_dinov2()).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]})
    )
    backbone = create_backbone(f"hf:{tmp_path}")
    assert backbone.mean == (0.5, 0.4, 0.3) and backbone.std == (0.2, 0.25, 0.3)


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("dinov3-vit7b16", "facebook/dinov3-vit7b16-pretrain-lvd1689m"),
        ("convnextv2-nano", "timm/convnextv2_nano.fcmae_ft_in22k_in1k"),
    ],
)
def test_missing_offline_weights_say_what_to_download(offline, name, repo):
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone(name)
    assert isinstance(info.value, RoadworkError)  # the CLI prints these without a traceback
    message = str(info.value)
    assert f"hf download {repo}" in message and "weights=" in message
    assert "Traceback" not in message and info.value.__cause__ is None


def test_missing_local_weights_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        create_backbone("dinov2-small", weights=tmp_path / "nowhere")


def test_describe_says_what_create_builds_without_reading_weights(tmp_path, lite0):
    from roadwork.backbones.base import describe_backbone

    def same(info, backbone) -> bool:
        return (info.name, info.input_size, info.feature_dim, info.mean, info.std) == (
            backbone.name, backbone.input_size, backbone.feature_dim, backbone.mean, backbone.std)

    assert same(describe_backbone("efficientnet-lite0"), lite0)
    torch.save(timm.create_model("convnextv2_atto", pretrained=False).state_dict(), tmp_path / "atto.pth")
    assert same(describe_backbone("convnextv2-atto", weights=tmp_path / "atto.pth", input_size=64),
                create_backbone("convnextv2-atto", weights=tmp_path / "atto.pth", input_size=64))
    AutoModel.from_config(_dinov3()).save_pretrained(tmp_path / "v3")
    (tmp_path / "v3" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    )
    built = create_backbone("dinov3-vitb16", weights=tmp_path / "v3", input_size=500)
    for weights_file in (tmp_path / "v3").glob("*.safetensors"):
        weights_file.unlink()  # describing needs the config alone
    info = describe_backbone("dinov3-vitb16", weights=tmp_path / "v3", input_size=500)
    assert same(info, built) and info.input_size == 496 and info.source == str(tmp_path / "v3")
