"""Fusion of the view tokens into one vector: GAFM (gated attention fusion) or a masked mean."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from roadwork.model.attention import MultiHeadAttention, attention_mask


class GatedAttentionFusion(nn.Module):
    """Cross-view attention, self-attention refinement, then pooling weighted by learned view gates.

    Cross-view attention hides each view from itself so its update carries only the other views'
    context (a sample with a single valid view falls back to itself, see ``attention_mask``). The
    gates are computed from the refined tokens, the ones being pooled; the view pruner's weights, when
    given, multiply them.
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.importance = nn.Sequential(nn.Linear(d_model, d_model // 4), nn.GELU(), nn.Linear(d_model // 4, 1))
        self.cross = MultiHeadAttention(d_model, heads, dropout)
        self.cross_norm = nn.LayerNorm(d_model)
        self.refine = MultiHeadAttention(d_model, heads, dropout)
        self.refine_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, view_mask: Tensor, view_weight: Tensor | None = None) -> Tensor:
        x = self.cross_norm(x + self.dropout(self.cross(x, attention_mask(view_mask, exclude_self=True))))
        x = self.refine_norm(x + self.dropout(self.refine(x, attention_mask(view_mask))))
        weight = torch.sigmoid(self.importance(x)) * view_mask.unsqueeze(-1)
        if view_weight is not None:
            weight = weight * view_weight.unsqueeze(-1)
        return (weight * x).sum(dim=1) / weight.sum(dim=1).clamp_min(1e-6)


class MeanFusion(nn.Module):
    """Masked (optionally weighted) mean over valid views: the ablation baseline for GAFM."""

    def forward(self, x: Tensor, view_mask: Tensor, view_weight: Tensor | None = None) -> Tensor:
        weight = view_mask.unsqueeze(-1).to(x.dtype)
        if view_weight is not None:
            weight = weight * view_weight.unsqueeze(-1)
        return (weight * x).sum(dim=1) / weight.sum(dim=1).clamp_min(1e-6)
