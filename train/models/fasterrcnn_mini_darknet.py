"""Faster R-CNN (Ren et al. 2015) on the 1.15 M-parameter :class:`MiniDarknet` backbone: one
stride-32 feature map, 15 anchors per location, RoIAlign 7x7 and a two-layer MLP box head.
Trained from scratch; small and fast on a CPU.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from det_toolkit.train.models.common import single_map_fasterrcnn
from det_toolkit.train.models.mini_darknet import MiniDarknet
from det_toolkit.train.models.weights import init_from_file, resolve


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, representation_size: int = 1024,
          **kwargs: Any) -> nn.Module:
    """Build for ``num_classes + 1`` classes.

    Args:
        weights: ``"auto"``/``None``: random init (no pretrained weights exist); a path: a
            checkpoint of this architecture.
        trainable_layers / frozen_bn: accepted for the uniform builder signature; everything trains
            and BatchNorm stays trainable (from-scratch training needs it).
        representation_size: width of the box head's two FC layers (1024; 128 for the nano head).
        **kwargs: ``FasterRCNN`` keyword arguments.
    """
    backbone = MiniDarknet()
    model = single_map_fasterrcnn(backbone, backbone.out_channels, num_classes,
                                  representation_size, **kwargs)
    if weights not in (None, "", "none", "auto"):
        init_from_file(model, resolve(weights, []), backbone)
    return model
