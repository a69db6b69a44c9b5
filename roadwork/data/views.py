"""View plans: which crops of a photo the backbone sees, and building them as one tensor batch.

Small objects (a distant cone) vanish when a 4032x3024 photo is squeezed into one backbone input,
so large photos are also cut into overlapping tiles. The boxes are computed in source pixels.

Deviation from the plan: its literal 3x3 grid (1344 px tiles, 1008 px stride on 4032x3024) leaves
the right 672 px uncovered and runs 336 px past the bottom edge. Here the tiles are squares of side
``long / 2.5`` (25% overlap along the long side, exactly the plan's overlap) spaced evenly so the
grid covers the whole image and every box lies inside it. On a 4:3 photo that is the plan's 3x3
grid; wider photos (16:9 dashcams, panoramas) get as many rows and columns as cover them without
duplicate tiles, and boxes that coincide (the centre square of a square photo is the photo) are
kept once.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from roadwork.config import DEFAULT_MAX_PIXELS, VIEW_PLANS
from roadwork.data.decode import (
    ImageDecodeError,
    check_image_size,
    decode_image,
    oriented_size,
    to_rgb,
)

# The most views any plan gives one photo: the global view, at most 6 x 6 tiles (3 per long side,
# up to twice that for extreme aspect ratios) and two squares.
MAX_VIEWS = 1 + (2 * 3) ** 2 + 2
_DRAFT_SCALES = (1.0, 0.5, 0.25, 0.125)


@dataclass(frozen=True)
class Box:
    name: str
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.name, round(self.x0 * sx), round(self.y0 * sy), round(self.x1 * sx), round(self.y1 * sy))


def _positions(length: int, side: int, stride: float, most: int) -> list[int]:
    """Evenly spread offsets of tiles of ``side`` covering ``length`` with at most ``stride`` between them.

    At most ``most`` tiles: an extreme aspect ratio (a 10:1 panorama) is sampled, not fully covered,
    rather than cut into dozens of tiny views.
    """
    # The 0.05 slack absorbs pixel rounding of ``side`` (overlap may shrink by ~1%, not add a tile).
    count = 1 if side >= length else min(most, math.ceil((length - side) / stride - 0.05) + 1)
    return [0] if count == 1 else [round(i * (length - side) / (count - 1)) for i in range(count)]


def _grid(width: int, height: int, per_long_side: int, overlap: float, prefix: str) -> list[Box]:
    """Square tiles, ``per_long_side`` of them along the long side sharing ``overlap`` of their side."""
    long_side, short_side = max(width, height), min(width, height)
    side = max(1, min(round(long_side / (per_long_side - (per_long_side - 1) * overlap)), short_side))
    stride = side * (1.0 - overlap)
    most = 2 * per_long_side
    xs, ys = _positions(width, side, stride, most), _positions(height, side, stride, most)
    return [Box(f"{prefix}{r}.{c}", x, y, x + side, y + side) for r, y in enumerate(ys) for c, x in enumerate(xs)]


def _distinct(boxes: list[Box]) -> list[Box]:
    seen: set[tuple[int, int, int, int]] = set()
    kept = []
    for box in boxes:
        corners = (box.x0, box.y0, box.x1, box.y1)
        if corners not in seen:
            seen.add(corners)
            kept.append(box)
    return kept


def _squares(width: int, height: int) -> tuple[Box, Box]:
    """The centre square, and the right square (bottom square for portrait photos, where the road is)."""
    side = min(width, height)
    cx, cy = (width - side) // 2, (height - side) // 2
    centre = Box("centre", cx, cy, cx + side, cy + side)
    if width >= height:
        return centre, Box("right", width - side, cy, width, cy + side)
    return centre, Box("bottom", cx, height - side, cx + side, height)


def plan_boxes(plan: str, width: int, height: int, input_size: int) -> list[Box]:
    """Boxes of ``plan`` for a ``width`` x ``height`` photo. View 0 is always the global view.

    ``auto`` tiles only when the photo is well above the backbone input: below 1.5x the input on its
    short side it keeps the global view alone; below 3x it adds a 2x2 grid and the centre square;
    from 3x it uses the full ``seed12`` set.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    whole = Box("global", 0, 0, width, height)
    if plan == "global":
        return [whole]
    if plan == "seed12":
        return _distinct([whole, *_grid(width, height, 3, 0.25, "tile"), *_squares(width, height)])
    if plan == "auto":
        ratio = min(width, height) / input_size
        if ratio < 1.5:
            return [whole]
        if ratio < 3.0:
            return _distinct([whole, *_grid(width, height, 2, 0.25, "tile"), _squares(width, height)[0]])
        return plan_boxes("seed12", width, height, input_size)
    raise ValueError(f"unknown view plan {plan!r}; choose one of {', '.join(VIEW_PLANS)}")


def decode_scale(boxes: list[Box], input_size: int) -> float:
    """The smallest JPEG draft scale that still gives every crop at least ``input_size`` pixels."""
    needed = max(input_size / max(1, min(box.width, box.height)) for box in boxes)
    return min((s for s in _DRAFT_SCALES if s >= needed), default=1.0)


def crop_resize(image: torch.Tensor, boxes: list[Box], size: int) -> torch.Tensor:
    """Crop ``boxes`` from a uint8 [3,H,W] tensor and resize each to ``size``; uint8 [V,3,S,S].

    Crops of equal size are resized together in one antialiased interpolate call (on the image's
    device, so a GPU-decoded photo never leaves the GPU). Views stay 8-bit, like any decoded image:
    a quarter of float32's size through the decoding workers' shared memory, and one quantisation
    for the cached, uncached and GPU paths alike.
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, box in enumerate(boxes):
        groups[(box.height, box.width)].append(index)
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.uint8, device=image.device)
    for indices in groups.values():
        crops = torch.stack([image[:, boxes[i].y0 : boxes[i].y1, boxes[i].x0 : boxes[i].x1] for i in indices])
        crops = crops.float()
        if crops.shape[-2:] != (size, size):
            crops = F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[indices] = crops.round_().clamp_(0, 255).to(torch.uint8)
    return out


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _decode_on_gpu(data: bytes, device: torch.device) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_jpeg(raw, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)


def image_views(
    data: bytes,
    plan: str,
    input_size: int,
    *,
    device: str | torch.device = "cpu",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str = "image",
) -> torch.Tensor:
    """Decode ``data`` and return its views as uint8 [V,3,S,S] on ``device``.

    The header alone fixes the plan; JPEGs are then decoded at the lowest resolution the plan
    needs (PIL draft mode on the CPU, nvJPEG at full size on a GPU, where resizing is cheap).
    """
    device = torch.device(device)
    if not data:
        raise ImageDecodeError(f"{source}: empty image (0 bytes)")
    try:
        header = Image.open(io.BytesIO(data))
        width, height = oriented_size(header)
        is_jpeg = isinstance(header, JpegImageFile)
    except UnidentifiedImageError:   # PIL's own message names a BytesIO object's address
        raise ImageDecodeError(f"{source}: not an image in a format this decoder reads ({len(data)} bytes)") from None
    except Exception as error:  # any header failure is a decode failure of this input
        raise ImageDecodeError(f"{source}: cannot decode image: {error}") from error
    check_image_size(width, height, max_pixels, source)
    boxes = plan_boxes(plan, width, height, input_size)
    if device.type == "cuda" and is_jpeg:
        try:
            tensor = _decode_on_gpu(data, device)
        except RuntimeError as error:
            raise ImageDecodeError(f"{source}: cannot decode image: {error}") from error
    else:
        image = decode_image(data, min_scale=decode_scale(boxes, input_size), max_pixels=max_pixels, source=source)
        tensor = pil_to_tensor(image).to(device)
    decoded_h, decoded_w = tensor.shape[-2:]
    if (decoded_w, decoded_h) != (width, height):
        boxes = [box.scaled(decoded_w / width, decoded_h / height) for box in boxes]
    return crop_resize(tensor, boxes, input_size)


def views_from_image(image: Image.Image | np.ndarray, plan: str, input_size: int, *,
                     device: str | torch.device = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS,
                     source: str = "image") -> torch.Tensor:
    """Views of an image a caller already holds: a PIL image (any mode) or an ``[H, W, 3]`` uint8 array."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageDecodeError(f"{source}: an array image must be uint8 [height, width, 3], got "
                                   f"{image.dtype} {list(image.shape)}")
        image = Image.fromarray(image, mode="RGB")
    check_image_size(image.width, image.height, max_pixels, source)
    rgb = to_rgb(image)
    tensor = pil_to_tensor(rgb).to(torch.device(device))
    return crop_resize(tensor, plan_boxes(plan, rgb.width, rgb.height, input_size), input_size)
