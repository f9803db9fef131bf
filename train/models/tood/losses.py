"""TOOD losses on already-activated scores (mmdet ``activated=True``), summed (callers normalise).

* :func:`quality_focal_loss`: QFL (Li et al. 2020, GFL; mmdet ``quality_focal_loss_with_prob``)
  ``BCE(p, y) * |y - p|^beta`` with soft targets ``y`` (0 for negatives and non-target classes).
* :func:`focal_loss`: sigmoid focal loss on probabilities (mmdet ``py_focal_loss_with_prob``), used
  with hard targets during TOOD's ATSS warm-up (mmdet ``initial_loss_cls``).
* :func:`giou_loss`: ``1 - GIoU`` (Rezatofighi et al. 2019; mmdet ``GIoULoss``, eps 1e-7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quality_focal_loss(prob: Tensor, target: Tensor, beta: float = 2.0) -> Tensor:
    """Summed QFL. ``prob``, ``target``: float ``[A, C]`` in ``[0, 1]``. Returns a float scalar."""
    return (F.binary_cross_entropy(prob, target, reduction="none") * (target - prob).abs().pow(beta)).sum()


def focal_loss(prob: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Summed focal loss on probabilities. ``prob``, ``target`` (0/1): float ``[A, C]``."""
    pt = (1 - prob) * target + prob * (1 - target)
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return (F.binary_cross_entropy(prob, target, reduction="none") * weight).sum()


def giou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise-aligned GIoU of float ``[K, 4]`` ``xyxy`` boxes; returns float ``[K]``."""
    lt, rb = torch.max(pred[:, :2], target[:, :2]), torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(-1)
    area_t = (target[:, 2:] - target[:, :2]).clamp(min=0).prod(-1)
    union = (area_p + area_t - inter).clamp(min=eps)
    hull = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0).prod(-1)
    return inter / union - (hull - union) / hull.clamp(min=eps)


def giou_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Summed (optionally ``weight``-ed, float ``[K]``) ``1 - GIoU`` of float ``[K, 4]`` boxes."""
    loss = 1 - giou(pred, target)
    return (loss if weight is None else loss * weight).sum()
