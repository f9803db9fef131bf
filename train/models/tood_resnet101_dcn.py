"""TOOD with ResNet-101 + DCNv2 in c3-c5 and FPN P3-P7 (the paper's strongest single-scale setting;
MMDetection ``tood_r101-dconv-c3-c5_fpn_ms-2x_coco.py``)."""

from __future__ import annotations

from typing import Any

from torchvision.models import ResNet101_Weights

from det_toolkit.train.models.tood.model import TOOD
from det_toolkit.train.models.tood_resnet50 import build_resnet_tood

URLS = [ResNet101_Weights.IMAGENET1K_V1.url]


def build(num_classes: int, weights: str | None = "auto", **kwargs: Any) -> TOOD:
    """TOOD ResNet-101-DCN for ``num_classes`` classes; arguments as in
    :func:`det_toolkit.train.models.tood_resnet50.build_resnet_tood`."""
    return build_resnet_tood(101, True, URLS, num_classes, weights, **kwargs)
