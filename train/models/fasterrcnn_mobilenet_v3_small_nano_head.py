"""Faster R-CNN (Ren et al. 2015) on torchvision's MobileNetV3-Small (Howard et al. 2019) feature extractor: one
stride-32 map of 576 channels, no FPN, RoIAlign 7x7 and a 128-wide two-layer MLP box head.

Weights (offline): torchvision's ImageNet MobileNetV3-Small file from the local torch hub cache, or a path;
scratch otherwise (frozen BatchNorm when pretrained).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small
from torchvision.ops.misc import FrozenBatchNorm2d

from train.models.common import single_map_fasterrcnn
from train.models.weights import init_from_file, resolve

URLS = [MobileNet_V3_Small_Weights.IMAGENET1K_V1.url]


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> nn.Module:
    """Build for ``num_classes + 1`` classes; ``weights`` as in :func:`train.models.weights.resolve`.

    The whole backbone trains (``trainable_layers`` is accepted for the uniform signature);
    ``kwargs`` go to ``FasterRCNN`` (``representation_size`` sets the box head width).
    """
    src = resolve(weights, URLS)
    frozen = bool(src) if frozen_bn is None else frozen_bn
    norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    features = mobilenet_v3_small(norm_layer=norm).features
    kwargs.setdefault("representation_size", 128)
    model = single_map_fasterrcnn(features, 576, num_classes, **kwargs)
    init_from_file(model, src, features)
    return model
