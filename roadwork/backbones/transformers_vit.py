"""Vision transformers through transformers `AutoModel`: DINOv3, DINOv2 and any `hf:<id or path>`.

Pooled features follow the DINO linear-probe recipe: concat(CLS, mean of patch tokens), with
register tokens (DINOv3 has 4) left out of the mean because they carry global scratch state, not
image content.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from roadwork.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneInfo,
    register_backbone,
    weights_unavailable,
)
from roadwork.errors import RoadworkError

_DINOV3 = ("vits16", "vitb16", "vitl16", "vith16plus", "vit7b16")
_DINOV2 = ("small", "base", "large", "giant")
_HUB_IDS = {
    **{f"dinov3-{v}": f"facebook/dinov3-{v}-pretrain-lvd1689m" for v in _DINOV3},
    **{f"dinov2-{v}": f"facebook/dinov2-{v}" for v in _DINOV2},
}
# The view side used when the caller gives none. DINOv3 has patch 16, so 512 (518 is DINOv2's patch-14
# size); DINOv2 is run at its classic 224 rather than its 518 pretraining size to keep extraction cheap.
_DEFAULT_INPUT_SIZE = {"dinov3_vit": 512, "dinov2": 224, "dinov2_with_registers": 224}


class TransformersViT(Backbone):
    """A ViT whose output sequence is [CLS, registers..., patches...]."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        *,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        config = model.config
        super().__init__(name, feature_dim=2 * config.hidden_size, input_size=input_size, mean=mean, std=std,
                         token_dim=config.hidden_size)
        self.model = model
        self.patch_size = _side(config.patch_size)
        self.num_prefix_tokens = 1 + getattr(config, "num_register_tokens", 0)

    # Attention and MLP projections under the names transformers uses for DINOv2/DINOv3 and older ViTs.
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "up_proj", "down_proj",
                    "query", "key", "value", "dense")

    def blocks(self) -> list[torch.nn.Module]:
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if layers is None:
            layers = getattr(getattr(self.model, "model", None), "layer", None)  # DINOv3
        if layers is None:
            raise RoadworkError(f"{self.name}: cannot find the transformer layers to adapt")
        return list(layers)

    def final_modules(self) -> list[torch.nn.Module]:
        return [m for m in (getattr(self.model, "layernorm", None), getattr(self.model, "norm", None))
                if isinstance(m, torch.nn.Module)]

    def gradient_checkpointing(self, enable: bool = True) -> None:
        if not self.model.supports_gradient_checkpointing:
            raise RoadworkError(f"{self.name}: this transformers model does not support gradient checkpointing")
        # transformers 5 renamed the switch; >= 4.56 (our floor) has only the old name.
        if hasattr(self.model, "activation_checkpointing_enable"):
            if enable:
                self.model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.model.activation_checkpointing_disable()
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()

    def encode(self, x: Tensor, return_tokens: bool) -> tuple[Tensor, ...]:
        hidden = self.model(pixel_values=x).last_hidden_state
        patches = hidden[:, self.num_prefix_tokens :]
        expected = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        if patches.shape[1] != expected:
            raise RoadworkError(
                f"{self.name}: expected {expected} patch tokens after CLS and "
                f"{self.num_prefix_tokens - 1} registers, got {patches.shape[1]}; this model's token layout "
                "is not [CLS, registers, patches]"
            )
        pooled = torch.cat([hidden[:, 0].float(), patches.float().mean(dim=1)], dim=-1)
        return (pooled, patches) if return_tokens else (pooled,)


def _side(size: int | list[int] | tuple[int, int]) -> int:
    """Configs store square sizes either as an int or as (height, width)."""
    return size if isinstance(size, int) else size[0]


def _normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from the model's image-processor config when it has one, else ImageNet statistics."""
    from transformers.utils import cached_file

    path = cached_file(
        source,
        "preprocessor_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        _raise_exceptions_for_gated_repo=False,
    )
    processor = json.loads(Path(path).read_text()) if path else {}
    return tuple(processor.get("image_mean", IMAGENET_MEAN)), tuple(processor.get("image_std", IMAGENET_STD))


def _source(name: str, weights: str | Path | None) -> tuple[str, str]:
    repo = _HUB_IDS.get(name) or name.removeprefix("hf:")
    source = str(weights) if weights is not None else repo
    if not source:
        raise RoadworkError("an hf: backbone needs a model id or a local path, e.g. hf:facebook/dinov2-small")
    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"local model folder not found: {source}")   # not a hub id to download
    return repo, source


def _input_size(config: object, requested: int | None) -> int:
    """The requested (or family default) side, rounded to whole patches: a ViT sees whole patches only."""
    patch = _side(config.patch_size)
    size = requested or _DEFAULT_INPUT_SIZE.get(config.model_type) or _side(config.image_size)
    return max(patch, round(size / patch) * patch)


def describe_transformers_vit(name: str, *, weights: str | Path | None, input_size: int | None) -> BackboneInfo:
    """From the model's config.json and preprocessor config alone (no weights are read)."""
    from transformers import AutoConfig

    repo, source = _source(name, weights)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        if weights is not None:
            raise
        raise weights_unavailable(name, repo, "a folder saved with `save_pretrained`", err) from None
    mean, std = _normalisation(source)
    return BackboneInfo(name, _input_size(config, input_size), 2 * config.hidden_size, mean, std, source)


@register_backbone(*_HUB_IDS, "hf:<model id or local path>", describe=describe_transformers_vit)
def transformers_vit(
    name: str, *, weights: str | Path | None, device: str | torch.device, input_size: int | None
) -> TransformersViT:
    """Load with `AutoModel.from_pretrained` (bf16 on CUDA, float32 elsewhere).

    transformers picks SDPA attention by default where the model has it.
    """
    from transformers import AutoModel

    repo, source = _source(name, weights)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        model = AutoModel.from_pretrained(source, dtype=dtype)
    except OSError as err:
        if weights is not None:
            raise
        raise weights_unavailable(name, repo, "a folder saved with `save_pretrained`", err) from None
    mean, std = _normalisation(source)
    return TransformersViT(name, model, input_size=_input_size(model.config, input_size), mean=mean, std=std)
