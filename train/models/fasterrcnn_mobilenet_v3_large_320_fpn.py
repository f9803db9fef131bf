"""Faster R-CNN MobileNetV3-Large-FPN at 320 px (Howard et al. 2019), torchvision's low-resolution
variant: the same network as :mod:`fasterrcnn_mobilenet_v3_large_fpn` with few proposals
(150 before and after NMS at test time) and its own COCO weights file.
"""

from __future__ import annotations

from typing import Any

from torchvision.models import MobileNet_V3_Large_Weights
from torchvision.models.detection import FasterRCNN, FasterRCNN_MobileNet_V3_Large_320_FPN_Weights

from det_toolkit.train.models import fasterrcnn_mobilenet_v3_large_fpn as large

URLS = [FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.url,
        MobileNet_V3_Large_Weights.IMAGENET1K_V1.url]


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> FasterRCNN:
    """Build for ``num_classes + 1`` classes; arguments as in the full-resolution builder."""
    kwargs.setdefault("rpn_pre_nms_top_n_test", 150)
    kwargs.setdefault("rpn_post_nms_top_n_test", 150)
    return large.build(num_classes, weights, trainable_layers, frozen_bn, urls=URLS, **kwargs)
