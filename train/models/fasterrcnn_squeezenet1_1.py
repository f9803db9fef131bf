"""Faster R-CNN (Ren et al. 2015) on torchvision's SqueezeNet 1.1 (Iandola et al. 2016) features: one stride-16
map of 512 channels (1x1 neck to 256), RoIAlign 7x7, a 1024-wide two-layer MLP box head.
Weights (offline): torchvision's ImageNet file from the local torch hub cache, or a path.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1

from det_toolkit.train.models.common import classifier_fasterrcnn


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> nn.Module:
    """Build for ``num_classes + 1`` classes (the whole backbone trains; ``kwargs`` go to
    ``FasterRCNN``, ``representation_size`` sets the box head width)."""
    kwargs.setdefault("representation_size", 1024)
    return classifier_fasterrcnn(squeezenet1_1, [SqueezeNet1_1_Weights.IMAGENET1K_V1.url], 512, num_classes, weights,
                                 frozen_bn, False, **kwargs)
