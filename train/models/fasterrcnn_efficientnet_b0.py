"""Faster R-CNN (Ren et al. 2015) on torchvision's EfficientNet-B0 (Tan & Le 2019) features: one stride-32
map of 1280 channels (1x1 neck to 256), RoIAlign 7x7, a 1024-wide two-layer MLP box head.
Weights (offline): torchvision's ImageNet file from the local torch hub cache, or a path.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import EfficientNet_B0_Weights, efficientnet_b0

from det_toolkit.train.models.common import classifier_fasterrcnn


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> nn.Module:
    """Build for ``num_classes + 1`` classes (the whole backbone trains; ``kwargs`` go to
    ``FasterRCNN``, ``representation_size`` sets the box head width)."""
    kwargs.setdefault("representation_size", 1024)
    return classifier_fasterrcnn(efficientnet_b0, [EfficientNet_B0_Weights.IMAGENET1K_V1.url], 1280, num_classes,
                                 weights, frozen_bn, True, **kwargs)
