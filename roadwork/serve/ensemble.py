"""An ensemble of separately trained bundles, served as one: ``roadwork ensemble`` writes it, and
``predict``, ``evaluate`` and ``serve`` accept its folder as ``--bundle``.

The folder holds ``manifest.json`` (kind ``ensemble``, its format version, the members, how their
calibrated probabilities are combined into one margin, the calibration of that margin, metrics, and the
SHA-256 of every member's manifest) and ``members/<name>/``, each a complete bundle verified on load as
usual. Folders written before the kind registry keep the same manifest in ``ensemble.json``.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from roadwork.config import TtaConfig
from roadwork.data.records import Sample
from roadwork.features.extract import content_keys
from roadwork.features.metadata import ServedInputs
from roadwork.serve.bundle import MANIFEST, BundleError, manifest_digest
from roadwork.serve.calibration import Calibration
from roadwork.serve.scorer import Hashed, ImageInput, MemberScores, Prediction, Scorer, load_scorer, read_kind
from roadwork.storage import atomic_write_json, sha256_file, write_folder

FORMAT_VERSION = 1
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")   # a folder name: no path separators, no ".."
COMBINATIONS = ("mean", "mcc_weighted", "stacking")
_EDGE = 1e-6   # probabilities are clipped this far from 0 and 1 before a logit


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EDGE, 1 - _EDGE)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Combiner:
    """Members' calibrated probabilities ``[N, K]`` -> one margin per photo.

    ``mean`` and ``mcc_weighted``: the logit of the weighted mean probability (weights sum to 1);
    ``stacking``: a logistic regression on the members' logits (``weights`` are its coefficients).
    """

    method: str
    weights: tuple[float, ...]
    intercept: float = 0.0

    def margins(self, probabilities: np.ndarray) -> np.ndarray:
        weights = np.asarray(self.weights)
        if self.method == "stacking":
            return logit(probabilities) @ weights + self.intercept
        return logit(probabilities @ weights)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "weights": list(self.weights), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: Any, members: int) -> Combiner:
        method, weights = data["method"], [float(w) for w in data["weights"]]
        if method not in COMBINATIONS or len(weights) != members or not np.isfinite(weights).all():
            raise ValueError(f"combiner must be one of {COMBINATIONS} with {members} finite weights, got {data!r}")
        if method != "stacking" and (min(weights) < 0 or abs(sum(weights) - 1) > 1e-6):
            raise ValueError(f"{method} weights must be non-negative and sum to 1, got {weights}")
        return cls(method, tuple(weights), float(data.get("intercept", 0.0)))


def save_ensemble(path: str | Path, members: dict[str, Path], combiner: Combiner, calibration: Calibration,
                  metrics: dict[str, Any]) -> Path:
    """Copy each member bundle into ``path/members/<name>`` and write the manifest, atomically."""
    def fill(staging: Path) -> None:
        for name, bundle in members.items():
            shutil.copytree(bundle, staging / "members" / name)
        manifest = {
            "kind": "ensemble",
            "format_version": FORMAT_VERSION,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "members": list(members),
            "member_manifests": {n: sha256_file(staging / "members" / n / MANIFEST) for n in members},
            "combiner": combiner.to_dict(),
            "calibration": calibration.to_dict(),
            "decision_threshold": 0.5,
            "metrics": metrics,
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_json(staging / MANIFEST, manifest)
    return write_folder(path, fill)


class EnsemblePredictor(Scorer):
    """An ensemble folder: each member predicts with its own backbone and calibration, then the
    combiner and the ensemble's calibration make one served probability."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        kind, manifest = read_kind(self.path)
        try:
            if kind != "ensemble":
                raise ValueError(f"kind is {kind!r}")
            # Ensembles written before the kind registry carry no format_version: they are format 1.
            if manifest.get("format_version", 1) != FORMAT_VERSION:
                raise ValueError(
                    f"format {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
                )
            if manifest.get("manifest_sha256") != manifest_digest(manifest):
                raise BundleError(f"{self.path}: the ensemble's manifest was modified after it was written")
            names = manifest["members"]
            for name in names:
                member = self.path / "members" / name
                known = manifest["member_manifests"][name]
                if not MEMBER_NAME.fullmatch(name) or sha256_file(member / MANIFEST) != known:
                    raise BundleError(
                        f"{self.path}: member {name!r} is missing or does not match the ensemble's manifest"
                    )
            self.combiner = Combiner.from_dict(manifest["combiner"], len(names))
            self.calibration = Calibration.from_dict(manifest["calibration"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BundleError(f"{self.path}: unreadable ensemble: {type(error).__name__}: {error}") from error
        self.manifest = manifest
        self.members = [load_scorer(self.path / "members" / name, device) for name in names]

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> EnsemblePredictor:
        return cls(path, device)

    @property
    def served(self) -> ServedInputs:
        return ServedInputs(metadata=any(m.served.metadata for m in self.members))

    def use_tta(self, config: TtaConfig) -> None:
        """Each member scores over test-time copies (see ``Predictor.use_tta``) before the combination."""
        for member in self.members:
            member.use_tta(config)

    def training_fingerprints(self) -> set[int]:
        return set().union(*(m.training_fingerprints() for m in self.members))

    def describe(self) -> dict[str, Any]:
        described = [m.describe() for m in self.members]
        return {"bundle": str(self.path), "kind": "ensemble", "backbone": sorted({d["backbone"] for d in described}),
                "members": self.manifest["members"], "combiner": self.combiner.method, "tta": described[0]["tta"]}

    def sample_margins(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                       use_cache: bool = True, progress: bool | None = False,
                       hashed: Hashed | None = None) -> tuple[Tensor | None, list[int], dict[str, str]]:
        """The combined margin of every sample all members could score."""
        probabilities = np.full((len(samples), len(self.members)), np.nan)
        failures: dict[str, str] = {}
        if use_cache and hashed is None:   # hash every image once, not once per member
            hashed = content_keys(samples, progress)
        for k, member in enumerate(self.members):
            margins, good, failed = member.sample_margins(samples, cache_dir, use_cache, progress, hashed)
            failures |= failed
            if margins is not None:
                probabilities[good, k] = member.calibration(margins).numpy()
        good = np.flatnonzero(np.isfinite(probabilities).all(axis=1)).tolist()
        if not good:
            return None, [], failures
        return torch.from_numpy(self.combiner.margins(probabilities[good])), good, failures

    def predict_images(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> list[Prediction]:
        answers = [member.predict_images(images, names) for member in self.members]
        results = answers[0]
        for i, result in enumerate(results):   # an image is answered only if every member could score it
            result.error = next((a[i].error for a in answers if a[i].error is not None), None)
        good = [i for i, r in enumerate(results) if r.error is None]
        if good:
            probabilities = np.array([[a[i].probability for a in answers] for i in good], dtype=np.float64)
            served = self.calibration(torch.from_numpy(self.combiner.margins(probabilities)))
            for i, value in zip(good, served.tolist()):
                results[i].probability = value
        return results

    def warm_up(self) -> None:
        for member in self.members:
            member.warm_up()

    def member_scores(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                      progress: bool | None = False, hashed: Hashed | None = None) -> MemberScores:
        """Every member's members side by side (a fold-ensemble member gives k columns), on the samples
        all of them could score; the embeddings are the first member's."""
        hashed = content_keys(samples, progress) if hashed is None else hashed
        scores = [m.member_scores(samples, cache_dir, progress, hashed) for m in self.members]
        good = sorted(set.intersection(*(set(s.good) for s in scores)))
        failures = {k: v for s in scores for k, v in s.failures.items()}
        rows = [[s.good.index(i) for i in good] for s in scores]
        return MemberScores(torch.cat([s.probabilities[r] for s, r in zip(scores, rows)], dim=1),
                            scores[0].embeddings[rows[0]], good, failures)
