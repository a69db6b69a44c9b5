"""Cached features of N samples as one in-memory table, and the one inference pass over it.

The backbone is frozen, so training, calibration, evaluation and prediction all run the head over
this table; they share ``head_margins`` so that what training measured is what a bundle serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from roadwork.data.records import Sample
from roadwork.features.metadata import MetadataBatch, MetadataVocab, ServedInputs


def pad_views(per_image: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack ``[V_i, D]`` features into ``[N, V_max, D]`` plus a True-for-real-view mask."""
    n_views = max(f.shape[0] for f in per_image)
    dim = per_image[0].shape[1]
    features = torch.zeros(len(per_image), n_views, dim, dtype=per_image[0].dtype)
    mask = torch.zeros(len(per_image), n_views, dtype=torch.bool)
    for row, tensor in enumerate(per_image):
        features[row, : tensor.shape[0]] = tensor
        mask[row, : tensor.shape[0]] = True
    return features, mask


def evidence_rows(per_image: Sequence[Tensor | None] | None, rows: int, fields: int) -> Tensor:
    """Per-image expert evidence as ``[rows, fields]`` float32, NaN where an expert gave nothing for a
    photo (it was off, or failed on it): NaN is the NULL of evidence, which heads mask."""
    table = torch.full((rows, fields), float("nan"))
    for row, values in enumerate(per_image or []):
        if values is not None:
            table[row] = values.reshape(-1).float()
    return table


@dataclass
class Batch:
    features: Tensor  # [B,V,D] float32
    view_mask: Tensor  # [B,V] bool
    meta: MetadataBatch
    labels: Tensor  # [B] long; -1 where unknown
    weather: Tensor  # [B] long vocabulary index (NULL_INDEX = unknown)
    evidence: Tensor  # [B,E] float32 expert evidence, NaN = NULL; E = 0 without experts

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.features.to(device), self.view_mask.to(device), self.meta.to(device),
                     self.labels.to(device), self.weather.to(device), self.evidence.to(device))


class FeatureTable(Dataset):
    """Padded features, masks, metadata, expert evidence and labels of N samples; fetched a whole batch
    at a time. Evidence comes from the image, so the image-only view of a table keeps it."""

    def __init__(self, features: Tensor, view_mask: Tensor, meta: MetadataBatch, labels: Tensor,
                 file_names: Sequence[str], alternatives: Tensor | None = None,
                 evidence: Tensor | None = None) -> None:
        self.features, self.view_mask, self.meta, self.labels = features, view_mask, meta, labels
        self.evidence = evidence if evidence is not None else torch.zeros(len(labels), 0)
        if self.evidence.shape[0] != len(labels):
            raise ValueError(f"evidence has {self.evidence.shape[0]} rows for {len(labels)} samples")
        self.file_names = list(file_names)
        # [copies, N, V, D] augmented features (the feature bank); ``choice`` says which one each row
        # shows this epoch: 0 = the photo itself, c = copy c.
        self.alternatives = alternatives
        self.choice = torch.zeros(len(labels), dtype=torch.long)

    @classmethod
    def build(cls, samples: Sequence[Sample], features: Sequence[Tensor], vocab: MetadataVocab,
              text_embeddings: Mapping[str, Tensor] | None,
              copies: Sequence[Sequence[Tensor]] = (), evidence: Tensor | None = None) -> FeatureTable:
        padded, mask = pad_views(features)
        labels = torch.tensor([-1 if s.label is None else s.label for s in samples], dtype=torch.long)
        meta = MetadataBatch.from_samples(samples, vocab, text_embeddings)
        alternatives = None
        if copies:
            alternatives = torch.stack([pad_views(copy)[0] for copy in copies])
            if alternatives.shape[1:] != padded.shape:
                raise ValueError(f"augmented copies {tuple(alternatives.shape[1:])} do not match {tuple(padded.shape)}")
        return cls(padded, mask, meta, labels, [s.file_name for s in samples], alternatives, evidence)

    def redraw(self, generator: torch.Generator) -> None:
        """Choose, for every row, the photo itself or one of its augmented copies for the next epoch."""
        if self.alternatives is not None:
            self.choice = torch.randint(0, self.alternatives.shape[0] + 1, (len(self),), generator=generator)

    def all_versions(self) -> tuple[Tensor, Tensor]:
        """Features ``[(1 + copies) * N, V, D]`` of every row and every copy, and the row each came from."""
        stacked = self.features if self.alternatives is None else torch.cat([self.features[None], self.alternatives])
        rows = torch.arange(len(self)).repeat(stacked.shape[0] if self.alternatives is not None else 1)
        return stacked.reshape(-1, *self.features.shape[1:]), rows

    def __len__(self) -> int:
        return self.features.shape[0]

    def image_only(self) -> FeatureTable:
        """The same rows with every metadata field NULL: the request a validator sends."""
        hidden = self.meta.hidden(torch.ones(len(self), dtype=torch.bool))
        return FeatureTable(self.features, self.view_mask, hidden, self.labels, self.file_names, self.alternatives,
                            self.evidence)

    def as_served(self, served: ServedInputs) -> FeatureTable:
        """The rows as a served request would carry them."""
        return self if served.metadata else self.image_only()

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        rows = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        meta = self.meta[rows]
        features = self.features[rows]
        if self.alternatives is not None:
            choice = self.choice[rows]
            augmented = self.alternatives[(choice - 1).clamp_min(0), rows]
            features = torch.where((choice > 0).view(-1, 1, 1), augmented, features)
        return Batch(features.float(), self.view_mask[rows], meta, self.labels[rows], meta.weather,
                     self.evidence[rows])


def as_is(batch: object) -> object:
    """Collate function for datasets that already return whole batches."""
    return batch


def loader(table: FeatureTable, batch_size: int, *, sampler: Sampler[int] | None = None) -> DataLoader:
    """Batches of ``table`` in row order, or in the order ``sampler`` draws."""
    return DataLoader(table, batch_size=batch_size, sampler=sampler, collate_fn=as_is)


@torch.inference_mode()
def head_outputs(head: torch.nn.Module, table: FeatureTable, device: str | torch.device = "cpu",
                 batch_size: int = 512, fused: bool = False) -> tuple[Tensor, Tensor | None]:
    """``head_margins``, and with ``fused`` each member's fusion-layer features (what its classifier
    reads) ``[N, K, F]``."""
    head.eval().to(device)
    margins, pooled = [], []
    for b in loader(table, batch_size):
        out = head(b.features.to(device), b.view_mask.to(device), b.meta.to(device), b.evidence.to(device))
        margins.append((out.member_margins if out.member_margins is not None else out.margin).float().cpu())
        if fused:
            members = 1 if out.member_margins is None else out.member_margins.shape[-1]
            pooled.append(out.pooled.float().cpu().reshape(len(b.labels), members, -1))
    return torch.cat(margins), torch.cat(pooled) if fused else None


def head_margins(head: torch.nn.Module, table: FeatureTable, device: str | torch.device = "cpu",
                 batch_size: int = 512) -> Tensor:
    """Logit margins (float32, CPU) of ``head`` over every row of ``table``, in eval mode: ``[N]``, or
    ``[N, K]`` (one per member) for an ensemble of K > 1 heads."""
    return head_outputs(head, table, device, batch_size)[0]

