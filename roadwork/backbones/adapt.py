"""Make part of a backbone trainable: the last blocks, LoRA or DoRA adapters (peft), or everything.

Adapters are injected in place (``peft.inject_adapter_in_model``), so the backbone keeps its own
``encode``; ``merge_adapters`` folds them back into plain weights for serving, so an adapted
backbone is saved and loaded like any other. Which modules LoRA/DoRA adapt per family is the
backbone class's ``lora_targets`` (ViTs: attention and MLP projections; EfficientNet: pointwise
convolutions; ConvNeXt: the block MLP).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal, TypeVar

import torch
from safetensors.torch import save
from torch import Tensor, nn

from roadwork.backbones.base import BATCHNORM, Backbone, create_backbone
from roadwork.errors import RoadworkError

M = TypeVar("M", bound=nn.Module)
Mode = Literal["frozen", "last_blocks", "lora", "dora", "full"]
MODES: tuple[str, ...] = ("frozen", "last_blocks", "lora", "dora", "full")


def lora_target_names(backbone: Backbone, targets: Sequence[str] | None = None) -> list[str]:
    """The leaf names to adapt that exist in this model (a Linear or Conv2d of that name)."""
    wanted = tuple(targets) if targets else backbone.lora_targets
    present = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules()
               if isinstance(module, (nn.Linear, nn.Conv2d))}
    found = [name for name in wanted if name in present]
    if not found:
        raise RoadworkError(f"{backbone.name}: none of the LoRA target modules {list(wanted)} exist in this model")
    return found


def adapt_backbone(backbone: Backbone, mode: Mode, *, blocks: int = 2, rank: int = 8, alpha: float = 16.0,
                   dropout: float = 0.0, targets: Sequence[str] | None = None,
                   batchnorm: Literal["frozen", "train"] = "frozen") -> list[str]:
    """Set which parameters train (in place) and return their names.

    ``batchnorm="frozen"`` keeps BatchNorm statistics and affine parameters as pretrained (eval
    mode whatever the backbone's mode): with the small batches of fine-tuning on a CPU, updated
    running statistics are noisier than the ImageNet ones.
    """
    if mode not in MODES:
        raise ValueError(f"unknown backbone training mode {mode!r}; choose one of {', '.join(MODES)}")
    backbone.requires_grad_(False)
    if mode == "full":
        backbone.requires_grad_(True)
    elif mode == "last_blocks":
        all_blocks = backbone.blocks()
        if not 1 <= blocks <= len(all_blocks):
            raise ValueError(f"{backbone.name} has {len(all_blocks)} blocks; cannot train the last {blocks}")
        for module in [*all_blocks[-blocks:], *backbone.final_modules()]:
            module.requires_grad_(True)
    elif mode in ("lora", "dora"):
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, use_dora=mode == "dora",
                            target_modules=lora_target_names(backbone, targets))
        inject_adapter_in_model(config, backbone.model)
        for name, parameter in backbone.named_parameters():
            parameter.requires_grad_("lora_" in name)
    backbone.batchnorm_frozen = batchnorm == "frozen"
    if backbone.batchnorm_frozen:
        for module in backbone.modules():
            if isinstance(module, BATCHNORM):
                module.requires_grad_(False)
    backbone.train(backbone.training)  # re-apply the BatchNorm policy
    return [name for name, parameter in backbone.named_parameters() if parameter.requires_grad]


def merge_adapters(model: M) -> M:
    """Fold every LoRA/DoRA adapter into its base layer and put the plain layer back (in place): a
    backbone, or any model adapters were injected into (a VLM)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def weight_snapshot(backbone: Backbone) -> dict[str, Tensor]:
    """A copy of every weight and buffer, to find later which ones training changed."""
    return {name: value.detach().clone() for name, value in backbone.state_dict().items()}


def changed_weights(backbone: Backbone, before: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors (adapters merged first) that differ from ``before``: what a bundle stores beside the
    base weights' name. Full fine-tuning changes them all; the last blocks or LoRA/DoRA a part."""
    merge_adapters(backbone)
    after = backbone.state_dict()
    if set(after) != set(before):
        raise RoadworkError(f"{backbone.name}: merged weights do not match the base model's names")
    return {name: value.detach().cpu().contiguous() for name, value in after.items()
            if not torch.equal(value.cpu(), before[name].cpu())}


def weights_digest(changed: dict[str, Tensor]) -> str:
    """SHA-256 of stored changed weights: names the cache namespace of the adapted backbone's features."""
    return hashlib.sha256(save(changed)).hexdigest()


def load_changed_weights(backbone: Backbone, changed: dict[str, Tensor]) -> Backbone:
    """Put stored changed tensors into a freshly built base backbone (in place), checking every name and shape."""
    state = backbone.state_dict()
    for name, value in changed.items():
        if name not in state:
            raise RoadworkError(f"{backbone.name}: adapted weight {name!r} does not exist in the base model")
        if state[name].shape != value.shape:
            raise RoadworkError(f"{backbone.name}: adapted weight {name!r} has shape {list(value.shape)}, "
                                f"the base model {list(state[name].shape)}")
    backbone.load_state_dict(changed, strict=False)
    return backbone


def create_adapted_backbone(name: str, changed: dict[str, Tensor], *, weights: str | None, input_size: int | None,
                            device: str | torch.device) -> Backbone:
    """The base backbone ``create_backbone`` builds, with fine-tuned ``changed`` weights put in, frozen."""
    base = create_backbone(name, weights=weights, device="cpu", input_size=input_size)
    return load_changed_weights(base, changed).freeze(device)
