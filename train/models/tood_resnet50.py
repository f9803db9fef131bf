"""TOOD with ResNet-50 (no DCN) and FPN P3-P7 (the paper's baseline;
MMDetection ``tood_r50_fpn_1x_coco.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.models import ResNet50_Weights

from det_toolkit.train.models.tood.backbone import resnet_fpn
from det_toolkit.train.models.tood.model import TOOD
from det_toolkit.train.models.weights import init_from_file, resolve


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, deform_impl: str = "deform_conv", **kwargs: Any) -> TOOD:
    """Build the model for ``num_classes`` sigmoid classes (labels 1-based at the interface).

    Args:
        weights: ``"auto"`` (torchvision's ImageNet ResNet-50 file from the local torch hub cache,
            else random init with a warning), ``None`` (random) or a local path (ImageNet classifier
            or a detector state dict of this architecture).
        trainable_layers: ResNet stages (0-5) left trainable when BatchNorm is frozen.
        frozen_bn: ``FrozenBatchNorm2d`` in the backbone (default: when pretrained weights load).
        deform_impl: ``"deform_conv"`` or ``"grid_sample"`` (see :class:`TOOD`).
        **kwargs: :class:`TOOD` options (``score_thresh``, ``initial_epochs``, ...).
    """
    path = resolve(weights, [ResNet50_Weights.IMAGENET1K_V1.url])
    frozen = path is not None if frozen_bn is None else frozen_bn
    backbone = resnet_fpn(50, dcn=False, frozen_bn=frozen, trainable_layers=trainable_layers,
                          deform_impl=deform_impl)
    model = TOOD(backbone, num_classes, deform_impl=deform_impl, **kwargs)
    init_from_file(model, Path(path) if path else None, backbone.body)
    return model
