"""Backbones for TOOD: ResNet (optionally with DCNv2 in c3-c5) with FPN P3-P7 (the MobileNetV2 one is
:func:`det_toolkit.train.models.common.mobilenet_v2_fpn`, shared with Faster R-CNN).

DCNv2 (Zhu et al. 2019, "Deformable ConvNets v2") follows mmcv's ``ModulatedDeformConv2dPack`` as
used by MMDetection's ``tood_r101_fpn_dconv_c3-c5_mstrain_2x_coco.py``: a zero-initialised conv
predicts ``2*k*k`` offsets and ``k*k`` mask logits (``o1, o2, m = chunk(3)``, offset ``cat(o1, o2)``,
mask ``sigmoid(m)``; so at initialisation offsets are 0 and the mask is 0.5, as in mmcv).

Two numerically equivalent implementations of the modulated deformable conv are offered
(``impl``): ``"deform_conv"`` (``torchvision.ops.deform_conv2d``, exported as ONNX ``DeformConv``,
opset 19) and ``"grid_sample"`` (bilinear sampling with ``F.grid_sample`` + a matmul, for inference
stacks without ``DeformConv`` such as TensorRT < 10.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet50, resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import DeformConv2d, deform_conv2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

DEFORM_IMPLS = ("deform_conv", "grid_sample")


def bilinear_sample(x: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """Sample ``x`` float ``[N, C, H, W]`` at absolute pixel positions ``py, px`` float ``[N, Ho, Wo]``.

    Bilinear with zeros outside the map, i.e. exactly the sampling of ``deform_conv2d`` (corners
    outside ``[0, H-1] x [0, W-1]`` contribute 0). Uses ``align_corners=False`` normalisation
    (pixel ``p`` -> ``(2p + 1) / size - 1``), which stays defined for 1-pixel maps.
    Returns float ``[N, C, Ho, Wo]``.
    """
    h, w = x.shape[-2:]
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def modulated_deform_conv_grid_sample(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
                                      bias: Tensor | None, stride: int, padding: int,
                                      dilation: int) -> Tensor:
    """DCNv2 (``groups = offset_groups = 1``) via ``grid_sample``; same result as ``deform_conv2d``.

    Args:
        x: float ``[N, Cin, H, W]``.
        offset: float ``[N, 2*k*k, Ho, Wo]``, per kernel tap ``(dy, dx)`` (torchvision layout).
        mask: float ``[N, k*k, Ho, Wo]`` modulation in ``[0, 1]``.
        weight: float ``[Cout, Cin, k, k]``; bias: float ``[Cout]`` or ``None``.
    Returns float ``[N, Cout, Ho, Wo]``.
    """
    n, cin = x.shape[:2]
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    k = kh * kw
    taps = torch.arange(k, device=x.device)
    ky = (taps // kw).to(x.dtype)[:, None, None] * dilation  # [k, 1, 1] kernel tap rows
    kx = (taps % kw).to(x.dtype)[:, None, None] * dilation
    ys = (torch.arange(ho, device=x.device, dtype=x.dtype) * stride - padding)[:, None]
    xs = (torch.arange(wo, device=x.device, dtype=x.dtype) * stride - padding)[None, :]
    off = offset.reshape(n, k, 2, ho, wo)
    py = (ys + ky + off[:, :, 0]).reshape(n, k * ho, wo)  # all taps in one grid_sample
    px = (xs + kx + off[:, :, 1]).reshape(n, k * ho, wo)
    col = bilinear_sample(x, py, px).reshape(n, cin, k, ho, wo) * mask[:, None]
    out = torch.matmul(weight.reshape(cout, cin * k), col.reshape(n, cin * k, ho * wo))
    out = out.reshape(n, cout, ho, wo)
    return out if bias is None else out + bias[None, :, None, None]


class ModulatedDeformConv2d(DeformConv2d):
    """DCNv2 layer: ``DeformConv2d`` (keeps the ``weight`` key of the conv it replaces) plus
    ``conv_offset`` (zero-initialised, ``3*k*k`` outputs: offsets then mask logits).

    Input float ``[N, Cin, H, W]`` -> float ``[N, Cout, Ho, Wo]``. ``impl`` picks the implementation
    (see the module docstring); both give the same numbers.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, bias: bool = False,
                 impl: str = "deform_conv") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)
        k = kernel_size * kernel_size
        self.conv_offset = nn.Conv2d(in_channels, 3 * k, kernel_size, stride, padding, dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)
        self.impl = impl

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        o1, o2, m = torch.chunk(self.conv_offset(x), 3, dim=1)
        offset, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(m)
        if self.impl == "grid_sample":
            return modulated_deform_conv_grid_sample(x, offset, mask, self.weight, self.bias,
                                                     self.stride[0], self.padding[0], self.dilation[0])
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)


def _freeze(body: nn.Module, trainable: list[str]) -> None:
    for name, p in body.named_parameters():
        if not any(name.startswith(t) for t in trainable):
            p.requires_grad_(False)


def resnet_fpn(depth: int, dcn: bool, frozen_bn: bool, trainable_layers: int,
               out_channels: int = 256, deform_impl: str = "deform_conv") -> BackboneWithFPN:
    """torchvision ResNet-50/101 -> FPN P3-P7 (``LastLevelP6P7`` on P5, ``out_channels`` each).

    With ``dcn`` the 3x3 ``conv2`` of every bottleneck in ``layer2-4`` (c3-c5) becomes a
    :class:`ModulatedDeformConv2d` with the same stride, so ImageNet keys stay loadable.
    Only the last ``trainable_layers`` stages (of conv1, layer1-4) train when ``frozen_bn``.
    Output: ``OrderedDict`` of 5 float maps ``[N, out_channels, H/s, W/s]``, s = 8, 16, 32, 64, 128.
    """
    norm: Callable[..., nn.Module] = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    body = (resnet101 if depth == 101 else resnet50)(weights=None, norm_layer=norm)
    if dcn:
        for layer in (body.layer2, body.layer3, body.layer4):
            for block in layer:
                c = block.conv2
                block.conv2 = ModulatedDeformConv2d(c.in_channels, c.out_channels, 3, c.stride[0],
                                                    c.padding[0], c.dilation[0], impl=deform_impl)
    if frozen_bn:
        n = max(0, min(5, trainable_layers))
        _freeze(body, ["layer4", "layer3", "layer2", "layer1", "conv1"][:n] + (["bn1"] if n == 5 else []))
    return BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [512, 1024, 2048],
                           out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))


def set_deform_impl(module: nn.Module, impl: str) -> None:
    """Switch every deformable op under ``module`` to ``impl`` (``"deform_conv"``/``"grid_sample"``)."""
    if impl not in DEFORM_IMPLS:
        raise ValueError(f"deform impl must be one of {DEFORM_IMPLS}, got {impl!r}")
    for m in module.modules():
        if isinstance(getattr(m, "impl", None), str):
            m.impl = impl


__all__ = ["DEFORM_IMPLS", "ModulatedDeformConv2d", "bilinear_sample",
           "modulated_deform_conv_grid_sample", "resnet_fpn", "set_deform_impl"]
