"""Safe decoding of hostile input, and view plans."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from roadwork.data.decode import ImageDecodeError, decode_base64, decode_image
from roadwork.data.views import MAX_VIEWS, crop_resize, decode_scale, image_views, plan_boxes

from conftest import jpeg_bytes


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, :40] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise to display
    data = _save(Image.fromarray(array), "JPEG", exif=exif, quality=95)
    image = decode_image(data)
    assert image.size == (40, 80)
    top = np.asarray(image)[:5].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60  # the red half is now on top


def _palette() -> Image.Image:
    image = Image.new("P", (10, 8), 3)
    image.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    return image


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Image.new("L", (10, 8), 128), (128, 128, 128)),
        (_palette, (10, 200, 30)),
        (lambda: Image.new("CMYK", (10, 8), (0, 255, 0, 0)), (255, 0, 255)),
        (lambda: Image.fromarray(np.full((8, 10), 40000, dtype=np.uint16)), (156, 156, 156)),
        (lambda: Image.new("RGBA", (10, 8), (255, 0, 0, 0)), (255, 255, 255)),
        (lambda: Image.new("LA", (10, 8), (0, 255)), (0, 0, 0)),
    ],
    ids=["gray", "palette", "cmyk", "16bit", "rgba", "la"],
)
def test_every_mode_becomes_rgb(make, expected):
    image = make()
    fmt = "TIFF" if image.mode == "CMYK" else "PNG"
    out = decode_image(_save(image, fmt))
    assert out.mode == "RGB" and out.size == (10, 8)
    assert np.abs(np.asarray(out)[3, 4].astype(int) - np.array(expected)).max() <= 2


def test_16_bit_is_scaled_not_clipped():
    out = decode_image(_save(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)), "PNG"))
    assert 120 <= np.asarray(out)[0, 0, 0] <= 135


def test_transparent_pixels_become_white():
    out = decode_image(_save(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"))
    assert tuple(np.asarray(out)[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "cannot decode"),
        (jpeg_bytes(64, 64)[:300], "cannot decode"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_bad_bytes_raise_decode_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_pixel_limit_stops_decompression_bombs_before_decoding():
    bomb = _save(Image.new("L", (4000, 4000)), "PNG")  # tiny file, 16 MP
    assert len(bomb) < 100_000
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(bomb, max_pixels=1_000_000)
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        image_views(bomb, "auto", 224, max_pixels=1_000_000)


def test_draft_mode_decodes_large_jpeg_at_reduced_size():
    data = jpeg_bytes(1600, 1200)
    assert decode_image(data).size == (1600, 1200)
    assert decode_image(data, min_scale=0.25).size == (400, 300)


def test_base64_with_and_without_data_url_prefix():
    data = jpeg_bytes()
    text = base64.b64encode(data).decode()
    assert decode_base64(text) == data
    assert decode_base64("data:image/jpeg;base64," + text) == data
    with pytest.raises(ImageDecodeError, match="base64"):
        decode_base64("not base64!!")


def _inside(box, width, height):
    return 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height


def test_seed12_boxes_for_a_4032x3024_photo():
    boxes = plan_boxes("seed12", 4032, 3024, 512)
    assert [b.name for b in boxes][:2] == ["global", "tile0.0"] and len(boxes) == 12
    assert (boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1) == (0, 0, 4032, 3024)
    tiles = boxes[1:10]
    side = tiles[0].width
    assert all(t.width == t.height == side for t in tiles)
    assert side == round(4032 / 2.5)  # the plan's 25% overlap along the long side
    xs = sorted({t.x0 for t in tiles})
    assert xs[0] == 0 and xs[-1] + side == 4032 and (xs[0] + side - xs[1]) / side == pytest.approx(0.25, abs=0.01)
    ys = sorted({t.y0 for t in tiles})
    assert ys[0] == 0 and ys[-1] + side == 3024
    centre, right = boxes[10], boxes[11]
    assert (centre.x0, centre.y0, centre.width, centre.height) == (504, 0, 3024, 3024)  # plan: 3024 square, centred
    assert (right.x0, right.x1, right.width) == (1008, 4032, 3024)  # plan: rightmost 3024 px
    assert all(_inside(b, 4032, 3024) for b in boxes)
    covered = np.zeros((3024, 4032), dtype=bool)
    for t in tiles:
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (1, 1),
        (224, 224),
        (640, 480),
        (480, 640),
        (1000, 1000),
        (1920, 1080),
        (4032, 3024),
        (3000, 700),
        (50, 900),
        (3, 2000),
    ],
)
@pytest.mark.parametrize("plan", ["auto", "seed12", "global"])
def test_boxes_lie_inside_are_distinct_and_few(plan, width, height):
    boxes = plan_boxes(plan, width, height, 224)
    assert boxes[0].name == "global"
    assert all(_inside(b, width, height) for b in boxes)
    assert len({(b.x0, b.y0, b.x1, b.y1) for b in boxes}) == len(boxes)
    assert len(boxes) <= MAX_VIEWS


@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (1000, 1000), (640, 480), (960, 540), (3000, 1000)])
@pytest.mark.parametrize("plan", ["auto", "seed12"])
def test_tiles_cover_common_photo_shapes(plan, width, height):
    tiles = [b for b in plan_boxes(plan, width, height, 224) if b.name.startswith("tile")]
    assert tiles, "these photos are large enough to be tiled"
    covered = np.zeros((height, width), dtype=bool)
    for t in tiles:
        covered[t.y0 : t.y1, t.x0 : t.x1] = True
    assert covered.all()


def test_auto_plan_scales_with_resolution():
    assert len(plan_boxes("auto", 224, 224, 224)) == 1
    assert len(plan_boxes("auto", 640, 480, 224)) == 6
    assert len(plan_boxes("auto", 4032, 3024, 512)) == 12
    assert [b.name for b in plan_boxes("seed12", 480, 640, 224)][-1] == "bottom"
    assert [b.name for b in plan_boxes("auto", 1920, 1080, 512)] == ["global", "tile0.0", "tile0.1", "centre"]
    with pytest.raises(ValueError, match="unknown view plan"):
        plan_boxes("tiles", 10, 10, 224)


def test_crop_resize_matches_manual_crop_and_normalises_to_unit_range():
    image = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(3, 40, 60)
    boxes = plan_boxes("seed12", 60, 40, 16)
    views = crop_resize(image, boxes, 16)
    assert views.shape == (len(boxes), 3, 16, 16) and views.dtype == torch.uint8
    box = boxes[5]
    crop = image[:, box.y0 : box.y1, box.x0 : box.x1].float()[None]
    manual = torch.nn.functional.interpolate(crop, size=(16, 16), mode="bilinear", antialias=True)
    assert (views[5].float() - manual[0]).abs().max() <= 0.5 + 1e-4  # rounded to the nearest level


def test_image_views_uses_draft_decoding_with_equivalent_boxes(monkeypatch):
    import roadwork.data.views as views_module

    data = jpeg_bytes(2400, 1800, seed=5)
    boxes = plan_boxes("seed12", 2400, 1800, 224)
    assert decode_scale(boxes, 224) == 0.25
    decoded_sizes = []
    real_decode = views_module.decode_image

    def spy(*args, **kwargs):
        image = real_decode(*args, **kwargs)
        decoded_sizes.append(image.size)
        return image

    monkeypatch.setattr(views_module, "decode_image", spy)
    views = image_views(data, "seed12", 224)
    assert decoded_sizes == [(600, 450)]  # decoded at a quarter of full size
    assert views.shape == (12, 3, 224, 224)
    full = crop_resize(torch.from_numpy(np.asarray(decode_image(data)).copy()).permute(2, 0, 1), boxes, 224)
    # Noise images are the worst case for DCT-domain downscaling; views must still agree on average.
    assert (views.float() - full.float()).abs().mean() / 255 < 0.05


def test_formats_without_draft_decoding_are_shrunk_to_what_the_views_need():
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1600, 2000, 3), dtype=np.uint8)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), min_scale=0.25).size == (500, 400)
    assert decode_image(buffer.getvalue()).size == (2000, 1600)
