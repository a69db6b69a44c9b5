"""Backbone adaptation modes on the embedded convnet and a tiny random ViT saved and reloaded locally."""

from __future__ import annotations

import pytest
import torch

from roadwork.backbones.adapt import adapt_backbone, lora_target_names, merge_adapters
from roadwork.backbones.base import BATCHNORM, create_backbone
from roadwork.errors import RoadworkError


def _backbone(kind: str, folder):
    if kind == "vit":
        return create_backbone(f"hf:{folder}", input_size=32)
    return create_backbone("efficientnet-lite0", input_size=64)


def _step(backbone, views: torch.Tensor) -> None:
    """One optimiser step pushing the pooled features around: whatever trains must change."""
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.5)
    backbone.train()
    backbone(views).square().mean().backward()
    optimizer.step()
    backbone.eval()


@pytest.mark.parametrize("kind", ["vit", "convnet"])
@pytest.mark.parametrize("mode", ["frozen", "last_blocks", "lora", "dora", "full"])
def test_each_mode_trains_only_its_part_and_merges_to_the_same_function(kind, mode, tiny_vit_folder):
    torch.manual_seed(0)
    backbone = _backbone(kind, tiny_vit_folder)
    size = backbone.input_size
    views = torch.rand(4, 3, size, size)
    total = len(list(backbone.parameters()))
    trainable = adapt_backbone(backbone, mode, blocks=1, rank=4, alpha=8)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    if mode == "frozen":
        assert trainable == []
        return
    if mode == "full":
        assert len(trainable) == total - (sum(2 for m in backbone.modules() if isinstance(m, BATCHNORM)))
    elif mode == "last_blocks":
        last = backbone.blocks()[-1]
        last_names = {f"{n}" for n, _ in last.named_parameters()}
        assert 0 < len(trainable) < total / 2
        assert any(name.endswith(tuple(last_names)) for name in trainable)
    else:
        assert trainable and all("lora_" in name for name in trainable)
        assert any("lora_magnitude" in name for name in trainable) == (mode == "dora")
    _step(backbone, views)
    changed = {n for n, p in backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= set(trainable) and changed
    with torch.no_grad():
        adapted = backbone.features(views)
    merge_adapters(backbone)
    assert not any("lora_" in n for n, _ in backbone.named_parameters())
    assert torch.allclose(backbone.features(views), adapted, atol=1e-4)


def test_frozen_batchnorm_keeps_its_statistics_while_training():
    backbone = create_backbone("efficientnet-lite0", input_size=64)
    adapt_backbone(backbone, "full", batchnorm="frozen")
    norm = next(m for m in backbone.modules() if isinstance(m, BATCHNORM))
    stats = norm.running_mean.clone()
    backbone.train()
    assert not norm.training and backbone.training
    backbone(torch.rand(4, 3, 64, 64) * 255).sum().backward()
    assert torch.equal(norm.running_mean, stats) and norm.weight.grad is None
    adapt_backbone(backbone, "full", batchnorm="train")
    backbone.train()
    backbone(torch.rand(4, 3, 64, 64))
    assert norm.training and not torch.equal(norm.running_mean, stats)


def test_lora_targets_per_family_and_bad_settings(tiny_vit_folder):
    vit = _backbone("vit", tiny_vit_folder)
    assert lora_target_names(vit) == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    convnet = _backbone("convnet", tiny_vit_folder)
    assert lora_target_names(convnet) == ["conv_pw", "conv_pwl"]
    with pytest.raises(RoadworkError, match="none of the LoRA target modules"):
        lora_target_names(convnet, ["nothing_here"])
    with pytest.raises(ValueError, match="cannot train the last 99"):
        adapt_backbone(vit, "last_blocks", blocks=99)
    with pytest.raises(ValueError, match="unknown backbone training mode"):
        adapt_backbone(vit, "half")


@pytest.mark.parametrize("kind", ["vit", "convnet"])
def test_gradient_checkpointing_gives_the_same_gradients(kind, tiny_vit_folder):
    torch.manual_seed(0)
    backbone = _backbone(kind, tiny_vit_folder)
    adapt_backbone(backbone, "full")
    backbone.train()
    views = torch.rand(2, 3, backbone.input_size, backbone.input_size)

    def gradients() -> dict[str, torch.Tensor]:
        torch.manual_seed(1)   # DINOv3 rescales its position embeddings at random while training
        backbone.zero_grad()
        backbone(views).square().sum().backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}

    plain = gradients()
    backbone.gradient_checkpointing(True)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and plain
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-5, rtol=1e-4) for n in plain)
