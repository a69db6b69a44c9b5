"""ONNX export of a bundle (bundle kind ``onnx``), and the scorer that runs it with onnxruntime.

``export_onnx`` writes, per feature source (one, or one per head of a fine-tuned bundle),
``backbone-<i>.onnx`` (views as floats in 0..1, ``[N, 3, S, S]`` -> pooled ``[N, D]``, normalisation
inside) and ``head-<i>.onnx`` (``[B, MAX_VIEWS, D]`` features and a ``[B, MAX_VIEWS]`` view mask ->
``[B, K]`` margins of image-only requests), beside a copy of the bundle (for its calibration, view plan
and verification) and ``manifest.json`` (kind, format version, file hashes, and the largest difference
from PyTorch measured at export). Views are padded to MAX_VIEWS, so every graph has a fixed view count
and a dynamic batch. A bundle whose heads read a segmentation branch's evidence adds
``segmentation-<j>.onnx`` (global views -> ``[N, fields]`` evidence) and an ``evidence`` input to its
head graphs.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from roadwork.config import TtaConfig
from roadwork.data.views import MAX_VIEWS
from roadwork.errors import RoadworkError
from roadwork.experts.segmentation import SegmentationEvidence, map_evidence, roadwork_map
from roadwork.features.metadata import NULL_INDEX, TEXT_DIM, MetadataBatch
from roadwork.features.table import FeatureTable
from roadwork.serve.bundle import MANIFEST, Bundle, BundleError, load_bundle
from roadwork.serve.predictor import Predictor
from roadwork.serve.scorer import read_kind
from roadwork.storage import atomic_write_json, check_output, sha256_file, write_folder

FORMAT_VERSION = 1
OPSET = 18   # the dynamo exporter's lowest
MAX_BATCH = 65_536   # the largest batch (views, or photos for a head graph) an exported graph takes
TOLERANCE = 1e-3   # largest margin or feature difference from PyTorch an export may show


class _BackboneGraph(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))

    def forward(self, views: Tensor) -> Tensor:
        return self.backbone.encode((views - self.mean) / self.std, False)[0].float()


class _EvidenceGraph(nn.Module):
    """A segmentation branch over its backbone: views as floats in 0..1 -> ``[N, fields]`` evidence."""

    def __init__(self, expert: SegmentationEvidence) -> None:
        super().__init__()
        # not "graph": the exported module's own fx graph has that name
        self.reads, self.segmenter = _BackboneGraph(expert.backbone), expert.segmenter

    def forward(self, views: Tensor) -> Tensor:
        _, tokens = self.reads.backbone.encode((views - self.reads.mean) / self.reads.std, True)
        side = int(tokens.shape[1] ** 0.5)
        spatial = tokens.float().transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        return map_evidence(roadwork_map(self.segmenter, spatial))


class _HeadsGraph(nn.Module):
    """Margins of several heads for requests that carry the image alone (every metadata field NULL)."""

    def __init__(self, heads: list[nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, features: Tensor, view_mask: Tensor, evidence: Tensor | None = None) -> Tensor:
        rows = features.new_zeros(features.shape[0])
        meta = MetadataBatch(gps=features.new_zeros(features.shape[0], 2), gps_present=rows.bool(),
                             weather=rows.long() + NULL_INDEX, daytime=rows.long() + NULL_INDEX,
                             scene=rows.long() + NULL_INDEX, text=features.new_zeros(features.shape[0], TEXT_DIM),
                             text_present=rows.bool())
        return torch.stack([head(features, view_mask, meta, evidence).margin.float() for head in self.heads], dim=-1)


def _evidence_of(bundle: Bundle) -> dict[int, int]:
    """Per feature source, the evidence source its heads read (this export covers one per source: the
    segmentation branch trained with that backbone)."""
    found: dict[int, int] = {}
    for source, chosen in zip(bundle.member_sources, bundle.member_evidence):
        if len(chosen) > 1 or found.get(source, chosen[0] if chosen else None) != (chosen[0] if chosen else None):
            raise RoadworkError("ONNX export covers heads that read at most one evidence source, the same for "
                                "every head of a feature source")
        if chosen:
            found[source] = chosen[0]
    return found


def _members_of(bundle: Bundle, source: int) -> list[int]:
    """The head members that read feature source ``source``, in member order."""
    return [k for k, read in enumerate(bundle.member_sources) if read == source]


def pad_views(features: Tensor, view_mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[B, V, D]`` and mask ``[B, V]`` padded to MAX_VIEWS views, as the head graphs take them."""
    missing = MAX_VIEWS - features.shape[1]
    if missing < 0:
        raise ValueError(f"{features.shape[1]} views exceed the {MAX_VIEWS} the exported heads take")
    padded = nn.functional.pad(features.float(), (0, 0, 0, missing))
    mask = nn.functional.pad(view_mask, (0, missing), value=False)
    return padded.numpy(), mask.numpy()


def _export(module: nn.Module, inputs: tuple[Tensor, ...], path: Path, names: list[str], output: str) -> None:
    """torch.export's graph of ``module`` (the first dimension of every input and of the output dynamic)
    as one ONNX file, through the dynamo exporter."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")   # the exporter's notes on renamed dynamic shapes
        torch.onnx.export(module, inputs, str(path), input_names=names, output_names=[output],
                          dynamic_shapes=tuple({0: batch} for _ in inputs), opset_version=OPSET, dynamo=True,
                          external_data=False, verbose=False)


def export_onnx(bundle_path: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Export the bundle's backbone(s) and heads to ``out``; check each graph against PyTorch.

    ``out`` is written whole in a staging folder, then swapped in. It must be new or empty; an earlier
    export there is replaced only with ``overwrite``, and anything else (a run, the source bundle) never.
    """
    out = check_output(out, "export folder", replace=overwrite, inputs=[bundle_path])
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise RoadworkError(f"export folder {out} holds files that are not an ONNX export: choose a new folder")
    bundle = load_bundle(bundle_path)
    if bundle.served.metadata:
        raise RoadworkError("ONNX export covers bundles that serve the image alone (served_metadata: none)")
    manifest: dict[str, Any] = {}
    write_folder(out, lambda staging: manifest.update(_write_export(bundle, staging)))
    return manifest


def _is_export(folder: Path) -> bool:
    try:
        return read_kind(folder)[0] == "onnx"
    except BundleError:
        return False


def _write_export(bundle: Bundle, out: Path) -> dict[str, Any]:
    import onnxruntime as ort

    predictor = Predictor(bundle)
    size, dim = bundle.backbone.input_size, bundle.backbone.feature_dim
    generator = torch.Generator().manual_seed(0)
    parity: dict[str, float] = {}
    if any(entry.kind != "segmentation" for entry in bundle.evidence_sources):
        raise RoadworkError("ONNX export covers the segmentation branch's evidence; a bundle whose heads read an "
                            "image expert (detector, depth, night stream) is served by the bundle itself")
    evidence_of = _evidence_of(bundle)
    for source in range(predictor.sources):
        backbone = _BackboneGraph(predictor.backbone(source)).eval()
        heads = _HeadsGraph([bundle.head.members[k] for k in _members_of(bundle, source)]).eval()
        views = torch.rand(3, 3, size, size, generator=generator)
        features = torch.randn(4, MAX_VIEWS, dim, generator=generator).abs()
        mask = torch.arange(MAX_VIEWS).expand(4, -1) < torch.tensor([[1], [5], [12], [MAX_VIEWS]])
        head_inputs = {"features": features, "view_mask": mask}
        graphs = [(f"backbone-{source}.onnx", backbone, {"views": views})]
        if source in evidence_of:
            fields = len(bundle.evidence_sources[evidence_of[source]].fields)
            head_inputs["evidence"] = torch.rand(4, fields, generator=generator).masked_fill(
                torch.tensor([[False] * fields, [True] * fields, [False] * fields, [True, *[False] * (fields - 1)]]),
                float("nan"))
            expert = predictor.backbone(predictor.sources + evidence_of[source])
            graphs.append((f"segmentation-{evidence_of[source]}.onnx", _EvidenceGraph(expert).eval(),  # type: ignore[arg-type]
                           {"views": views}))
        graphs.append((f"head-{source}.onnx", heads, head_inputs))
        for name, graph, inputs in graphs:
            output = "margins" if name.startswith("head") else "evidence" if name.startswith("seg") else "features"
            _export(graph, tuple(inputs.values()), out / name, list(inputs), output)
        for name, graph, inputs in graphs:
            inputs = {k: v[:2] if k == "views" else v for k, v in inputs.items()}
            session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
            got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
            with torch.no_grad():
                expected = graph(*inputs.values()).numpy()
            parity[name] = float(np.abs(got - expected).max())
            if parity[name] > TOLERANCE:
                raise RoadworkError(f"{name}: ONNX output differs from PyTorch by {parity[name]:.2e} "
                                    f"(> {TOLERANCE}); not written as a working export")
    shutil.copytree(bundle.path, out / "bundle")
    files = [f"{kind}-{i}.onnx" for i in range(predictor.sources) for kind in ("backbone", "head")]
    files += [f"segmentation-{j}.onnx" for j in range(len(bundle.evidence_sources))]
    manifest = {
        "kind": "onnx",
        "format_version": FORMAT_VERSION,
        "opset": OPSET,
        "sources": predictor.sources,
        "evidence_sources": len(bundle.evidence_sources),
        "max_views": MAX_VIEWS,
        "files": {name: sha256_file(out / name) for name in files},
        "max_difference_from_pytorch": parity,
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


class OnnxPredictor(Predictor):
    """An export run by onnxruntime on the CPU, verified against its manifest: the bundle copy's
    calibration and view plan, the exported graphs in place of the PyTorch backbone(s) and heads.
    Every feature is computed here, so no feature cache is read or written."""

    reads_cache = False

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        kind, manifest = read_kind(folder)
        try:
            if kind != "onnx":
                raise ValueError(f"kind is {kind!r}")
            # Exports written before every kind had a manifest.json said "format": 1 in onnx.json.
            version = manifest.get("format_version", manifest.get("format"))
            if version != FORMAT_VERSION:
                raise ValueError(f"format {version!r} is not supported (expected {FORMAT_VERSION})")
            files = manifest["files"]
            sources = int(manifest["sources"])
        except (ValueError, KeyError, TypeError) as error:
            raise BundleError(f"{folder}: not an ONNX export this roadwork reads ({error})") from None
        for name, digest in files.items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise BundleError(f"{folder}: {name} is missing or does not match the manifest")
        super().__init__(load_bundle(folder / "bundle"), "cpu")
        experts = len(self.bundle.evidence_sources)
        if len(files) != 2 * self.sources + experts or sources != self.sources or \
                manifest.get("evidence_sources", 0) != experts:
            raise BundleError(f"{folder}: {sources} exported sources for a bundle with {self.sources} "
                              f"(and {experts} evidence sources)")
        self.folder = folder
        options = ort.SessionOptions()
        # Idle onnxruntime threads spin by default and starve the decoding and resizing torch does
        # between two runs: 90 ms per 224 px request instead of 11 on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads

        def session(name: str) -> Any:
            return ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])

        self.backbones = [session(f"backbone-{i}.onnx") for i in range(sources)]
        self.heads = [session(f"head-{i}.onnx") for i in range(sources)]
        self.backbones += [session(f"segmentation-{j}.onnx") for j in range(experts)]   # after the backbones

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> OnnxPredictor:
        """onnxruntime runs on the CPU whatever ``device`` says."""
        return cls(path)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bundle": str(self.folder), "kind": "onnx", "runtime": "onnxruntime"}

    def use_tta(self, config: TtaConfig) -> None:
        if config.mode == "foods":
            raise BundleError(f"{self.folder}: FOODS needs the heads' fusion-layer features, which an ONNX export "
                              "does not output; use --tta plain, or the bundle itself")
        super().use_tta(config)

    def _encode(self, source: int, views: Tensor) -> Tensor:
        x = views.float().div(255.0) if views.dtype == torch.uint8 else views.float()
        return torch.from_numpy(self.backbones[source].run(None, {"views": x.cpu().numpy()})[0])

    def _head_outputs(self, tables: Sequence[FeatureTable], fused: bool) -> tuple[Tensor, Tensor | None]:
        margins = torch.empty(len(tables[0]), len(self.bundle.member_sources))
        for source, session in enumerate(self.heads):
            members = _members_of(self.bundle, source)
            table = tables[members[0]]   # the members of one source read the same table
            padded, mask = pad_views(table.features, table.view_mask)
            inputs = {"features": padded, "view_mask": mask}
            if table.evidence.shape[1]:
                inputs["evidence"] = table.evidence.float().numpy()
            outputs = torch.from_numpy(session.run(None, inputs)[0])
            margins[:, members] = outputs
        return (margins.squeeze(-1) if margins.shape[-1] == 1 else margins), None
