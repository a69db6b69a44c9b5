"""Learned view scoring and top-k view pruning.

Cost note (DESIGN section 8): this runs on features the frozen backbone has already computed, so it
saves only the head's attention over the dropped views, which is negligible next to extraction. Its
value is as a learned view selector; to save compute, views must be scored before extraction.

Gradient: a hard top-k gives the scorer no gradient, and scaling raw features by a gate does not
help either: the projection's LayerNorm removes any scale (measured: a scorer gradient of about 1e-9).
So the kept views' ``sigmoid(score)`` also weights them in the fusion pooling, after every norm:
the scorer's gradient is then that of a soft view weight, and the top-k ranks by the same scores.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ViewPruner(nn.Module):
    """Score each valid view with a small MLP and keep the ``keep`` best (the global view always)."""

    def __init__(self, feature_dim: int, keep: int) -> None:
        super().__init__()
        hidden = max(1, feature_dim // 4)
        self.scorer = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.keep = keep

    def forward(self, features: Tensor, view_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return kept features ``[B,k,D]``, their mask ``[B,k]``, their pooling weights ``[B,k]``
        (``sigmoid(score)``) and every view's score ``[B,V]``.

        Padded views score ``-inf`` so they are only kept to fill ``k`` when a sample has fewer
        than ``k`` valid views (and stay masked). Kept views stay in their original order. View 0,
        the global view and the only one that sees the whole scene, is always kept.
        """
        scores = self.scorer(features).squeeze(-1).masked_fill(~view_mask, float("-inf"))
        weights = torch.sigmoid(scores)
        if features.shape[1] <= self.keep:
            return features, view_mask, weights, scores
        ranking = scores.detach().clone()
        ranking[:, 0] = float("inf")
        index = ranking.topk(self.keep, dim=1).indices.sort(dim=1).values
        kept = features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
        return kept, view_mask.gather(1, index), weights.gather(1, index), scores
