"""Input projection of backbone features and the multi-width "pyramid" block."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InputProjection(nn.Module):
    """LayerNorm then Linear ``D -> d_model``.

    The norm comes first because frozen backbones differ by orders of magnitude in feature scale
    (DINOv3 token norms versus EfficientNet's pooled activations); normalising lets one learning
    rate and initialisation serve every backbone.
    """

    def __init__(self, feature_dim: int, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Linear(feature_dim, d_model)

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(self.norm(features))


class MultiScalePyramid(nn.Module):
    """Mix the token at widths d, d/2 and d/4, fuse back to d, residual + LayerNorm.

    The plan calls these "resolutions", but each view is already a pooled vector: the levels are
    channel bottlenecks, not spatial scales (spatial scale comes from the view plan's tiles and
    crops). The GELU on the narrow levels matters: without it concat-then-project of linear maps
    of ``x`` is a single ``d x d`` linear map and the block would add nothing.
    """

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.to_half = nn.Sequential(nn.Linear(d_model, d_model // 2), nn.GELU())
        self.to_quarter = nn.Sequential(nn.Linear(d_model, d_model // 4), nn.GELU())
        self.fuse = nn.Linear(d_model + d_model // 2 + d_model // 4, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        levels = torch.cat([x, self.to_half(x), self.to_quarter(x)], dim=-1)
        return self.norm(x + self.dropout(self.fuse(levels)))
