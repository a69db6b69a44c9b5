"""A cascade of two scorers served as one (bundle kind ``cascade``): the fast tier answers every photo,
and the photos it is unsure of (its probability within ``half_width`` of 0.5) are asked again of the
slow tier, whose answer then counts; the combined answer is calibrated once more. When the slow tier
misses its time budget on the request path, the fast tier's answer is served.

The folder holds ``manifest.json`` (kind, format version, the band, the slow tier's budget, the
calibration, metrics and the SHA-256 of each tier's manifest) and ``members/fast/``, ``members/slow/``:
any two bundle kinds, verified on load as usual. ``roadwork cascade`` (roadwork.tune.cascade) fits it.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late
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
from roadwork.serve.ensemble import logit
from roadwork.serve.scorer import Hashed, ImageInput, MemberScores, Prediction, Scorer, load_scorer, read_kind
from roadwork.storage import atomic_write_json, sha256_file, write_folder

FORMAT_VERSION = 1
TIERS = ("fast", "slow")


@dataclass(frozen=True)
class Band:
    """Photos whose fast probability lies within ``half_width`` of 0.5 go to the slow tier."""

    half_width: float

    def routes(self, fast: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(fast, dtype=np.float64) - 0.5) < self.half_width


def combined_margins(fast: np.ndarray, slow: np.ndarray, routed: np.ndarray) -> np.ndarray:
    """The margin the cascade's calibration reads: the slow tier's probability where it was asked and
    answered (not NaN), the fast tier's elsewhere."""
    answered = routed & np.isfinite(slow)
    return logit(np.where(answered, slow, fast))


def save_cascade(path: str | Path, fast: Path, slow: Path, band: Band, calibration: Calibration,
                 slow_budget_ms: float | None, metrics: dict[str, Any]) -> Path:
    """Copy both tiers into ``path`` with the manifest, written whole (staging, then rename)."""

    def fill(staging: Path) -> None:
        for tier, source in zip(TIERS, (fast, slow)):
            shutil.copytree(source, staging / "members" / tier)
        manifest = {
            "kind": "cascade", "format_version": FORMAT_VERSION,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "band": {"half_width": band.half_width}, "slow_budget_ms": slow_budget_ms,
            "member_manifests": {t: sha256_file(staging / "members" / t / MANIFEST) for t in TIERS},
            "calibration": calibration.to_dict(), "decision_threshold": 0.5, "metrics": metrics,
        }
        manifest["manifest_sha256"] = manifest_digest(manifest)
        atomic_write_json(staging / MANIFEST, manifest)

    return write_folder(path, fill)


class CascadeScorer(Scorer):
    """A cascade folder: the fast tier, the slow tier for the photos the fast one is unsure of, and the
    cascade's own calibration of the combined answer. ``answers()`` counts which tier answered."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        kind, manifest = read_kind(self.path)
        try:
            if kind != "cascade" or manifest.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"kind {kind!r}, format {manifest.get('format_version')!r}")
            if manifest.get("manifest_sha256") != manifest_digest(manifest):
                raise BundleError(f"{self.path}: the cascade's manifest was modified after it was written")
            for tier in TIERS:
                if sha256_file(self.path / "members" / tier / MANIFEST) != manifest["member_manifests"][tier]:
                    raise BundleError(f"{self.path}: tier {tier!r} does not match the cascade's manifest")
            self.band = Band(float(manifest["band"]["half_width"]))
            budget = manifest["slow_budget_ms"]
            self.slow_budget_ms = None if budget is None else float(budget)
            self.calibration = Calibration.from_dict(manifest["calibration"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BundleError(f"{self.path}: unreadable cascade: {type(error).__name__}: {error}") from error
        self.manifest = manifest
        self.fast, self.slow = (load_scorer(self.path / "members" / tier, device) for tier in TIERS)
        self._answers: Counter[str] = Counter()
        self._tiers: list[str] | None = None
        self._lock = threading.Lock()
        self._slow_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade-slow")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> CascadeScorer:
        return cls(path, device)

    @property
    def served(self) -> ServedInputs:
        return ServedInputs(metadata=self.fast.served.metadata or self.slow.served.metadata)

    def use_tta(self, config: TtaConfig) -> None:
        for tier in (self.fast, self.slow):
            tier.use_tta(config)

    def training_fingerprints(self) -> set[int]:
        return self.fast.training_fingerprints() | self.slow.training_fingerprints()

    def describe(self) -> dict[str, Any]:
        fast, slow = self.fast.describe(), self.slow.describe()
        return {"bundle": str(self.path), "kind": "cascade", "backbone": [fast["backbone"], slow["backbone"]],
                "band": self.band.half_width, "slow_budget_ms": self.slow_budget_ms, "tta": fast["tta"],
                "tiers": {"fast": fast, "slow": slow}}

    def warm_up(self) -> None:
        self.fast.warm_up()
        self.slow.warm_up()

    def answers(self) -> dict[str, int]:
        """Photos answered by each tier so far (``slow_late``: sent on, but the fast answer was served)."""
        with self._lock:
            return dict(self._answers)

    def last_tiers(self) -> list[str] | None:
        return self._tiers

    def _count(self, tiers: Sequence[str]) -> None:
        with self._lock:
            self._answers.update(tiers)

    def sample_margins(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                       use_cache: bool = True, progress: bool | None = False,
                       hashed: Hashed | None = None) -> tuple[Tensor | None, list[int], dict[str, str]]:
        """The combined margin of every sample the fast tier scored; the slow tier scores only those in the
        band (a photo it cannot score keeps the fast answer)."""
        if use_cache and hashed is None:
            hashed = content_keys(samples, progress)
        margins, good, failures = self.fast.sample_margins(samples, cache_dir, use_cache, progress, hashed)
        if margins is None:
            self._tiers = []
            return None, good, failures
        fast = self.fast.calibration(margins).numpy().astype(np.float64)
        routed = self.band.routes(fast)
        slow = np.full(len(good), np.nan)
        asked = [good[i] for i in np.flatnonzero(routed)]
        if asked:
            subset = None if hashed is None else ([hashed[0][i] for i in asked], {})
            answer, answered, _ = self.slow.sample_margins([samples[i] for i in asked], cache_dir, use_cache,
                                                           progress, subset)
            if answer is not None:
                positions = np.flatnonzero(routed)[answered]
                slow[positions] = self.slow.calibration(answer).numpy()
        self._tiers = ["slow" if r and np.isfinite(s) else "fast" for r, s in zip(routed, slow)]
        return torch.from_numpy(combined_margins(fast, slow, routed)), good, failures

    def predict_images(self, images: Sequence[ImageInput], names: Sequence[str] | None = None) -> list[Prediction]:
        results = self.fast.predict_images(images, names)
        good = [i for i, r in enumerate(results) if r.probability is not None]
        if not good:
            return results
        fast = np.array([results[i].probability for i in good], dtype=np.float64)
        routed = self.band.routes(fast)
        slow = np.full(len(good), np.nan)
        asked = [good[i] for i in np.flatnonzero(routed)]
        tiers = ["fast"] * len(good)
        if asked:
            pending = self._slow_worker.submit(self.slow.predict_images, [images[i] for i in asked],
                                               [results[i].name for i in asked])
            budget = None if self.slow_budget_ms is None else self.slow_budget_ms / 1000
            try:
                answers = pending.result(timeout=budget)
                for position, answer in zip(np.flatnonzero(routed), answers):
                    if answer.probability is not None:
                        slow[position], tiers[position] = answer.probability, "slow"
            except Late:   # the fast answers stand; the slow call finishes in the background
                for position in np.flatnonzero(routed):
                    tiers[position] = "slow_late"
        self._count(tiers)
        served = self.calibration(torch.from_numpy(combined_margins(fast, slow, routed)))
        for i, value in zip(good, served.tolist()):
            results[i].probability = value
        return results

    def member_scores(self, samples: Sequence[Sample], cache_dir: str | Path | None = None,
                      progress: bool | None = False, hashed: Hashed | None = None) -> MemberScores:
        """Both tiers' calibrated probabilities side by side, on the samples both could score."""
        hashed = content_keys(samples, progress) if hashed is None else hashed
        scores = [tier.member_scores(samples, cache_dir, progress, hashed) for tier in (self.fast, self.slow)]
        good = sorted(set(scores[0].good) & set(scores[1].good))
        rows = [[s.good.index(i) for i in good] for s in scores]
        failures = {k: v for s in scores for k, v in s.failures.items()}
        return MemberScores(torch.cat([s.probabilities[r] for s, r in zip(scores, rows)], dim=1),
                            scores[0].embeddings[rows[0]], good, failures)
