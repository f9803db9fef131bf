"""Faster R-CNN (Ren et al. 2015) on torchvision's ConvNeXt-T (Liu et al. 2022) feature extractor: one
stride-32 map of 768 channels, no FPN, RoIAlign 7x7 and a 1024-wide two-layer MLP box head.

Weights (offline): torchvision's ImageNet ConvNeXt-T file from the local torch hub cache, or a path;
scratch otherwise.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import ConvNeXt_Tiny_Weights, convnext_tiny

from train.models.common import single_map_fasterrcnn
from train.models.weights import init_from_file, resolve

URLS = [ConvNeXt_Tiny_Weights.IMAGENET1K_V1.url]


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> nn.Module:
    """Build for ``num_classes + 1`` classes; ``weights`` as in :func:`train.models.weights.resolve`.

    The whole backbone trains (``trainable_layers`` is accepted for the uniform signature);
    ``kwargs`` go to ``FasterRCNN`` (``representation_size`` sets the box head width).
    """
    src = resolve(weights, URLS)
    features = convnext_tiny().features
    kwargs.setdefault("representation_size", 1024)
    model = single_map_fasterrcnn(features, 768, num_classes, **kwargs)
    init_from_file(model, src, features)
    return model
