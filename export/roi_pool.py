"""Multi-scale RoIAlign for exported graphs: the same pooled features as torchvision, cheaper ONNX.

* :class:`GatherMultiScaleRoIAlign` (dynamic graphs, :func:`with_gather_pooling`): torchvision's
  :class:`~torchvision.ops.MultiScaleRoIAlign` with the levels merged by one row ``Gather`` instead
  of a ``ScatterElements`` per level;
* :func:`pyramid_roi_align` (static graphs, no ``NonZero``): one RoIAlign over the stacked pyramid;
* :func:`separable_roi_align`: RoIAlign of small maps as two matrix products per RoI, optionally
  with a ``TwoMLPHead``'s first layer folded in (:class:`FoldedRoILinear`) or its weights permuted to
  the products' layout (:func:`bins_first_head`); :class:`RoIPoolOptions` says when.

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
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

#: Default of :attr:`RoIPoolOptions.separable_max_cells`: separable pooling while the pooled maps
#: have at most this many cells in all (sum of ``H_l * W_l`` at the export size).
SEPARABLE_MAX_CELLS = 1024


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


def use_separable(sizes: list[tuple[int, int]], sampling_ratio: int,
                  max_cells: int = SEPARABLE_MAX_CELLS) -> bool:
    """Whether :func:`separable_roi_align` pools maps of ``sizes`` (``(H_l, W_l)`` cells): a fixed
    ``sampling_ratio > 0`` (adaptive sampling is not separable into fixed matrices) and at most
    ``max_cells`` cells in all (:attr:`RoIPoolOptions.separable_max_cells`)."""
    return sampling_ratio > 0 and sum(int(h) * int(w) for h, w in sizes) <= max_cells


def _axis_weights(lo: Tensor, hi: Tensor, size: int, bins: int, samples: int, cells_first: bool = False) -> Tensor:
    """RoIAlign's interpolation matrix along one axis (torchvision ``roi_align_kernel.cpp``,
    ``aligned=False``): bin ``b`` averages ``samples`` bilinear samples at
    ``lo + b * bin + (i + 0.5) * bin / samples`` with ``bin = max(hi - lo, 1) / bins``; a sample
    outside ``[-1, size]`` contributes zero, one below 0 reads cell 0, one past ``size - 1`` reads
    cell ``size - 1``.

    Args:
        lo, hi: float32 ``[...]`` RoI start and end on this axis, feature-map cells.
        size: map cells on this axis.
        cells_first: return the transpose, ``[..., size, bins]``, built in that layout (an ONNX
            ``Transpose`` of it costs more than building it).

    Returns:
        float32 ``[..., bins, size]``; row sums are 1 for samples inside the map.
    """
    length = torch.clamp(hi - lo, min=1.0)
    bin_size = (length / bins)[..., None, None]
    b = torch.arange(bins, dtype=lo.dtype, device=lo.device)[:, None]
    i = torch.arange(samples, dtype=lo.dtype, device=lo.device)[None, :] + 0.5
    pos = lo[..., None, None] + b * bin_size + i * bin_size / samples  # [..., bins, samples]
    valid = ((pos >= -1.0) & (pos <= size)).to(lo.dtype)
    pos = torch.clamp(pos, min=0.0)
    low = torch.floor(pos)
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low)
    cells = torch.arange(size, dtype=lo.dtype, device=lo.device)
    if cells_first:  # [..., size, bins, samples]
        cells = cells[:, None, None]
        low, frac, valid = low[..., None, :, :], frac[..., None, :, :], valid[..., None, :, :]
    else:  # [..., bins, samples, size]
        low, frac, valid = low[..., None], frac[..., None], valid[..., None]
    w = ((cells == low).to(lo.dtype) * (1.0 - frac) + (cells == low + 1.0).to(lo.dtype) * frac) * valid
    return w.sum(-1 if cells_first else -2) / samples


def _level_weights(boxes: Tensor, scale: float, h: int, w: int, oh: int, ow: int, sampling_ratio: int,
                   levels: Tensor | None, level: int, n_levels: int,
                   x_cells_first: bool = False) -> tuple[Tensor, Tensor]:
    """RoIAlign matrices of ``boxes`` (float32 ``[N, R, 4]`` ``xyxy`` input pixels) on one level's
    ``h x w`` map: ``A_y [N, R, oh, h]`` (zero for RoIs of other levels) and ``A_x [N, R, ow, w]``
    (``[N, R, w, ow]`` with ``x_cells_first``)."""
    b = boxes * scale
    ay = _axis_weights(b[..., 1], b[..., 3], h, oh, sampling_ratio)
    ax = _axis_weights(b[..., 0], b[..., 2], w, ow, sampling_ratio, x_cells_first)
    if levels is not None and n_levels > 1:
        ay = ay * (levels == level).to(ay.dtype)[..., None, None]
    return ay, ax


def separable_roi_align(features: list[Tensor], boxes: Tensor, levels: Tensor | None, scales: list[float],
                        output_size: tuple[int, int] | list[int], sampling_ratio: int,
                        bins_first: bool = False) -> Tensor:
    """Multi-level RoIAlign as matrix products (He et al., "Mask R-CNN", ICCV 2017; ``aligned=False``).

    For RoI ``r`` of image ``n`` on level ``l``: ``out[r, c] = A_y[r] @ F_l[n, c] @ A_x[r]^T`` with
    :func:`_axis_weights` matrices, computed for all RoIs of an image at once:
    ``[R*oh, H] @ [H, C*W]`` then a batched ``[oh*C, W] @ [W, ow]`` per RoI. Equal to torchvision's
    ``roi_align`` up to float rounding (the same sample points and border rules; only the summation
    order differs). Each RoI is computed against every level with zero weights off its own level,
    so the cost grows with the pooled maps' total area (see :func:`use_separable`).

    Args:
        features: ``L`` float32 maps ``[N, C, H_l, W_l]``.
        boxes: float32 ``[N, R, 4]`` ``xyxy`` input pixels, ``R`` RoIs per image.
        levels: int64 ``[N, R]`` level of each RoI in ``[0, L)``; ``None`` for one level.
        scales: ``L`` spatial scales (``1 / stride``).
        output_size: ``(oh, ow)``.
        sampling_ratio: samples per bin side, ``> 0``.
        bins_first: return the products' own layout ``[N*R, oh, C, ow]`` instead of transposing
            it, for a box head whose first layer expects it (:func:`bins_first_head`).

    Returns:
        float32 ``[N*R, C, oh, ow]`` (``[N*R, oh, C, ow]`` with ``bins_first``), image-major (RoI
        ``r`` of image ``n`` at row ``n*R + r``).

    Raises:
        ValueError: ``sampling_ratio <= 0``.
    """
    if sampling_ratio <= 0:
        raise ValueError("separable RoIAlign needs a fixed sampling_ratio > 0; use roi_align")
    oh, ow = int(output_size[0]), int(output_size[1])
    n, r = boxes.shape[0], boxes.shape[1]
    c = features[0].shape[1]
    out = None
    for level, (f, scale) in enumerate(zip(features, scales)):
        h, w = f.shape[2], f.shape[3]
        ay, ax = _level_weights(boxes, scale, h, w, oh, ow, sampling_ratio, levels, level, len(features))
        rows = torch.matmul(ay.reshape(n, r * oh, h), f.permute(0, 2, 1, 3).reshape(n, h, c * w))
        part = torch.matmul(rows.reshape(n * r, oh * c, w), ax.reshape(n * r, ow, w).transpose(1, 2))
        out = part if out is None else out + part
    out = out.reshape(n * r, oh, c, ow)
    return out if bins_first else out.permute(0, 2, 1, 3)


def bins_first_head(head: TwoMLPHead, channels: int, output_size: tuple[int, int] | list[int]) -> TwoMLPHead:
    """A copy of torchvision's ``TwoMLPHead`` that reads pooled features laid out ``[K, oh, C, ow]``.

    ``head`` flattens ``[K, C, oh, ow]`` and applies ``fc6``; the copy's ``fc6`` weight columns are
    permuted once from ``(c, y, x)`` to ``(y, c, x)`` order, so it gives the same ``[K, rep]``
    output on ``separable_roi_align(..., bins_first=True)`` as ``head`` on the usual layout.
    ``head`` is left unchanged.
    """
    out = copy.deepcopy(head)
    oh, ow = int(output_size[0]), int(output_size[1])
    w = out.fc6.weight.data
    out.fc6.weight.data = w.view(w.shape[0], channels, oh, ow).permute(0, 2, 1, 3).reshape(w.shape[0], -1).contiguous()
    return out


def fold_is_cheaper(sizes: list[tuple[int, int]], channels: int, rep: int, rois: int,
                    output_size: tuple[int, int] | list[int]) -> bool:
    """Whether :class:`FoldedRoILinear` needs fewer multiply-adds per image than separable pooling
    followed by the box head's first ``Linear`` (``channels * oh * ow -> rep``).

    Folded: ``oh*ow*rep*sum(H_l*W_l) * (rois + channels)`` (``G`` per image, then one row of
    ``[R, sum(H*W)*oh*ow] @ [.., rep]`` per RoI). Unfolded: per RoI, the two pooling products
    ``oh*C*W*(H + ow)`` per level plus ``C*oh*ow*rep``. E.g. mini-darknet at 320 px (one 10x10 map,
    C 256, rep 128, 300 RoIs): 349M against 571M; the MobileNetV2 FPN at 416 px (26x26 + 13x13,
    rep 1024): 23.6G against 3.9G.

    Args:
        sizes: ``(H_l, W_l)`` of the pooled maps; channels: ``C``; rep: the layer's outputs;
        rois: RoIs per image (the RPN's test budget); output_size: ``(oh, ow)``.
    """
    oh, ow = int(output_size[0]), int(output_size[1])
    cells = sum(int(h) * int(w) for h, w in sizes)
    folded = oh * ow * rep * cells * (rois + channels)
    pooled = rois * (sum(oh * channels * int(w) * (int(h) + ow) for h, w in sizes) + channels * oh * ow * rep)
    return folded < pooled


class FoldedRoILinear(nn.Module):
    """RoIAlign followed by a ``Linear`` on the flattened ``[C, oh, ow]`` bins, as one linear map.

    With :func:`_axis_weights` matrices ``A_y [oh, H]``, ``A_x [ow, W]`` of a RoI and a level's map
    ``F [C, H, W]``, RoIAlign is ``P[c, p, q] = sum_{h,w} A_y[p, h] F[c, h, w] A_x[q, w]``, so
    ``fc(P)[j] = b[j] + sum_{h,w,p,q} A_y[p,h] A_x[q,w] G[h,w,p,q,j]`` with
    ``G[h,w,p,q,j] = sum_c F[c,h,w] W[j,c,p,q]``: per image and level, ``oh`` products
    ``[H*W, C] @ [C, ow*J]`` (one per bin row ``p``, giving rows ordered ``(p, h, w, q)`` without a
    transpose), then one ``[R, oh*H*W*ow] @ [.., J]`` product with the RoIs' outer products
    ``A_y[p,h] A_x[q,w]`` (a two-axis broadcast ``Mul``). Exact algebra; only the summation order
    differs from pooling and then ``fc``.
    The pooled features are never formed.

    Args:
        fc: the box head's first layer, ``in_features = C * oh * ow`` in ``(c, p, q)`` order
            (``TwoMLPHead.fc6``); copied, not kept.
        channels: ``C``; output_size: ``(oh, ow)``; sampling_ratio: RoIAlign samples per bin
            side, ``> 0``.
    """

    def __init__(self, fc: nn.Linear, channels: int, output_size: tuple[int, int] | list[int],
                 sampling_ratio: int) -> None:
        super().__init__()
        self.oh, self.ow, self.sampling_ratio = int(output_size[0]), int(output_size[1]), int(sampling_ratio)
        j = fc.out_features
        w = fc.weight.detach().view(j, channels, self.oh, self.ow)
        # [oh, C, ow*J]
        self.register_buffer("weight", w.permute(2, 1, 3, 0).reshape(self.oh, channels, -1).contiguous())
        bias = fc.bias.detach().clone() if fc.bias is not None else torch.zeros(j)
        self.register_buffer("bias", bias)

    def forward(self, features: list[Tensor], boxes: Tensor, levels: Tensor | None, scales: list[float]) -> Tensor:
        """``features`` ``L`` x float32 ``[N, C, H_l, W_l]``, ``boxes`` float32 ``[N, R, 4]`` ``xyxy``
        input pixels, ``levels`` int64 ``[N, R]`` (``None`` for one level), ``scales`` ``1 / stride``
        per level -> float32 ``[N*R, J]`` (the layer's output before its activation), image-major."""
        n, r = boxes.shape[0], boxes.shape[1]
        j = self.bias.shape[0]
        out = None
        for level, (f, scale) in enumerate(zip(features, scales)):
            h, w = f.shape[2], f.shape[3]
            ay, ax = _level_weights(boxes, scale, h, w, self.oh, self.ow, self.sampling_ratio,
                                    levels, level, len(features), x_cells_first=True)
            g = torch.matmul(f.flatten(2).transpose(1, 2)[:, None], self.weight)  # [N, oh, H*W, ow*J]
            g = g.reshape(n, -1, j)  # rows (p, h, w, q)
            outer = ay.reshape(n, r, self.oh * h, 1) * ax.reshape(n, r, 1, w * self.ow)
            part = torch.matmul(outer.reshape(n, r, -1), g)  # [N, R, J]; outer [N, R, oh*H, W*ow]
            out = part if out is None else out + part
        return (out + self.bias).reshape(n * r, j)


def folded_head(head: TwoMLPHead) -> TwoMLPHead:
    """A copy of ``head`` without its first layer (``fc6`` is ``Identity``): ``ReLU -> fc7 -> ReLU``
    on the ``[K, rep]`` output of :class:`FoldedRoILinear`. ``head`` is left unchanged."""
    out = copy.deepcopy(head)
    out.fc6 = nn.Identity()
    return out


def separable_head(head: nn.Module, sizes: list[tuple[int, int]], channels: int, rois: int,
                   output_size: tuple[int, int] | list[int], sampling_ratio: int,
                   fold: bool = True) -> tuple[nn.Module, FoldedRoILinear | None, bool]:
    """The box head to put after separable pooling of maps ``sizes``, and how the pool feeds it.

    For a ``TwoMLPHead``: its ``fc6`` folded into the pooling (:func:`folded_head`, a
    :class:`FoldedRoILinear`) where ``fold`` (:attr:`RoIPoolOptions.fold_head`) and
    :func:`fold_is_cheaper` for ``rois`` RoIs per image, else a :func:`bins_first_head`. Any other
    head is returned as it is. ``head`` itself is left unchanged.

    Returns:
        ``(box_head, fold or None, bins_first)``.
    """
    if type(head) is not TwoMLPHead:
        return head, None, False
    if fold and fold_is_cheaper(sizes, channels, head.fc6.out_features, rois, output_size):
        return folded_head(head), FoldedRoILinear(head.fc6, channels, output_size, sampling_ratio), False
    return bins_first_head(head, channels, output_size), None, True


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
