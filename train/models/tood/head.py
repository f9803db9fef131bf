"""The TOOD task-aligned head (T-Head), after Feng et al. 2021 (arXiv 2108.07755, Sec. 3.1) and
MMDetection's ``mmdet/models/dense_heads/tood_head.py`` (``TOODHead``, ``TaskDecomposition``,
``anchor_type='anchor_free'``, the setting of the released configs).

Per FPN level (stride ``s``, one anchor per location centred at ``(x*s, y*s)`` as mmdet's
``AnchorGenerator`` with ``center_offset=0``):

* a shared tower of ``stacked_convs`` conv3x3+GN(32)+ReLU layers, all outputs concatenated
  (``X^inter``);
* task decomposition with layer attention: ``w = sigmoid(conv(relu(conv(avgpool(X^inter)))))``
  (one weight per tower layer), then a GN+ReLU 1x1 reduction of the re-weighted concat, once for
  classification and once for localisation;
* classification: ``score = sqrt(sigmoid(cls_logits) * sigmoid(prob))`` with the spatial
  probability map ``prob`` predicted from ``X^inter``;
* localisation: distances ``Scale(exp(reg))`` (in stride units) from the anchor point to the four
  sides, decoded to a box, whose four coordinate maps are then resampled at learned offsets
  (``reg_offset``: one ``(dy, dx)`` per coordinate) - mmdet's ``deform_sampling``, a 1x1
  ``deform_conv2d`` with ``groups = offset_groups = 4`` and unit weight, or the equivalent
  ``grid_sample`` form (:func:`deform_sampling`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from det_toolkit.train.models.tood.backbone import bilinear_sample


def deform_sampling(feat: Tensor, offset: Tensor, impl: str = "deform_conv") -> Tensor:
    """Resample each channel of ``feat`` at its own offset position (bilinear, zeros outside).

    Args:
        feat: float ``[N, C, H, W]`` (here ``C = 4`` box coordinates).
        offset: float ``[N, 2*C, H, W]``, ``(dy, dx)`` per channel, in pixels of ``feat``.
        impl: ``"deform_conv"`` (``torchvision.ops.deform_conv2d``, ONNX ``DeformConv``) or
            ``"grid_sample"`` (``F.grid_sample``); identical results.
    Returns float32 ``[N, C, H, W]`` (computed in float32 whatever the input dtype).
    """
    n, c, h, w = feat.shape
    feat, offset = feat.float(), offset.float()  # box coordinates: keep float32 under autocast
    if impl == "deform_conv":
        weight = torch.ones(c, 1, 1, 1, dtype=feat.dtype, device=feat.device)
        return deform_conv2d(feat, offset, weight)
    ys = torch.arange(h, dtype=feat.dtype, device=feat.device)[:, None]
    xs = torch.arange(w, dtype=feat.dtype, device=feat.device)[None, :]
    off = offset.reshape(n * c, 2, h, w)
    out = bilinear_sample(feat.reshape(n * c, 1, h, w), ys + off[:, 0], xs + off[:, 1])
    return out.reshape(n, c, h, w)


class Scale(nn.Module):
    """A learnable scalar multiplier (mmcv ``Scale``), one per FPN level."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def conv_gn_relu(cin: int, cout: int, k: int, groups: int) -> nn.Sequential:
    """conv (no bias, N(0, 0.01) init) + GroupNorm + ReLU, mmcv ``ConvModule`` with GN."""
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    nn.init.normal_(conv.weight, std=0.01)
    return nn.Sequential(conv, nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class TaskDecomposition(nn.Module):
    """Layer attention + 1x1 reduction: ``[N, S*C, H, W]`` -> ``[N, C, H, W]`` (mmdet
    ``TaskDecomposition``, ``la_down_rate = 8 * S``). The attention scales each of the ``S``
    tower outputs before the shared 1x1 conv, which equals mmdet's per-sample weight-scaled conv."""

    def __init__(self, feat_channels: int, stacked_convs: int, gn_groups: int) -> None:
        super().__init__()
        cin = feat_channels * stacked_convs
        self.stacked_convs = stacked_convs
        hidden = max(cin // (8 * stacked_convs), 1)
        self.layer_attention = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU(inplace=True),
                                             nn.Conv2d(hidden, stacked_convs, 1), nn.Sigmoid())
        for m in self.layer_attention:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)
        self.reduction = conv_gn_relu(cin, feat_channels, 1, gn_groups)

    def forward(self, feat: Tensor, avg_feat: Tensor) -> Tensor:
        """``feat`` float ``[N, S*C, H, W]``, ``avg_feat`` its global average ``[N, S*C, 1, 1]``."""
        n, sc, h, w = feat.shape
        weight = self.layer_attention(avg_feat).reshape(n, self.stacked_convs, 1, 1, 1)
        feat = (feat.reshape(n, self.stacked_convs, -1, h, w) * weight).reshape(n, sc, h, w)
        return self.reduction(feat)


class TOODHead(nn.Module):
    """T-Head over FPN levels.

    Args:
        num_classes: sigmoid classes (no background channel).
        in_channels: FPN channels; feat_channels: tower width (GN needs ``% gn_groups == 0``).
        stacked_convs: tower depth (6 in the paper).
        strides: FPN strides, one per level.
        deform_impl: ``"deform_conv"`` or ``"grid_sample"`` for :func:`deform_sampling`.

    ``forward(feats)`` with ``feats`` a list of float ``[N, in_channels, H_l, W_l]`` returns
    ``(scores, boxes)``: lists per level of float ``[N, num_classes, H_l, W_l]`` (probabilities,
    already ``sqrt(sigmoid(cls) * sigmoid(prob))``) and float ``[N, 4, H_l, W_l]`` (``xyxy``
    boxes in pixels of the batched input).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 6, strides: tuple[int, ...] = (8, 16, 32, 64, 128),
                 gn_groups: int = 32, deform_impl: str = "deform_conv") -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.impl = deform_impl
        self.inter_convs = nn.ModuleList(
            conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels, 3, gn_groups)
            for i in range(stacked_convs))
        self.cls_decomp = TaskDecomposition(feat_channels, stacked_convs, gn_groups)
        self.reg_decomp = TaskDecomposition(feat_channels, stacked_convs, gn_groups)
        cat = feat_channels * stacked_convs
        self.tood_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.tood_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.cls_prob_module = nn.Sequential(nn.Conv2d(cat, feat_channels // 4, 1), nn.ReLU(inplace=True),
                                             nn.Conv2d(feat_channels // 4, 1, 3, padding=1))
        self.reg_offset_module = nn.Sequential(nn.Conv2d(cat, feat_channels // 4, 1), nn.ReLU(inplace=True),
                                               nn.Conv2d(feat_channels // 4, 4 * 2, 3, padding=1))
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        # initialisation as mmdet TOODHead.init_weights (prior prob 0.01 on both cls branches)
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for m, std in ((self.cls_prob_module[0], 0.01), (self.cls_prob_module[2], 0.01),
                       (self.reg_offset_module[0], 0.001), (self.reg_offset_module[2], 0.001),
                       (self.tood_cls, 0.01), (self.tood_reg, 0.01)):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_prob_module[2].bias, prior_bias)
        nn.init.constant_(self.tood_cls.bias, prior_bias)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        scores: list[Tensor] = []
        boxes: list[Tensor] = []
        for x, stride, scale in zip(feats, self.strides, self.scales):
            h, w = x.shape[-2:]
            inter = []
            for conv in self.inter_convs:
                x = conv(x)
                inter.append(x)
            feat = torch.cat(inter, 1)
            avg_feat = feat.mean(dim=(2, 3), keepdim=True)
            cls_feat = self.cls_decomp(feat, avg_feat)
            reg_feat = self.reg_decomp(feat, avg_feat)
            cls_logits = self.tood_cls(cls_feat)
            cls_prob = self.cls_prob_module(feat)
            scores.append(torch.sqrt(torch.sigmoid(cls_logits) * torch.sigmoid(cls_prob)))
            dist = scale(self.tood_reg(reg_feat).exp())  # [N, 4, H, W] (l, t, r, b) in stride units
            ys = torch.arange(h, dtype=x.dtype, device=x.device)[:, None]
            xs = torch.arange(w, dtype=x.dtype, device=x.device)[None, :]
            box = torch.stack((xs - dist[:, 0], ys - dist[:, 1], xs + dist[:, 2], ys + dist[:, 3]), 1)
            box = deform_sampling(box, self.reg_offset_module(feat), self.impl)
            boxes.append(box * stride)
        return scores, boxes
