"""Options that apply to any torchvision Faster R-CNN: CBAM attention on the backbone outputs and
class-weighted classification loss in the box head.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel attention (a shared
    MLP over average- and max-pooled features) then spatial attention (a 7x7 conv over the
    channel-wise average and max). ``float32 [N, C, H, W] -> same shape``.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        ca = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        x = x * torch.sigmoid(ca)
        sa = self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))
        return x * torch.sigmoid(sa)


class CBAMBackbone(nn.Module):
    """Wraps a detection backbone and applies one :class:`CBAM` per output map, keeping the
    feature names (``"0"``, ``"1"``, ``"pool"``, ...) and ``out_channels``."""

    def __init__(self, backbone: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.body = backbone
        self.out_channels = backbone.out_channels
        self.cbam = nn.ModuleDict({n: CBAM(self.out_channels) for n in names})

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        if isinstance(feats, Tensor):
            feats = OrderedDict([("0", feats)])
        return OrderedDict((k, self.cbam[k](v)) for k, v in feats.items())


def add_cbam(model: nn.Module) -> None:
    """Put CBAM on every output map of a torchvision Faster R-CNN's backbone (in place).

    Raises:
        ValueError: the model has no ``backbone`` with ``out_channels``.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "out_channels"):
        raise ValueError("--attention cbam applies to Faster R-CNN models (a backbone with out_channels)")
    with torch.no_grad():
        was_training = backbone.training
        probe = backbone.eval()(torch.zeros(1, 3, 64, 64))
        backbone.train(was_training)
    names = ["0"] if isinstance(probe, Tensor) else list(probe)
    model.backbone = CBAMBackbone(backbone, names)


class WeightedRoIHeads(RoIHeads):
    """``RoIHeads`` whose box classifier loss is a class-weighted cross-entropy.

    ``class_weights`` is float32 ``[num_classes + 1]`` (index 0 = background). Inference and the
    box-regression loss are torchvision's (:func:`fastrcnn_loss`); only the training forward of
    box-only models is re-stated here (the same five steps as ``RoIHeads.forward``).
    """

    class_weights: Tensor

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        _, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        loss_classifier = F.cross_entropy(class_logits, torch.cat(labels),
                                          weight=self.class_weights.to(class_logits))
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


def set_class_weights(model: nn.Module, weights: Tensor) -> None:
    """Make ``model.roi_heads`` use a class-weighted classification loss (in place).

    Args:
        weights: float32 ``[num_classes]`` for the object classes (background gets 1).

    Raises:
        ValueError: not a Faster R-CNN, or the wrong number of weights.
    """
    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, RoIHeads) or heads.has_mask() or heads.has_keypoint():
        raise ValueError("--class-weights applies to box-only Faster R-CNN models")
    n = heads.box_predictor.cls_score.out_features - 1
    if len(weights) != n:
        raise ValueError(f"--class-weights needs {n} weights, got {len(weights)}")
    heads.__class__ = WeightedRoIHeads  # same state, training loss overridden
    heads.class_weights = torch.cat([torch.ones(1), weights.float()])


def inverse_frequency(counts: list[int]) -> Tensor:
    """``auto`` class weights: inverse box frequency, normalised to mean 1 (absent classes get 1)."""
    c = torch.tensor(counts, dtype=torch.float32)
    w = torch.where(c > 0, c.sum() / c.clamp(min=1), torch.zeros_like(c))
    w = torch.where(c > 0, w / w[c > 0].mean(), torch.ones_like(c))
    return w


def backbone_stages(model: nn.Module) -> list[nn.Module]:
    """The stages of a torchvision detector's backbone body, input side first (through the CBAM
    wrapper, the FPN wrapper's ``body`` and the 1x1 neck of single-map backbones)."""
    m = model.backbone
    if isinstance(m, CBAMBackbone):
        m = m.body
    m = getattr(m, "body", m)
    if isinstance(m, nn.Sequential) and len(m) and isinstance(m[0], nn.Sequential) and len(m) == 3:
        m = m[0]  # (features, 1x1 conv, ReLU) neck of single_map_fasterrcnn
    return list(m.children())


def freeze_stages(model: nn.Module, n: int) -> int:
    """Freeze (``requires_grad=False``) the first ``n`` backbone stages; returns the number of
    parameters frozen. Raises ``ValueError`` if ``n`` exceeds the number of stages."""
    stages = backbone_stages(model)
    if n > len(stages):
        raise ValueError(f"--freeze {n}: the backbone has only {len(stages)} stages")
    frozen = 0
    for stage in stages[:n]:
        for p in stage.parameters():
            frozen += p.numel() if p.requires_grad else 0
            p.requires_grad_(False)
    return frozen
