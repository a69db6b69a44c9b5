"""Test-time augmentation (plan component 19): score several fixed transforms of each photo
(``roadwork.data.augment.TTA_TRANSFORMS``) and combine their margins, plainly or with FOODS.

FOODS (filtering out-of-distribution samples): a transform that pushes a photo away from anything
the head was trained on gives an unreliable answer. Each copy's fusion-layer features (what the
classifier reads: ``HeadOutput.pooled``) are measured against the training features' Gaussian, the
closest ``keep`` share of copies are kept, and their margins are averaged with weights
softmax(-distance / temperature). Margins, not probabilities, are averaged so that the bundle's
calibration applies to the result unchanged.

The training Gaussian is stored per head in the bundle (``FeatureDensity``). Its covariance is a
Ledoit-Wolf shrinkage estimate (scikit-learn picks the shrinkage), kept in low-rank form: a probe's
fusion features have 2 x 1,280 dimensions, and a full matrix per fold head would weigh 26 MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf_shrinkage
from torch import Tensor

from roadwork.config import TtaConfig

MAX_RANK = 256   # leading eigenvectors kept; the remaining eigenvalues are replaced by their mean


@dataclass(frozen=True)
class FeatureDensity:
    """A Gaussian over one head's fusion-layer features: ``mean`` [F]; shrinkage covariance =
    basis.T @ diag(variances) @ basis + residual x (I - basis.T @ basis), ``basis`` [r, F] orthonormal."""

    mean: Tensor
    basis: Tensor
    variances: Tensor
    residual: Tensor   # scalar: the covariance's eigenvalue outside the basis

    @classmethod
    def fit(cls, features: Tensor | np.ndarray, max_rank: int = MAX_RANK) -> FeatureDensity:
        """Fit on training features ``[n, F]`` (n >= 2)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
            raise ValueError(f"a feature density needs finite [n >= 2, F] features, got shape {x.shape}")
        n, dim = x.shape
        mean = x.mean(axis=0)
        centred = x - mean
        if n > dim:   # the F x F covariance's eigenvectors: a matrix product, cheaper than an SVD of n rows
            eigen, vectors = np.linalg.eigh(centred.T @ centred / n)
            sample_eigen, vt = np.clip(eigen[::-1], 0.0, None), np.ascontiguousarray(vectors[:, ::-1].T)
        else:         # the right singular vectors of the n centred rows
            _, singular, vt = np.linalg.svd(centred, full_matrices=False)
            sample_eigen = singular ** 2 / n
        shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
        average = float(sample_eigen.sum() / dim)   # trace / F: the isotropic target's variance
        shrunk = (1.0 - shrinkage) * sample_eigen + shrinkage * average
        rank = min(max_rank, len(shrunk))
        # Every direction outside the kept basis: the sample covariance's own small eigenvalues (if
        # truncated) and the null space (n < F), each shrunk towards ``average``.
        outside = dim - rank
        residual = ((shrunk[rank:].sum() + (dim - len(shrunk)) * shrinkage * average) / outside) if outside \
            else shrunk[-1]   # unused: the basis spans every direction
        residual = max(residual, 1e-9 * max(average, 1e-12))
        return cls(torch.from_numpy(mean).float(), torch.from_numpy(vt[:rank]).float(),
                   torch.from_numpy(np.maximum(shrunk[:rank], residual)).float(), torch.tensor(float(residual)))

    def distances(self, features: Tensor) -> Tensor:
        """Mahalanobis distance of each row of ``[N, F]`` to the training mean (computed in float64: the
        part outside the basis is a difference of two large sums)."""
        centred = features.double() - self.mean.double()
        projected = centred @ self.basis.double().T
        squared = (projected ** 2 / self.variances.double()).sum(-1)
        if self.basis.shape[0] < self.mean.shape[0]:
            outside = ((centred ** 2).sum(-1) - (projected ** 2).sum(-1)).clamp_min(0.0)
            squared = squared + outside / self.residual.double()
        return squared.sqrt().float()

    def tensors(self, prefix: str) -> dict[str, Tensor]:
        return {f"{prefix}.mean": self.mean, f"{prefix}.basis": self.basis,
                f"{prefix}.variances": self.variances, f"{prefix}.residual": self.residual.reshape(1)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str) -> FeatureDensity:
        mean, basis = tensors[f"{prefix}.mean"], tensors[f"{prefix}.basis"]
        variances, residual = tensors[f"{prefix}.variances"], tensors[f"{prefix}.residual"].reshape(())
        if mean.ndim != 1 or basis.ndim != 2 or basis.shape[1] != mean.shape[0] or \
                variances.shape != (basis.shape[0],) or not bool((variances > 0).all() and residual > 0):
            raise ValueError(f"{prefix}: inconsistent feature density (mean {tuple(mean.shape)}, basis "
                             f"{tuple(basis.shape)}, variances {tuple(variances.shape)})")
        return cls(mean.float(), basis.float(), variances.float(), residual.float())


def combine(margins: Tensor, distances: Tensor | None, config: TtaConfig) -> Tensor:
    """One margin per photo (and head) from ``[C, ...]`` margins of C copies: their mean (``plain``),
    or the FOODS-weighted mean given the copies' ``[C, ...]`` distances (``foods``)."""
    if config.mode == "plain":
        return margins.mean(dim=0)
    if distances is None or distances.shape != margins.shape:
        raise ValueError("FOODS needs one distance per copy's margin")
    copies = margins.shape[0]
    kept = max(1, math.ceil(config.keep * copies - 1e-9))
    cutoff = distances.kthvalue(kept, dim=0, keepdim=True).values
    logits = (-distances / config.temperature).masked_fill(distances > cutoff, float("-inf"))
    return (torch.softmax(logits, dim=0) * margins).sum(dim=0)
