"""Faster R-CNN MobileNetV3-Large-FPN (Howard et al. 2019), torchvision's architecture.

Weights (offline): torchvision's COCO file, else its ImageNet MobileNetV3-Large file, from the local
torch hub cache, or a path; scratch otherwise (with trainable BatchNorm).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights
from torchvision.models.detection import FasterRCNN, FasterRCNN_MobileNet_V3_Large_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from det_toolkit.train.models.weights import init_from_file, resolve

URLS = [FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1.url, MobileNet_V3_Large_Weights.IMAGENET1K_V1.url]


def mobilenet_fpn(backbone_name: str, frozen_bn: bool, trainable_layers: int
                  ) -> tuple[nn.Module, AnchorGenerator]:
    """torchvision's MobileNet-FPN detector backbone (``mobilenet_backbone(..., fpn=True)``, randomly
    initialised) and its anchors: sizes 32-512 px and ratios 0.5/1/2 at each of the 3 levels.

    Args:
        backbone_name: ``"mobilenet_v2"`` or ``"mobilenet_v3_large"``.
        frozen_bn: ``FrozenBatchNorm2d`` (then ``trainable_layers`` of the 6 stages train), else
            trainable BatchNorm and every stage trains.
    """
    backbone = mobilenet_backbone(
        backbone_name=backbone_name, weights=None, fpn=True,
        norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
        trainable_layers=trainable_layers if frozen_bn else 6,
    )
    sizes = ((32, 64, 128, 256, 512),) * 3
    return backbone, AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, urls: list[str] | None = None, **kwargs: Any) -> FasterRCNN:
    """Build for ``num_classes + 1`` classes; ``weights`` as in :func:`det_toolkit.train.models.weights.resolve`.

    ``trainable_layers`` (0-6) applies when pretrained; ``urls`` overrides the default weight files
    looked up in the torch cache (the 320 variant's); ``kwargs`` go to ``FasterRCNN``.
    """
    src = resolve(weights, urls or URLS)
    frozen = bool(src) if frozen_bn is None else frozen_bn
    backbone, anchors = mobilenet_fpn("mobilenet_v3_large", frozen, trainable_layers)
    for k, v in {"rpn_score_thresh": 0.05}.items():
        kwargs.setdefault(k, v)
    model = FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=anchors, **kwargs)
    init_from_file(model, src, backbone.body)
    return model
