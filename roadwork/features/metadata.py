"""Metadata as tensors: the per-field vocabulary and the batch the heads read.

Records become tensors here, beside the image features they travel with; the modules that learn
from them live in roadwork.model.metadata. About 60% of target rows lack each field, so NULL is a
first-class value: index ``NULL_INDEX`` in every category field, a "present" flag for GPS and text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from roadwork.data.records import CATEGORY_FIELDS, Sample, normalize_category

NULL_INDEX = 0  # the one definition of the NULL category index; import it, never re-state it
TEXT_DIM = 384  # all-MiniLM-L6-v2 sentence embedding size


class MetadataVocab:
    """Per-field category values seen in training; index ``NULL_INDEX`` is NULL and any unseen value."""

    def __init__(self, values: Mapping[str, Sequence[str]]) -> None:
        if set(values) != set(CATEGORY_FIELDS):
            raise ValueError(f"vocabulary fields must be {list(CATEGORY_FIELDS)}, got {sorted(values)}")
        self.values: dict[str, list[str]] = {}
        for name in CATEGORY_FIELDS:
            items = list(values[name])
            if any(normalize_category(v) != v for v in items) or len(set(items)) != len(items):
                raise ValueError(f"vocabulary '{name}' must hold distinct, lowercased, non-NULL values: {items}")
            self.values[name] = items
        # NULL is row NULL_INDEX; the values follow it.
        self._lookup = {
            name: {v: NULL_INDEX + 1 + i for i, v in enumerate(items)} for name, items in self.values.items()
        }

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> MetadataVocab:
        """Sorted distinct values per field, so the same data always gives the same indices."""
        return cls(
            {name: sorted({normalize_category(getattr(s, name)) for s in samples} - {None}) for name in CATEGORY_FIELDS}
        )

    def to_dict(self) -> dict[str, Any]:
        return {"null_index": NULL_INDEX, "fields": {name: list(items) for name, items in self.values.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetadataVocab:
        if d.get("null_index") != NULL_INDEX:
            raise ValueError(f"vocabulary saved with null_index={d.get('null_index')!r}; this code uses {NULL_INDEX}")
        return cls(d["fields"])

    @property
    def sizes(self) -> dict[str, int]:
        """Embedding-table size per field, the NULL entry included."""
        return {name: len(items) + 1 for name, items in self.values.items()}

    def index(self, field: str, value: str | None) -> int:
        """Index of ``value`` in ``field``; NULL spellings and unseen values give ``NULL_INDEX``."""
        return self._lookup[field].get(normalize_category(value), NULL_INDEX)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataVocab) and self.values == other.values

    def __repr__(self) -> str:
        return f"MetadataVocab(sizes={self.sizes})"


@dataclass
class MetadataBatch:
    """Metadata of a batch as tensors; index rows with ``batch[index]``, join with ``MetadataBatch.cat``."""

    gps: Tensor  # [B,2] float latitude, longitude in degrees; 0 where missing
    gps_present: Tensor  # [B] bool
    weather: Tensor  # [B] long vocabulary index; NULL_INDEX where missing
    daytime: Tensor  # [B] long
    scene: Tensor  # [B] long
    text: Tensor  # [B,384] float frozen sentence embedding; 0 where missing
    text_present: Tensor  # [B] bool

    def __post_init__(self) -> None:
        # Compared, never hashed or cast: while a graph is exported the row count is a symbol, and
        # int() would fix the exported batch size to the example's.
        rows = {f.name: getattr(self, f.name).shape[0] for f in fields(self)}
        if any(count != self.gps.shape[0] for count in rows.values()):
            raise ValueError(f"metadata fields disagree on the number of rows: {rows}")
        if self.gps.shape[1:] != (2,) or self.text.shape[1:] != (TEXT_DIM,):
            raise ValueError(
                f"expected gps [B,2] and text [B,{TEXT_DIM}], got {tuple(self.gps.shape)} and {tuple(self.text.shape)}"
            )

    @classmethod
    def from_samples(
        cls, samples: Sequence[Sample], vocab: MetadataVocab, text_embeddings: Mapping[str, Tensor] | None
    ) -> MetadataBatch:
        """Tensors for ``samples``. ``text_embeddings=None`` means text is not used (all absent);
        otherwise every non-NULL description must have an embedding, so a forgotten
        ``TextEncoder.embed`` fails loudly instead of silently training without text."""
        text = torch.zeros(len(samples), TEXT_DIM)
        text_present = torch.zeros(len(samples), dtype=torch.bool)
        if text_embeddings is not None:
            for row, sample in enumerate(samples):
                if sample.description is not None:
                    if sample.description not in text_embeddings:
                        raise KeyError(f"{sample.file_name}: no text embedding for description {sample.description!r}")
                    text[row] = text_embeddings[sample.description]
                    text_present[row] = True
        return cls(
            gps=torch.tensor([[s.latitude, s.longitude] if s.has_gps else [0.0, 0.0] for s in samples]).reshape(-1, 2),
            gps_present=torch.tensor([s.has_gps for s in samples], dtype=torch.bool),
            weather=torch.tensor([vocab.index("weather", s.weather) for s in samples], dtype=torch.long),
            daytime=torch.tensor([vocab.index("daytime", s.daytime) for s in samples], dtype=torch.long),
            scene=torch.tensor([vocab.index("scene", s.scene) for s in samples], dtype=torch.long),
            text=text,
            text_present=text_present,
        )

    @classmethod
    def cat(cls, batches: Sequence[MetadataBatch]) -> MetadataBatch:
        return cls(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)})

    def __getitem__(self, index: Tensor | slice | Sequence[int]) -> MetadataBatch:
        return type(self)(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def __len__(self) -> int:
        return self.gps.shape[0]

    def to(self, device: torch.device | str) -> MetadataBatch:
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def hidden(self, rows: Tensor) -> MetadataBatch:
        """The same batch with every field of ``rows`` (bool [B]) NULL: a request carrying only the image."""
        keep = ~rows
        return type(self)(
            gps=self.gps * keep.unsqueeze(-1),
            gps_present=self.gps_present & keep,
            weather=self.weather.masked_fill(rows, NULL_INDEX),
            daytime=self.daytime.masked_fill(rows, NULL_INDEX),
            scene=self.scene.masked_fill(rows, NULL_INDEX),
            text=self.text * keep.unsqueeze(-1),
            text_present=self.text_present & keep,
        )

    def as_served(self, served: ServedInputs) -> MetadataBatch:
        """What a served request would carry of this batch: all of it, or every field NULL."""
        return self if served.metadata else self.hidden(torch.ones(len(self), dtype=torch.bool, device=self.gps.device))


@dataclass(frozen=True)
class ServedInputs:
    """What served requests carry, so that the checkpoint choice, the cut, evaluation and scoring all see
    those inputs: the image alone (``validation.served_metadata: none``; StreetVision's validators send
    nothing else) or the image with the dataset's metadata (``all``)."""

    metadata: bool

    @classmethod
    def named(cls, name: str) -> ServedInputs:
        if name not in ("none", "all"):
            raise ValueError(f"served_metadata must be 'none' or 'all', got {name!r}")
        return cls(metadata=name == "all")

    @property
    def name(self) -> str:
        """The value of ``validation.served_metadata`` and of a bundle's manifest."""
        return "all" if self.metadata else "none"

    def describe(self) -> str:
        return "image and metadata" if self.metadata else "the image alone"
