"""One safe image decoder for files, bytes and base64 payloads.

Hostile input is the norm for a served model, so decoding checks the pixel count from the header
before any pixel is decoded, and every failure surfaces as :class:`ImageDecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from roadwork.config import DEFAULT_MAX_PIXELS
from roadwork.errors import RoadworkError

MIN_SIDE = 16
_EXIF_ORIENTATION = 0x0112
_REDUCIBLE = {"RGB", "RGBA", "L", "LA", "CMYK", "I", "F"}   # modes Image.reduce handles
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


class ImageDecodeError(RoadworkError):
    """The bytes are not a usable image (corrupt, truncated, unsupported or too large)."""


def decode_base64(payload: str) -> bytes:
    """Decode a base64 string, tolerating a ``data:image/...;base64,`` prefix."""
    if payload.startswith("data:") and "," in payload:
        payload = payload.split(",", 1)[1]
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageDecodeError(f"invalid base64 image payload: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit scaled, not clipped; transparency composited on white."""
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        # PIL's own I -> L conversion clips instead of scaling; scale the real range to 8 bits.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        image = image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        # Transparent pixels are composited on white: a photo has no alpha, a sticker's background is blank.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def check_image_size(width: int, height: int, max_pixels: int, source: str, min_side: int = MIN_SIDE) -> None:
    """Refuse decompression bombs from the header's size, before any pixel is decoded, and images too
    small to show anything (a 1x1 pixel blown up to a backbone input would still get a confident score)."""
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{source}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
        )
    if min(width, height) < min_side:
        raise ImageDecodeError(f"{source}: {width}x{height} is too small to classify (at least {min_side} px a side)")


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """Width and height after EXIF orientation, read from the header alone."""
    width, height = image.size
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    return (height, width) if orientation in _TRANSPOSED_ORIENTATIONS else (width, height)


def header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height as the photo is shown (EXIF orientation applied) from the image header alone (no
    pixel decoded); None when no header is readable, which the decoder then reports properly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return oriented_size(Image.open(io.BytesIO(data)))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None


def header_pixels(data: bytes) -> int | None:
    """Width x height from the image header alone; None when no header is readable."""
    size = header_size(data)
    return None if size is None else size[0] * size[1]


def decode_image(
    data: bytes,
    *,
    min_scale: float = 1.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str = "image",
) -> Image.Image:
    """Decode to an upright RGB image.

    ``min_scale`` is the smallest fraction of full resolution the caller still needs; JPEGs are then
    decoded with PIL's draft mode (DCT scaling by 1/2, 1/4 or 1/8), which is several times faster
    for large photos.
    """
    if not data:
        raise ImageDecodeError(f"{source}: empty image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            check_image_size(width, height, max_pixels, source, min_side=1)   # views check the minimum
            if isinstance(image, JpegImageFile) and min_scale < 1.0:  # MPO phone photos are JPEGs too
                image.draft("RGB", (max(1, round(width * min_scale)), max(1, round(height * min_scale))))
            image.load()
            # Formats without draft decoding (PNG, WebP, ...) arrive at full size: shrink them first, in
            # their own mode, so an 80-megapixel PNG of a few hundred KB is not copied at full size again
            # (transposed, converted, then turned into floats): 3.4 GB peak before, 1.1 GB now (half of it the
            # process itself).
            factor = int(min(image.size) / max(1.0, min(width, height) * min_scale))
            if factor >= 2 and image.mode in _REDUCIBLE:
                image = image.reduce(factor)
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, EOFError) as error:
        raise ImageDecodeError(f"{source}: cannot decode image: {error}") from error
