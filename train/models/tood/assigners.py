"""Label assignment for TOOD: ATSS (warm-up epochs) and the task-aligned assigner (TAL).

Semantics follow MMDetection's ``mmdet/models/task_modules/assigners/atss_assigner.py``
(``ATSSAssigner``, Zhang et al. 2020) and ``task_aligned_assigner.py`` (``TaskAlignedAssigner``,
Feng et al. 2021, Sec. 3.2): candidates per gt, a positive must have its anchor centre inside the gt
(every side distance > 0.01), and an anchor that is positive for several gts goes to the gt of highest
IoU. All boxes are float ``xyxy`` in pixels; results are per image.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def _centers(boxes: Tensor) -> Tensor:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def _resolve(candidates: Tensor, is_pos: Tensor, overlaps: Tensor) -> tuple[Tensor, Tensor]:
    """Keep candidate ``(anchor, gt)`` pairs in ``is_pos`` and give each anchor its max-IoU gt.

    Args:
        candidates: int64 ``[K, G]`` anchor indices per gt; is_pos: bool ``[K, G]``;
        overlaps: float ``[A, G]`` IoU used to break ties between gts.
    Returns:
        ``assigned`` int64 ``[A]`` (gt index, -1 = negative) and ``max_iou`` float ``[A]``
        (IoU with the assigned gt, ``-inf`` for negatives).
    """
    num_gt = overlaps.shape[1]
    masked = torch.full_like(overlaps, float("-inf"))
    gt_idx = torch.arange(num_gt, device=overlaps.device).expand_as(candidates)
    a, g = candidates[is_pos], gt_idx[is_pos]
    masked[a, g] = overlaps[a, g]
    max_iou, argmax = masked.max(dim=1)
    assigned = torch.where(torch.isinf(max_iou), torch.full_like(argmax, -1), argmax)
    return assigned, max_iou


def _center_inside(anchors: Tensor, candidates: Tensor, gt_boxes: Tensor, eps: float = 0.01) -> Tensor:
    """bool ``[K, G]``: the candidate anchor's centre lies inside its gt (all sides > ``eps``)."""
    c = _centers(anchors)[candidates]  # [K, G, 2]
    d = torch.stack((c[..., 0] - gt_boxes[:, 0], c[..., 1] - gt_boxes[:, 1],
                     gt_boxes[:, 2] - c[..., 0], gt_boxes[:, 3] - c[..., 1]), -1)
    return d.min(dim=-1).values > eps


@torch.no_grad()
def atss_assign(anchors: Tensor, num_per_level: list[int], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """ATSS: per level the ``topk`` anchors nearest (centre distance) to each gt are candidates;
    positives have IoU >= mean + std (unbiased) of the candidates' IoUs and centre inside the gt.

    Args:
        anchors: float ``[A, 4]`` anchor boxes, levels concatenated in order.
        num_per_level: anchors per level (sums to ``A``).
        gt_boxes: float ``[G, 4]``.
    Returns:
        int64 ``[A]``: assigned gt index, -1 for negatives.
    """
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    overlaps = box_iou(anchors, gt_boxes)  # [A, G]
    dist = torch.cdist(_centers(anchors), _centers(gt_boxes))  # [A, G]
    cands, start = [], 0
    for n in num_per_level:
        k = min(topk, n)
        cands.append(dist[start:start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    candidates = torch.cat(cands, 0)  # [K, G]
    cand_iou = overlaps.gather(0, candidates)
    thr = cand_iou.mean(0) + cand_iou.std(0)
    is_pos = (cand_iou >= thr) & _center_inside(anchors, candidates, gt_boxes)
    return _resolve(candidates, is_pos, overlaps)[0]


def alignment_metric(scores: Tensor, ious: Tensor, alpha: float = 1.0, beta: float = 6.0) -> Tensor:
    """TOOD's task-alignment metric ``t = s^alpha * u^beta`` (paper Eq. 5), elementwise."""
    return scores.pow(alpha) * ious.pow(beta)


@torch.no_grad()
def task_aligned_assign(scores: Tensor, pred_boxes: Tensor, anchors: Tensor, gt_boxes: Tensor,
                        gt_labels: Tensor, topk: int = 13, alpha: float = 1.0, beta: float = 6.0
                        ) -> tuple[Tensor, Tensor]:
    """Task-aligned assignment with the normalised alignment metric as soft target.

    Candidates are the ``topk`` predictions by ``t = s^alpha * IoU(pred, gt)^beta`` per gt, kept if
    ``t > 0`` and the anchor centre is inside the gt; conflicts go to the gt of highest predicted
    IoU. The target is ``t_hat = t / max_gt(t) * max_gt(IoU)`` over each gt's positives (mmdet
    ``TOODHead._get_targets_single``; paper Eq. 8-9).

    Args:
        scores: float ``[A, C]`` predicted class probabilities.
        pred_boxes: float ``[A, 4]`` predicted boxes.
        anchors: float ``[A, 4]`` anchor boxes (only their centres are used).
        gt_boxes: float ``[G, 4]``; gt_labels: int64 ``[G]``, 0-based class channel.
    Returns:
        ``assigned`` int64 ``[A]`` (gt index or -1) and ``target`` float ``[A]`` (``t_hat`` on
        positives, 0 elsewhere).
    """
    num_a, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        return (torch.full((num_a,), -1, dtype=torch.long, device=anchors.device),
                anchors.new_zeros(num_a))
    overlaps = box_iou(pred_boxes, gt_boxes)  # [A, G]
    metric = alignment_metric(scores[:, gt_labels], overlaps, alpha, beta)
    candidates = metric.topk(min(topk, num_a), dim=0).indices  # [K, G]
    is_pos = (metric.gather(0, candidates) > 0) & _center_inside(anchors, candidates, gt_boxes)
    assigned, max_iou = _resolve(candidates, is_pos, overlaps)
    target = anchors.new_zeros(num_a)
    pos = assigned >= 0
    if pos.any():
        gt = assigned[pos]
        t = metric[pos, gt]
        iou = max_iou[pos]
        max_t = torch.zeros(num_gt, device=t.device, dtype=t.dtype).scatter_reduce(0, gt, t, "amax")
        max_u = torch.zeros(num_gt, device=t.device, dtype=t.dtype).scatter_reduce(0, gt, iou, "amax")
        target[pos] = t / (max_t[gt] + 1e-7) * max_u[gt]
    return assigned, target
