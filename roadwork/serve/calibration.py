"""The served decision: a cut on the head's logit margin that transfers to unseen data, folded into p.

The validator rounds the miner's answer at 0.5, so the chosen cut is folded into the probability:
p = sigmoid((z - z_t) / T), with z the logit margin, z_t the chosen cut and T a temperature fitted
by likelihood; or (``validation.calibration: isotonic``) an isotonic step function of z, held on the
right side of 0.5 at the cut. Training, validation and serving all import this one module.

Why not the MCC-best cut of the validation margins: on a few hundred margins the MCC curve is
noisy, so its raw argmax chases noise (measured: held-out MCC fell from 0.43 at margin 0 to 0.35 at
the fitted cut). Here each candidate cut is scored by its MCC averaged over bootstrap resamples (a
smoothed curve), and the cut moves away from the model's own margin 0 only when the paired
bootstrap says the move helps in every resample (``validation.cut_confidence``): a move that wins
in 96% of resamples of two sources' margins cost the third source 0.11 MCC.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression

from roadwork.config import CUT_CONFIDENCE
from roadwork.stats import bootstrap_mcc_curves, bootstrap_weights

log = logging.getLogger(__name__)
TEMPERATURE_BOUNDS = (0.05, 20.0)
MAX_CUTS = 200
FOLD_MARGIN = 1e-3   # isotonic: margins above the cut are served at least 0.5 + this, so the validator sees a yes


@dataclass(frozen=True)
class Calibration:
    margin_threshold: float = 0.0   # z_t: logit margin where the decision flips
    temperature: float = 1.0
    # Isotonic calibration: (margin, probability) knots of the fitted step function, used instead of
    # the temperature; empty for temperature calibration.
    isotonic: tuple[tuple[float, float], ...] = ()

    def __call__(self, margins: torch.Tensor) -> torch.Tensor:
        """P(roadwork) from margins ``[N]``, or from an ensemble's member margins ``[N, K]``: the mean of
        the members' calibrated probabilities."""
        if self.isotonic:
            xs, ys = torch.tensor(self.isotonic, dtype=margins.dtype, device=margins.device).T.contiguous()
            fitted = _interpolate(margins, xs, ys)
            above = margins > self.margin_threshold
            probabilities = torch.where(above, fitted.clamp(min=0.5 + FOLD_MARGIN), fitted.clamp(max=0.5))
        else:
            probabilities = torch.sigmoid((margins - self.margin_threshold) / self.temperature)
        return probabilities.mean(dim=-1) if probabilities.ndim == 2 else probabilities

    @property
    def method(self) -> str:
        return "isotonic" if self.isotonic else "temperature"

    def to_dict(self) -> dict[str, object]:
        return {"margin_threshold": self.margin_threshold, "temperature": self.temperature,
                "isotonic": [list(k) for k in self.isotonic]}

    @classmethod
    def from_dict(cls, data: object) -> Calibration:
        if not isinstance(data, dict):
            raise ValueError(f"calibration must be an object, got {type(data).__name__}")
        threshold, temperature = float(data["margin_threshold"]), float(data["temperature"])
        if not math.isfinite(threshold) or not TEMPERATURE_BOUNDS[0] <= temperature <= TEMPERATURE_BOUNDS[1]:
            raise ValueError(f"calibration out of range: threshold {threshold}, temperature {temperature}")
        knots = np.asarray(data.get("isotonic", []), dtype=np.float64).reshape(-1, 2)
        if len(knots) and (not np.isfinite(knots).all() or (np.diff(knots[:, 0]) <= 0).any()
                           or (np.diff(knots[:, 1]) < 0).any() or knots[:, 1].min() < 0 or knots[:, 1].max() > 1):
            raise ValueError("calibration: isotonic knots must have increasing margins and non-decreasing "
                             "probabilities in [0, 1]")
        return cls(threshold, temperature, tuple((float(x), float(y)) for x, y in knots))


def _interpolate(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear through (xs, ys), flat outside (as scikit-learn's isotonic ``predict``);
    by hand because torch has no ``interp``."""
    if len(xs) == 1:
        return ys.expand_as(x).clone()
    right = torch.searchsorted(xs, x.contiguous()).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
    share = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return y0 + share * (y1 - y0)


@dataclass(frozen=True)
class CutChoice:
    """The chosen cut and the evidence for it (bootstrap-averaged MCC at the cut and at margin 0)."""

    cut: float
    smoothed_mcc: float
    smoothed_mcc_at_zero: float
    moved_confidence: float   # share of resamples in which the cut beat margin 0
    degenerate: bool = False


def candidate_cuts(margins: np.ndarray) -> np.ndarray:
    """Margin 0 plus up to MAX_CUTS quantiles of the margins (between the 1st and 99th percentile)."""
    quantiles = np.quantile(margins, np.linspace(0.01, 0.99, MAX_CUTS))
    return np.unique(np.concatenate([quantiles, [0.0]]))


def choose_cut(margins: np.ndarray, labels: np.ndarray, *, resamples: int = 200, confidence: float = CUT_CONFIDENCE,
               seed: int = 0, groups: np.ndarray | None = None) -> CutChoice:
    """The cut to serve: margin 0 unless another cut beats it in ``confidence`` of the resamples."""
    margins = np.asarray(margins, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or labels.min() == labels.max() or np.ptp(margins) == 0:
        return CutChoice(0.0, 0.0, 0.0, 0.0, degenerate=True)
    cuts = candidate_cuts(margins)
    weights = bootstrap_weights(len(margins), resamples, np.random.default_rng(seed), groups)
    curves = bootstrap_mcc_curves(margins, labels, cuts, weights)
    smoothed = curves.mean(axis=0)
    zero = int(np.flatnonzero(cuts == 0.0)[0])
    best = int(np.argmax(smoothed))
    wins = float(np.mean(curves[:, best] > curves[:, zero]))
    if smoothed[best] <= 0.0:
        return CutChoice(0.0, float(smoothed[zero]), float(smoothed[zero]), 0.0, degenerate=True)
    # Margin 0 that calls every photo one class decides nothing: then the best cut needs no vote.
    one_sided = bool((margins > 0).all() or (margins <= 0).all())
    chosen = best if wins >= confidence or one_sided else zero
    return CutChoice(float(cuts[chosen]), float(smoothed[chosen]), float(smoothed[zero]), wins)


def selection_score(margins: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """What a checkpoint would score as served: the smoothed MCC at the cut ``choose_cut`` would serve."""
    return choose_cut(margins, labels, resamples=100, seed=seed).smoothed_mcc


def fit_calibration(margins: np.ndarray, labels: np.ndarray, *, method: str = "temperature",
                    confidence: float = CUT_CONFIDENCE, seed: int = 0, groups: np.ndarray | None = None,
                    ) -> tuple[Calibration, CutChoice]:
    """Cut by ``choose_cut``, then the likelihood-optimal temperature around it, or (``method=
    "isotonic"``) the isotonic regression of the labels on the margins.

    Degenerate data (one class, identical margins, no cut with a positive smoothed MCC) keeps the
    model's own cut and temperature 1 (the neutral choice) and logs a warning.
    """
    if method not in ("temperature", "isotonic"):
        raise ValueError(f"calibration method must be 'temperature' or 'isotonic', got {method!r}")
    margins = np.asarray(margins, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if not np.isfinite(margins).all():
        raise ValueError(f"calibration: {int((~np.isfinite(margins)).sum())} margin(s) are not finite "
                         "(a diverged head?); nothing can be calibrated on them")
    choice = choose_cut(margins, labels, confidence=confidence, seed=seed, groups=groups)
    if choice.degenerate:
        log.warning("calibration: no cut of these margins has a positive MCC; keeping margin 0 and temperature 1")
        return Calibration(0.0, 1.0), choice
    if method == "isotonic":
        fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(margins, labels)
        knots = tuple(zip(fitted.X_thresholds_.tolist(), fitted.y_thresholds_.tolist()))
        return Calibration(choice.cut, 1.0, knots), choice
    shifted = margins - choice.cut

    def nll(log_t: float) -> float:
        z = shifted / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    temperature = float(math.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))
    if not TEMPERATURE_BOUNDS[0] * 1.01 < temperature < TEMPERATURE_BOUNDS[1] * 0.99:
        log.warning("calibration: temperature %.3g is at its bound %s", temperature, TEMPERATURE_BOUNDS)
    return Calibration(choice.cut, temperature), choice
