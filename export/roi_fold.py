"""A ``TwoMLPHead`` box head after separable RoIAlign (:mod:`det_toolkit.export.roi_separable`):
its first layer ``fc6`` folded into the pooling (:class:`FoldedRoILinear`, where
:func:`fold_is_cheaper`), or its weights permuted to the pooling products' own layout
(:func:`bins_first_head`); :func:`separable_head` picks one. Exact algebra: equal to pooling then
``fc6`` up to float rounding. Why, the cost model and the measurements: ``docs/design/roi_pool.md``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead

from det_toolkit.export.roi_separable import level_weights


def bins_first_head(head: TwoMLPHead, channels: int, output_size: tuple[int, int] | list[int]) -> TwoMLPHead:
    """A copy of torchvision's ``TwoMLPHead`` that reads pooled features laid out ``[K, oh, C, ow]``.

    ``head`` flattens ``[K, C, oh, ow]`` and applies ``fc6``; the copy's ``fc6`` weight columns are
    permuted once from ``(c, y, x)`` to ``(y, c, x)`` order, so it gives the same ``[K, rep]``
    output on ``separable_roi_align(..., bins_first=True)`` (:mod:`det_toolkit.export.roi_separable`)
    as ``head`` on the usual layout.
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
    C 256, rep 128, 300 RoIs): 349M against 571M; a two-level FPN at 416 px (26x26 + 13x13,
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

    With the RoIAlign matrices ``A_y [oh, H]``, ``A_x [ow, W]`` of a RoI (:func:`level_weights`) and
    a level's map ``F [C, H, W]``, RoIAlign is ``P[c, p, q] = sum_{h,w} A_y[p, h] F[c, h, w] A_x[q, w]``, so
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
            ay, ax = level_weights(boxes, scale, h, w, self.oh, self.ow, self.sampling_ratio,
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
    :class:`FoldedRoILinear`) where ``fold``
    (:attr:`det_toolkit.export.roi_pool.RoIPoolOptions.fold_head`) and :func:`fold_is_cheaper` for
    ``rois`` RoIs per image, else a :func:`bins_first_head`. Any other head is returned as it is.
    ``head`` itself is left unchanged.

    Returns:
        ``(box_head, fold or None, bins_first)``.
    """
    if type(head) is not TwoMLPHead:
        return head, None, False
    if fold and fold_is_cheaper(sizes, channels, head.fc6.out_features, rois, output_size):
        return folded_head(head), FoldedRoILinear(head.fc6, channels, output_size, sampling_ratio), False
    return bins_first_head(head, channels, output_size), None, True
