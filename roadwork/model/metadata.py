"""NULL-safe metadata encoder: every field has a learned NULL representation (never a fixed zero)
plus a "present" indicator. The vocabulary and the tensor batch it reads: roadwork.features.metadata.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from roadwork.data.records import CATEGORY_FIELDS
from roadwork.features.metadata import NULL_INDEX, TEXT_DIM, MetadataBatch, MetadataVocab


class GpsEncoding(nn.Module):
    """Multi-frequency sin/cos of latitude and longitude; a learned vector when GPS is NULL.

    Both coordinates are mapped onto one turn (lat * pi/90, lon * pi/180) and multiplied by
    integer frequencies, roughly log-spaced from 1 (continents) to 10000 (about 2 km of
    latitude). Integers make longitude +180 and -180 encode the same place. Angles are computed in
    float64: at the top frequency they reach ~3e4 rad, where float32 would lose the fine scales.
    """

    MAX_FREQUENCY = 10_000

    def __init__(self, dim: int) -> None:
        super().__init__()
        frequencies: list[int] = []
        for target in torch.logspace(0.0, math.log10(self.MAX_FREQUENCY), dim // 4, dtype=torch.float64).tolist():
            frequencies.append(max(round(target), frequencies[-1] + 1 if frequencies else 1))
        self.frequencies = tuple(frequencies)  # not a buffer: Module.to(dtype) must not round them
        self.null = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, gps: Tensor, present: Tensor) -> Tensor:
        scale = torch.tensor([math.pi / 90.0, math.pi / 180.0], dtype=torch.float64, device=gps.device)
        frequencies = torch.tensor(self.frequencies, dtype=torch.float64, device=gps.device)
        angles = (gps.double() * scale).unsqueeze(-1) * frequencies  # [B,2,F]
        encoded = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1).to(self.null.dtype)
        return torch.where(present.unsqueeze(-1), encoded, self.null)


class MetadataEncoder(nn.Module):
    """Encode GPS, weather, daytime, scene and (optionally) text into one vector of ``out_dim``.

    Layout: GPS (gps_dim) | weather, daytime, scene (category_dim each) | text adapter (384, if
    ``text``) | one 0/1 "present" flag per field. Category tables keep a trainable NULL row at
    ``NULL_INDEX`` (no ``padding_idx``, which would freeze it at zero).
    """

    def __init__(self, vocab: MetadataVocab, gps_dim: int, category_dim: int, text: bool) -> None:
        super().__init__()
        self.gps = GpsEncoding(gps_dim)
        self.categories = nn.ModuleDict({name: nn.Embedding(size, category_dim) for name, size in vocab.sizes.items()})
        self.text_adapter = nn.Linear(TEXT_DIM, TEXT_DIM) if text else None
        self.text_null = nn.Parameter(torch.randn(TEXT_DIM) * 0.02) if text else None
        n_fields = 1 + len(self.categories) + int(text)
        self.out_dim = gps_dim + len(self.categories) * category_dim + (TEXT_DIM if text else 0) + n_fields

    def forward(self, meta: MetadataBatch) -> Tensor:
        parts = [self.gps(meta.gps, meta.gps_present)]
        parts += [self.categories[name](getattr(meta, name)) for name in CATEGORY_FIELDS]
        present = [meta.gps_present] + [getattr(meta, name) != NULL_INDEX for name in CATEGORY_FIELDS]
        if self.text_adapter is not None:
            adapted = self.text_adapter(meta.text.to(self.text_null.dtype))
            parts.append(torch.where(meta.text_present.unsqueeze(-1), adapted, self.text_null))
            present.append(meta.text_present)
        parts.append(torch.stack(present, dim=-1).to(parts[0].dtype))
        return torch.cat(parts, dim=-1)
