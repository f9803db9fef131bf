"""Anchor fitting (``det-train --anchors auto``): k-means on the training boxes with a 1 - IoU
distance (Redmon & Farhadi 2017, YOLO9000), mapped onto torchvision's ``AnchorGenerator`` layout
(per level: sizes x aspect ratios, so the RPN head keeps its number of anchors per location).

Box shapes are compared centre-aligned: ``IoU((w1, h1), (w2, h2)) = min(w)min(h) / union``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator


def shape_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of centre-aligned shapes: ``wh`` float ``[N, 2]``, ``anchors`` ``[K, 2]`` -> ``[N, K]``."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = wh[:, None].prod(-1) + anchors[None].prod(-1) - inter
    return inter / union


def anchor_shapes(sizes: tuple[tuple[float, ...], ...], ratios: tuple[tuple[float, ...], ...]
                  ) -> np.ndarray:
    """Every ``(w, h)`` an ``AnchorGenerator(sizes, ratios)`` produces (torchvision's formula:
    ``h = size * sqrt(ratio)``, ``w = size / sqrt(ratio)``), ``float [K, 2]``."""
    out = [(s / np.sqrt(r), s * np.sqrt(r)) for ss, rr in zip(sizes, ratios) for s in ss for r in rr]
    return np.asarray(out, dtype=np.float64)


def mean_best_iou(wh: np.ndarray, sizes: tuple[tuple[float, ...], ...],
                  ratios: tuple[tuple[float, ...], ...]) -> float:
    """Mean over boxes of the IoU with their best-matching anchor shape."""
    return float(shape_iou(wh, anchor_shapes(sizes, ratios)).max(1).mean())


def kmeans_iou(wh: np.ndarray, k: int, seed: int = 0, iters: int = 300) -> np.ndarray:
    """k-means with distance 1 - IoU and median updates; returns ``k`` centroids ``[k, 2]``
    sorted by area. Raises ``ValueError`` with fewer boxes than clusters."""
    if len(wh) < k:
        raise ValueError(f"--anchors auto needs at least {k} training boxes, found {len(wh)}")
    rng = np.random.default_rng(seed)
    c = wh[rng.choice(len(wh), k, replace=False)].astype(np.float64)
    assign = np.full(len(wh), -1)
    for _ in range(iters):
        new = shape_iou(wh, c).argmax(1)
        if (new == assign).all():
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                c[j] = np.median(wh[assign == j], axis=0)
    return c[np.argsort(c.prod(1))]


def kmeans_1d(x: np.ndarray, k: int, iters: int = 100) -> np.ndarray:
    """Plain 1-D k-means (quantile initialisation); returns ``k`` sorted centres."""
    c = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.abs(x[:, None] - c[None]).argmin(1)
        new = np.array([x[assign == j].mean() if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return np.sort(c)


@dataclass
class AnchorFit:
    """Result of :func:`fit_anchors`: the new layout and the mean best IoU before and after."""

    sizes: tuple[tuple[float, ...], ...]
    ratios: tuple[tuple[float, ...], ...]
    iou_before: float
    iou_after: float


def fit_anchors(wh: np.ndarray, gen: AnchorGenerator, seed: int = 0) -> AnchorFit:
    """Fit ``gen``'s layout to box shapes ``wh`` (pixels at the training size).

    The number of sizes per level and of ratios per level are kept. Sizes: ``sqrt(w h)`` of the
    1 - IoU k-means centroids (as many as there are distinct sizes in the layout); a layout with one
    size per level (ResNet-FPN) gets them in increasing order, finest level first; a layout that
    repeats the same sizes on every level keeps doing so. Ratios ``h / w``: 1-D k-means of the
    boxes' log aspect ratios, as many as ratios per level, shared by all levels.
    """
    sizes0, ratios0 = gen.sizes, gen.aspect_ratios
    distinct = sorted({s for ss in sizes0 for s in ss})
    cs = kmeans_iou(wh, len(distinct), seed)
    new_sizes = [round(float(np.sqrt(w * h)), 1) for w, h in cs]
    if all(len(ss) == 1 for ss in sizes0):
        sizes = tuple((s,) for s in new_sizes)
    else:
        sizes = tuple(tuple(new_sizes[distinct.index(s)] for s in ss) for ss in sizes0)
    r = tuple(round(float(v), 3) for v in np.exp(kmeans_1d(np.log(wh[:, 1] / wh[:, 0]),
                                                          len(ratios0[0]))))
    ratios = tuple(r for _ in ratios0)
    return AnchorFit(sizes, ratios, mean_best_iou(wh, sizes0, ratios0), mean_best_iou(wh, sizes, ratios))


def set_anchors(model: nn.Module, sizes: list | tuple, ratios: list | tuple) -> None:
    """Replace the RPN anchor generator of a torchvision Faster R-CNN ``model``.

    Raises:
        ValueError: the model has no RPN anchor generator, or the new layout has a different
            number of anchors per location than its RPN head predicts.
    """
    rpn = getattr(model, "rpn", None)
    if rpn is None or not isinstance(getattr(rpn, "anchor_generator", None), AnchorGenerator):
        raise ValueError("anchor fitting applies to Faster R-CNN models (an RPN AnchorGenerator)")
    gen = AnchorGenerator(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in ratios))
    if gen.num_anchors_per_location() != rpn.anchor_generator.num_anchors_per_location():
        raise ValueError(f"anchor layout {gen.num_anchors_per_location()} anchors/location does not "
                         f"match the RPN head's {rpn.anchor_generator.num_anchors_per_location()}")
    rpn.anchor_generator = gen
