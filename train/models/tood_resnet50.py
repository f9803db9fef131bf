"""TOOD with ResNet-50 (no DCN) and FPN P3-P7 (the paper's baseline; MMDetection
``tood_r50_fpn_1x_coco.py``). :func:`build_resnet_tood` also builds the other ResNet depths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.models import ResNet50_Weights

from det_toolkit.train.models.tood.backbone import resnet_fpn
from det_toolkit.train.models.tood.model import TOOD
from det_toolkit.train.models.weights import init_from_file, resolve

URLS = [ResNet50_Weights.IMAGENET1K_V1.url]


def build_resnet_tood(depth: int, dcn: bool, urls: list[str], num_classes: int, weights: str | None = "auto",
                      trainable_layers: int = 3, frozen_bn: bool | None = None,
                      deform_impl: str = "deform_conv", **kwargs: Any) -> TOOD:
    """TOOD on a ResNet-``depth`` + FPN P3-P7 for ``num_classes`` sigmoid classes (labels 1-based at
    the interface).

    Args:
        depth: ResNet depth (50, 101; :func:`det_toolkit.train.models.tood.backbone.resnet_fpn`).
        dcn: modulated deformable convolutions (DCNv2) in stages c3-c5.
        urls: torchvision ImageNet weight URLs; ``weights="auto"`` loads the first found in the
            local torch hub cache (no download), else random init with a warning.
        weights: ``"auto"``, ``None`` (random) or a local path (ImageNet classifier or a detector
            state dict of this architecture).
        trainable_layers: ResNet stages (0-5) left trainable when BatchNorm is frozen.
        frozen_bn: ``FrozenBatchNorm2d`` in the backbone (default: when pretrained weights load).
        deform_impl: ``"deform_conv"`` or ``"grid_sample"`` (see :class:`TOOD`).
        **kwargs: :class:`TOOD` options (``score_thresh``, ``initial_epochs``, ...).

    Raises:
        det_toolkit.train.models.weights.WeightsNotFoundError: ``weights`` is a missing path.
    """
    path = resolve(weights, urls)
    frozen = path is not None if frozen_bn is None else frozen_bn
    backbone = resnet_fpn(depth, dcn=dcn, frozen_bn=frozen, trainable_layers=trainable_layers,
                          deform_impl=deform_impl)
    model = TOOD(backbone, num_classes, deform_impl=deform_impl, **kwargs)
    init_from_file(model, Path(path) if path else None, backbone.body)
    return model


def build(num_classes: int, weights: str | None = "auto", **kwargs: Any) -> TOOD:
    """TOOD ResNet-50 for ``num_classes`` classes; arguments as in :func:`build_resnet_tood`."""
    return build_resnet_tood(50, False, URLS, num_classes, weights, **kwargs)
