"""Multi-scale RoIAlign for exported graphs: the same pooled features as torchvision, cheaper ONNX.

* :class:`GatherMultiScaleRoIAlign` (dynamic graphs, :func:`with_gather_pooling`): torchvision's
  :class:`~torchvision.ops.MultiScaleRoIAlign` with the levels merged by one row ``Gather`` instead
  of a ``ScatterElements`` per level;
* :func:`pyramid_roi_align` (static graphs, no ``NonZero``): one RoIAlign over the stacked pyramid,
  in :class:`StaticRoIPool`;
* separable RoIAlign of small maps as two matrix products per RoI
  (:mod:`det_toolkit.export.roi_separable`: :func:`use_separable`, :func:`separable_roi_align`),
  optionally with a ``TwoMLPHead``'s first layer folded in (:class:`FoldedRoILinear`, where
  :func:`fold_is_cheaper`, with a :func:`folded_head`) or its weights permuted to the products'
  layout (:func:`bins_first_head`), all in :mod:`det_toolkit.export.roi_fold`;
  :class:`RoIPoolOptions` says when.

All equal torchvision's ``MultiScaleRoIAlign`` up to float rounding (one documented border
difference in :func:`pyramid_roi_align`). Boxes are float32 ``xyxy`` in input pixels throughout.
Level assignment is torchvision's ``LevelMapper`` (Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017, eq. 1); RoIAlign is He et al., "Mask R-CNN", ICCV 2017 (``aligned=False``,
as torchvision's poolers).

Why, the cost model and the measurements: ``docs/design/roi_pool.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from det_toolkit.export.roi_fold import FoldedRoILinear, separable_head
from det_toolkit.export.roi_separable import SEPARABLE_MAX_CELLS, separable_roi_align, use_separable


@dataclass(frozen=True)
class RoIPoolOptions:
    """How an exported graph pools RoIs; the export passes it down explicitly.

    Attributes:
        separable_max_cells: pool with :func:`separable_roi_align` while the pooled maps have at
            most this many cells in all (sum of ``H_l * W_l`` at the export size; each RoI is
            computed against every level, so the cost grows with it); above it, or with ``0``,
            ONNX ``RoiAlign`` (dynamic graphs) / :func:`pyramid_roi_align` (static graphs).
        fold_head: fold a ``TwoMLPHead``'s first layer into separable pooling where
            :func:`fold_is_cheaper` (:class:`FoldedRoILinear`); ``False`` keeps the pooled features
            and the layer apart (a :func:`bins_first_head`).
    """

    separable_max_cells: int = SEPARABLE_MAX_CELLS
    fold_head: bool = True


#: What ``det-export`` does (the defaults of :class:`RoIPoolOptions`).
DEFAULT_POOLING = RoIPoolOptions()


class GatherMultiScaleRoIAlign(MultiScaleRoIAlign):
    """:class:`~torchvision.ops.MultiScaleRoIAlign` whose levels merge with a row ``Gather``.

    Same constructor arguments, state and output as torchvision's (torchvision 0.29
    ``ops/poolers.py``): ``forward(x: dict[str, Tensor [N, C, H_l, W_l]], boxes: list[Tensor
    float32 [K_i, 4] xyxy input pixels], image_shapes: list[(H, W)])`` -> float32
    ``[sum K_i, C, oh, ow]``, rows in the order of the concatenated ``boxes``.
    """

    #: pool with :func:`separable_roi_align`: ``None`` decides from the maps' sizes per call
    #: (:func:`use_separable` with :attr:`max_cells`); :func:`with_gather_pooling` fixes it at the
    #: export size.
    separable: bool | None = None
    #: :attr:`RoIPoolOptions.separable_max_cells` of the per-call decision.
    max_cells: int = SEPARABLE_MAX_CELLS
    #: separable output laid out ``[K, oh, C, ow]`` for a :func:`bins_first_head` box head.
    bins_first: bool = False
    #: set (submodule ``fold``): the box head's first layer folded into the pooling, output
    #: ``[K, rep]`` for a :func:`folded_head` (:class:`FoldedRoILinear`).
    fold: FoldedRoILinear | None

    @classmethod
    def from_pool(cls, pool: MultiScaleRoIAlign,
                  max_cells: int = SEPARABLE_MAX_CELLS) -> GatherMultiScaleRoIAlign:
        """A copy of ``pool`` (featmap names, output size, sampling ratio, canonical level/scale)
        that pools separably up to ``max_cells`` cells (:attr:`RoIPoolOptions.separable_max_cells`)."""
        new = cls.__new__(cls)
        new.__dict__.update(copy.copy(pool.__dict__))
        for key in ("_modules", "_parameters", "_buffers"):  # own registries, not pool's
            setattr(new, key, type(pool.__dict__[key])(pool.__dict__[key]))
        new.register_module("fold", None)
        new.max_cells = int(max_cells)
        return new

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],  # type: ignore[override]
                image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:  # as torchvision: set on the first call
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        separable = self.separable
        if separable is None:
            separable = use_separable([f.shape[-2:] for f in feats], self.sampling_ratio, self.max_cells)
        if separable and len(boxes) == 1:
            levels = self.map_levels(boxes)[None] if len(feats) > 1 else None
            if self.fold is not None:
                return self.fold(feats, boxes[0][None], levels, self.scales)
            return separable_roi_align(feats, boxes[0][None], levels, self.scales, self.output_size,
                                       self.sampling_ratio, self.bins_first)
        if self.bins_first or self.fold is not None:
            raise ValueError("bins_first or folded pooling needs the separable path (one image, small maps)")
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


def with_gather_pooling(detector: nn.Module, example: Tensor | None = None,
                        pooling: RoIPoolOptions = DEFAULT_POOLING) -> nn.Module:
    """A deep copy of ``detector`` whose RoI heads pool with :class:`GatherMultiScaleRoIAlign`.

    ``detector`` (a :class:`det_toolkit.train.models.common.Detector` or a torchvision ``FasterRCNN``) is left
    unchanged, so it stays the PyTorch reference of the export's parity check. Models without a
    ``roi_heads.box_roi_pool`` of torchvision's type are returned as they are.

    Args:
        example: float32 ``[3, H, W]`` image in ``[0, 1]`` at the export size. With it, the copy's
            pooling method is fixed from the feature maps' sizes there (one backbone pass,
            :func:`use_separable`), and a separable pool feeding a ``TwoMLPHead`` either absorbs
            the head's first layer (:class:`FoldedRoILinear`, where :func:`fold_is_cheaper` at the
            RPN's test budget of RoIs) or skips its output transpose (:func:`bins_first_head`).
        pooling: the pooling choices (:class:`RoIPoolOptions`; the defaults are what
            ``det-export`` does).
    """
    frcnn = getattr(detector, "model", detector)
    pool = getattr(getattr(frcnn, "roi_heads", None), "box_roi_pool", None)
    if type(pool) is not MultiScaleRoIAlign:
        return detector
    out = copy.deepcopy(detector)
    heads = getattr(out, "model", out).roi_heads
    heads.box_roi_pool = new = GatherMultiScaleRoIAlign.from_pool(pool, pooling.separable_max_cells)
    if example is not None:
        with torch.no_grad():
            feats = frcnn.backbone(frcnn.transform([example])[0].tensors)
        feats = {"0": feats} if isinstance(feats, Tensor) else feats
        pooled = [f for k, f in feats.items() if k in pool.featmap_names]
        sizes = [tuple(f.shape[-2:]) for f in pooled]
        new.separable = use_separable(sizes, pool.sampling_ratio, pooling.separable_max_cells)
        if new.separable:
            heads.box_head, new.fold, new.bins_first = separable_head(
                heads.box_head, sizes, pooled[0].shape[1], int(frcnn.rpn._post_nms_top_n["testing"]),
                pool.output_size, pool.sampling_ratio, pooling.fold_head)
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


class StaticRoIPool(nn.Module):
    """Multi-scale RoIAlign for a static graph: ``R`` RoIs per image, fixed map sizes.

    Small maps (:func:`use_separable` at the export size) pool with :func:`separable_roi_align`,
    larger ones with :func:`pyramid_roi_align`. The graph's nodes carry this module's scope
    (``/box_roi_pool/``), which the FP16 converter keeps in float32 (:mod:`det_toolkit.export.fp16`).

    Args:
        sizes: ``(H_l, W_l)`` of the pooled maps at the export size.
        scales: ``L`` spatial scales (``1 / stride``).
        mapper: torchvision ``LevelMapper`` (``None`` for one level).
        output_size: ``(oh, ow)``.
        sampling_ratio: RoIAlign samples per bin side.
        pooling: the pooling choices (:class:`RoIPoolOptions`).
    """

    def __init__(self, sizes: list[tuple[int, int]], scales: list[float], mapper: nn.Module | None,
                 output_size: tuple[int, int] | list[int], sampling_ratio: int,
                 pooling: RoIPoolOptions = DEFAULT_POOLING) -> None:
        super().__init__()
        self.scales, self.mapper = list(scales), mapper
        self.output_size, self.sampling_ratio = (int(output_size[0]), int(output_size[1])), int(sampling_ratio)
        self.fold_head = pooling.fold_head
        self.separable = use_separable(sizes, self.sampling_ratio, pooling.separable_max_cells)
        #: separable output laid out ``[N*R, oh, C, ow]`` for a :func:`bins_first_head` box head
        self.bins_first = False
        #: the box head's first layer folded in (output ``[N*R, rep]``), see :meth:`adapt_head`
        self.fold: FoldedRoILinear | None = None
        self.sizes = [(int(h), int(w)) for h, w in sizes]

    def adapt_head(self, head: nn.Module, channels: int, rois: int) -> nn.Module:
        """The box head to use after this pool (:func:`separable_head` when pooling is separable,
        which may move the head's ``fc6`` into this module; otherwise ``head`` itself)."""
        if not self.separable:
            return head
        head, self.fold, self.bins_first = separable_head(head, self.sizes, channels, rois, self.output_size,
                                                          self.sampling_ratio, self.fold_head)
        return head

    def forward(self, features: list[Tensor], props: Tensor) -> Tensor:
        """``features`` ``L`` x float32 ``[N, C, H_l, W_l]``, ``props`` float32 ``[N, R, 4]``
        ``xyxy`` input pixels -> float32 ``[N*R, C, oh, ow]`` (image-major; ``[N*R, oh, C, ow]``
        with :attr:`bins_first`, ``[N*R, rep]`` with :attr:`fold`)."""
        n, r = props.shape[0], props.shape[1]
        flat = props.reshape(-1, 4)
        levels = self.mapper([flat]) if len(features) > 1 else torch.zeros(n * r, dtype=torch.int64)
        if self.fold is not None:
            return self.fold(features, props, levels.view(n, r), self.scales)
        if self.separable:
            return separable_roi_align(features, props, levels.view(n, r), self.scales, self.output_size,
                                       self.sampling_ratio, self.bins_first)
        batch_idx = torch.arange(n, dtype=flat.dtype).repeat_interleave(r)[:, None]
        return pyramid_roi_align(features, torch.cat([batch_idx, flat], 1), levels, self.scales,
                                 self.output_size, self.sampling_ratio)
