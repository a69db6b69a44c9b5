"""Active learning: which unlabelled photos to label next, and the folder to label them in.

Each pool photo is scored on three criteria, each turned into its rank in the pool (0 to 1) so that
no scale dominates, then summed with configurable weights:

- ``boundary``: closeness of the served probability to the 0.5 cut, 1 - 2|p - 0.5|;
- ``uncertainty``: the members' own doubt, their mean binary entropy (bits);
- ``disagreement``: what the members disagree about, the entropy of the mean probability minus
  the mean entropy (the mutual information of BALD); 0 for a single head, and then left out.

Picks are then taken in score order, skipping any photo identical to, or a near-duplicate of
(centred cosine similarity of global-view features at least ``similarity``, the grouping rule), a
photo already picked: ten frames of one drive teach less than ten drives.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from roadwork.config import NEAR_DUPLICATE_SIMILARITY
from roadwork.data.groups import centred_unit_vectors
from roadwork.data.records import METADATA_FIELDS, DatasetError, Sample
from roadwork.features.extract import content_keys
from roadwork.serve.scorer import Scorer
from roadwork.storage import atomic_write_bytes, atomic_write_text, write_folder

CRITERIA = ("boundary", "uncertainty", "disagreement")


@dataclass(frozen=True)
class Pick:
    index: int   # into the pool
    score: float
    probability: float
    boundary: float
    uncertainty: float
    disagreement: float


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def criteria(member_probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Each criterion per photo from the members' calibrated probabilities ``[N, K]``."""
    member_probabilities = np.asarray(member_probabilities, dtype=np.float64)
    mean = member_probabilities.mean(axis=1)
    uncertainty = _entropy(member_probabilities).mean(axis=1)
    return {"boundary": 1 - 2 * np.abs(mean - 0.5), "uncertainty": uncertainty,
            "disagreement": np.maximum(_entropy(mean) - uncertainty, 0.0)}


def combined_score(values: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted sum of each criterion's rank in the pool (0 = lowest, 1 = highest); a criterion that
    is the same for every photo (disagreement of a single head) tells nothing and is left out."""
    n = len(next(iter(values.values())))
    score = np.zeros(n)
    for name, value in values.items():
        if weights.get(name, 0.0) and np.ptp(value) > 0:
            ranks = np.argsort(np.argsort(value, kind="stable"), kind="stable")
            score += weights[name] * ranks / max(n - 1, 1)
    return score


def diverse_top(order: Sequence[int], budget: int, features: torch.Tensor | None, keys: Sequence[str | None],
                similarity: float | None) -> list[int]:
    """The first ``budget`` of ``order`` that are neither identical nor (with ``features`` and a
    ``similarity``) near-duplicates of an earlier pick."""
    vectors = None if features is None or similarity is None else centred_unit_vectors(features)
    picked: list[int] = []
    seen: set[str] = set()
    for i in order:
        if keys[i] is not None and keys[i] in seen:
            continue
        if vectors is not None and picked and float((vectors[picked] @ vectors[i]).max()) >= similarity:
            continue
        picked.append(i)
        if keys[i] is not None:
            seen.add(keys[i])   # type: ignore[arg-type]
        if len(picked) == budget:
            break
    return picked


def rank_pool(scorer: Scorer, pool: Sequence[Sample], budget: int, *, weights: Mapping[str, float] | None = None,
              similarity: float | None = NEAR_DUPLICATE_SIMILARITY, cache_dir: str | Path | None = None,
              progress: bool | None = False) -> tuple[list[Pick], dict[str, str]]:
    """The ``budget`` pool photos most worth labelling, best first, and the photos that failed."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    weights = dict.fromkeys(CRITERIA, 1.0) if weights is None else dict(weights)
    unknown = set(weights) - set(CRITERIA)
    if unknown or not any(weights.values()):
        raise ValueError(f"active-learning weights must name some of {CRITERIA} with a non-zero weight, got {weights}")
    hashed = content_keys(pool, progress)
    scores = scorer.member_scores(pool, cache_dir=cache_dir, progress=progress, hashed=hashed)
    good, failures = scores.good, scores.failures
    if not good:
        raise DatasetError("no pool image could be decoded")
    member_probabilities = scores.probabilities.numpy()
    values = criteria(member_probabilities)
    score = combined_score(values, weights)
    order = np.argsort(-score, kind="stable")
    embeddings = scores.embeddings if similarity is not None else None
    chosen = diverse_top(order.tolist(), budget, embeddings, [hashed[0][i] for i in good], similarity)
    probabilities = member_probabilities.mean(axis=1)
    picks = [Pick(good[j], float(score[j]), float(probabilities[j]),
                  *(float(values[name][j]) for name in CRITERIA)) for j in chosen]
    return picks, failures


def write_picks(picks: Sequence[Pick], pool: Sequence[Sample], out: str | Path) -> Path:
    """OUT/images/<picked photos> and OUT/metadata.csv, a dataset folder with an empty ``label`` to
    fill in; ``train --add-data OUT`` reads it once labelled. The folder is swapped in whole."""
    scores = ["source_file", "rank", "score", "probability", *CRITERIA]
    # A pool that is itself a picks folder carries old scores: the new ones replace them.
    extra = sorted({key for p in picks for key in pool[p.index].extra} - {"label", "file_name", *scores})
    columns = ["file_name", "label", *METADATA_FIELDS, *extra, *scores]

    def fill(staging: Path) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for rank, pick in enumerate(picks, 1):
            sample = pool[pick.index]
            name = f"images/{rank:05d}-{PurePosixPath(sample.file_name).name}"
            atomic_write_bytes(staging / name, sample.read_bytes())
            row = {**sample.extra, **{f: getattr(sample, f) for f in METADATA_FIELDS},
                   "file_name": name, "label": "", "source_file": sample.file_name, "rank": rank,
                   "score": f"{pick.score:.4f}", "probability": f"{pick.probability:.4f}",
                   **{c: f"{getattr(pick, c):.4f}" for c in CRITERIA}}
            writer.writerow({k: "" if v is None else v for k, v in row.items() if k in columns})
        atomic_write_text(staging / "metadata.csv", buffer.getvalue())

    return write_folder(out, fill)
