"""Multi-scale RoIAlign for exported graphs: the same pooled features as torchvision, cheaper ONNX.

torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign` merges the per-FPN-level results of a
traced graph with ``_onnx_merge_levels``: one ``ScatterElements`` per level over the whole
``[K, C, 7, 7]`` output, with an ``Expand``-ed int64 index tensor of the same size. In ONNX
Runtime on CPU that is the most expensive node of a Faster R-CNN graph (measured on the MobileNetV2
FPN detector at 256 px: 35 ms of 134 ms per image, plus 14 ms of ``Expand``/``ConstantOfShape``;
15x more at batch 5). Two replacements, equal to torchvision up to float rounding:

* :class:`GatherMultiScaleRoIAlign` (dynamic graphs): per level, RoIAlign of that level's RoIs
  (as torchvision), the level results concatenated in level order, and the original RoI order
  restored with one row ``Gather`` by the inverse permutation (a 1-D ``[K]`` index).
* :func:`pyramid_roi_align` (static graphs, no ``NonZero``): all levels stacked into one
  ``[L*N, C, H0+1, W0+1]`` tensor and one RoIAlign over all RoIs, each pointed at its level by its
  batch index and pre-scaled by its level's scale -- instead of RoIAlign at every level for every
  RoI (``L`` times the work) and a masked sum.

Level assignment is torchvision's ``LevelMapper`` (Lin et al., "Feature Pyramid Networks for
Object Detection", CVPR 2017, eq. 1); RoIAlign is He et al., "Mask R-CNN", ICCV 2017
(``aligned=False``, as torchvision's poolers).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


class GatherMultiScaleRoIAlign(MultiScaleRoIAlign):
    """:class:`~torchvision.ops.MultiScaleRoIAlign` whose levels merge with a row ``Gather``.

    Same constructor arguments, state and output as torchvision's (torchvision 0.29
    ``ops/poolers.py``): ``forward(x: dict[str, Tensor [N, C, H_l, W_l]], boxes: list[Tensor
    float32 [K_i, 4] xyxy input pixels], image_shapes: list[(H, W)])`` -> float32
    ``[sum K_i, C, oh, ow]``, rows in the order of the concatenated ``boxes``.
    """

    @classmethod
    def from_pool(cls, pool: MultiScaleRoIAlign) -> GatherMultiScaleRoIAlign:
        """A copy of ``pool`` (featmap names, output size, sampling ratio, canonical level/scale)."""
        new = cls.__new__(cls)
        new.__dict__.update(copy.copy(pool.__dict__))
        return new

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],  # type: ignore[override]
                image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:  # as torchvision: set on the first call
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        pooled, order = [], []
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            pooled.append(roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio))
            order.append(idx)
        inverse = torch.argsort(torch.cat(order))  # position of RoI i in the level-ordered results
        return torch.cat(pooled)[inverse]


def with_gather_pooling(detector: nn.Module) -> nn.Module:
    """A deep copy of ``detector`` whose RoI heads pool with :class:`GatherMultiScaleRoIAlign`.

    ``detector`` (a :class:`train.models.common.Detector` or a torchvision ``FasterRCNN``) is left
    unchanged, so it stays the PyTorch reference of the export's parity check. Models without a
    ``roi_heads.box_roi_pool`` of torchvision's type are returned as they are.
    """
    frcnn = getattr(detector, "model", detector)
    pool = getattr(getattr(frcnn, "roi_heads", None), "box_roi_pool", None)
    if type(pool) is not MultiScaleRoIAlign:
        return detector
    out = copy.deepcopy(detector)
    getattr(out, "model", out).roi_heads.box_roi_pool = GatherMultiScaleRoIAlign.from_pool(pool)
    return out


def pyramid_roi_align(features: list[Tensor], rois: Tensor, levels: Tensor, scales: list[float],
                      output_size: tuple[int, int] | list[int], sampling_ratio: int) -> Tensor:
    """Multi-level RoIAlign as one RoIAlign over the stacked pyramid (static shapes, no ``NonZero``).

    Level ``l`` of ``N`` images is copied to batch rows ``l*N .. l*N+N-1`` of one
    ``[L*N, C, H0+1, W0+1]`` tensor (``H0, W0``: the largest level), its last row and column
    repeated once and zero beyond. A RoI of image ``b`` at level ``l`` samples batch row
    ``l*N + b`` with its box multiplied by the level's scale (spatial scale 1 inside RoIAlign).
    Because boxes are clipped to the image, the sample points of a RoI at least one feature pixel
    wide lie within ``[0, W_l] x [0, H_l]``; there the repeated row/column reproduces RoIAlign's
    border clamping, so the result equals per-level RoIAlign up to float rounding. The one
    difference: RoIAlign (``aligned=False``) widens a thinner RoI to one pixel, and if that RoI
    touches the right/bottom border some samples fall up to one pixel past it, where per-level
    RoIAlign reads zeros and this reads the border values (such slivers rarely become
    detections; the export's parity check on real images covers it).

    Args:
        features: ``L`` float32 maps ``[N, C, H_l, W_l]``, finest first.
        rois: float32 ``[M, 5]`` rows ``(image index, x1, y1, x2, y2)``, input pixels.
        levels: int64 ``[M]`` level of each RoI in ``[0, L)``.
        scales: ``L`` spatial scales (``1 / stride``).
        output_size: ``(oh, ow)``.
        sampling_ratio: RoIAlign samples per bin side (``<= 0``: adaptive).

    Returns:
        float32 ``[M, C, oh, ow]``.
    """
    if len(features) == 1:
        return roi_align(features[0], rois, list(output_size), scales[0], sampling_ratio)
    n = features[0].shape[0]
    h0, w0 = features[0].shape[2] + 1, features[0].shape[3] + 1
    stacked = []
    for f in features:
        f = torch.cat([f, f[:, :, -1:]], 2)
        f = torch.cat([f, f[:, :, :, -1:]], 3)
        stacked.append(F.pad(f, (0, w0 - f.shape[3], 0, h0 - f.shape[2])))
    scale = torch.tensor(scales, dtype=rois.dtype)[levels][:, None]
    index = rois[:, :1] + (levels[:, None] * n).to(rois.dtype)
    return roi_align(torch.cat(stacked), torch.cat([index, rois[:, 1:] * scale], 1), list(output_size),
                     1.0, sampling_ratio)
