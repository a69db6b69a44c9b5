"""Which training rows an epoch shows, in which order: GPS-weighted sampling (plan component 13) and the
epoch sampler every trainer uses.

``EpochSampler`` is written here because no library sampler does three things at once: its order is a
pure function of (seed, epoch), so a resumed run continues exactly where a killed one stopped (torch's
samplers carry a generator whose state a restart cannot rebuild); it draws with replacement by
weight; and it shards the epoch across processes (torch's DistributedSampler does not weight).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from roadwork.config import ConfigError, SamplingConfig
from roadwork.data.geo import TargetRegions, read_target_coordinates
from roadwork.data.records import Sample

log = logging.getLogger(__name__)
REPORT_RADII_KM = (50.0, 100.0)
# Factors tried on the nearest bracket's weight (up) and on the farthest one's (down) when the
# targets are missed; the first pair that meets them, nearest to the configured weights, is suggested.
NEAR_FACTORS = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
FAR_FACTORS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.01)


class EpochSampler(Sampler[int]):
    """Row indices of one epoch: a permutation (no weights) or ``samples_per_epoch`` weighted draws with
    replacement, seeded by (seed, epoch), then this process's share of them (``rank`` of ``world``;
    None = from the initialised process group, else the only process)."""

    def __init__(self, size: int, *, weights: np.ndarray | None = None, samples_per_epoch: int | None = None,
                 seed: int = 0, epoch: Callable[[], int] = lambda: 0, rank: int | None = None,
                 world: int | None = None) -> None:
        if size < 1:
            raise ValueError("an epoch needs at least one row")
        if weights is not None and (len(weights) != size or not np.all(np.isfinite(weights))
                                    or np.any(weights < 0) or not np.any(weights > 0)):
            raise ValueError("sampling weights must be finite, non-negative, one per row, and not all zero")
        self.size, self.seed, self._rank, self._world = size, seed, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.samples_per_epoch = samples_per_epoch or size
        # Asked when an epoch's iteration starts (a trainer's current epoch), not told by set_epoch:
        # Lightning passes a progress counter there that a resumed run restores one behind.
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        # Read when iterating, not when built: a DDP trainer starts its processes after the loader exists.
        if self._world is not None:
            return self._rank or 0, self._world
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def epoch_order(self) -> torch.Tensor:
        """Every process's draws for this epoch, before sharding."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
        n = self.samples_per_epoch
        if self.weights is not None:
            return torch.multinomial(self.weights, n, replacement=True, generator=generator)
        rounds = -(-n // self.size)
        return torch.cat([torch.randperm(self.size, generator=generator) for _ in range(rounds)])[:n]

    def __iter__(self) -> Iterator[int]:
        rank, world = self._shard()
        order = self.epoch_order()
        padded = -(-len(order) // world) * world   # every process takes as many steps
        order = torch.cat([order, order[: padded - len(order)]])
        return iter(order[rank::world].tolist())

    def __len__(self) -> int:
        return -(-self.samples_per_epoch // self._shard()[1])


def bracket_weights(distances_km: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """The plan's bracket weight of each distance to the nearest target region; NaN (no GPS) gets
    ``null_gps_weight``. A distance equal to a bracket edge belongs to the farther bracket."""
    distances = np.asarray(distances_km, dtype=float)
    known = ~np.isnan(distances)
    weights = np.full(distances.shape, config.null_gps_weight, dtype=float)
    index = np.searchsorted(np.asarray(config.brackets_km), distances[known], side="right")
    weights[known] = np.asarray(config.weights)[index]
    return weights


def sample_distances(samples: Sequence[Sample], regions: TargetRegions) -> np.ndarray:
    coordinates = np.array([(s.latitude, s.longitude) if s.has_gps else (np.nan, np.nan) for s in samples],
                           dtype=float).reshape(-1, 2)
    return regions.nearest_km(coordinates)


def _shares(distances: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Expected statistics of weighted draws, among the draws whose photo has a position."""
    known = ~np.isnan(distances)
    w, d = weights[known], distances[known]
    if w.sum() <= 0:
        return {"mean_km": float("nan"), **{f"within_{r:g}km": 0.0 for r in REPORT_RADII_KM}}
    return {"mean_km": float(np.average(d, weights=w)),
            **{f"within_{r:g}km": float(w[d < r].sum() / w.sum()) for r in REPORT_RADII_KM}}


def _missed(stats: dict[str, float], config: SamplingConfig) -> list[str]:
    missed = []
    if not stats["within_50km"] >= config.target_share_50km:
        missed.append(f"{stats['within_50km']:.1%} of draws within 50 km (target {config.target_share_50km:.0%})")
    if not stats["within_100km"] >= config.target_share_100km:
        missed.append(f"{stats['within_100km']:.1%} within 100 km (target {config.target_share_100km:.0%})")
    if not stats["mean_km"] < config.target_mean_km:
        missed.append(f"mean distance {stats['mean_km']:.0f} km (target under {config.target_mean_km:.0f} km)")
    return missed


def suggest_weights(distances: np.ndarray, config: SamplingConfig) -> list[float] | None:
    """Bracket weights that would meet the targets (expected over draws), changing the configured ones
    as little as the grid allows; None when none does (too few training photos near the targets)."""
    for far in FAR_FACTORS:
        for near in NEAR_FACTORS:
            candidate = [*config.weights]
            candidate[0] *= near
            candidate[-1] *= far
            trial = config.model_copy(update={"weights": candidate})
            if not _missed(_shares(distances, bracket_weights(distances, trial)), config):
                return [round(w, 4) for w in candidate]
    return None


@dataclass
class GpsSampling:
    """The regions, each training photo's distance to them, and its sampling weight."""

    regions: TargetRegions
    distances_km: np.ndarray   # NaN: the photo has no GPS
    weights: np.ndarray

    @classmethod
    def build(cls, samples: Sequence[Sample], config: SamplingConfig, seed: int) -> GpsSampling:
        if config.target is None:
            raise ConfigError("sampling.target: no target coordinates given (--target-gps or --target-data)")
        regions = TargetRegions.fit(read_target_coordinates(config.target), config.regions, seed)
        distances = sample_distances(samples, regions)
        return cls(regions, distances, bracket_weights(distances, config))

    def report(self, config: SamplingConfig, *, batches: int = 1000, batch_size: int = 32,
               seed: int = 0) -> dict[str, Any]:
        """The plan's check: draw ``batches`` batches as the trainer would and measure how near to the
        target regions the drawn photos are; what the weights give in expectation; targets missed;
        weights that would meet them."""
        draws = EpochSampler(len(self.weights), weights=self.weights, samples_per_epoch=batches * batch_size,
                             seed=seed).epoch_order().numpy()
        drawn = self.distances_km[draws]
        known = drawn[~np.isnan(drawn)]
        sampled = {"mean_km": float(known.mean()) if len(known) else float("nan"),
                   "median_km": float(np.median(known)) if len(known) else float("nan"),
                   **{f"within_{r:g}km": float((known < r).mean()) if len(known) else 0.0 for r in REPORT_RADII_KM}}
        missed = _missed(sampled, config)
        have_gps = ~np.isnan(self.distances_km)
        return {
            "regions": self.regions.to_dict(),
            "training_photos": int(len(self.weights)), "with_gps": int(have_gps.sum()),
            "photos_within_50km": int((self.distances_km[have_gps] < 50).sum()),
            "draws": int(len(draws)), "draws_without_gps": float(np.isnan(drawn).mean()),
            "sampled": sampled,
            "expected": _shares(self.distances_km, self.weights),
            "unweighted": _shares(self.distances_km, np.ones_like(self.weights)),
            "weights": list(config.weights), "brackets_km": list(config.brackets_km),
            "targets_met": not missed, "missed": missed,
            "suggested_weights": suggest_weights(self.distances_km, config) if missed else None,
        }


def check_report(report: dict[str, Any], config: SamplingConfig) -> None:
    """Warn when the targets are missed, or fail with ``sampling.strict``; either way say what would help."""
    if report["targets_met"]:
        return
    advice = (f"weights {report['suggested_weights']} (for brackets {report['brackets_km']} km) would meet them"
              if report["suggested_weights"] else
              f"no bracket weights can: only {report['photos_within_50km']} of {report['training_photos']} training "
              "photos lie within 50 km of a target region")
    message = f"GPS-weighted sampling misses its targets: {'; '.join(report['missed'])}. {advice}"
    if config.strict:
        raise ConfigError(f"sampling.strict: {message}")
    log.warning(message)


def describe_report(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    s, e, u = report["sampled"], report["expected"], report["unweighted"]
    centres = ", ".join(f"({lat:.2f}, {lon:.2f})" for lat, lon in report["regions"]["centres"])
    return "\n".join([
        f"GPS-weighted sampling: {len(report['regions']['centres'])} target regions {centres}",
        f"  {report['with_gps']} of {report['training_photos']} training photos have GPS, "
        f"{report['photos_within_50km']} within 50 km of a region",
        f"  {report['draws']} draws ({report['draws_without_gps']:.1%} without GPS); among the others: mean "
        f"{s['mean_km']:.0f} km, median {s['median_km']:.0f} km, {s['within_50km']:.1%} within 50 km, "
        f"{s['within_100km']:.1%} within 100 km",
        f"  expected from the weights: {e['within_50km']:.1%} / {e['within_100km']:.1%}, mean {e['mean_km']:.0f} km; "
        f"unweighted: {u['within_50km']:.1%} / {u['within_100km']:.1%}, mean {u['mean_km']:.0f} km",
        "  targets met" if report["targets_met"] else "  targets missed: " + "; ".join(report["missed"]),
    ])
