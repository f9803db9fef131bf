"""Faster R-CNN ResNet-50-FPN (Ren et al. 2015; Lin et al. 2017), torchvision's architecture.

Weights (offline): torchvision's COCO file, else its ImageNet ResNet-50 file, from the local torch
hub cache, or a path; scratch otherwise (with trainable BatchNorm).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from det_toolkit.train.models.weights import init_from_file, resolve

URLS = [FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url, ResNet50_Weights.IMAGENET1K_V1.url]


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> FasterRCNN:
    """Build for ``num_classes + 1`` classes; ``weights`` as in :func:`det_toolkit.train.models.weights.resolve`.

    ``trainable_layers`` (0-5) applies when pretrained; ``kwargs`` go to ``FasterRCNN``.
    """
    return build_resnet_fpn(resnet50, URLS, num_classes, weights, trainable_layers, frozen_bn,
                            **kwargs)


def build_resnet_fpn(arch: Callable[..., nn.Module], urls: list[str], num_classes: int,
                     weights: str | None, trainable_layers: int, frozen_bn: bool | None,
                     **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN on ResNet ``arch`` + FPN (torchvision's recipe), initialised from the first
    of ``urls`` found in the local torch cache, or from a path (see ``resolve``)."""
    src = resolve(weights, urls)
    frozen = bool(src) if frozen_bn is None else frozen_bn
    norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    backbone = _resnet_fpn_extractor(arch(norm_layer=norm), trainable_layers if frozen else 5)
    model = FasterRCNN(backbone, num_classes + 1, **kwargs)
    init_from_file(model, src, backbone.body)
    return model
