"""The assembled multi-view head, the probe baseline, the ensemble that serves several, and ``build_head``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from roadwork.config import HeadConfig
from roadwork.features.metadata import MetadataBatch, MetadataVocab
from roadwork.model.attention import GatedAttentionStack
from roadwork.model.evidence import EvidenceEncoder, evidence_present
from roadwork.model.gafm import GatedAttentionFusion, MeanFusion
from roadwork.model.metadata import MetadataEncoder
from roadwork.model.pruning import ViewPruner
from roadwork.model.pyramid import InputProjection, MultiScalePyramid


@dataclass
class HeadOutput:
    """Logits ``[B,2]`` plus the auxiliary outputs the losses and inspection use (None if absent)."""

    logits: Tensor
    # The representation the classifier reads (pre-logits), for stacking, reports and experts.
    pooled: Tensor | None = None
    view_logits: Tensor | None = None  # [B,V',2] per kept view, before pooling across views
    view_mask: Tensor | None = None  # [B,V'] True = real view
    weather_logits: Tensor | None = None  # [B,n_weather]; class = vocabulary index - 1
    view_scores: Tensor | None = None  # [B,V] pruning scores, -inf for padded views
    member_margins: Tensor | None = None  # [B,K] each member's margin, for an ensemble of K > 1 heads

    @property
    def margin(self) -> Tensor:
        """z = logit(roadwork) - logit(none): sigmoid(z) is the softmax probability of roadwork."""
        return self.logits[:, 1] - self.logits[:, 0]


def _check_inputs(features: Tensor, view_mask: Tensor, feature_dim: int, evidence: Tensor | None = None,
                  evidence_fields: int = 0) -> None:
    if features.dim() != 3 or features.shape[-1] != feature_dim:
        raise ValueError(f"features must be [B,V,{feature_dim}], got {tuple(features.shape)}")
    if view_mask.shape != features.shape[:2] or view_mask.dtype != torch.bool:
        raise ValueError(
            f"view_mask must be a bool [B,V] = {tuple(features.shape[:2])}, "
            f"got {view_mask.dtype} {tuple(view_mask.shape)}"
        )
    if evidence_fields and (evidence is None or evidence.shape != (features.shape[0], evidence_fields)):
        got = None if evidence is None else tuple(evidence.shape)
        raise ValueError(f"this head reads {evidence_fields} evidence fields per photo: pass evidence "
                         f"[{features.shape[0]},{evidence_fields}] (NaN where absent), got {got}")


def probe_inputs(features: Tensor, view_mask: Tensor, evidence: Tensor | None = None) -> Tensor:
    """[global view, max over valid views]: the whole scene plus the strongest local evidence
    (a small cone shows in one tile). Measured on real photos, better than the global view alone.
    Expert evidence follows, 0 where NULL, then its present flags."""
    pooled = features.masked_fill(~view_mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    parts = [features[:, 0], pooled]
    if evidence is not None and evidence.shape[-1]:
        parts += [evidence.nan_to_num(0.0).to(features.dtype), evidence_present(evidence).to(features.dtype)]
    return torch.cat(parts, dim=-1)


class ProbeHead(nn.Module):
    """Standardised logistic regression on ``probe_inputs``: the honest baseline every head must beat.

    Its weights are fitted by ``roadwork.train.probe`` (scikit-learn, strong L2 chosen by grouped
    cross-validation); the module only serves them. Logits are ``[0, margin]``.
    """

    def __init__(self, feature_dim: int, evidence_fields: int = 0) -> None:
        super().__init__()
        self.feature_dim, self.evidence_fields = feature_dim, evidence_fields
        width = 2 * feature_dim + 2 * evidence_fields
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.classifier = nn.Linear(width, 1)

    def forward(self, features: Tensor, view_mask: Tensor, meta: MetadataBatch | None = None,
                evidence: Tensor | None = None) -> HeadOutput:
        _check_inputs(features, view_mask, self.feature_dim, evidence, self.evidence_fields)
        evidence = evidence if self.evidence_fields else None
        standardised = (probe_inputs(features, view_mask, evidence) - self.mean) / self.scale
        margin = self.classifier(standardised)
        return HeadOutput(logits=torch.cat([torch.zeros_like(margin), margin], dim=-1), pooled=standardised)


class MultiViewHead(nn.Module):
    """Prune -> project -> pyramid -> gated attention -> fusion (+ metadata) -> classifier.

    Auxiliary outputs: per-view logits (for the consistency loss) and weather logits from the fused
    vision vector before metadata is mixed in, so the weather task cannot be solved by reading the
    weather field. The weather head exists only when
    the vocabulary has at least two weather values: with one class cross-entropy is constantly 0.

    Per-view logits pass each view token through the same metadata fusion and classifier as the
    pooled vector. A separate per-view classifier, trained by the consistency loss alone, reaches
    zero loss by predicting the same constant for every view and teaches nothing; through the
    shared classifier (which the focal loss keeps honest) the views must really agree.
    """

    def __init__(self, config: HeadConfig, feature_dim: int, vocab: MetadataVocab, evidence_fields: int = 0) -> None:
        super().__init__()
        d = config.d_model
        self.feature_dim, self.evidence_fields = feature_dim, evidence_fields
        self.pruner = ViewPruner(feature_dim, config.prune_k) if config.prune_k is not None else None
        self.project = InputProjection(feature_dim, d)
        self.pyramid = MultiScalePyramid(d, config.dropout) if config.pyramid else nn.Identity()
        self.attention = GatedAttentionStack(d, config.heads, config.attention_layers, config.dropout)
        self.fusion: nn.Module = (
            GatedAttentionFusion(d, config.heads, config.dropout) if config.fusion == "gafm" else MeanFusion()
        )
        n_weather = vocab.sizes["weather"] - 1
        self.weather_head = (
            nn.Sequential(nn.Linear(d, d // 2), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d // 2, n_weather))
            if n_weather >= 2
            else None
        )
        self.metadata = (
            MetadataEncoder(vocab, config.gps_dim, config.category_dim, config.text) if config.metadata else None
        )
        # Expert evidence joins the vision vector where metadata does: after the views are pooled.
        self.evidence = EvidenceEncoder(evidence_fields) if evidence_fields else None
        context = sum(m.out_dim for m in (self.metadata, self.evidence) if m is not None)
        self.fuse = (
            nn.Sequential(nn.Linear(d + context, d), nn.GELU(), nn.Dropout(config.dropout)) if context else None
        )
        self.classifier = nn.Sequential(
            nn.Linear(d, d // 2), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(d // 2, 2)
        )

    def forward(self, features: Tensor, view_mask: Tensor, meta: MetadataBatch | None = None,
                evidence: Tensor | None = None) -> HeadOutput:
        _check_inputs(features, view_mask, self.feature_dim, evidence, self.evidence_fields)
        # Zero padded views once, so no garbage (inf, NaN) can leak through 0-weights downstream.
        features = features.masked_fill(~view_mask.unsqueeze(-1), 0.0)
        scores = None
        if self.pruner is not None:
            features, view_mask, weights, scores = self.pruner(features, view_mask)
        else:
            weights = None
        tokens = self.attention(self.pyramid(self.project(features)), view_mask)
        vision = self.fusion(tokens, view_mask, weights)
        fused, fused_views = vision, tokens
        context = []
        if self.metadata is not None:
            if meta is None or meta.gps.shape[0] != features.shape[0]:   # not len(): it would fix an exported batch
                raise ValueError("this head uses metadata: pass a MetadataBatch with one row per sample")
            context.append(self.metadata(meta))
        if self.evidence is not None:
            context.append(self.evidence(evidence.to(vision.dtype)))  # type: ignore[union-attr]
        if context:
            encoded = torch.cat(context, dim=-1)
            fused = self.fuse(torch.cat([vision, encoded], dim=-1))
            per_view = encoded.unsqueeze(1).expand(-1, tokens.shape[1], -1)
            fused_views = self.fuse(torch.cat([tokens, per_view], dim=-1))
        return HeadOutput(
            logits=self.classifier(fused),
            pooled=fused,
            view_logits=self.classifier(fused_views),
            view_mask=view_mask,
            weather_logits=self.weather_head(vision) if self.weather_head is not None else None,
            view_scores=scores,
        )


class HeadEnsemble(nn.Module):
    """Several heads served as one; a k-fold run serves its k fold heads this way, a single head is an
    ensemble of one.

    ``logits`` are the mean of the members' logits, and ``member_margins`` keeps each member's margin:
    the served probability is the mean of the members' calibrated probabilities (see
    ``Calibration``), because the cut was fitted on single heads' out-of-fold margins, and a mean of
    margins is narrower than any one head's, so a cut far from 0 (imbalanced data) can leave every
    mean margin on one side of it.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one head")
        self.members = nn.ModuleList(members)

    def forward(self, features: Tensor, view_mask: Tensor, meta: MetadataBatch | None = None,
                evidence: Tensor | None = None) -> HeadOutput:
        if len(self.members) == 1:
            return self.members[0](features, view_mask, meta, evidence)
        outputs = [member(features, view_mask, meta, evidence) for member in self.members]
        logits = torch.stack([out.logits.float() for out in outputs]).mean(dim=0)
        return HeadOutput(logits=logits, pooled=torch.cat([out.pooled for out in outputs], dim=-1),
                          member_margins=torch.stack([out.margin.float() for out in outputs], dim=-1))


def build_head(config: HeadConfig, feature_dim: int, vocab: MetadataVocab, evidence_fields: int = 0) -> nn.Module:
    """The head ``config`` describes, for backbone features of ``feature_dim`` and ``evidence_fields``
    fields of expert evidence per photo."""
    if config.type == "probe":
        return ProbeHead(feature_dim, evidence_fields)
    if config.type == "multiview":
        return MultiViewHead(config, feature_dim, vocab, evidence_fields)
    raise ValueError(f"model.type {config.type!r} names a choice between heads, not one head")
