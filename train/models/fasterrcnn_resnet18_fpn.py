"""Faster R-CNN ResNet-18-FPN (He et al. 2016; Lin et al. 2017): torchvision's ResNet-50-FPN
recipe on a ResNet-18. Weights (offline): torchvision's ImageNet ResNet-18 file from the local
torch hub cache, or a path; scratch otherwise.
"""

from __future__ import annotations

from typing import Any

from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.detection import FasterRCNN

from det_toolkit.train.models.fasterrcnn_resnet50_fpn import build_resnet_fpn

URLS = [ResNet18_Weights.IMAGENET1K_V1.url]


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> FasterRCNN:
    """Build for ``num_classes + 1`` classes; arguments as in :mod:`fasterrcnn_resnet50_fpn`."""
    return build_resnet_fpn(resnet18, URLS, num_classes, weights, trainable_layers, frozen_bn,
                            **kwargs)
