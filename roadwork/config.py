"""Typed run configuration, the one home of every setting: YAML file + ``--set key=value`` overrides,
validated at start-up. The head's part (``HeadConfig``) is also saved alone in bundles.

An invalid value fails before any work starts, with a message naming the dotted key.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from roadwork.errors import RoadworkError
from roadwork.storage import read_file

# Choices and limits that the code implementing them reads from here, so every setting has one home
# (config sits below data/ and imports no torch: the CLI builds its options from these models).
VIEW_PLANS = ("auto", "seed12", "global")
AUTO, ROWS = "auto", "rows"   # validation.groups: find the drives; every row alone
NEAR_DUPLICATE_SIMILARITY = 0.8   # centred cosine similarity of global views that makes two photos one group
DEFAULT_MAX_PIXELS = 80_000_000   # the most pixels any decoder accepts (serve.max_pixels may ask fewer)
AUGMENT_PRESETS = ("light", "heavy")   # roadwork/data/augment_presets/<name>.yaml


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
    evidence: bool = Field(True, description="read experts' per-photo evidence when the run has an expert "
                           "(the segmentation branch of loss.dice_weight > 0)")
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
    # Weight of the segmentation term (dice + binary cross-entropy on the work-zone mask) that backbone
    # fine-tuning adds on photos with masks (data.masks, or a dataset's annotations.json); 0 = none.
    dice_weight: float = Field(0.0, ge=0.0)


class DataConfig(_Strict):
    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = None   # local folder/file instead of the default download
    # A folder `roadwork adapt` wrote: its self-supervised weights replace the base backbone's (the
    # backbone, weights and input size are the ones it was adapted from).
    adapted: str | None = None
    views: Literal[VIEW_PLANS] = "auto"   # type: ignore[valid-type]
    input_size: int | None = Field(default=None, ge=32, le=2048)
    # Fraction of training rows shown with all metadata NULL, so the head also learns the
    # image-only requests a validator sends (only a few percent of real rows lack every field).
    metadata_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    # Augmented feature bank for frozen-backbone training: ``augment_copies`` augmented copies of
    # every training photo's views (preset ``augment``) are extracted once; each epoch shows one
    # of them, or the photo itself, per photo. Held-out photos are never augmented.
    augment: Literal[("none", *AUGMENT_PRESETS)] = "none"   # type: ignore[valid-type]
    augment_copies: int = Field(default=0, ge=0, le=16)
    num_workers: int | None = Field(default=None, ge=0, le=64)  # None: one per spare core, at most 8
    # A folder whose annotations.json (COCO, file names those of --data: `roadwork pseudo-masks` writes
    # one) gives masks for loss.dice_weight; each dataset folder's own annotations.json is read too.
    masks: str | None = None

    @model_validator(mode="after")
    def _copies_need_a_preset(self) -> DataConfig:
        if self.augment_copies and self.augment == "none":
            raise ValueError("augment_copies > 0 needs an augmentation preset: set data.augment to light or heavy")
        return self


# The served cut leaves margin 0 only if it wins in every bootstrap resample: at 0.9 a move fitted on
# two real-dev sources cost the third 0.11 MCC (0.891 -> 0.779), while on all of real-dev and on
# unseen synthetic drives the two agree (bench/RESULTS.md, "Photos from other sources").
CUT_CONFIDENCE = 1.0


class ValidationConfig(_Strict):
    """How a run measures itself and fits the served cut (see roadwork.data.groups and roadwork.serve.calibration)."""

    # k > 1: k grouped folds, out-of-fold margins for every training photo, the k heads served as
    # one ensemble; 1: one grouped split of ``fraction`` (or --val-data).
    folds: int = Field(default=5, ge=1, le=50)
    # What a k-fold run serves: the k fold heads (each with its own fine-tuned backbone when the
    # backbone trains), or the chosen pipeline fitted once more on every photo ("refit": one backbone,
    # one head, k times less serving work), with the calibration the folds' held-out margins gave.
    serve: Literal["folds", "refit"] = "refit"
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
    cut_confidence: float = Field(default=CUT_CONFIDENCE, ge=0.5, le=1.0)
    # How the served probability is fitted around the cut: a temperature (two numbers) or an
    # isotonic step function (measured in bench/RESULTS.md, "Calibration").
    calibration: Literal["temperature", "isotonic"] = "temperature"


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
    augment: Literal[("none", *AUGMENT_PRESETS)] = "heavy"   # type: ignore[valid-type]
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


class SophiaConfig(_Strict):
    """SophiaH (pytorch-optimizer): every weight moves at most ``clip`` x ``lr`` per step, scaled by a
    Hutchinson estimate of the Hessian diagonal refreshed every ``hessian_period`` steps."""

    lr: float | None = Field(None, gt=0.0, le=100.0, description="None = optim.lr / clip: the same largest step "
                             "per weight as AdamW's typical one")
    clip: float = Field(0.01, gt=0.0, le=1.0)
    hessian_period: int = Field(10, ge=1, le=10_000)
    betas: tuple[float, float] = (0.96, 0.99)

    def step_size(self, adamw_lr: float) -> float:
        return self.lr if self.lr is not None else adamw_lr / self.clip


class OptimConfig(_Strict):
    """How heads are optimised; ``ema``, ``compile`` and ``precision`` also apply to fine-tuning the backbone."""

    optimizer: Literal["adamw", "sophia"] = "adamw"
    sophia: SophiaConfig = SophiaConfig()
    # An exponential moving average of the trained weights is what validation, checkpoint choice,
    # early stopping and the bundle see; the raw weights keep training. On by default: it lifted the
    # multi-view head from MCC 0.25 to 0.81 on real photos and helped on unseen synthetic drives
    # (bench/RESULTS.md, issue 9).
    ema: bool = True
    ema_decay: float = Field(default=0.99, gt=0.0, lt=1.0, description="per optimiser step")
    compile: bool = Field(default=False, description="torch.compile the trained module (pays on a GPU, "
                          "rarely on a CPU)")
    epochs: int = Field(default=40, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    lr: float = Field(default=3e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.05, ge=0.0, le=10.0)
    warmup_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    accumulate_grad_batches: int = Field(default=1, ge=1, le=1024)
    gradient_clip: float | None = Field(default=1.0, gt=0.0)
    patience: int = Field(default=10, ge=1)   # epochs without a better selection score before stopping
    # What chooses the multi-view head's checkpoint: the served MCC of the selection split, or that MCC
    # with the log-loss of its margins breaking near-ties (served MCC saturates at 1.0 on small splits
    # within a few epochs, and the first checkpoint to reach it is kept).
    selection: Literal["served_mcc", "served_mcc_log_loss"] = "served_mcc"
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value  # YAML reads `precision: 32` as a number


class SamplingConfig(_Strict):
    """GPS-weighted sampling (plan component 13; roadwork.train.sampling): training photos near the
    regions served photos come from are drawn more often. Off while ``target`` is None."""

    target: str | None = Field(None, min_length=1, description="CSV of latitude/longitude rows, or a dataset "
                               "whose GPS columns are used")
    regions: int = Field(5, ge=1, le=10_000, description="k-means centres fitted on the target positions")
    brackets_km: list[float] = Field([50.0, 200.0, 500.0], min_length=1)
    weights: list[float] = Field([5.0, 2.5, 1.0, 0.3], description="one per bracket, then one beyond the last")
    null_gps_weight: float = Field(1.0, ge=0.0, description="photos without a position")
    samples_per_epoch: int | None = Field(None, ge=1, description="draws per epoch; None = the training rows")
    # The plan's check on drawn batches; missed targets warn, or stop the run when ``strict``.
    target_share_50km: float = Field(0.5, ge=0.0, le=1.0)
    target_share_100km: float = Field(0.7, ge=0.0, le=1.0)
    target_mean_km: float = Field(150.0, gt=0.0)
    strict: bool = False

    @model_validator(mode="after")
    def _check_brackets(self) -> SamplingConfig:
        edges = self.brackets_km
        if any(b <= 0 for b in edges) or any(b >= c for b, c in zip(edges, edges[1:])):
            raise ValueError(f"brackets_km must be positive and increasing, got {edges}")
        if len(self.weights) != len(edges) + 1:
            raise ValueError(f"weights needs {len(edges) + 1} values (one per bracket of {edges} km and one beyond "
                             f"the last), got {len(self.weights)}")
        if any(w < 0 for w in self.weights) or not any(w > 0 for w in self.weights):
            raise ValueError(f"weights must be non-negative and not all zero, got {self.weights}")
        return self


class TrainerConfig(_Strict):
    """Where Lightning runs and what it logs (roadwork.train.trainer)."""

    devices: int = Field(1, ge=1, le=1024, description="processes (one per GPU, or CPU processes with ddp)")
    strategy: Literal["auto", "ddp"] = "auto"
    loggers: list[Literal["csv", "tensorboard", "wandb"]] = ["csv", "tensorboard"]
    step_metrics: bool = Field(False, description="also log loss and MCC every step, not only every epoch")

    @model_validator(mode="after")
    def _ddp_needs_devices(self) -> TrainerConfig:
        if self.devices > 1 and self.strategy != "ddp":
            raise ValueError("devices > 1 needs strategy ddp")
        return self


class ServeConfig(_Strict):
    """Limits and batching of ``roadwork serve`` (see roadwork.serve.server); its options set them."""

    # One 1920x1080 photo at 224 px (9 views): on 2 cores larger batches only add queueing and memory
    # (bench/RESULTS.md, "Serving on CPUs").
    max_batch_views: int = Field(9, ge=1, le=16_384, description="backbone views per micro-batch")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000)
    max_queue: int = Field(64, ge=1, le=100_000)
    max_body_bytes: int = Field(20 * 2**20, ge=1024)
    max_batch_images: int = Field(64, ge=1, le=4096, description="images per /predict/batch request")
    # 24 MP: a 6000x4000 camera photo; the network's photos are dashcam frames and phone photos (4032x3024).
    max_pixels: int = Field(24_000_000, ge=256, le=DEFAULT_MAX_PIXELS, description="pixels per image, from its header")
    timeout_s: float = Field(30.0, gt=0.0)
    api_key: str | None = Field(None, min_length=8)

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> ServeConfig:
        if self.max_batch_images > self.max_queue:   # such a batch could never be queued, however long it waits
            raise ValueError(f"max_batch_images ({self.max_batch_images}) exceeds max_queue ({self.max_queue}): "
                             "lower max_batch_images or raise max_queue")
        return self


class TtaConfig(_Strict):
    """Test-time augmentation (roadwork.serve.tta): the first ``augmentations`` of the plan's 16 fixed
    transforms of each photo, their margins averaged (``plain``) or FOODS-weighted (``foods``: keep
    the ``keep`` share of copies closest to the training features by Mahalanobis distance, weighted
    by softmax(-distance / temperature)). Off by default: it multiplies the backbone's cost."""

    mode: Literal["none", "plain", "foods"] = "none"
    augmentations: int = Field(16, ge=2, le=16)
    keep: float = Field(0.8, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0, le=1000.0)


class DetectorConfig(_Strict):
    """The StreetVision miner adapter's YAML (roadwork.serve.streetvision)."""

    bundle: str = Field(min_length=1)
    device: str = "cpu"
    fallback: float = Field(0.5, ge=0.0, le=1.0, description="answered when a request cannot be scored")
    tta: TtaConfig = TtaConfig()


class ExpertsConfig(_Strict):
    """Experts whose per-photo evidence the heads read beside the backbone's features (roadwork.experts)."""

    detector: str | None = Field(None, description="an object detector by hub id or local folder (None: none)")
    detector_prompts: list[str] | None = Field(
        None, description="TEXT=CATEGORY prompts of an open-vocabulary detector; None: the work-zone defaults "
        "for one, its own labels for a closed-set detector")
    detector_threshold: float = Field(0.3, gt=0.0, lt=1.0, description="a box counts from this score")
    detector_input_size: int = Field(640, ge=32, le=4096, description="the side of the global view it sees")
    depth: str | None = Field(None, description="a depth model by hub id or local folder, measuring the boxes "
                              "experts.detector finds (None: none)")
    night: bool = Field(False, description="the night specialist: dark photos' enhanced view as evidence")
    night_brightness: float = Field(0.25, gt=0.0, lt=1.0, description="a photo darker than this (mean luma) is dark")
    night_enhancement: Literal["clahe", "gamma"] = "clahe"

    @model_validator(mode="after")
    def _depth_needs_boxes(self) -> ExpertsConfig:
        if self.depth and not self.detector:
            raise ValueError("experts.depth: measures the boxes a detector finds; name one in experts.detector")
        return self


class AdaptConfig(_Strict):
    """``roadwork adapt``: self-supervised adaptation of the backbone on unlabelled photos (SimCLR)."""

    # explora: DINO self-distillation, LoRA on every block and the last ``blocks`` unfrozen (``mode`` unused)
    method: Literal["simclr", "explora"] = "simclr"
    mode: Literal["last_blocks", "lora", "dora", "full"] = "last_blocks"
    blocks: int = Field(2, ge=1, le=256)
    rank: int = Field(8, ge=1, le=1024)
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(32, ge=2, le=4096, description="photos per step (two views each)")
    lr: float = Field(3e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)
    temperature: float = Field(0.2, gt=0.0, le=10.0)
    projection_dim: int = Field(128, ge=8, le=4096, description="simclr: projection size; explora: prototypes")
    local_crops: int = Field(4, ge=0, le=16, description="explora: small crops beside the two global ones")
    teacher_momentum: float = Field(0.996, ge=0.0, lt=1.0, description="explora: EMA of the student")
    augment: Literal[AUGMENT_PRESETS] = "heavy"   # type: ignore[valid-type]
    crop_scale: tuple[float, float] = Field((0.2, 1.0))
    seed: int = 0


class VlmTrainingConfig(_Strict):
    """``roadwork vlm train``: LoRA (or QLoRA on a GPU) fine-tuning of a VLM's yes/no answer."""

    method: Literal["lora", "qlora"] = "lora"
    vision: bool = Field(False, description="adapt the vision tower too, not only the language model")
    rank: int = Field(8, ge=1, le=1024)
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(4, ge=1, le=1024)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    held_out: float = Field(0.2, gt=0.0, lt=1.0, description="grouped share kept for the calibration")
    question: str | None = Field(None, description="None: roadwork's question (README)")
    max_pixels: int = Field(448 * 448, ge=1024)
    seed: int = 0
    objective: Literal["bce", "dpo"] = Field("bce", description="bce: the yes/no margin against the label; dpo: "
                                             "the right answer preferred to the wrong one, against the start model")
    dpo_beta: float = Field(0.1, gt=0.0, le=100.0, description="DPO's beta: how far from the start model it may move")
    classifier: str | None = Field(None, description="a bundle whose confident mistakes weigh more in DPO's pairs")
    mistake_weight: float = Field(4.0, ge=0.0, le=1000.0, description="a photo the classifier got wrong with "
                                  "certainty weighs 1 + this (before normalising the weights to mean 1)")


class DetectorTrainingConfig(_Strict):
    """``roadwork detector train``: fine-tuning a closed-set detector on annotated photos."""

    seed: int = 0
    epochs: int = Field(24, ge=1, le=1000)
    batch_size: int = Field(8, ge=1, le=1024)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0)
    input_size: int = Field(640, ge=32, le=4096, description="the side of the square global view it learns from; "
                            "give experts.detector_input_size the same")


class DistillConfig(_Strict):
    """``roadwork distill``: the student learns mix x softened teacher probability + (1 - mix) x label,
    the teacher's probability softened as sigmoid(logit(p) / temperature)."""

    temperature: float = Field(2.0, gt=0.0, le=20.0)
    mix: float = Field(0.5, ge=0.0, le=1.0, description="1 = teacher only, 0 = labels only")


class TrainConfig(_Strict):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: HeadConfig = HeadConfig()
    backbone_training: BackboneTrainingConfig = BackboneTrainingConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    sampling: SamplingConfig = SamplingConfig()
    trainer: TrainerConfig = TrainerConfig()
    validation: ValidationConfig = ValidationConfig()
    experts: ExpertsConfig = ExpertsConfig()
    distill: DistillConfig = DistillConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value


MAX_SHOWN = 120   # characters of an offending value an error shows: a huge value is named, not printed


def short_repr(value: object) -> str:
    short = reprlib.Repr()   # its limits as attributes: keyword arguments came in Python 3.12
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 2, 4, 4, 60, 60
    shown = short.repr(value)
    return shown if len(shown) <= MAX_SHOWN else shown[:MAX_SHOWN - 3] + "..."


def _format(error: ValidationError, section: str | None = None) -> str:
    """One line per invalid value, its dotted key named (under ``section`` when given)."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in ((section,) if section else ()) + tuple(item["loc"]))
        lines.append(f"{key}: {item['msg']} (got {short_repr(item.get('input'))})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


MAX_CONFIG_BYTES = 2**20
MAX_YAML_VALUES = 10_000   # values a configuration may hold once every alias is expanded


def _expanded_size(root: yaml.Node) -> float:
    """How many values ``root`` becomes once its aliases are copied out, counted on the composed graph
    (an alias is the same node object again) without building anything: a few lines of nested
    anchors ("billion laughs") expand to gigabytes, and a self-referencing one never ends (inf)."""
    sizes: dict[int, float] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:   # iterative post-order: a deep document must not overflow Python's stack
        node, children_done = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            open_nodes.discard(id(node))
        elif id(node) not in sizes:
            if any(id(c) in open_nodes for c in children) or id(node) in open_nodes:
                return math.inf
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)
    return sizes[id(root)]


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load``, after refusing (a ConfigError naming ``where``) a document that expands past
    MAX_YAML_VALUES values or nests beyond Python's stack; a syntax error stays a ``yaml.YAMLError``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_size(root) > MAX_YAML_VALUES:
            raise ConfigError(f"{where}: its aliases expand to more than {MAX_YAML_VALUES} values")
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def read_yaml(path: str | Path, what: str = "configuration") -> Any:
    """A YAML file of at most MAX_CONFIG_BYTES from a regular file, parsed by ``parse_yaml``."""
    try:
        return parse_yaml(read_file(path, MAX_CONFIG_BYTES).decode("utf-8"), str(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read {what}: {error}") from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (a later file changes only the keys it names)."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _read_yaml(path: str | Path) -> dict[str, Any]:
    loaded = read_yaml(path)
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return loaded or {}


def load_config(paths: str | Path | Sequence[str | Path] | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- YAML files in order (e.g. configs/base.yaml, then a backbone preset) <- ``key=value``
    overrides (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else (paths or []):
        tree = _merge(tree, _read_yaml(path))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} must look like key=value (e.g. optim.lr=1e-3)")
        try:
            value = parse_yaml(raw, f"--set {key.strip()}")
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format(error)) from None


Options = TypeVar("Options", bound=BaseModel)


def from_options(model: type[Options], prefix: str | None = None, **values: Any) -> Options:
    """Settings validated from a command's options (``serve``, ``--tta*``, ``adapt``, ``detector train``):
    a bad value fails with the option named, like the training configuration (``prefix``: the section
    the names are reported under)."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_format(error, prefix) if prefix else _format(error)) from None


def detector_config(path: str | Path) -> DetectorConfig:
    """The miner adapter's YAML file, validated (a bad or missing key is named)."""
    loaded = _read_yaml(path)
    if not loaded:
        raise ConfigError(f"{path}: must be a mapping with at least `bundle: PATH`")
    try:
        return DetectorConfig.model_validate(loaded)
    except ValidationError as error:
        raise ConfigError(_format(error)) from None
