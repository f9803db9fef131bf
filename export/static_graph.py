"""Static-shape, branch-free Faster R-CNN graph for TensorRT (``det-export --imgsz H W --batch N``),
and the stages the static TOOD graph shares.

:class:`StaticFasterRCNN` computes torchvision ``FasterRCNN`` inference with every shape fixed by
``(N, H, W)`` (RPN top-k, one ``NonMaxSuppression`` per stage, RoI pooling by
:class:`det_toolkit.export.roi_pool.StaticRoIPool`), reusing the trained sub-modules unchanged.

Outputs: ``boxes`` float32 ``[N, K, 4]`` (``xyxy``, input pixels), ``scores`` float32 ``[N, K]``,
``labels`` int64 ``[N, K]`` (0-based), ``num_dets`` int64 ``[N]``; rows ``>= num_dets`` are zero.
``K = max_det`` (``roi_heads.detections_per_img``, lower only for inputs too small to have that
many candidates). Results equal torchvision's up to float rounding, except with more than
:data:`MAX_CANDIDATES` class candidates per image and for RoIs thinner than one feature pixel at
the right/bottom border (:func:`det_toolkit.export.roi_pool.pyramid_roi_align`).

The stages step by step, and why: ``docs/design/static_graphs.md``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import nms
from torchvision.ops.poolers import _setup_scales

from det_toolkit.export.roi_pool import DEFAULT_POOLING, RoIPoolOptions, StaticRoIPool

#: TensorRT's TopK needs ``K < 3840`` (onnx-tensorrt docs/operators.md, TensorRT 10.15).
TOPK_LIMIT = 3840
#: TensorRT's NMS layer considers at most 5000 boxes per image and class.
NMS_LIMIT = 5000
#: Cap on the per-image class candidates ``R * num_classes`` entering the final NMS.
MAX_CANDIDATES = 3000


class BatchedNMS(torch.autograd.Function):
    """Per-image NMS of ``boxes`` float32 ``[N, P, 4]`` (``xyxy``) by ``scores`` float32 ``[N, P]``.

    Boxes with score ``<= 0`` are ignored (callers mask with -1). Returns ``selected`` int64
    ``[M, 3]`` rows ``(image, 0, box index)``, at most ``max_out`` per image, best first (the ONNX
    ``NonMaxSuppression`` output). Exported as one ``NonMaxSuppression`` node with constant
    ``max_output_boxes_per_class``, ``iou_threshold`` and ``score_threshold = 0`` inputs (TensorRT
    needs them to be initializers) and no ``If`` around it.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_thr: float, max_out: int) -> Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            idx = torch.nonzero(scores[b] > 0).flatten()
            keep = idx[nms(boxes[b, idx], scores[b, idx], iou_thr)[:max_out]]
            rows.append(torch.stack([torch.full_like(keep, b), torch.zeros_like(keep), keep], 1))
        return torch.cat(rows, 0)

    @staticmethod
    def symbolic(g, boxes, scores, iou_thr: float, max_out: int):  # type: ignore[no-untyped-def]
        scores = g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1])))
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([0.0], dtype=torch.float32)),
                    center_point_box_i=0)


def nms_topk(boxes: Tensor, scores: Tensor, offsets: Tensor, iou_thr: float, k: int
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Batched NMS then the ``k`` best survivors per image, all shapes fixed.

    Args:
        boxes: float32 ``[N, P, 4]`` ``xyxy``.
        scores: float32 ``[N, P]``; ``<= 0`` means "not a candidate".
        offsets: float32 ``[N, P]`` added to every coordinate so that boxes of different groups
            (FPN level, class) never overlap: NMS runs per group.
        iou_thr: IoU threshold.
        k: kept per image (constant; ``k <= P`` and ``k < TOPK_LIMIT``).

    Returns:
        ``(top_scores float32 [N, k], top_idx int64 [N, k], valid bool [N, k])``; invalid rows have
        score ``<= 0`` and an arbitrary index.
    """
    n, p = scores.shape
    selected = BatchedNMS.apply(boxes + offsets[..., None], scores, float(iou_thr), int(k))
    flat = selected[:, 0] * p + selected[:, 2]
    keep = torch.zeros(n * p, dtype=scores.dtype).scatter(0, flat, torch.ones_like(flat, dtype=scores.dtype))
    masked = torch.where(keep.view(n, p) > 0, scores, torch.full_like(scores, -1.0))
    top_scores, top_idx = masked.topk(k, dim=1)
    return top_scores, top_idx, top_scores > 0


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b, j]]`` for ``x`` ``[N, P, D]`` and ``idx`` int64 ``[N, k]`` -> ``[N, k, D]``."""
    n, p, d = x.shape
    # one row Gather on the flattened rows: no Expand, whose legacy export computes even a constant
    # shape with Where, which ONNX shape inference cannot follow (the graph must be static unslimmed)
    row = torch.ones_like(idx[:, :1]).cumsum(0) - 1  # [N, 1] image index (a Range would lose the shape)
    flat = (idx + row * p).reshape(-1)
    return x.reshape(-1, d).index_select(0, flat).view(n, idx.shape[1], d)


def padded_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, class_offset: float, iou_thr: float,
                     k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The static graphs' last stage: class-aware NMS, the ``k`` best per image, zero-padded outputs.

    Classes are kept apart by shifting every box by ``label * class_offset`` pixels
    (``class_offset`` larger than any coordinate), then :func:`nms_topk`.

    Args:
        boxes: float32 ``[N, P, 4]`` ``xyxy`` input pixels.
        scores: float32 ``[N, P]``; ``<= 0`` marks a masked candidate (never selected).
        labels: int64 ``[N, P]`` 0-based classes.
        class_offset: pixels between classes.
        iou_thr: NMS IoU threshold.
        k: detections per image (``K``, constant; ``k <= P``).

    Returns:
        ``(boxes float32 [N, K, 4], scores float32 [N, K], labels int64 [N, K], num_dets int64 [N])``,
        best first; rows ``>= num_dets`` are zero (the static output contract).
    """
    offsets = labels.to(boxes.dtype) * class_offset
    top_scores, top, valid = nms_topk(boxes, scores, offsets, iou_thr, k)
    mask = valid.to(boxes.dtype)
    return (gather_rows(boxes, top) * mask[..., None], top_scores * mask,
            labels.gather(1, top) * valid.to(torch.int64), valid.to(torch.int64).sum(1))


def clip_to_image(boxes: Tensor, imgsz: tuple[int, int]) -> Tensor:
    """``xyxy`` boxes ``[..., 4]`` clamped to an ``(H, W)`` image (as torchvision's ``clip_boxes_to_image``)."""
    h, w = imgsz
    return torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                        boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], -1)


class NormalizePad(nn.Module):
    """Input stage of the static graphs, as ``GeneralizedRCNNTransform`` without resizing:
    ``(x - mean) / std`` (the model's ``transform.image_mean/std``), then zero padding on the
    right/bottom to a multiple of 32.

    Args:
        transform: the detector's ``GeneralizedRCNNTransform`` (``image_mean``, ``image_std``).
        imgsz: ``(H, W)`` input size in pixels.

    Attributes:
        padded: ``(H, W)`` rounded up to multiples of 32.
    """

    def __init__(self, transform: nn.Module, imgsz: tuple[int, int]) -> None:
        super().__init__()
        self.imgsz = (int(imgsz[0]), int(imgsz[1]))
        self.padded = (-(-self.imgsz[0] // 32) * 32, -(-self.imgsz[1] // 32) * 32)
        self.register_buffer("mean", torch.tensor(transform.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        """float32 ``[N, 3, H, W]`` RGB in ``[0, 1]`` -> float32 ``[N, 3, *padded]``."""
        x = (images - self.mean) / self.std
        # zeros concatenated, not F.pad: its legacy export computes the pads at run time, which hides
        # the padded shape from ONNX shape inference when onnxslim does not fold it
        (h, w), (ph, pw), n = self.imgsz, self.padded, images.shape[0]
        if pw > w:
            x = torch.cat([x, x.new_zeros(n, 3, h, pw - w)], 3)
        if ph > h:
            x = torch.cat([x, x.new_zeros(n, 3, ph - h, pw)], 2)
        return x


class StaticFasterRCNN(nn.Module):
    """Fixed-size deployment graph of a torchvision ``FasterRCNN`` (see the module docstring).

    Args:
        detector: a :class:`det_toolkit.train.models.common.Detector` wrapping a torchvision ``FasterRCNN``.
        batch: images per call ``N``.
        imgsz: ``(H, W)`` input size in pixels.
        pooling: how RoIs are pooled (:class:`det_toolkit.export.roi_pool.RoIPoolOptions`).

    ``forward(images float32 [N, 3, H, W] RGB 0-1)`` -> ``(boxes [N, K, 4], scores [N, K],
    labels int64 [N, K], num_dets int64 [N])`` with ``K = max_det`` (see the module docstring).

    Raises:
        TypeError: the detector is not a torchvision ``FasterRCNN``.
        ValueError: a fixed size would exceed a TensorRT limit (TopK K, NMS boxes).
    """

    def __init__(self, detector: nn.Module, batch: int, imgsz: tuple[int, int],
                 pooling: RoIPoolOptions = DEFAULT_POOLING) -> None:
        super().__init__()
        frcnn = getattr(detector, "model", detector)
        if not all(hasattr(frcnn, a) for a in ("backbone", "rpn", "roi_heads", "transform")):
            raise TypeError(f"{type(frcnn).__name__}: the static graph supports torchvision FasterRCNN only")
        self.frcnn = frcnn.eval()
        self.batch, self.imgsz = int(batch), (int(imgsz[0]), int(imgsz[1]))
        self.prep = NormalizePad(frcnn.transform, self.imgsz)
        self.padded = self.prep.padded
        rpn, heads = frcnn.rpn, frcnn.roi_heads
        with torch.no_grad():  # anchors and per-level sizes are constants of the fixed input size
            x = torch.zeros(1, 3, *self.padded)
            fdict = self._backbone(x)
            feats = list(fdict.values())
            anchors = rpn.anchor_generator(ImageList(x, [self.imgsz]), feats)[0]
            objectness, _ = rpn.head(feats)
        self.register_buffer("anchors", anchors)
        self.level_sizes = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in objectness]
        self.pre_nms = [min(int(rpn._pre_nms_top_n["testing"]), n) for n in self.level_sizes]
        # a small input can have fewer candidates than the budgets: torchvision then keeps all of
        # them, and a TopK K larger than its input is an error (found by tests/test_zoo.py at 128 px)
        self.n_props = min(int(rpn._post_nms_top_n["testing"]), sum(self.pre_nms))
        self.num_classes = int(heads.box_predictor.cls_score.out_features) - 1
        self.n_cand = min(self.n_props * self.num_classes, MAX_CANDIDATES)
        self.max_det = min(int(heads.detections_per_img), self.n_cand)
        pool = heads.box_roi_pool
        self.pool_names = [k for k in fdict if k in pool.featmap_names]  # as torchvision's _filter_input
        pooled = [fdict[k] for k in self.pool_names]
        scales, mapper = _setup_scales(pooled, [self.imgsz], pool.canonical_scale, pool.canonical_level)
        self.box_roi_pool = StaticRoIPool([tuple(p.shape[-2:]) for p in pooled], scales, mapper,
                                          pool.output_size, pool.sampling_ratio, pooling)
        self.box_head = self.box_roi_pool.adapt_head(heads.box_head, pooled[0].shape[1], self.n_props)
        if sum(self.pre_nms) > NMS_LIMIT or self.n_cand > NMS_LIMIT:
            raise ValueError(f"NMS over {sum(self.pre_nms)} proposals / {self.n_cand} candidates "
                             f"exceeds TensorRT's {NMS_LIMIT}; lower rpn_pre_nms_top_n_test or imgsz")
        if max(self.pre_nms + [self.n_props, self.n_cand, self.max_det]) >= TOPK_LIMIT:
            raise ValueError(f"a TopK K exceeds TensorRT's limit {TOPK_LIMIT}: pre-NMS {self.pre_nms}, "
                             f"proposals {self.n_props}, detections {self.max_det}")

    def _backbone(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Backbone feature maps by name, as ``GeneralizedRCNN.forward`` sees them: a single-map
        backbone's ``Tensor [N, C, h, w]`` becomes ``OrderedDict([("0", features)])``, as
        torchvision wraps it (``torchvision/models/detection/generalized_rcnn.py``)."""
        features = self.frcnn.backbone(x)
        if isinstance(features, Tensor):
            return OrderedDict([("0", features)])
        return features

    def _proposals(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """RPN -> ``(proposals float32 [N, R, 4], valid bool [N, R])``."""
        rpn, n = self.frcnn.rpn, self.batch
        objectness, deltas = rpn.head(feats)
        obj = torch.cat([o.permute(0, 2, 3, 1).reshape(n, -1) for o in objectness], 1)
        dl = torch.cat([d.view(n, -1, 4, d.shape[2], d.shape[3]).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
                        for d in deltas], 1)
        boxes = rpn.box_coder.decode_single(dl.reshape(-1, 4), self.anchors.repeat(n, 1)).view(n, -1, 4)
        idx, lvl, start = [], [], 0
        for level, (size, k) in enumerate(zip(self.level_sizes, self.pre_nms)):
            idx.append(obj[:, start:start + size].topk(k, dim=1)[1] + start)
            lvl += [level] * k
            start += size
        top = torch.cat(idx, 1)
        scores = torch.sigmoid(obj.gather(1, top))
        boxes = clip_to_image(gather_rows(boxes, top), self.imgsz)
        wh = boxes[..., 2:] - boxes[..., :2]
        ok = (wh >= rpn.min_size).all(-1) & (scores >= rpn.score_thresh)
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0))
        offsets = torch.tensor(lvl, dtype=boxes.dtype).view(1, -1).repeat(n, 1) * (max(self.padded) + 1.0)
        _, keep, valid = nms_topk(boxes, scores, offsets, rpn.nms_thresh, self.n_props)
        return gather_rows(boxes, keep) * valid[..., None], valid

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n, heads = self.batch, self.frcnn.roi_heads
        features = self._backbone(self.prep(images))
        props, pvalid = self._proposals(list(features.values()))
        head = self.box_head(self.box_roi_pool([features[k] for k in self.pool_names], props))
        logits, regression = heads.box_predictor(head)
        c = self.num_classes
        probs = F.softmax(logits, -1).view(n, self.n_props, c + 1)[..., 1:]
        boxes = heads.box_coder.decode_single(regression, props.reshape(-1, 4))
        boxes = clip_to_image(boxes.view(n, self.n_props, c + 1, 4)[:, :, 1:], self.imgsz)
        scores = (probs * pvalid[..., None]).reshape(n, -1)
        boxes = boxes.reshape(n, -1, 4)
        labels = torch.arange(c).repeat(self.n_props).view(1, -1).repeat(n, 1)
        if self.n_cand < scores.shape[1]:  # only with > MAX_CANDIDATES / R classes
            scores, top = scores.topk(self.n_cand, dim=1)
            boxes, labels = gather_rows(boxes, top), labels.gather(1, top)
        wh = boxes[..., 2:] - boxes[..., :2]
        ok = (scores > heads.score_thresh) & (wh >= 1e-2).all(-1)
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0))
        return padded_class_nms(boxes, scores, labels, max(self.padded) + 1.0, heads.nms_thresh, self.max_det)
