"""Separable RoIAlign: RoIAlign of small feature maps as two matrix products per RoI, no gather or
``RoiAlign`` node in the exported graph (He et al., "Mask R-CNN", ICCV 2017; ``aligned=False``, as
torchvision's poolers).

Equal to torchvision's ``roi_align`` up to float rounding. :func:`use_separable` says when it pays
(the cost grows with the pooled maps' total area); :mod:`det_toolkit.export.roi_fold` folds a box
head's first layer into it; :mod:`det_toolkit.export.roi_pool` uses it in the exported graphs. Boxes
are float32 ``xyxy`` in input pixels. Why and the measurements: ``docs/design/roi_pool.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Default of :attr:`det_toolkit.export.roi_pool.RoIPoolOptions.separable_max_cells`: separable
#: pooling while the pooled maps have at most this many cells in all (sum of ``H_l * W_l`` at the
#: export size).
SEPARABLE_MAX_CELLS = 1024


def use_separable(sizes: list[tuple[int, int]], sampling_ratio: int,
                  max_cells: int = SEPARABLE_MAX_CELLS) -> bool:
    """Whether :func:`separable_roi_align` pools maps of ``sizes`` (``(H_l, W_l)`` cells): a fixed
    ``sampling_ratio > 0`` (adaptive sampling is not separable into fixed matrices) and at most
    ``max_cells`` cells in all (:attr:`det_toolkit.export.roi_pool.RoIPoolOptions.separable_max_cells`)."""
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


def level_weights(boxes: Tensor, scale: float, h: int, w: int, oh: int, ow: int, sampling_ratio: int,
                  levels: Tensor | None, level: int, n_levels: int,
                  x_cells_first: bool = False) -> tuple[Tensor, Tensor]:
    """RoIAlign matrices of ``boxes`` on one pyramid level (:func:`_axis_weights` per axis).

    Args:
        boxes: float32 ``[N, R, 4]`` ``xyxy`` input pixels.
        scale: the level's spatial scale (``1 / stride``); h, w: its map size in cells.
        oh, ow: output bins; sampling_ratio: samples per bin side, ``> 0``.
        levels: int64 ``[N, R]`` level of each RoI (``None``: one level); level: this level's
            index; n_levels: the number of levels.
        x_cells_first: return ``A_x`` transposed (see :func:`_axis_weights`).

    Returns:
        float32 ``(A_y [N, R, oh, h], A_x [N, R, ow, w])``; ``A_y`` is zero for RoIs of other levels;
        ``A_x`` is ``[N, R, w, ow]`` with ``x_cells_first``.
    """
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
            it, for a box head whose first layer expects it
            (:func:`det_toolkit.export.roi_fold.bins_first_head`).

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
        ay, ax = level_weights(boxes, scale, h, w, oh, ow, sampling_ratio, levels, level, len(features))
        rows = torch.matmul(ay.reshape(n, r * oh, h), f.permute(0, 2, 1, 3).reshape(n, h, c * w))
        part = torch.matmul(rows.reshape(n * r, oh * c, w), ax.reshape(n * r, ow, w).transpose(1, 2))
        out = part if out is None else out + part
    out = out.reshape(n * r, oh, c, ow)
    return out if bins_first else out.permute(0, 2, 1, 3)
