"""Typed run configuration, the one home of every setting: YAML file + ``--set key=value`` overrides,
validated at start-up. The head's part (``HeadConfig``) is also saved alone in bundles.

An invalid value fails before any work starts, with a message naming the dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roadwork.data.groups import AUTO, NEAR_DUPLICATE_SIMILARITY
from roadwork.data.views import VIEW_PLANS
from roadwork.errors import RoadworkError


class ConfigError(RoadworkError):
    """An invalid configuration file, key or value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HeadConfig(_Strict):
    """Hyper-parameters of the head.

    ``type``: ``multiview`` (the plan's head), ``probe`` (standardised logistic regression on the
    global view and the max over views: the baseline) or ``auto`` (train both, keep the one with the
    better held-out served MCC; see the README for which wins where).
    """

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


class LossConfig(_Strict):
    """Weights and shape parameters of ``RoadworkLoss``."""

    focal_gamma: float = Field(2.0, ge=0.0, le=10.0)
    focal_alpha: float | None = Field(
        None, gt=0.0, lt=1.0, description="weight of class 1 (1 - alpha for class 0); None = unweighted"
    )
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    focal_weight: float = Field(0.5, ge=0.0)
    consistency_weight: float = Field(0.3, ge=0.0)
    weather_weight: float = Field(0.2, ge=0.0)
    dice_weight: float = Field(0.0, ge=0.0, description="segmentation loss; no head has a segmentation output yet")


class DataConfig(_Strict):
    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = None   # local folder/file instead of the default download
    views: Literal[VIEW_PLANS] = "auto"   # type: ignore[valid-type]
    input_size: int | None = Field(default=None, ge=32, le=2048)
    # Fraction of training rows shown with all metadata NULL, so the head also learns the
    # image-only requests a validator sends (only a few percent of real rows lack every field).
    metadata_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Augmented feature bank for frozen-backbone training: ``augment_copies`` augmented copies of
    # every training photo's views (preset ``augment``) are extracted once; each epoch shows one
    # of them, or the photo itself, per photo. Held-out photos are never augmented.
    augment: Literal["none", "light", "heavy"] = "none"
    augment_copies: int = Field(default=0, ge=0, le=16)
    num_workers: int | None = Field(default=None, ge=0, le=64)  # None: one per spare core, at most 8

    @model_validator(mode="after")
    def _copies_need_a_preset(self) -> DataConfig:
        if self.augment_copies and self.augment == "none":
            raise ValueError("augment_copies > 0 needs an augmentation preset: set data.augment to light or heavy")
        return self


class ValidationConfig(_Strict):
    """How a run measures itself and fits the served cut (see roadwork.data.groups and roadwork.serve.calibration)."""

    # k > 1: k grouped folds, out-of-fold margins for every training photo, the k heads served as
    # one ensemble; 1: one grouped split of ``fraction`` (or --val-data).
    folds: int = Field(default=5, ge=1, le=50)
    fraction: float = Field(default=0.15, gt=0.0, lt=1.0)   # held out by a single split, and inside each fold
    # auto: a group/sequence/drive/session/video/trip column, else near-duplicate features;
    # a column name; or "rows" (every row alone: the old random split, for comparisons only).
    groups: str = Field(default=AUTO, min_length=1)
    near_duplicate_similarity: float | None = Field(default=NEAR_DUPLICATE_SIMILARITY, gt=0.0, le=1.0)
    conflicting_labels: Literal["error", "drop"] = "error"   # the same image labelled 0 and 1
    # What served requests carry: "none" = the image alone (StreetVision validators), "all" = the
    # dataset's metadata. The cut, the checkpoint choice and evaluate all score these inputs.
    served_metadata: Literal["none", "all"] = "none"
    # Move the cut away from margin 0 only if it wins in this share of bootstrap resamples.
    cut_confidence: float = Field(default=0.9, ge=0.5, le=1.0)


class BackboneTrainingConfig(_Strict):
    """Whether and how the backbone learns (see roadwork.train.finetune and roadwork.backbones.adapt).

    ``frozen`` trains heads on cached features; ``last_blocks``, ``lora``, ``dora`` and ``full``
    first fine-tune the backbone on augmented photos, then fit the heads on its features; ``auto``
    picks per backbone and data size from measurements (README, bench/RESULTS.md) and says which.
    """

    mode: Literal["auto", "frozen", "last_blocks", "lora", "dora", "full"] = "auto"
    blocks: int = Field(2, ge=1, le=256, description="last_blocks: how many of the last blocks train")
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA/DoRA dropout")
    targets: list[str] | None = Field(None, description="LoRA/DoRA module names; None = the family's defaults")
    batchnorm: Literal["frozen", "train"] = "frozen"
    epochs: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float | None = Field(None, gt=0.0, le=1.0, description="backbone (or adapter) rate; None = 3e-4, "
                             "1e-3 for LoRA/DoRA adapters")
    head_lr: float = Field(3e-3, gt=0.0, le=1.0, description="the linear classifier trained with it")
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    augment: Literal["none", "light", "heavy"] = "heavy"
    crop_scale: tuple[float, float] = Field((0.3, 1.0), description="random resized crop: area range kept")
    gradient_checkpointing: bool = False

    @field_validator("crop_scale")
    @classmethod
    def _crop_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < value[0] <= value[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {list(value)}")
        return value

    @property
    def backbone_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.mode in ("lora", "dora") else 3e-4)


class OptimConfig(_Strict):
    epochs: int = Field(default=40, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    lr: float = Field(default=3e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.05, ge=0.0, le=10.0)
    warmup_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    accumulate_grad_batches: int = Field(default=1, ge=1, le=1024)
    gradient_clip: float | None = Field(default=1.0, gt=0.0)
    patience: int = Field(default=10, ge=1)   # epochs without a better served validation MCC before stopping
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value  # YAML reads `precision: 32` as a number


class ServeConfig(_Strict):
    """Limits and batching of ``roadwork serve`` (see roadwork.serve.server); its options set them."""

    max_batch: int = Field(16, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000)
    max_queue: int = Field(64, ge=1, le=100_000)
    max_body_bytes: int = Field(20 * 2**20, ge=1024)
    max_batch_images: int = Field(64, ge=1, le=4096, description="images per /predict/batch request")
    timeout_s: float = Field(30.0, gt=0.0)
    api_key: str | None = Field(None, min_length=8)


class DetectorConfig(_Strict):
    """The StreetVision miner adapter's YAML (roadwork.serve.streetvision)."""

    bundle: str = Field(min_length=1)
    device: str = "cpu"
    fallback: float = Field(0.5, ge=0.0, le=1.0, description="answered when a request cannot be scored")


class TrainConfig(_Strict):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: HeadConfig = HeadConfig()
    backbone_training: BackboneTrainingConfig = BackboneTrainingConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    validation: ValidationConfig = ValidationConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def _format(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- YAML file <- ``key=value`` overrides (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read configuration: {error}") from error
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like key=value (e.g. optim.lr=1e-3)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format(error)) from None


def serve_config(**values: Any) -> ServeConfig:
    """A validated ServeConfig; a bad value fails with the option named, like the training configuration."""
    try:
        return ServeConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_format(error)) from None


def detector_config(path: str | Path) -> DetectorConfig:
    """The miner adapter's YAML file, validated (a bad or missing key is named)."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read configuration: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: must be a mapping with at least `bundle: PATH`")
    try:
        return DetectorConfig.model_validate(loaded)
    except ValidationError as error:
        raise ConfigError(_format(error)) from None
