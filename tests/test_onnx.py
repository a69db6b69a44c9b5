"""ONNX export: every graph matches PyTorch, and the Predictor answers the same through onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from roadwork.backbones.base import BackboneSpec, create_backbone
from roadwork.cli import app
from roadwork.config import HeadConfig, TrainConfig
from roadwork.data.sources import load_samples
from roadwork.features.metadata import MetadataVocab, ServedInputs
from roadwork.model.head import HeadEnsemble, MultiViewHead
from roadwork.serve.bundle import BundleError, save_bundle
from roadwork.serve.calibration import Calibration
from roadwork.serve.onnx import OnnxPredictor
from roadwork.serve.predictor import Predictor
from roadwork.serve.scorer import load_scorer

TOLERANCE = 1e-4   # on probabilities; README states it


def _multiview_bundle(path, adapted: str | None):
    """Two random multi-view heads with metadata on (image-only requests hide it), at 64 px; ``adapted``
    "own": each head has its own slightly changed backbone, as a fine-tuned k-fold bundle has; "shared":
    both read one changed backbone, as a model refitted on all photos would."""
    torch.manual_seed(0)
    config = HeadConfig(type="multiview", d_model=32, heads=2, attention_layers=1, prune_k=4)
    vocab = MetadataVocab.from_samples([])
    heads = HeadEnsemble([MultiViewHead(config, 1280, vocab).eval() for _ in range(2)])
    changed = None
    if adapted:
        weight = create_backbone("efficientnet-lite0", input_size=64).state_dict()["model.conv_head.weight"]
        changed = [{"model.conv_head.weight": weight * scale} for scale in (0.9, 1.1)][: 2 if adapted == "own" else 1]
    return save_bundle(
        path,
        head=heads,
        head_config=config,
        config=TrainConfig(),
        vocab=vocab,
        backbone=BackboneSpec("efficientnet-lite0", None, 64, 1280, "auto"),
        calibration=Calibration(0.3, 1.5),
        served=ServedInputs(metadata=False),
        metrics={},
        data_summary={},
        fingerprints=[],
        adapted_backbones=changed,
        member_sources=[0, 0] if adapted == "shared" else None,
    )


@pytest.mark.parametrize("kind", ["probe", "multiview", "own adapted multiview", "shared adapted multiview"])
def test_onnx_export_answers_like_pytorch(kind, probe_bundle, tmp_path):
    adapted = kind.split()[0] if "adapted" in kind else None
    bundle = probe_bundle["bundle"] if kind == "probe" else _multiview_bundle(tmp_path / "b", adapted)
    result = CliRunner().invoke(app, ["export", "--bundle", str(bundle), "--format", "onnx", "--out",
                                      str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["kind"] == "onnx" and manifest["format_version"] == 1
    assert manifest["sources"] == (2 if adapted == "own" else 1)
    assert max(manifest["max_difference_from_pytorch"].values()) < 1e-3
    samples = load_samples(str(probe_bundle["data"]))[:5]
    files = [s.read_bytes() for s in samples] + [np.full((900, 1600, 3), 90, dtype=np.uint8)]  # 1 and 12 views
    pytorch = Predictor.load(bundle)
    expected = [p.probability for p in pytorch.predict_images(files)]
    assert len(pytorch._backbones) == (2 if adapted == "own" else 1)   # a shared backbone is built once
    onnx = load_scorer(tmp_path / "onnx")
    assert isinstance(onnx, OnnxPredictor) and not onnx._backbones
    got = [p.probability for p in onnx.predict_images(files)]
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    assert not onnx._backbones   # PyTorch backbones were never built
    assert np.std(expected) > 0


def test_a_modified_export_is_refused(probe_bundle, tmp_path):
    CliRunner().invoke(app, ["export", "--bundle", str(probe_bundle["bundle"]), "--out", str(tmp_path / "onnx")])
    graph = tmp_path / "onnx" / "head-0.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="does not match"):
        load_scorer(tmp_path / "onnx")
    result = CliRunner().invoke(app, ["export", "--bundle", str(probe_bundle["bundle"]), "--format", "tflite",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown export format" in result.output


def test_an_export_in_the_previous_release_layout_still_loads(probe_bundle, tmp_path):
    """Exports written before the kind registry kept their manifest in onnx.json with ``"format": 1``."""
    out = tmp_path / "onnx"
    assert (
        CliRunner().invoke(app, ["export", "--bundle", str(probe_bundle["bundle"]), "--out", str(out)]).exit_code == 0
    )
    files = [s.read_bytes() for s in load_samples(str(probe_bundle["data"]))[:3]]
    now = [p.probability for p in load_scorer(out).predict_images(files)]
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["kind"], manifest["format_version"]
    (out / "onnx.json").write_text(json.dumps({"format": 1, **manifest}))
    (out / "manifest.json").unlink()
    old = load_scorer(out)
    assert isinstance(old, OnnxPredictor) and old.describe()["kind"] == "onnx"
    assert [p.probability for p in old.predict_images(files)] == now
