"""export/roi_pool.py: the exported graphs' multi-scale RoIAlign equals torchvision's."""

from __future__ import annotations

import onnx
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format

from export.roi_pool import (
    GatherMultiScaleRoIAlign,
    pyramid_roi_align,
    with_gather_pooling,
)

NAMES, STRIDES, H, W = ["0", "1", "2", "3"], [4, 8, 16, 32], 320, 256


def _features(n: int = 2, c: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(n, c, H // s, W // s, generator=g) for k, s in zip(NAMES, STRIDES)}


def _boxes(n: int, seed: int, min_side: float = 1.0) -> torch.Tensor:
    """Up to ``n`` ``xyxy`` boxes clipped to the image, sides from ``min_side`` to the whole image."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W, H])
    wh = min_side + torch.rand(n, 2, generator=g) ** 2 * torch.tensor([W, H])
    b = torch.cat([xy, xy + wh], 1)
    b[:, 0::2] = b[:, 0::2].clamp(0, W)
    b[:, 1::2] = b[:, 1::2].clamp(0, H)
    return b[(b[:, 2] - b[:, 0] >= min_side) & (b[:, 3] - b[:, 1] >= min_side)]


def test_gather_pooling_equals_torchvision_exactly() -> None:
    pool = MultiScaleRoIAlign(NAMES, 7, 2)
    x, boxes = _features(), [_boxes(300, 1), _boxes(200, 2)]
    ref = pool(x, boxes, [(H, W)] * 2)
    ours = GatherMultiScaleRoIAlign.from_pool(pool)(x, boxes, [(H, W)] * 2)
    assert len(torch.unique(pool.map_levels(boxes))) >= 3  # the merge really reorders levels
    assert torch.equal(ours, ref)


def test_pyramid_equals_per_level_roi_align_at_the_border() -> None:
    """Every level, boxes touching the right/bottom border included: the repeated last row/column
    reproduces RoIAlign's border clamping. RoIs are at least one feature pixel wide at every level
    (RoIAlign widens thinner ones to one pixel, which can sample past the border: there torchvision
    reads zeros and the pyramid the repeated border, a documented sub-pixel-RoI difference)."""
    feats = list(_features().values())
    scales = [1.0 / s for s in STRIDES]
    border = torch.tensor([[W - 70.0, H - 90.0, W, H], [0.0, 0.0, W, H], [W - 64.0, 0.0, W, 64.0]])
    boxes = [torch.cat([_boxes(150, 3, min_side=32.0), border]), _boxes(100, 4, min_side=32.0)]
    rois = _convert_to_roi_format(boxes)
    for level, scale in enumerate(scales):
        levels = torch.full((len(rois),), level)
        ours = pyramid_roi_align(feats, rois, levels, scales, (7, 7), 2)
        ref = roi_align(feats[level], rois, [7, 7], scale, 2)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # mixed levels as the mapper assigns them
    pool = MultiScaleRoIAlign(NAMES, 7, 2)
    ref = pool(dict(zip(NAMES, feats)), boxes, [(H, W)] * 2)
    ours = pyramid_roi_align(feats, rois, pool.map_levels(boxes), pool.scales, (7, 7), 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_export_copy_keeps_reference_and_graph_has_no_scatter() -> None:
    from benchmarks.artifacts import cached_detector
    from train.checkpoint import load_checkpoint, model_from_checkpoint

    pt, onnx_path = cached_detector(256, 8)
    model = model_from_checkpoint(load_checkpoint(pt))
    copy = with_gather_pooling(model)
    assert type(model.model.roi_heads.box_roi_pool) is MultiScaleRoIAlign  # the reference is untouched
    assert isinstance(copy.model.roi_heads.box_roi_pool, GatherMultiScaleRoIAlign)
    ops = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    assert "RoiAlign" in ops and "ScatterElements" not in ops, sorted(ops)


@pytest.mark.parametrize("n", [1, 3])
def test_pyramid_batch_index(n: int) -> None:
    """RoIs of image b read image b's maps (distinct constant maps per image)."""
    feats = [torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, H // s, W // s).contiguous()
             for s in STRIDES]
    rois = torch.tensor([[b, 10.0, 10.0, 200.0, 150.0] for b in range(n)])
    for level in range(4):
        out = pyramid_roi_align(feats, rois, torch.full((n,), level), [1 / s for s in STRIDES], (7, 7), 2)
        assert torch.equal(out.amax((1, 2, 3)), torch.arange(n, dtype=torch.float32))
