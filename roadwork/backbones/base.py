"""The frozen-backbone contract and the name registry.

Every family (one module each) registers, per name, a factory that builds the backbone and a
`describe` function that says what it is (input size, feature size, normalisation, weight source)
without loading weights, like timm's pretrained configs: runs whose features are all cached never
build a model. `create_backbone` and `describe_backbone` import the family modules on first use, so
importing this module stays cheap.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from roadwork.errors import RoadworkError

BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FAMILY_MODULES = (
    "roadwork.backbones.efficientnet",
    "roadwork.backbones.timm_models",
    "roadwork.backbones.transformers_vit",
)


class WeightsUnavailableError(RoadworkError):
    """Weights are neither on disk nor downloadable here; the message says how to provide them."""


def weights_unavailable(name: str, repo: str, local: str, err: Exception) -> WeightsUnavailableError:
    """One wording for every family: what to download, and how to pass a local copy instead."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return WeightsUnavailableError(
        f"backbone {name!r} needs the Hugging Face repository {repo!r}, which is not in the local cache "
        f"and cannot be downloaded here ({reason}). On a machine with internet access run "
        f"`hf download {repo}` and copy the Hugging Face cache over (gated models such as DINOv3 first need "
        f"their license accepted on huggingface.co and `hf auth login`), or pass {local} as `weights=`."
    )


class Backbone(torch.nn.Module, abc.ABC):
    """A frozen image encoder that turns square views into one pooled vector per view.

    Subclasses implement `encode` on already-normalised input. Everything callers must not get wrong
    (device placement, normalisation, inference mode, bf16 autocast on CUDA, float32 outputs that
    autograd can use downstream) happens once here.
    """

    channels_last: bool = False  # convnets set this: their CUDA kernels are faster in NHWC
    batchnorm_frozen: bool = False  # adaptation may keep BatchNorm layers in eval mode while training

    def __init__(
        self,
        name: str,
        *,
        feature_dim: int,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        token_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.feature_dim = feature_dim
        self.token_dim = token_dim or feature_dim   # channels of the spatial map (patch tokens) encode returns
        self.input_size = input_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @abc.abstractmethod
    def encode(self, x: Tensor, return_tokens: bool) -> tuple[Tensor, ...]:
        """(pooled,) or (pooled, tokens) for normalised input `x` on the backbone's device."""

    def features(self, views: Tensor, return_tokens: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Pooled [N, feature_dim] float32 features (and [N, T, hidden] tokens if asked) of views given as
        uint8 pixels or floats in 0..1."""
        outputs = self.run(views, lambda x: self.encode(x, return_tokens))
        return outputs if return_tokens else outputs[0]

    def normalise(self, views: Tensor) -> Tensor:
        """Views (uint8 pixels or floats in 0..1) as the normalised float input `encode` expects."""
        size = self.input_size
        if views.ndim != 4 or tuple(views.shape[1:]) != (3, size, size):
            raise ValueError(f"{self.name} expects views of shape [N, 3, {size}, {size}], got {list(views.shape)}")
        device = self.device
        x = views.to(device=device, non_blocking=True)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run(self, views: Tensor, fn: Callable[[Tensor], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        """Apply `fn` to the normalised views under inference mode (and bf16 autocast on CUDA).

        Outputs are copied out of inference mode as float32 so that a trainable head can take them
        as input; inference tensors cannot be saved for backward.
        """
        x = self.normalise(views)
        with (
            torch.inference_mode(),
            torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"),
        ):
            outputs = fn(x)
        return tuple(out.to(torch.float32, copy=True) for out in outputs)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self.batchnorm_frozen:
            for module in self.modules():
                if isinstance(module, BATCHNORM):
                    module.eval()
        return self

    def forward(self, views: Tensor) -> Tensor:
        """Pooled float32 features with gradients: the path for training an adapted backbone."""
        x = self.normalise(views)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            return self.encode(x, False)[0].float()

    def forward_with_map(self, views: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features and the spatial map ``[N, token_dim, g, g]`` (a square view's token grid), with
        gradients: what a segmentation branch reads while the backbone is fine-tuned."""
        x = self.normalise(views)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            pooled, tokens = self.encode(x, True)
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"{self.name}: {tokens.shape[1]} tokens are not a square grid")
        return pooled.float(), tokens.float().transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    @abc.abstractmethod
    def blocks(self) -> list[torch.nn.Module]:
        """The encoder's blocks in order, input to output (what `last_blocks` adaptation unfreezes)."""

    @abc.abstractmethod
    def final_modules(self) -> list[torch.nn.Module]:
        """Modules after the last block (final norms, head convolutions), trained with the last blocks."""

    # Module names that LoRA/DoRA adapt in this family (those present in the model are used).
    lora_targets: tuple[str, ...] = ()

    @abc.abstractmethod
    def gradient_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of keeping them: a large ViT at 512 px
        fits fine-tuning memory this way, at about a third more compute."""

    def freeze(self, device: str | torch.device) -> Backbone:
        """Eval mode, no gradients, on `device` (channels-last weights for convnets)."""
        self.eval().requires_grad_(False).to(device)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        return self


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone is, known without its weights: enough to name a cache namespace and size a head."""

    name: str
    input_size: int
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str   # where the weights come from: a package, a hub id or a local path


@dataclass(frozen=True)
class BackboneSpec:
    """What a run extracts with: a described backbone plus its weights location (resolved to an
    absolute path) and view plan. It names the feature cache's namespace and is what a bundle records."""

    name: str
    weights: str | None
    input_size: int
    feature_dim: int
    views: str

    @classmethod
    def resolve(cls, name: str, *, weights: str | Path | None = None, input_size: int | None = None,
                views: str = "auto") -> BackboneSpec:
        """The spec of `create_backbone(name, weights=..., input_size=...)`, without loading weights."""
        info = describe_backbone(name, weights=weights, input_size=input_size)
        return cls(info.name, str(Path(weights).resolve()) if weights else None, info.input_size, info.feature_dim,
                   views)


class BackboneFactory(Protocol):
    def __call__(
        self, name: str, *, weights: str | Path | None, device: str | torch.device, input_size: int | None
    ) -> Backbone: ...


class BackboneDescriber(Protocol):
    def __call__(self, name: str, *, weights: str | Path | None, input_size: int | None) -> BackboneInfo: ...


_REGISTRY: dict[str, tuple[BackboneFactory, BackboneDescriber]] = {}


def register_backbone(*names: str, describe: BackboneDescriber) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory, and the function that describes its backbones without weights, under `names`.

    A name with a `<placeholder>` part registers a prefix: "hf:<model id or local path>" makes every
    name that starts with "hf:" go to that factory, which receives the full name.
    """

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        for name in names:
            if name in _REGISTRY:
                raise ValueError(f"backbone {name!r} is registered twice")
            _REGISTRY[name] = (factory, describe)
        return factory

    return decorator


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        importlib.import_module(module)


def list_backbones() -> list[str]:
    """Registered names, sorted; prefix patterns are listed as written (e.g. "hf:<model id or local path>")."""
    _load_families()
    return sorted(_REGISTRY)


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    input_size: int | None = None,
) -> Backbone:
    """Build a frozen backbone by registry name.

    `weights` replaces the default weight source (a folder saved with `save_pretrained` for
    transformers models, a checkpoint file for timm models) and goes through the same loading code
    as a download. `input_size` overrides the family's default view side.
    """
    factory, _ = _lookup(name, weights)
    return factory(name, weights=weights, device=device, input_size=input_size).freeze(device)


def describe_backbone(name: str, *, weights: str | Path | None = None, input_size: int | None = None) -> BackboneInfo:
    """What `create_backbone` with the same arguments would build, without loading any weights."""
    _, describe = _lookup(name, weights)
    return describe(name, weights=weights, input_size=input_size)


def _lookup(name: str, weights: str | Path | None) -> tuple[BackboneFactory, BackboneDescriber]:
    _load_families()
    entry = _REGISTRY.get(name)
    if entry is None:
        entry = next((e for key, e in _REGISTRY.items() if "<" in key and name.startswith(key.split("<")[0])), None)
    if entry is None:
        raise RoadworkError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    if weights is not None and not Path(weights).exists():
        raise FileNotFoundError(f"weights for {name!r} not found: {weights}")
    return entry
