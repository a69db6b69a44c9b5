"""The head's reader of expert evidence: per field, the value where the expert gave one and a learned
NULL where it did not (NaN in the table), plus a "present" flag, as the metadata encoder treats NULL."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def evidence_present(evidence: Tensor) -> Tensor:
    """True where a field holds a value (NaN is the NULL of evidence)."""
    return ~torch.isnan(evidence)


class EvidenceEncoder(nn.Module):
    """``[B, E]`` evidence -> ``[B, 2E]``: value or learned NULL, then the 0/1 present flags."""

    def __init__(self, fields: int) -> None:
        super().__init__()
        if fields < 1:
            raise ValueError(f"an evidence encoder needs at least one field, got {fields}")
        self.fields = fields
        self.null = nn.Parameter(torch.zeros(fields))
        self.out_dim = 2 * fields

    def forward(self, evidence: Tensor) -> Tensor:
        if evidence.dim() != 2 or evidence.shape[1] != self.fields:
            raise ValueError(f"evidence must be [B,{self.fields}], got {tuple(evidence.shape)}")
        present = evidence_present(evidence)
        values = torch.where(present, evidence.nan_to_num(0.0), self.null.to(evidence.dtype))
        return torch.cat([values, present.to(values.dtype)], dim=-1)
