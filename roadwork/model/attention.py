"""Masked multi-head attention over views and the gated attention stack.

The gate follows "Gated Attention for Large Language Models" (Qiu et al., NeurIPS 2025): a sigmoid
gate computed from the layer input multiplies the attention output element-wise, before the output
projection (their best-performing position). ``torch.nn.functional.scaled_dot_product_attention``
picks the fused kernel itself, so there is no xFormers dependency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def attention_mask(view_mask: Tensor, exclude_self: bool = False) -> Tensor:
    """Boolean ``[B,1,V,V]`` mask (True = may attend) from a ``[B,V]`` view mask.

    Keys that are padded views are never attended to. A query left with no key at all (a sample
    with one valid view and ``exclude_self``) attends to itself instead: an all-masked softmax row
    is NaN on some kernels.
    """
    allowed = view_mask[:, None, :].expand(-1, view_mask.shape[1], -1)
    index = torch.arange(view_mask.shape[1], device=view_mask.device)
    eye = index[:, None] == index[None, :]   # not torch.eye: onnxruntime has no boolean EyeLike
    if exclude_self:
        allowed = allowed & ~eye
    allowed = allowed | (eye & ~allowed.any(dim=-1, keepdim=True))
    return allowed.unsqueeze(1)


class MultiHeadAttention(nn.Module):
    """Self-attention with ``qkv_proj``/``out_proj`` (names PEFT targets) and an optional output gate."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor, gate: Tensor | None = None) -> Tensor:
        batch, views, d_model = x.shape
        q, k, v = self.qkv_proj(x).view(batch, views, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, views, d_model)
        if gate is not None:
            out = out * gate
        return self.out_proj(out)


class GatedAttentionLayer(nn.Module):
    """Gated self-attention + residual + LayerNorm, then a GELU feed-forward + residual + LayerNorm."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d_model, heads, dropout)
        self.gate_proj = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        gate = torch.sigmoid(self.gate_proj(x))
        x = self.norm1(x + self.dropout(self.attn(x, mask, gate)))
        return self.norm2(x + self.ffn(x))


class GatedAttentionStack(nn.Module):
    """``layers`` gated attention layers over the views of each sample (0 layers = identity)."""

    def __init__(self, d_model: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(GatedAttentionLayer(d_model, heads, dropout) for _ in range(layers))

    def forward(self, x: Tensor, view_mask: Tensor) -> Tensor:
        mask = attention_mask(view_mask)
        for layer in self.layers:
            x = layer(x, mask)
        return x
