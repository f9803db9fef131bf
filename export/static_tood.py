"""Static-shape, branch-free TOOD graph for TensorRT (``det-export --imgsz H W --batch N``).

:class:`StaticTOOD` computes the detections of
:meth:`det_toolkit.train.models.tood.model.TOOD.postprocess_image` (Feng et al., "TOOD: Task-aligned
One-stage Object Detection", ICCV 2021; MMDetection ``TOODHead._predict_by_feat_single``) with every
shape fixed by ``(N, H, W)``: per FPN level a constant-K ``TopK``, scores ``<= score_thresh``
masked instead of filtered, one class-aware ``NonMaxSuppression`` and ``TopK(max_det)``
(:func:`det_toolkit.export.static_graph.padded_class_nms`), reusing the trained backbone, FPN and
T-Head unchanged.

Outputs (the contract of :mod:`det_toolkit.export.static_graph` and
:mod:`det_toolkit.runtime.backends.outputs`): ``boxes`` float32 ``[N, K, 4]`` (``xyxy``, input
pixels), ``scores`` float32 ``[N, K]``, ``labels`` int64 ``[N, K]`` (0-based), ``num_dets`` int64
``[N]``; rows ``>= num_dets`` are zero, ``K = detections_per_img``. Equal to the PyTorch model's up
to float rounding.

Deformable ops keep the model's ``deform_impl``: ``"deform_conv"`` -> ONNX ``DeformConv`` (opset 19,
:func:`register_deform_conv_symbolic`; TensorRT >= 10.1 parses it), ``"grid_sample"`` ->
``GridSample`` (opset >= 16).

The stages step by step, the TensorRT versions and the measured parity:
``docs/design/static_graphs.md``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.onnx import symbolic_helper

from det_toolkit.export.static_graph import (
    NMS_LIMIT,
    TOPK_LIMIT,
    NormalizePad,
    clip_to_image,
    gather_rows,
    padded_class_nms,
)

#: ONNX opset of ``DeformConv`` (introduced in opset 19).
DEFORM_CONV_OPSET = 19
#: lowest opset with ``GridSample`` (opset 16).
GRID_SAMPLE_OPSET = 16


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _deform_conv2d_symbolic(g: Any, x: Any, weight: Any, offset: Any, mask: Any, bias: Any,
                            stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int,
                            dil_w: int, groups: int, offset_groups: int, use_mask: bool) -> Any:
    """``torchvision::deform_conv2d`` -> ONNX ``DeformConv`` (opset 19), as onnxscript's dynamo
    translation (``torch_lib/ops/vision.py``): inputs ``X, W, offset, B[, mask]``; torchvision's
    offset layout ``[N, 2*offset_groups*kh*kw, Ho, Wo]`` (``(dy, dx)`` per tap) is ONNX's."""
    inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op("DeformConv", *inputs, dilations_i=[dil_h, dil_w], strides_i=[stride_h, stride_w],
                pads_i=[pad_h, pad_w, pad_h, pad_w], group_i=groups, offset_group_i=offset_groups)


def register_deform_conv_symbolic() -> None:
    """Let the legacy exporter (``torch.onnx.export(..., dynamo=False)``) translate
    ``torchvision::deform_conv2d`` to ONNX ``DeformConv`` at opset >= 19 (idempotent; torchvision
    registers only ``roi_align``, ``roi_pool`` and ``nms``)."""
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv2d_symbolic,
                                           DEFORM_CONV_OPSET)


class StaticTOOD(nn.Module):
    """Fixed-size deployment graph of a :class:`det_toolkit.train.models.tood.model.TOOD` (module docstring).

    Args:
        tood: the TOOD model, or a :class:`det_toolkit.train.models.common.Detector` wrapping it (its
            ``transform`` must be the no-resize one; its ``deform_impl`` is kept).
        batch: images per call ``N`` (``>= 1``).
        imgsz: ``(H, W)`` input size in pixels.

    ``forward(images float32 [N, 3, H, W] RGB 0-1)`` -> ``(boxes float32 [N, K, 4] xyxy input
    pixels, scores float32 [N, K], labels int64 [N, K] 0-based, num_dets int64 [N])`` with
    ``K = detections_per_img``.

    Exported with the legacy exporter (:class:`det_toolkit.export.static_graph.BatchedNMS` exports
    through its ``symbolic``) at :attr:`opset` (19 for ``DeformConv``, 16 for ``GridSample``; see
    :func:`det_toolkit.export.onnx_export.exporter_settings`), which records ``deform_impl``.

    Raises:
        TypeError: ``tood`` is not a TOOD (no ``head``/``backbone``/``postprocess_image``).
        ValueError: ``batch < 1``, or a fixed size would break a TensorRT limit (a ``TopK`` K
            ``>= 3840``, more than 5000 boxes into ``NonMaxSuppression``).
    """

    def __init__(self, tood: nn.Module, batch: int, imgsz: tuple[int, int]) -> None:
        super().__init__()
        inner = getattr(tood, "model", tood)
        if not all(hasattr(inner, a) for a in ("backbone", "head", "postprocess_image", "transform")):
            raise TypeError(f"{type(inner).__name__}: StaticTOOD needs a det_toolkit.train.models.tood TOOD model")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.tood = inner.eval()
        self.batch, self.imgsz = int(batch), (int(imgsz[0]), int(imgsz[1]))
        self.prep = NormalizePad(inner.transform, self.imgsz)
        self.padded = self.prep.padded
        self.num_classes = int(inner.num_classes)
        self.score_thresh, self.nms_thresh = float(inner.score_thresh), float(inner.nms_thresh)
        self.max_det = int(inner.detections_per_img)
        #: class offset of the dynamic path (``max_coord = pad_h + pad_w``, offset ``label * (max_coord + 1)``)
        self.class_offset = float(self.padded[0] + self.padded[1] + 1)
        with torch.no_grad():  # level sizes are constants of the fixed input size
            feats = list(inner.backbone(torch.zeros(1, 3, *self.padded)).values())
        #: locations ``h*w`` per level; reshapes use these constants, so that ONNX shape inference
        #: sees static shapes into TopK/NMS even before onnxslim folds the head's shape arithmetic
        self.level_locs = [int(f.shape[-2] * f.shape[-1]) for f in feats]
        self.level_sizes = [hw * self.num_classes for hw in self.level_locs]
        self.pre_nms = [min(int(inner.pre_nms_top_n), n) for n in self.level_sizes]
        self.n_cand = sum(self.pre_nms)
        if max(self.pre_nms + [self.max_det]) >= TOPK_LIMIT:
            raise ValueError(f"a TopK K exceeds TensorRT's limit {TOPK_LIMIT}: pre-NMS {self.pre_nms}, "
                             f"detections {self.max_det}")
        if self.n_cand > NMS_LIMIT:
            raise ValueError(f"NMS over {self.n_cand} candidates ({self.pre_nms} per level) exceeds "
                             f"TensorRT's {NMS_LIMIT}; lower pre_nms_top_n or imgsz")
        self.deform_impl = str(getattr(inner, "deform_impl", "deform_conv"))
        uses_deform_conv = self.deform_impl == "deform_conv"
        if uses_deform_conv:
            register_deform_conv_symbolic()
        #: ONNX opset the graph needs: ``DeformConv`` (19) or ``GridSample`` (16)
        self.opset = DEFORM_CONV_OPSET if uses_deform_conv else GRID_SAMPLE_OPSET

    def _candidates(self, scores: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Per-level top-k -> ``(boxes float32 [N, P, 4], scores float32 [N, P], labels int64 [N, P])``.

        ``scores``/``boxes``: per level float ``[N, C, h, w]`` / ``[N, 4, h, w]`` from the T-Head.
        Scores are flattened location-major (``(y, x, class)``) as in ``postprocess_image``.
        """
        n, c = self.batch, self.num_classes
        out_b, out_s, out_l = [], [], []
        for s, b, k, hw in zip(scores, boxes, self.pre_nms, self.level_locs):
            s = s.permute(0, 2, 3, 1).reshape(n, hw * c)  # [N, h*w*C]
            b = b.permute(0, 2, 3, 1).reshape(n, hw, 4)  # [N, h*w, 4]
            top, idx = s.topk(k, dim=1)
            loc = torch.div(idx, c, rounding_mode="trunc") if c > 1 else idx  # idx >= 0: trunc == floor
            out_s.append(top)
            out_b.append(gather_rows(b, loc))
            out_l.append(idx - loc * c)
        return torch.cat(out_b, 1), torch.cat(out_s, 1), torch.cat(out_l, 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        scores, boxes = self.tood.head(list(self.tood.backbone(self.prep(images)).values()))
        boxes, scores, labels = self._candidates(scores, boxes)
        boxes = clip_to_image(boxes, self.imgsz)
        scores = torch.where(scores > self.score_thresh, scores, torch.full_like(scores, -1.0))
        if self.n_cand < self.max_det:  # tiny inputs: pad so that TopK(max_det) has enough rows
            extra = self.max_det - self.n_cand
            boxes = F.pad(boxes, (0, 0, 0, extra))
            scores = F.pad(scores, (0, extra), value=-1.0)
            labels = F.pad(labels, (0, extra))
        return padded_class_nms(boxes, scores, labels, self.class_offset, self.nms_thresh, self.max_det)


__all__ = ["DEFORM_CONV_OPSET", "GRID_SAMPLE_OPSET", "StaticTOOD", "register_deform_conv_symbolic"]
