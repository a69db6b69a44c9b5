"""Training losses: focal classification loss, multi-view consistency and auxiliary weather prediction for
the heads; dice + binary cross-entropy for the segmentation branch of backbone fine-tuning."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from roadwork.config import LossConfig
from roadwork.features.metadata import NULL_INDEX
from roadwork.model.head import HeadOutput


def focal_loss(logits: Tensor, labels: Tensor, gamma: float, alpha: float | None, smoothing: float) -> Tensor:
    """Mean of ``-alpha_y * sum_c q_c (1 - p_c)^gamma log p_c`` with label-smoothed targets ``q``.

    The focal factor is applied per class rather than once with the true-class probability: with
    the per-sample form ``(1 - p_y)^gamma`` vanishes on confident samples and cancels the penalty
    label smoothing puts on over-confidence; per class, the smoothed wrong-class term survives.
    With ``gamma = 0`` this is exactly ``F.cross_entropy(..., label_smoothing=smoothing)``.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    target = F.one_hot(labels, logits.shape[-1]).to(log_p.dtype) * (1.0 - smoothing) + smoothing / logits.shape[-1]
    per_sample = -(target * (1.0 - log_p.exp()).pow(gamma) * log_p).sum(dim=-1)
    if alpha is not None:
        per_sample = per_sample * torch.where(labels == 1, alpha, 1.0 - alpha)
    return per_sample.mean()


def segmentation_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Binary cross-entropy plus soft dice, 1 - (2 |p t| + eps) / (|p| + |t| + eps), each per photo then
    averaged, for logits and (soft) targets ``[N, 1, H, W]``. Dice weighs the few roadwork pixels as
    much as the many background ones; ``eps`` makes a photo without roadwork pixels score its dice
    by how few it predicts."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    dice = 1.0 - (2.0 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return (bce + dice).mean()


# The two self-supervised losses below are written here: the library that has them (lightly) brings a
# second copy of Lightning (pytorch_lightning) and hydra with it, for a dozen lines each.


def nt_xent(embeddings: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy for ``[2N, D]`` embeddings whose rows i and
    i + N are two views of one photo: each row must pick its twin among the other 2N - 1 rows."""
    z = F.normalize(embeddings.float(), dim=1)
    n = z.shape[0] // 2
    similarity = (z @ z.T) / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    twins = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, twins)


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, crops: int, student_temperature: float,
              teacher_temperature: float) -> Tensor:
    """DINO self-distillation: ``student`` ``[crops * N, K]`` prototype scores of every crop, ``teacher``
    ``[2 * N, K]`` of the two global crops (the first two crops), centred by ``center`` and sharpened;
    each student crop learns the teacher's distribution of every other global crop of its photo."""
    targets = F.softmax((teacher - center) / teacher_temperature, dim=-1).detach().chunk(2)
    predictions = F.log_softmax(student / student_temperature, dim=-1).chunk(crops)
    terms = [-(target * predictions[c]).sum(-1).mean() for t, target in enumerate(targets)
             for c in range(crops) if c != t]
    return torch.stack(terms).mean()


def consistency_loss(view_logits: Tensor, view_mask: Tensor) -> Tensor:
    """Mean over valid views of ``KL(p_view || p_mean)``, averaged per sample then over the batch.

    ``p_mean`` (masked mean of the view probabilities) is not detached: the loss is then exactly
    the generalised Jensen-Shannon divergence of the views and we follow its true gradient, which
    pulls all views toward each other symmetrically (bounded by log 2, no moving target).
    A sample with one valid view contributes 0. The head computes view logits with its main
    classifier, so the views cannot agree trivially on a constant.
    """
    logits = view_logits.float().masked_fill(~view_mask.unsqueeze(-1), 0.0)
    log_p = F.log_softmax(logits, dim=-1)
    count = view_mask.sum(dim=1).clamp_min(1)
    valid_log_p = log_p.masked_fill(~view_mask.unsqueeze(-1), float("-inf"))
    log_mean = torch.logsumexp(valid_log_p, dim=1) - count.log().unsqueeze(-1)  # log of the masked mean, stably
    kl = (log_p.exp() * (log_p - log_mean.unsqueeze(1))).sum(dim=-1).masked_fill(~view_mask, 0.0)
    return (kl.sum(dim=1) / count).mean()


def weather_loss(weather_logits: Tensor, weather: Tensor) -> Tensor:
    """Cross-entropy over rows whose weather is known; 0 (not NaN) when none is."""
    known = weather != NULL_INDEX
    target = (weather - NULL_INDEX - 1).clamp_min(0)  # vocabulary index -> weather class
    per_row = F.cross_entropy(weather_logits.float(), target, reduction="none")
    return (per_row * known).sum() / known.sum().clamp_min(1)


class RoadworkLoss(nn.Module):
    """Weighted sum of the focal, consistency and weather parts; returns every part for logging. (The
    segmentation term, ``dice_weight``, belongs to backbone fine-tuning: the heads read pooled features.)"""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def forward(self, out: HeadOutput, labels: Tensor, weather: Tensor) -> dict[str, Tensor]:
        c = self.config
        focal = focal_loss(out.logits, labels, c.focal_gamma, c.focal_alpha, c.label_smoothing)
        zero = focal.new_zeros(())
        consistency = consistency_loss(out.view_logits, out.view_mask) if out.view_logits is not None else zero
        weather_part = weather_loss(out.weather_logits, weather) if out.weather_logits is not None else zero
        total = c.focal_weight * focal + c.consistency_weight * consistency + c.weather_weight * weather_part
        return {"loss": total, "focal": focal, "consistency": consistency, "weather": weather_part}
