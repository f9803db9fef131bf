"""Faster R-CNN (Ren et al. 2015) on the 1.15 M-parameter :class:`MiniDarknet` backbone: one
stride-32 feature map, 15 anchors per location (5 sizes x 3 aspect ratios), RoIAlign 7x7 and
torchvision's two-layer MLP box head. Trained from scratch; small and fast on a CPU.
"""

from __future__ import annotations

from typing import Any

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from train.models.mini_darknet import MiniDarknet
from train.models.weights import init_from_file, resolve


def build(num_classes: int, weights: str | None = "auto", trainable_layers: int = 3,
          frozen_bn: bool | None = None, representation_size: int = 1024,
          **kwargs: Any) -> FasterRCNN:
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
    for k, v in {"rpn_post_nms_top_n_train": 1000, "rpn_post_nms_top_n_test": 300,
                 "box_batch_size_per_image": 128}.items():
        kwargs.setdefault(k, v)
    model = FasterRCNN(
        backbone, None,
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        **kwargs,
    )
    if weights not in (None, "", "none", "auto"):
        init_from_file(model, resolve(weights, []), backbone)
    return model
