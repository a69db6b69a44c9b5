"""Configuration of the classification head, kept apart from the modules so it can be saved in the bundle."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class HeadConfig(BaseModel):
    """Hyper-parameters of the head.

    ``type``: ``multiview`` (the plan's head), ``probe`` (standardised logistic regression on the
    global view and the max over views: the baseline) or ``auto`` (train both, keep the one with the
    better held-out served MCC; on a few hundred real photos that is the probe, see the README).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    type: Literal["auto", "multiview", "probe"] = "auto"
    d_model: int = Field(512, ge=8, le=8192)
    heads: int = Field(8, ge=1, le=256)
    attention_layers: int = Field(4, ge=0, le=64, description="0 = no gated attention stack")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    prune_k: int | None = Field(8, ge=1, description="keep the top-k views; None = keep all")
    pyramid: bool = True
    fusion: Literal["gafm", "mean"] = "gafm"
    metadata: bool = True
    text: bool = Field(True, description="use the description text; only matters when metadata is on")
    gps_dim: int = Field(128, ge=4, le=4096)
    category_dim: int = Field(64, ge=1, le=4096)

    @model_validator(mode="after")
    def _check_divisibility(self) -> HeadConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.gps_dim % 4:
            raise ValueError(f"gps_dim ({self.gps_dim}) must be divisible by 4 (sin and cos of latitude and longitude)")
        return self
