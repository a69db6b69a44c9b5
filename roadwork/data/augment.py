"""Per-view training augmentation on batched tensors (plan component 14), with kornia.

Every view of every photo draws its own parameters (kornia samples per batch element, and views are
flattened into the batch), so one photo yields differently augmented views. Presets live in
``augment_presets/`` (``heavy`` = the plan's probabilities, ``light`` = halved); single
probabilities can be overridden. Validation never sees augmentation.

Test-time augmentation (``TTA_TRANSFORMS``, the plan's 16 fixed transforms) is a serving option,
off by default; see roadwork.serve.tta.

Fog and sun glare are written here because kornia has neither; both are vectorised over the batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import kornia
import kornia.augmentation as K
import kornia.enhance as KE
import kornia.filters as KF
import kornia.geometry.transform as KG
import torch
import yaml
from torch import Tensor, nn

from roadwork.config import AUGMENT_PRESETS

OPS = ("flip", "rotate", "perspective", "zoom", "brightness", "contrast", "saturation", "hue", "rain", "fog",
       "shadow", "glare", "noise", "motion_blur", "blur")


@cache
def preset(name: str) -> dict[str, dict[str, Any]]:
    """The operations and parameters of a named preset."""
    if name not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENT_PRESETS)}")
    text = resources.files("roadwork.data").joinpath("augment_presets", f"{name}.yaml").read_text()
    ops = yaml.safe_load(text)
    if set(ops) != set(OPS):
        raise ValueError(f"preset {name} must define exactly {OPS}")
    return ops


def _fog(x: Tensor, intensity: Tensor) -> Tensor:
    """Blend towards a light grey haze that thickens towards the top of the view (farther away in a
    dashcam frame), and soften detail under it."""
    height = x.shape[-2]
    depth = torch.linspace(1.0, 0.35, height, device=x.device).view(1, 1, height, 1)
    alpha = (intensity.view(-1, 1, 1, 1) * depth).clamp(0.0, 1.0)
    haze = torch.tensor([0.82, 0.84, 0.86], device=x.device).view(1, 3, 1, 1)
    softened = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return softened * (1.0 - alpha) + haze * alpha


def _glare(x: Tensor, strength: Tensor, centre: Tensor, radius: Tensor) -> Tensor:
    """A bright sun spot with a washed-out halo: screen-blend a radial falloff at ``centre`` (0..1 xy)."""
    height, width = x.shape[-2:]
    ys = torch.linspace(0.0, 1.0, height, device=x.device).view(1, height, 1)
    xs = torch.linspace(0.0, 1.0, width, device=x.device).view(1, 1, width)
    distance2 = (xs - centre[:, 0].view(-1, 1, 1)) ** 2 + (ys - centre[:, 1].view(-1, 1, 1)) ** 2
    light = strength.view(-1, 1, 1) * torch.exp(-distance2 / (2.0 * radius.view(-1, 1, 1) ** 2))
    light = light.unsqueeze(1)
    return 1.0 - (1.0 - x) * (1.0 - light.clamp(0.0, 1.0))


# Bumped when an operation changes what it draws, so that cached augmented copies are extracted again
# (2: perspective warps padded by reflection, not black).
AUGMENT_VERSION = 2


class ReflectedPerspective(K.RandomPerspective):
    """kornia's random perspective warp, padded by reflection where kornia pads with zeros: the black
    corners of a tilted frame are a cue no real photo has."""

    def apply_transform(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any],
                        transform: Tensor | None = None) -> Tensor:
        height, width = input.shape[-2:]
        return KG.warp_perspective(input, transform, (height, width), mode=flags["resample"].name.lower(),
                                   align_corners=flags["align_corners"], padding_mode="reflection")


class ViewAugmenter(nn.Module):
    """Augment views ``[N, 3, S, S]`` (floats in 0..1 or uint8), each with its own random parameters."""

    def __init__(self, name: str, probabilities: Mapping[str, float] | None = None) -> None:
        super().__init__()
        ops = {op: dict(params) for op, params in preset(name).items()}
        for op, p in (probabilities or {}).items():
            if op not in ops:
                raise ValueError(f"unknown augmentation {op!r}; known: {', '.join(OPS)}")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augmentation {op}: probability must be in [0, 1], got {p}")
            ops[op]["p"] = float(p)
        self.ops = ops
        o = ops
        self.geometric_and_colour = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=o["flip"]["p"]),
            # Reflection padding: black corners would be a cue no real photo has.
            K.RandomAffine(degrees=o["rotate"]["degrees"], padding_mode="reflection", p=o["rotate"]["p"]),
            ReflectedPerspective(distortion_scale=o["perspective"]["distortion"], p=o["perspective"]["p"]),
            K.RandomAffine(degrees=0.0, scale=tuple(o["zoom"]["scale"]), padding_mode="reflection", p=o["zoom"]["p"]),
            K.RandomBrightness(brightness=(1 - o["brightness"]["range"], 1 + o["brightness"]["range"]),
                               p=o["brightness"]["p"]),
            K.RandomContrast(contrast=(1 - o["contrast"]["range"], 1 + o["contrast"]["range"]), p=o["contrast"]["p"]),
            K.RandomSaturation(saturation=(1 - o["saturation"]["range"], 1 + o["saturation"]["range"]),
                               p=o["saturation"]["p"]),
            K.RandomHue(hue=(-o["hue"]["degrees"] / 360.0, o["hue"]["degrees"] / 360.0), p=o["hue"]["p"]),
            K.RandomRain(p=o["rain"]["p"], number_of_drops=(60, 180), drop_height=(3, 8), drop_width=(-1, 1)),
            K.RandomPlasmaShadow(p=o["shadow"]["p"], shade_intensity=(-0.35, -0.1), shade_quantity=(0.1, 0.4)),
        )
        kernel = o["motion_blur"]["kernel"]
        self.sensor = K.AugmentationSequential(
            K.RandomGaussianNoise(std=float(sum(o["noise"]["std"]) / 2), p=o["noise"]["p"]),
            K.RandomMotionBlur(kernel_size=kernel, angle=(-10.0, 10.0), direction=(-1.0, 1.0), p=o["motion_blur"]["p"]),
            K.RandomGaussianBlur(kernel_size=(o["blur"]["kernel"],) * 2, sigma=(0.3, 1.5), p=o["blur"]["p"]),
        )

    def _draw(self, n: int, op: str, device: torch.device) -> Tensor:
        return torch.rand(n, device=device) < self.ops[op]["p"]

    def _uniform(self, n: int, bounds: list[float], device: torch.device) -> Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(n, device=device)

    @torch.no_grad()
    def forward(self, views: Tensor, masks: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """The augmented views; with ``masks`` (``[N, 1, S, S]`` floats), also the masks moved by the same
        flips, rotations, perspective warps and zooms (the colour and sensor operations leave them)."""
        was_uint8 = views.dtype == torch.uint8
        x = views.float() / 255.0 if was_uint8 else views.float()
        if masks is None:
            x = self.geometric_and_colour(x)
        else:
            x, masks = self.geometric_and_colour(x, masks, data_keys=["input", "mask"])
        x = x.clamp(0.0, 1.0)
        n, device = x.shape[0], x.device
        fog = self._draw(n, "fog", device)
        if fog.any():
            x[fog] = _fog(x[fog], self._uniform(int(fog.sum()), self.ops["fog"]["intensity"], device))
        glare = self._draw(n, "glare", device)
        if glare.any():
            count = int(glare.sum())
            centre = torch.stack([torch.rand(count, device=device), 0.45 * torch.rand(count, device=device)], dim=1)
            x[glare] = _glare(x[glare], self._uniform(count, self.ops["glare"]["strength"], device), centre,
                              0.08 + 0.12 * torch.rand(count, device=device))
        x = self.sensor(x).clamp(0.0, 1.0)
        x = (x * 255.0).round().to(torch.uint8) if was_uint8 else x
        return x if masks is None else (x, masks)


class SeededCopy:
    """Augmented copy number ``copy`` of an image's views, drawn from a seed of (image key, copy): the
    same image always gets the same copy, whatever else is extracted with it."""

    def __init__(self, name: str, copy: int) -> None:
        self.augmenter = ViewAugmenter(name)
        self.name, self.copy = name, copy

    @property
    def variant(self) -> str:
        """Cache variant: the preset's name, content and the copy number."""
        text = resources.files("roadwork.data").joinpath("augment_presets", f"{self.name}.yaml").read_text()
        return f"aug{self.copy}-{self.name}|{hashlib.sha256(text.encode()).hexdigest()[:12]}|v{AUGMENT_VERSION}"

    def __call__(self, views: Tensor, key: str) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(key[:12], 16) * 31 + self.copy)
            return self.augmenter(views)


def preview_grid(photos: list[Tensor], augmenter: ViewAugmenter, copies: int, tile: int = 128) -> Tensor:
    """One uint8 ``[3, H, W]`` sheet: per photo, a row of its original views, then ``copies`` rows of
    the same views augmented (each view and each copy with its own draw)."""
    from torchvision.utils import make_grid

    columns = max(v.shape[0] for v in photos)
    rows = []
    for views in photos:
        x = views.float() / 255.0
        for copy in range(copies + 1):
            shown = nn.functional.interpolate(x if copy == 0 else augmenter(x), size=(tile, tile), mode="bilinear",
                                              antialias=True, align_corners=False)
            padding = torch.ones(columns - shown.shape[0], 3, tile, tile)
            rows.append(torch.cat([shown, padding]))
    grid = make_grid(torch.cat(rows), nrow=columns, padding=4, pad_value=1.0)
    return (grid * 255.0).round().to(torch.uint8)


# Test-time augmentation (plan component 19): the plan's 16 fixed transforms, the photo itself first.
# Fixed, not random, so a photo gets the same copies on the request path and in a cached evaluation.
TTA_TRANSFORMS: tuple[tuple[str, str, float], ...] = (
    ("original", "identity", 0.0),
    ("flip", "flip", 0.0),
    ("rotate+10", "rotate", 10.0), ("rotate-10", "rotate", -10.0),
    ("scale0.9", "scale", 0.9), ("scale1.1", "scale", 1.1),
    ("brighter", "brightness", 1.15), ("darker", "brightness", 0.85),
    ("more-contrast", "contrast", 1.15), ("less-contrast", "contrast", 0.85),
    ("warmer", "colour", 0.05), ("cooler", "colour", -0.05),
    ("blur1", "blur", 1.0), ("blur2", "blur", 2.0),
    ("tilt-down", "perspective", 0.08), ("tilt-up", "perspective", -0.08),
)


def _perspective(x: Tensor, amount: float) -> Tensor:
    """Narrow the top (amount > 0) or the bottom (amount < 0) edge by ``amount`` of the width a side,
    as if the camera pitched."""
    size = x.shape[-1] - 1.0
    inset = abs(amount) * size
    corners = torch.tensor([[0.0, 0.0], [size, 0.0], [size, size], [0.0, size]], device=x.device)
    moved = corners.clone()
    if amount > 0:
        moved[0, 0] += inset
        moved[1, 0] -= inset
    else:
        moved[3, 0] += inset
        moved[2, 0] -= inset
    matrix = KG.get_perspective_transform(corners[None], moved[None]).expand(x.shape[0], 3, 3)
    return KG.warp_perspective(x, matrix, dsize=tuple(x.shape[-2:]), padding_mode="reflection")


def _apply(x: Tensor, op: str, value: float) -> Tensor:
    n = x.shape[0]
    if op == "identity":
        return x
    if op == "flip":
        return x.flip(-1)
    if op == "rotate":
        return KG.rotate(x, torch.full((n,), value, device=x.device), padding_mode="reflection")
    if op == "scale":
        return KG.scale(x, torch.full((n, 2), value, device=x.device), padding_mode="reflection")
    if op == "brightness":
        return x * value
    if op == "contrast":
        return KE.adjust_contrast_with_mean_subtraction(x, value)
    if op == "colour":   # a hue turn plus a matching saturation change: two colour-jitter variations
        return KE.adjust_saturation(KE.adjust_hue(x, value * math.pi), 1.0 + 2.0 * value)
    if op == "blur":
        return KF.gaussian_blur2d(x, 2 * math.ceil(2 * value) + 1, (value, value))
    if op == "perspective":
        return _perspective(x, value)
    raise ValueError(f"unknown test-time transform {op!r}")


class TtaTransform:
    """Test-time copy ``index`` of an image's views (``TTA_TRANSFORMS``); called like
    ``SeededCopy`` so the feature store can cache its features under ``variant``."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name, self.op, self.value = TTA_TRANSFORMS[index]

    @property
    def identity(self) -> bool:
        return self.op == "identity"

    @property
    def variant(self) -> str | None:
        """Cache variant (None for the photo itself, which shares the plain features)."""
        if self.identity:
            return None
        spec = f"{self.op}:{self.value!r}|kornia{kornia.__version__}"
        return f"tta-{self.name}|{hashlib.sha256(spec.encode()).hexdigest()[:12]}"

    @torch.no_grad()
    def __call__(self, views: Tensor, key: str | None = None) -> Tensor:
        if self.identity:
            return views
        was_uint8 = views.dtype == torch.uint8
        x = views.float() / 255.0 if was_uint8 else views.float()
        x = _apply(x, self.op, self.value).clamp(0.0, 1.0)
        return (x * 255.0).round().to(torch.uint8) if was_uint8 else x


def tta_transforms(count: int) -> list[TtaTransform]:
    """The first ``count`` test-time transforms (the photo itself always first)."""
    if not 1 <= count <= len(TTA_TRANSFORMS):
        raise ValueError(f"test-time augmentations: choose 1 to {len(TTA_TRANSFORMS)}, got {count}")
    return [TtaTransform(i) for i in range(count)]
