"""timm convnets: ConvNeXt V2, and the wrapper the EfficientNet default shares."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from roadwork.backbones.base import Backbone, BackboneInfo, register_backbone, weights_unavailable

# ImageNet-22k pretraining then 1k fine-tuning gives the best frozen features where timm has it;
# atto was only fine-tuned on 1k. The plain `.fcmae` tags are masked-autoencoder weights that need
# fine-tuning before their features are linearly separable, so they are not used.
_CONVNEXTV2 = {
    "convnextv2-atto": "convnextv2_atto.fcmae_ft_in1k",
    "convnextv2-nano": "convnextv2_nano.fcmae_ft_in22k_in1k",
    "convnextv2-tiny": "convnextv2_tiny.fcmae_ft_in22k_in1k",
    "convnextv2-base": "convnextv2_base.fcmae_ft_in22k_in1k",
    "convnextv2-large": "convnextv2_large.fcmae_ft_in22k_in1k",
}


class TimmBackbone(Backbone):
    """A timm classifier used as a feature extractor: pooled pre-logits features, spatial map as tokens."""

    channels_last = True

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        *,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__(name, feature_dim=model.head_hidden_size, input_size=input_size, mean=mean, std=std,
                         token_dim=model.num_features)
        self.model = model

    def encode(self, x: Tensor, return_tokens: bool) -> tuple[Tensor, ...]:
        feature_map = self.model.forward_features(x)
        pooled = self.model.forward_head(feature_map, pre_logits=True)
        return (pooled, feature_map.flatten(2).transpose(1, 2)) if return_tokens else (pooled,)

    # The 1x1 (pointwise) convolutions of EfficientNet blocks and the MLP of ConvNeXt blocks:
    # they hold most of the weights; depthwise convolutions are left alone.
    lora_targets = ("conv_pw", "conv_pwl", "fc1", "fc2")

    def blocks(self) -> list[torch.nn.Module]:
        if hasattr(self.model, "stages"):  # ConvNeXt
            return [block for stage in self.model.stages for block in stage.blocks]
        return [block for stage in self.model.blocks for block in stage]  # EfficientNet

    def final_modules(self) -> list[torch.nn.Module]:
        names = ("conv_head", "bn2", "norm_pre") if not hasattr(self.model, "stages") else ("norm_pre",)
        found = [getattr(self.model, n) for n in names if isinstance(getattr(self.model, n, None), torch.nn.Module)]
        head_norm = getattr(getattr(self.model, "head", None), "norm", None)
        return found + ([head_norm] if isinstance(head_norm, torch.nn.Module) else [])

    def gradient_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def logits(self, views: Tensor) -> Tensor:
        """Class logits of the pretrained head: the check that weights were loaded correctly."""
        return self.run(views, lambda x: (self.model(x),))[0]


def describe_convnextv2(name: str, *, weights: str | Path | None, input_size: int | None) -> BackboneInfo:
    """From timm's pretrained config, and the architecture built on the meta device (no memory, no weights)."""
    import timm

    arch = _CONVNEXTV2[name]
    cfg = timm.models.get_pretrained_cfg(arch)
    with torch.device("meta"):
        feature_dim = timm.create_model(arch, pretrained=False).head_hidden_size
    return BackboneInfo(name, input_size or cfg.input_size[-1], feature_dim, tuple(cfg.mean), tuple(cfg.std),
                        str(weights) if weights is not None else cfg.hf_hub_id)


@register_backbone(*_CONVNEXTV2, describe=describe_convnextv2)
def convnextv2(
    name: str, *, weights: str | Path | None, device: str | torch.device, input_size: int | None
) -> TimmBackbone:
    """ConvNeXt V2 through timm; `weights` is a .safetensors/.pth state dict loaded by timm's own loader."""
    import timm

    arch = _CONVNEXTV2[name]
    # A file overlay sends a local checkpoint through the same loader (and key filter) as a download.
    overlay = {"file": str(weights)} if weights is not None else None
    try:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay)
    except OSError as err:
        if weights is not None:
            raise
        repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
        raise weights_unavailable(name, repo, "a checkpoint file (.safetensors or .pth)", err) from None
    cfg = model.pretrained_cfg
    return TimmBackbone(name, model, input_size=input_size or cfg["input_size"][-1], mean=cfg["mean"], std=cfg["std"])
