"""SAM 3 pseudo-masks through the user's path: a tiny random SAM 3 saved locally, the CLI, the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from roadwork.cli import app
from roadwork.data.annotations import read_annotations
from roadwork.data.sources import load_samples
from roadwork.errors import RoadworkError
from roadwork.experts.prompts import Prompt
from roadwork.experts.pseudo_masks import Sam3Segmenter

from conftest import jpeg_bytes, write_folder

PROMPTS = ["--prompt", "traffic cone=cone", "--prompt", "road barrier=barrier"]


@pytest.fixture
def photos(tmp_path):
    rows = [{"file_name": f"img/{i}.jpg", "label": i % 2} for i in range(5)]
    rows.append({"file_name": "img/bad.jpg", "label": 0})
    images = {f"img/{i}.jpg": jpeg_bytes(64 + 16 * i, 48 + 8 * i, seed=i) for i in range(5)}
    return write_folder(tmp_path / "photos", rows, images | {"img/bad.jpg": b"not a jpeg"})


def _run(*args):
    return CliRunner().invoke(app, ["pseudo-masks", *map(str, args), "--device", "cpu"])


def test_pseudo_masks_write_annotations_that_the_reader_and_the_cache_accept(photos, tiny_sam3_folder, tmp_path):
    cache = tmp_path / "cache"
    result = _run("--data", photos, "--out", tmp_path / "masks", "--model", tiny_sam3_folder, "--threshold", "0.0",
                  "--cache-dir", cache, *PROMPTS)
    assert result.exit_code == 0, result.output
    found = read_annotations(tmp_path / "masks")
    assert sorted(found) == [f"img/{i}.jpg" for i in range(5)]   # the unreadable photo is listed, not annotated
    summary = json.loads((tmp_path / "masks" / "summary.json").read_text())
    assert list(summary["failed"]) == ["img/bad.jpg"] and summary["segmented"] == 5 and summary["from_cache"] == 0
    for i in range(5):
        image = found[f"img/{i}.jpg"]
        assert (image.width, image.height) == (64 + 16 * i, 48 + 8 * i) and image.labelled == ("cone", "barrier")
        for item in image.objects:
            assert item.category in ("cone", "barrier") and item.roadwork and 0.0 < item.score <= 1.0
            rows, columns = np.nonzero(item.mask)   # boxes are the tight boxes of the masks, at photo size
            assert item.mask.shape == (image.height, image.width)
            assert (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1) == item.box
    assert summary["instances"] == sum(len(a.objects) for a in found.values()) > 0

    # A rerun reads every photo from the cache; one lost entry (a run killed before it) is segmented again.
    first = (tmp_path / "masks" / "annotations.json").read_bytes()
    entries = sorted(cache.rglob("*.json"))
    assert len(entries) == 5
    entries[0].unlink()
    again = _run("--data", photos, "--out", tmp_path / "masks", "--model", tiny_sam3_folder, "--threshold", "0.0",
                 "--cache-dir", cache, "--overwrite", *PROMPTS)
    assert again.exit_code == 0, again.output
    summary = json.loads((tmp_path / "masks" / "summary.json").read_text())
    assert (summary["segmented"], summary["from_cache"]) == (1, 4)
    assert (tmp_path / "masks" / "annotations.json").read_bytes() == first
    refused = _run("--data", photos, "--out", tmp_path / "masks", "--model", tiny_sam3_folder, *PROMPTS)
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_batched_prompts_find_what_one_forward_per_photo_and_prompt_finds(tiny_sam3_folder):
    from transformers import Sam3Model, Sam3Processor

    segmenter = Sam3Segmenter(str(tiny_sam3_folder), threshold=0.0)
    prompts = [Prompt("traffic cone", "cone"), Prompt("excavator", "machinery")]
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8))
              for i in range(2)]
    batched = segmenter.segment(images, prompts)
    model = Sam3Model.from_pretrained(tiny_sam3_folder).eval()
    processor = Sam3Processor.from_pretrained(tiny_sam3_folder)
    for image, objects in zip(images, batched):
        for prompt in prompts:
            inputs = processor(images=image, text=prompt.text, return_tensors="pt")
            with torch.inference_mode():
                outputs = model(**inputs)
            (alone,) = processor.post_process_instance_segmentation(outputs, threshold=0.0, mask_threshold=0.5,
                                                                    target_sizes=[(image.height, image.width)])
            mine = [o for o in objects if o.category == prompt.category]
            kept = [m for m in alone["masks"].bool().numpy() if m.any()]
            assert len(mine) == len(kept)
            for item, mask, score in zip(mine, kept, alone["scores"].tolist()):
                assert np.array_equal(item.mask, mask) and item.score == pytest.approx(score, abs=1e-4)


def test_missing_weights_and_bad_prompts_are_one_clear_error(photos, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # even when the variable is unset
    offline = _run("--data", photos, "--out", tmp_path / "a", "--model", "facebook/sam3", *PROMPTS)
    assert offline.exit_code == 2 and "facebook/sam3" in offline.output and "not in the local cache" in offline.output
    missing = _run("--data", photos, "--out", tmp_path / "b", "--model", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "SAM 3 model folder not found" in missing.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert Prompt.parse("traffic cone") == Prompt("traffic cone", "other_roadwork")
    with pytest.raises(RoadworkError, match="category among"):
        Prompt.parse("a cone=pylon")
    assert load_samples(str(photos), require_labels=False)
