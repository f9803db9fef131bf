"""The :class:`Detector` wrapper shared by every model builder.

Builders return a torchvision ``FasterRCNN`` (or another detector with the same calling
convention); :class:`Detector` hides two torchvision details from the rest of the toolkit:

* labels are 0-based class indices everywhere outside the model (torchvision reserves 0 for
  background, so the wrapper adds/subtracts 1);
* resizing is done outside the model (data pipeline / runtime letterbox), so the internal
  ``GeneralizedRCNNTransform`` only normalises and batches (see :class:`NoResizeTransform`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

NECK_CHANNELS = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NoResizeTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` without its resize step (normalise + pad to stride 32 only).

    Images arrive already scaled (training: our augmentation; inference: the runtime letterbox),
    so train-time scale jitter survives and the exported graph carries no ``Resize`` node.
    """

    def __init__(self) -> None:
        super().__init__(min_size=800, max_size=1333, image_mean=list(IMAGENET_MEAN),
                         image_std=list(IMAGENET_STD))

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


class Detector(nn.Module):
    """A detector with a 0-based label convention and no internal resize.

    Args:
        model: a torchvision-style detector built for ``num_classes + 1`` classes (background 0),
            with a ``transform`` attribute.
        name: builder name.
        num_classes: number of object classes (without background).
        build_args: keyword arguments of the builder, stored in checkpoints to rebuild the model.

    ``forward(images, targets=None)``:
        images: list of float32 ``[3, H, W]`` tensors in ``[0, 1]`` (RGB), or a ``[N, 3, H, W]`` tensor.
        targets (training): list of dicts with ``boxes`` float32 ``[M, 4]`` ``xyxy`` absolute pixels
        and ``labels`` int64 ``[M]`` 0-based.
        Returns in training a dict of scalar losses; in eval a list of dicts with ``boxes``
        float32 ``[K, 4]`` ``xyxy`` pixels of the input, ``scores`` float32 ``[K]``, ``labels``
        int64 ``[K]`` 0-based.
    """

    def __init__(self, model: nn.Module, name: str, num_classes: int,
                 build_args: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.model.transform = NoResizeTransform()
        self.name = name
        self.num_classes = num_classes
        self.build_args = dict(build_args)

    def set_epoch(self, epoch: int) -> None:
        """Tell the inner model the 0-based epoch (for epoch-dependent training, e.g. TOOD's switch
        from ATSS to task-aligned assignment); a no-op for models that do not care."""
        if hasattr(self.model, "set_epoch"):
            self.model.set_epoch(epoch)

    def forward(self, images: list[Tensor] | Tensor,
                targets: list[dict[str, Tensor]] | None = None) -> Any:
        if isinstance(images, Tensor):
            images = list(images.unbind(0))
        if targets is not None:
            targets = [{**t, "labels": t["labels"] + 1} for t in targets]
        out = self.model(images, targets)
        if self.training:
            return out
        return [{**o, "labels": o["labels"] - 1} for o in out]


def mobilenet_v2_fpn(frozen_bn: bool, trainable_layers: int, out_channels: int,
                     extra_blocks: Callable[[], nn.Module]) -> nn.Module:
    """torchvision MobileNetV2 ``features`` -> FPN on its stride-8, 16 and 32 outputs (C3-C5).

    Taps ``features[6]`` (32 ch, stride 8), ``features[13]`` (96 ch, stride 16) and ``features[18]``
    (1280 ch, stride 32): the last block at each stride, as Lin et al. 2017 take C3-C5 from ResNet.
    (torchvision's ``mobilenet_backbone(fpn=True)`` taps ``features[14]`` and ``features[18]``, both
    at stride 32.) When ``frozen_bn`` only the last ``trainable_layers`` of the 6 stages (blocks 0-1,
    2-3, 4-6, 7-13, 14-17, 18, as torchvision's ``mobilenet_backbone`` counts them) train.

    Args:
        out_channels: width of every FPN level.
        extra_blocks: makes the FPN's extra levels, called after the backbone is built (the order
            of random initialisation): torchvision's ``LastLevelMaxPool`` (Faster R-CNN: a stride-64
            ``"pool"`` map) or a ``LastLevelP6P7`` (TOOD: P6, P7).

    Returns:
        ``BackboneWithFPN``: ``float32 [N, 3, H, W]`` -> ordered dict ``"0"`` (stride 8), ``"1"`` (16),
        ``"2"`` (32), then the ``extra_blocks`` maps, each ``[N, out_channels, h, w]``.
    """
    from torchvision.models import mobilenet_v2
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.misc import FrozenBatchNorm2d

    features = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d).features
    if frozen_bn:
        stage_starts = [0, 2, 4, 7, 14, 18]
        n = max(0, min(6, trainable_layers))
        first = stage_starts[len(stage_starts) - n] if n else len(features)
        for i, block in enumerate(features):
            block.requires_grad_(i >= first)
    return BackboneWithFPN(features, {"6": "0", "13": "1", "18": "2"}, [32, 96, 1280],
                           out_channels, extra_blocks=extra_blocks())


def single_map_fasterrcnn(features: nn.Module, out_channels: int, num_classes: int,
                          representation_size: int = 1024, **kwargs: Any) -> nn.Module:
    """Faster R-CNN on a backbone with one output map (no FPN), as torchvision's tutorial builds it:
    a 1x1 conv + ReLU neck down to 256 channels for wider backbones (else the 7x7 RoI features of
    a 1280-channel map would need a 64 M-parameter FC layer), 15 anchors per location (sizes
    32-512 x ratios 0.5/1/2), RoIAlign 7x7, a two-layer MLP head of width
    ``representation_size`` and CPU-friendly proposal budgets (overridable by ``kwargs``).

    Args:
        features: ``float32 [N, 3, H, W] -> float32 [N, out_channels, h, w]``.
        num_classes: object classes (the model gets ``num_classes + 1`` with background).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if out_channels > NECK_CHANNELS:  # 1x1 neck: keeps the RoI head at 256*7*7 inputs
        features = nn.Sequential(features, nn.Conv2d(out_channels, NECK_CHANNELS, 1),
                                 nn.ReLU(inplace=True))
        out_channels = NECK_CHANNELS
    features.out_channels = out_channels
    for k, v in {"rpn_post_nms_top_n_train": 1000, "rpn_post_nms_top_n_test": 300,
                 "box_batch_size_per_image": 128}.items():
        kwargs.setdefault(k, v)
    return FasterRCNN(
        features, None,
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(out_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        **kwargs,
    )


def classifier_fasterrcnn(arch: Any, urls: list[str], out_channels: int, num_classes: int,
                          weights: str | None, frozen_bn: bool | None, has_bn: bool,
                          **kwargs: Any) -> nn.Module:
    """:func:`single_map_fasterrcnn` on ``arch(...).features`` of a torchvision classifier,
    initialised offline from the first of ``urls`` in the local torch cache or a path (see
    :func:`det_toolkit.train.models.weights.resolve`); BatchNorm is frozen when pretrained (``has_bn``)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from det_toolkit.train.models.weights import init_from_file, resolve

    src = resolve(weights, urls)
    frozen = bool(src) if frozen_bn is None else frozen_bn
    features = (arch(norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d) if has_bn
                else arch()).features
    model = single_map_fasterrcnn(features, out_channels, num_classes, **kwargs)
    init_from_file(model, src, features)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gflops(model: nn.Module, imgsz: int) -> float:
    """Forward GFLOPs (multiply-adds x2) of one ``imgsz x imgsz`` image in eval mode.

    Counted with ``torch.utils.flop_counter.FlopCounterMode``; ops it does not model
    (NMS, RoIAlign) count as zero.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model([torch.rand(3, imgsz, imgsz)])
    model.train(was_training)
    return counter.get_total_flops() / 1e9
