"""Per-view augmentation: presets, per-view draws, the hand-written fog and glare, the preview command."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.data.augment import OPS, ViewAugmenter, _fog, _glare, preset

from conftest import write_folder


def _only(op: str, p: float = 1.0) -> ViewAugmenter:
    return ViewAugmenter("heavy", {name: (p if name == op else 0.0) for name in OPS})


def test_presets_follow_the_plan_and_light_halves_heavy():
    heavy, light = preset("heavy"), preset("light")
    assert heavy["flip"]["p"] == 0.5 and heavy["rotate"] == {"p": 0.3, "degrees": 15} and heavy["glare"]["p"] == 0.1
    assert all(light[op]["p"] == pytest.approx(heavy[op]["p"] / 2) for op in OPS)
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        preset("medium")
    with pytest.raises(ValueError, match="unknown augmentation 'sparkle'"):
        ViewAugmenter("heavy", {"sparkle": 0.5})
    with pytest.raises(ValueError, match="probability"):
        ViewAugmenter("heavy", {"fog": 1.5})


def test_nothing_changes_when_every_probability_is_zero():
    views = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = ViewAugmenter("heavy", {op: 0.0 for op in OPS})(views)
    assert out.dtype == torch.uint8 and torch.equal(out, views)


def test_each_view_draws_its_own_parameters():
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(400, 3, 32, 32).contiguous()
    flipped = _only("flip", 0.5)(ramp)
    is_flipped = (flipped[:, 0, 0, 0] > 0.5)
    assert 150 < int(is_flipped.sum()) < 250  # about half of identical views, each its own coin
    assert torch.allclose(flipped[is_flipped], ramp[is_flipped].flip(-1))
    assert torch.equal(flipped[~is_flipped], ramp[~is_flipped])
    heavy = ViewAugmenter("heavy")(torch.rand(8, 3, 64, 64))
    assert heavy.shape == (8, 3, 64, 64) and heavy.min() >= 0 and heavy.max() <= 1
    assert len({tuple(v.flatten()[:50].tolist()) for v in heavy}) == 8


def test_fog_veils_the_top_more_than_the_bottom_and_lowers_contrast():
    torch.manual_seed(1)
    views = torch.rand(4, 3, 64, 64)
    fogged = _fog(views, torch.full((4,), 0.6))
    assert fogged.std() < 0.5 * views.std()
    haze = torch.tensor([0.82, 0.84, 0.86]).view(1, 3, 1)
    top_gap = (fogged[:, :, 0] - haze).abs().mean()
    bottom_gap = (fogged[:, :, -1] - haze).abs().mean()
    assert top_gap < bottom_gap


def test_glare_brightens_around_its_centre_and_never_darkens():
    views = torch.full((2, 3, 64, 64), 0.3)
    lit = _glare(views, torch.tensor([0.9, 0.9]), torch.tensor([[0.25, 0.25], [0.75, 0.1]]), torch.tensor([0.1, 0.1]))
    assert (lit >= views - 1e-6).all() and lit.max() <= 1.0
    assert lit[0, :, 16, 16].mean() > 0.9 and lit[0, :, 60, 60].mean() < 0.32
    assert lit[1, :, 6, 48].mean() > lit[1, :, 40, 48].mean()


def test_augment_preview_writes_a_sheet(tmp_path):
    data = write_folder(tmp_path / "d", [{"file_name": f"{i}.jpg", "label": i % 2} for i in range(3)])
    out = tmp_path / "preview.png"
    result = CliRunner().invoke(app, ["augment-preview", "--data", str(data), "--out", str(out), "--n", "2",
                                      "--copies", "2", "--views", "global", "--input-size", "64"])
    assert result.exit_code == 0, result.output
    width, height = Image.open(out).size
    assert (width, height) == (4 + 132, 4 + 2 * 3 * 132)  # one view per row; 2 photos x (1 + 2 copies) rows
    bad = CliRunner().invoke(app, ["augment-preview", "--data", str(data), "--out", str(out), "--preset", "medium",
                                   "--overwrite"])
    assert bad.exit_code != 0 and "preset" in bad.output


def test_perspective_warps_reflect_the_photo_instead_of_padding_it_black():
    torch.manual_seed(0)
    bright = torch.full((16, 3, 32, 32), 200, dtype=torch.uint8)
    bright[:, :, :, :16] = 120   # two halves, so a warp is visible
    out = _only("perspective")(bright)
    assert not torch.equal(out, bright)   # every view was warped
    assert out.min() >= 119   # no black (or dark) corner anywhere
    masks = torch.ones(16, 1, 32, 32)
    _, moved = _only("perspective")(bright, masks)
    assert moved.min() > 0.99   # a mask covering the photo still covers it after the warp
