"""export/roi_pool.py, roi_separable.py, roi_fold.py: the exported graphs' multi-scale RoIAlign equals
torchvision's."""

from __future__ import annotations

import onnx
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format

from det_toolkit.export.roi_fold import FoldedRoILinear, bins_first_head, fold_is_cheaper, folded_head
from det_toolkit.export.roi_pool import GatherMultiScaleRoIAlign, RoIPoolOptions, pyramid_roi_align, with_gather_pooling
from det_toolkit.export.roi_separable import SEPARABLE_MAX_CELLS, separable_roi_align, use_separable

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


@pytest.mark.parametrize("kind", ["fold", "bins_first", "roi_align"])
def test_export_copy_keeps_reference_and_pools_without_roialign(kind: str) -> None:
    """The dynamic export's copy of the MobileNetV2-FPN detector at 256 px (two 8x8 maps pooled):
    its pooling absorbs the box head's fc6 (``fold``, what the export does there), feeds a
    bins-first fc6 (``fold_head=False``) or, with separable pooling off
    (``separable_max_cells=0``), is RoIAlign per level with the head unchanged; each way the
    reference model is untouched and the copy gives its detections. The exported graph has neither
    ScatterElements nor RoiAlign; its pooling nodes carry the ``box_roi_pool`` scope the FP16
    converter keeps in float32."""
    from det_toolkit.benchmarks.artifacts import cached_detector
    from det_toolkit.export.fp16 import POOL_SCOPE
    from det_toolkit.train.checkpoint import load_checkpoint, model_from_checkpoint

    pt, onnx_path = cached_detector(256, 8)
    model = model_from_checkpoint(load_checkpoint(pt))
    image = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))
    options = {"fold": RoIPoolOptions(), "bins_first": RoIPoolOptions(fold_head=False),
               "roi_align": RoIPoolOptions(separable_max_cells=0)}[kind]
    copy = with_gather_pooling(model, image, options)
    assert type(model.model.roi_heads.box_roi_pool) is MultiScaleRoIAlign  # the reference is untouched
    assert type(model.model.roi_heads.box_head.fc6) is torch.nn.Linear
    pool, head = copy.model.roi_heads.box_roi_pool, copy.model.roi_heads.box_head
    assert isinstance(pool, GatherMultiScaleRoIAlign) and pool.separable == (kind != "roi_align")
    if kind == "fold":
        assert isinstance(pool.fold, FoldedRoILinear) and not pool.bins_first
        assert isinstance(head.fc6, torch.nn.Identity) and "fold.weight" in dict(pool.named_buffers())
    elif kind == "bins_first":
        assert pool.fold is None and pool.bins_first
        assert not torch.equal(head.fc6.weight, model.model.roi_heads.box_head.fc6.weight)
    else:
        assert pool.fold is None and not pool.bins_first
        assert torch.equal(head.fc6.weight, model.model.roi_heads.box_head.fc6.weight)
    assert not hasattr(model.model.roi_heads.box_roi_pool, "fold")  # registries not shared
    with torch.no_grad():
        ref, ours = model(image[None])[0], copy(image[None])[0]
    assert len(ref["boxes"]) == 8
    torch.testing.assert_close(ours["boxes"], ref["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(ours["scores"], ref["scores"], rtol=0, atol=1e-4)
    nodes = onnx.load(str(onnx_path)).graph.node
    ops = {n.op_type for n in nodes}
    assert "RoiAlign" not in ops and "ScatterElements" not in ops, sorted(ops)
    assert sum(n.op_type == "MatMul" and POOL_SCOPE in n.name for n in nodes) >= 2
    assert any(POOL_SCOPE + "fold/" in n.name for n in nodes)  # the artifact is the folded one


def _grid_boxes(n: int, r: int, h: int, w: int, stride: int, seed: int) -> torch.Tensor:
    """``[n, r, 4]`` boxes in input pixels of an ``h x w``-cell map: random sizes, plus RoIs thinner
    than one cell at the right/bottom border (where RoIAlign samples past the map and reads zeros),
    the whole image and a degenerate box."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([w * stride, h * stride], dtype=torch.float32)
    xy = torch.rand(n, r, 2, generator=g) * size
    b = torch.cat([xy, torch.minimum(xy + torch.rand(n, r, 2, generator=g) * size * 0.7, size)], -1)
    b[:, 0] = torch.stack([size[0] - 3, size[1] - 40, size[0], size[1]])
    b[:, 1] = torch.stack([size[0] - 50, size[1] - 2, size[0], size[1]])
    b[:, 2] = torch.cat([torch.zeros(2), size])
    b[:, 3] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    return b


@pytest.mark.parametrize(("n", "h", "w"), [(1, 10, 10), (3, 7, 13), (2, 1, 5)])
def test_separable_equals_roi_align(n: int, h: int, w: int) -> None:
    """Every RoI of every image, border slivers included (unlike the pyramid, no deviation there)."""
    stride, r = 32, 40
    f = torch.randn(n, 6, h, w, generator=torch.Generator().manual_seed(1))
    boxes = _grid_boxes(n, r, h, w, stride, seed=n)
    rois = torch.cat([torch.arange(n, dtype=torch.float32).repeat_interleave(r)[:, None], boxes.reshape(-1, 4)], 1)
    ref = roi_align(f, rois, [7, 7], 1 / stride, 2)
    sliver = ref[::r]  # RoIAlign widens it to one cell: samples past the map's edge read zeros
    assert (sliver == 0).any() and (sliver != 0).any()
    ours = separable_roi_align([f], boxes, None, [1 / stride], (7, 7), 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    bins_first = separable_roi_align([f], boxes, None, [1 / stride], (7, 7), 2, bins_first=True)
    assert torch.equal(bins_first.permute(0, 2, 1, 3), ours)


def test_separable_multi_level_and_threshold() -> None:
    """Levels as torchvision's mapper assigns them (RoIs of two images); the size rule."""
    names, strides = ["0", "1"], [16, 32]
    g = torch.Generator().manual_seed(2)
    x = {k: torch.randn(2, 4, 832 // s, 640 // s, generator=g) for k, s in zip(names, strides)}
    boxes = [_grid_boxes(1, 60, 26, 20, 32, seed=s)[0] for s in (3, 4)]
    pool = MultiScaleRoIAlign(names, 7, 2)
    ref = pool(x, boxes, [(832, 640)] * 2)
    levels = pool.map_levels(boxes).view(2, -1)
    assert set(levels.unique().tolist()) == {0, 1}
    ours = separable_roi_align(list(x.values()), torch.stack(boxes), levels, pool.scales, (7, 7), 2)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert use_separable([(26, 20), (13, 10)], 2) and not use_separable([(26, 20), (13, 10)], 0)
    assert not use_separable([(SEPARABLE_MAX_CELLS + 1, 1)], 2)
    assert use_separable([(20, 20)], 2, max_cells=400) and not use_separable([(20, 20)], 2, max_cells=399)
    assert not use_separable([(1, 1)], 2, max_cells=0)  # RoIPoolOptions(separable_max_cells=0): off
    with pytest.raises(ValueError, match="sampling_ratio"):
        separable_roi_align(list(x.values()), torch.stack(boxes), levels, pool.scales, (7, 7), 0)


def test_bins_first_head_equals_head() -> None:
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    torch.manual_seed(0)
    head = TwoMLPHead(6 * 7 * 5, 32)
    pooled = torch.randn(9, 6, 7, 5)
    twin = bins_first_head(head, 6, (7, 5))
    torch.testing.assert_close(twin(pooled.permute(0, 2, 1, 3).contiguous()), head(pooled), rtol=1e-5, atol=1e-5)
    assert head.fc6.weight.data_ptr() != twin.fc6.weight.data_ptr()


@pytest.mark.parametrize(("n", "image", "strides"), [(1, (320, 320), [32]), (2, (224, 416), [32]),
                                                   (2, (832, 640), [16, 32])])
def test_folded_linear_equals_pool_then_fc(n: int, image: tuple[int, int], strides: list[int]) -> None:
    """fc6(RoIAlign) of torchvision's pooling equals the folded map, border slivers, degenerate
    boxes and two FPN levels (as torchvision's mapper assigns them) included; the head without fc6
    finishes it like the whole head."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    torch.manual_seed(0)
    c, r = 6, 40
    names = [str(i) for i in range(len(strides))]
    g = torch.Generator().manual_seed(5)
    x = {k: torch.randn(n, c, image[0] // s, image[1] // s, generator=g) for k, s in zip(names, strides)}
    boxes = _grid_boxes(n, r, image[0] // 32, image[1] // 32, 32, seed=n)
    pool = MultiScaleRoIAlign(names, (7, 5), 2)
    head = TwoMLPHead(c * 7 * 5, 16)
    ref = pool(x, list(boxes), [image] * n)
    levels = pool.map_levels(list(boxes)).view(n, r) if len(strides) > 1 else None
    if levels is not None:
        assert set(levels.unique().tolist()) == {0, 1}
    fold = FoldedRoILinear(head.fc6, c, (7, 5), 2)
    ours = fold(list(x.values()), boxes, levels, pool.scales)
    assert ours.shape == (n * r, 16)
    torch.testing.assert_close(ours, head.fc6(ref.flatten(1)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded_head(head)(ours), head(ref), rtol=1e-5, atol=1e-5)
    assert isinstance(head.fc6, torch.nn.Linear)  # the head itself is left as it was


def test_fold_cost_rule() -> None:
    """The multiply-add rule at the sizes the docstring quotes: mini-darknet at 320 px folds, the
    MobileNetV2 FPN at 416 px does not; fewer RoIs make folding (a per-image cost) less worthwhile."""
    assert fold_is_cheaper([(10, 10)], 256, 128, 300, (7, 7))
    assert not fold_is_cheaper([(26, 26), (13, 13)], 256, 1024, 300, (7, 7))
    assert not fold_is_cheaper([(10, 10)], 256, 128, 20, (7, 7))


@pytest.mark.parametrize("n", [1, 3])
def test_pyramid_batch_index(n: int) -> None:
    """RoIs of image b read image b's maps (distinct constant maps per image)."""
    feats = [torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, H // s, W // s).contiguous()
             for s in STRIDES]
    rois = torch.tensor([[b, 10.0, 10.0, 200.0, 150.0] for b in range(n)])
    for level in range(4):
        out = pyramid_roi_align(feats, rois, torch.full((n,), level), [1 / s for s in STRIDES], (7, 7), 2)
        assert torch.equal(out.amax((1, 2, 3)), torch.arange(n, dtype=torch.float32))


def test_static_pool_follows_the_options() -> None:
    """``StaticRoIPool`` takes its pooling choices as an argument (nothing module-global): the
    defaults pool separably and fold a small head, ``fold_head=False`` keeps fc6 (bins-first) and
    ``separable_max_cells=0`` leaves the head to RoIAlign pooling."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    from det_toolkit.export.roi_pool import StaticRoIPool

    head = TwoMLPHead(256 * 7 * 7, 128)  # mini-darknet's at 320 px, where folding is cheaper
    sizes, scales = [(10, 10)], [1 / 32]
    default = StaticRoIPool(sizes, scales, None, (7, 7), 2)
    assert default.separable and isinstance(default.adapt_head(head, 256, 300).fc6, torch.nn.Identity)
    assert isinstance(default.fold, FoldedRoILinear)
    apart = StaticRoIPool(sizes, scales, None, (7, 7), 2, RoIPoolOptions(fold_head=False))
    assert type(apart.adapt_head(head, 256, 300).fc6) is torch.nn.Linear and apart.bins_first and apart.fold is None
    off = StaticRoIPool(sizes, scales, None, (7, 7), 2, RoIPoolOptions(separable_max_cells=0))
    assert not off.separable and off.adapt_head(head, 256, 300) is head
