"""TOOD: Task-aligned One-stage Object Detection (Feng et al., ICCV 2021, arXiv 2108.07755).

Training and inference follow MMDetection's ``TOODHead`` (``tood_head.py``: ``loss_by_feat``,
``_get_targets_single``, ``_predict_by_feat_single``) with the released config
(``tood_r50_fpn_1x_coco.py``): ATSS (top-9) + focal loss (gamma 2, alpha 0.25) for the first
``initial_epochs`` epochs, then the task-aligned assigner (alpha 1, beta 6, top-13) with QFL (beta 2)
on the normalised alignment metric; GIoU (weight 2) weighted by centerness (ATSS) or the normalised
metric (TAL). Both losses are divided by the sum of their target weights (clamped to >= 1).
Inference: per level top-``pre_nms_top_n`` (class, location) scores above ``score_thresh``,
class-aware NMS (IoU ``nms_thresh``), ``detections_per_img`` best.

Calling convention (torchvision detectors, see :class:`det_toolkit.train.models.common.Detector`): labels are
1-based (0 = background, never predicted); the classifier has ``num_classes`` sigmoid outputs,
channel ``c`` being label ``c + 1``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import nms

from det_toolkit.train.models.common import IMAGENET_MEAN, IMAGENET_STD, NoResizeTransform
from det_toolkit.train.models.tood.assigners import atss_assign, task_aligned_assign
from det_toolkit.train.models.tood.backbone import set_deform_impl
from det_toolkit.train.models.tood.head import TOODHead
from det_toolkit.train.models.tood.losses import focal_loss, giou_loss, quality_focal_loss


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, max_coord: float) -> Tensor:
    """Class-aware NMS by per-class coordinate offsets; the same result as
    ``torchvision.ops.batched_nms`` (its small-input path), without its data-dependent branch so the
    dynamo exporter can trace it. ``boxes`` must lie in ``[0, max_coord]``. Returns int64 indices."""
    offsets = labels.to(boxes.dtype) * (max_coord + 1)
    return nms(boxes + offsets[:, None], scores, iou)


def centerness(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness of float ``[K, 2]`` points in their float ``[K, 4]`` gt boxes -> ``[K]``."""
    left, top = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    right, bottom = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    lr = torch.stack((left, right), 1).clamp(min=0)
    tb = torch.stack((top, bottom), 1).clamp(min=0)
    c = lr.min(1).values / lr.max(1).values.clamp(min=1e-6) * tb.min(1).values / tb.max(1).values.clamp(min=1e-6)
    return c.sqrt()


class TOOD(nn.Module):
    """Backbone + FPN (P3-P7) + :class:`TOODHead`, with a torchvision-detector interface.

    Args:
        backbone: returns an ``OrderedDict`` of 5 float maps with ``out_channels`` channels at
            strides 8-128.
        num_classes: object classes (sigmoid outputs; background excluded).
        feat_channels, stacked_convs, gn_groups: head tower width/depth/GroupNorm groups.
        initial_epochs: epochs (0-based ``epoch < initial_epochs``) trained with ATSS.
        deform_impl: ``"deform_conv"`` or ``"grid_sample"`` for every deformable op (backbone DCN and
            head sampling).
        score_thresh, nms_thresh, pre_nms_top_n, detections_per_img: inference settings.
        octave_scale: anchor size in strides (ATSS anchors are ``octave_scale * stride`` squares).
        atss_topk, tal_topk, alpha, beta: assigner settings; qfl_beta, giou_weight: loss settings.

    ``forward(images, targets=None)``: ``images`` list of float ``[3, H, W]`` in ``[0, 1]``;
    ``targets`` list of dicts ``boxes`` float ``[M, 4]`` ``xyxy`` pixels, ``labels`` int64 ``[M]``
    1-based. Training returns ``{"loss_cls", "loss_bbox"}`` scalars; eval returns per image
    ``boxes`` float ``[K, 4]`` ``xyxy`` (input pixels), ``scores`` float ``[K]``, ``labels`` int64
    ``[K]`` 1-based.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, out_channels: int = 256,
                 feat_channels: int = 256, stacked_convs: int = 6, gn_groups: int = 32,
                 initial_epochs: int = 4, deform_impl: str = "deform_conv",
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, pre_nms_top_n: int = 1000,
                 detections_per_img: int = 100, octave_scale: float = 8.0, atss_topk: int = 9,
                 tal_topk: int = 13, alpha: float = 1.0, beta: float = 6.0, qfl_beta: float = 2.0,
                 giou_weight: float = 2.0) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(800, 1333, list(IMAGENET_MEAN), list(IMAGENET_STD))
        self.backbone = backbone
        self.strides = (8, 16, 32, 64, 128)
        self.num_classes = num_classes
        self.head = TOODHead(num_classes, out_channels, feat_channels, stacked_convs, self.strides,
                             gn_groups)
        self.initial_epochs = initial_epochs
        self.epoch = 0
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.pre_nms_top_n, self.detections_per_img = pre_nms_top_n, detections_per_img
        self.octave_scale, self.atss_topk, self.tal_topk = octave_scale, atss_topk, tal_topk
        self.alpha, self.beta, self.qfl_beta, self.giou_weight = alpha, beta, qfl_beta, giou_weight
        self.deform_impl = deform_impl
        self.set_deform_impl(deform_impl)

    def set_epoch(self, epoch: int) -> None:
        """0-based epoch, set by the trainer: ATSS while ``epoch < initial_epochs``, then TAL."""
        self.epoch = int(epoch)

    def set_deform_impl(self, impl: str) -> None:
        """Switch all deformable ops to ``"deform_conv"`` or ``"grid_sample"`` (same numbers)."""
        set_deform_impl(self, impl)
        self.deform_impl = impl

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        if torch.compiler.is_exporting():
            return self._forward_export(images)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        feats = list(self.backbone(batch.tensors).values())
        scores, boxes = self.head(feats)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self.compute_loss(scores, boxes, targets)
        pad_h, pad_w = batch.tensors.shape[-2:]
        dets = [self.postprocess_image([s[i] for s in scores], [b[i] for b in boxes], hw, pad_h + pad_w)
                for i, hw in enumerate(batch.image_sizes)]
        return self.transform.postprocess(dets, batch.image_sizes, original_sizes)

    def _forward_export(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Inference under ``torch.export`` with symbolic ``H, W``: the same normalise + zero-pad to
        a multiple of 32 as :class:`det_toolkit.train.models.common.NoResizeTransform` (whose Python-float size
        arithmetic would pin ``H, W``); no resize, so no box rescaling."""
        if not isinstance(self.transform, NoResizeTransform):
            raise TypeError("TOOD exports only with the no-resize transform (wrap it in Detector)")
        out = []
        for img in images:
            h, w = img.shape[-2:]
            x = F.pad(self.transform.normalize(img), (0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32))
            scores, boxes = self.head(list(self.backbone(x[None]).values()))
            out.append(self.postprocess_image([s[0] for s in scores], [b[0] for b in boxes], (h, w),
                                              x.shape[-2] + x.shape[-1]))
        return out

    def postprocess_image(self, scores: list[Tensor], boxes: list[Tensor], image_size: tuple[int, int],
                          max_coord: Any) -> dict[str, Tensor]:
        """One image: per-level ``[C, H, W]`` scores and ``[4, H, W]`` boxes -> detections.

        Top-k first, then the score threshold (same set as threshold-then-top-k, but with no
        data-dependent size before ``topk``, which keeps the graph exportable).
        """
        all_boxes, all_scores, all_labels = [], [], []
        for s, b in zip(scores, boxes):
            s = s.flatten(1).t().reshape(-1)  # [(H*W)*C], location-major like mmdet
            b = b.flatten(1).t()  # [H*W, 4]
            top, idx = s.topk(torch.sym_min(self.pre_nms_top_n, s.shape[0]))
            keep = top > self.score_thresh
            top, idx = top[keep], idx[keep]
            all_scores.append(top)
            all_boxes.append(b[idx // self.num_classes])
            all_labels.append(idx % self.num_classes + 1)
        bx, sc, lb = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        h, w = image_size
        bx = torch.stack((bx[:, 0].clamp(0, w), bx[:, 1].clamp(0, h), bx[:, 2].clamp(0, w),
                          bx[:, 3].clamp(0, h)), 1)
        keep = batched_nms(bx, sc, lb, self.nms_thresh, max_coord)[: self.detections_per_img]
        return {"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]}

    def anchors(self, scores: list[Tensor]) -> tuple[Tensor, Tensor, list[int]]:
        """Anchor points float ``[A, 2]`` (``(x*s, y*s)``), square anchors float ``[A, 4]`` of side
        ``octave_scale * s`` and anchors per level, for the levels' ``[N, C, H, W]`` maps."""
        pts, boxes, counts = [], [], []
        for s, stride in zip(scores, self.strides):
            h, w = s.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=s.device, dtype=s.dtype) * stride,
                                    torch.arange(w, device=s.device, dtype=s.dtype) * stride, indexing="ij")
            p = torch.stack((xs.reshape(-1), ys.reshape(-1)), 1)
            half = self.octave_scale * stride / 2
            pts.append(p)
            boxes.append(torch.cat((p - half, p + half), 1))
            counts.append(h * w)
        return torch.cat(pts), torch.cat(boxes), counts

    def compute_loss(self, scores: list[Tensor], boxes: list[Tensor],
                     targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """QFL/focal + GIoU over the batch (see the module docstring for the schedule), in float32
        outside autocast (``binary_cross_entropy`` is autocast-unsafe)."""
        with torch.autocast(scores[0].device.type, enabled=False):
            return self._loss([s.float() for s in scores], [b.float() for b in boxes], targets)

    def _loss(self, scores: list[Tensor], boxes: list[Tensor],
              targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        points, anchors, counts = self.anchors(scores)
        flat_s = torch.cat([s.flatten(2) for s in scores], 2).transpose(1, 2)  # [N, A, C]
        flat_b = torch.cat([b.flatten(2) for b in boxes], 2).transpose(1, 2)  # [N, A, 4]
        initial = self.epoch < self.initial_epochs
        cls_targets, pos_pred, pos_gt, pos_w = [], [], [], []
        for s, b, t in zip(flat_s, flat_b, targets):
            gt_boxes, gt_labels = t["boxes"].to(s.dtype), t["labels"] - 1
            if initial:
                assigned = atss_assign(anchors, counts, gt_boxes, self.atss_topk)
                soft = (assigned >= 0).to(s.dtype)
            else:
                assigned, soft = task_aligned_assign(s.detach(), b.detach(), anchors, gt_boxes, gt_labels,
                                                     self.tal_topk, self.alpha, self.beta)
            pos = assigned >= 0
            ct = torch.zeros_like(s)
            ct[pos, gt_labels[assigned[pos]]] = soft[pos]
            cls_targets.append(ct)
            gt = gt_boxes[assigned[pos]]
            pos_pred.append(b[pos])
            pos_gt.append(gt)
            pos_w.append(centerness(points[pos], gt) if initial else soft[pos])
        ct = torch.stack(cls_targets)
        cls_norm = ct.sum().clamp(min=1.0)
        loss_cls = (focal_loss(flat_s, ct) if initial else quality_focal_loss(flat_s, ct, self.qfl_beta)) / cls_norm
        pred, gt, w = torch.cat(pos_pred), torch.cat(pos_gt), torch.cat(pos_w)
        if pred.shape[0]:
            loss_bbox = self.giou_weight * giou_loss(pred, gt, w) / w.sum().clamp(min=1.0)
        else:
            loss_bbox = flat_b.sum() * 0
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}
