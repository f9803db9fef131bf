"""Faster R-CNN ResNet-50-FPN v2 (Li et al. 2021, "Benchmarking detection transfer learning with
vision transformers"), torchvision's architecture: trainable BatchNorm, 2-conv RPN head, 4-conv+FC box head.

Weights (offline): torchvision's COCO file, else ImageNet ResNet-50, from the local torch hub cache,
or a path; scratch otherwise.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_V2_Weights
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, RPNHead, _default_anchorgen

from det_toolkit.train.models.weights import init_from_file, resolve

URLS = [FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url, ResNet50_Weights.IMAGENET1K_V1.url]


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, **kwargs: Any) -> FasterRCNN:
    """Build for ``num_classes + 1`` classes; ``weights`` as in :func:`det_toolkit.train.models.weights.resolve`."""
    src = resolve(weights, URLS)
    backbone = _resnet_fpn_extractor(resnet50(), trainable_layers if src else 5,
                                     norm_layer=nn.BatchNorm2d)
    anchors = _default_anchorgen()
    rpn_head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024],
                                  norm_layer=nn.BatchNorm2d)
    model = FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=anchors,
                       rpn_head=rpn_head, box_head=box_head, **kwargs)
    init_from_file(model, src, backbone.body)
    return model
