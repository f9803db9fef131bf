"""Mini-Darknet: a compact Darknet-style backbone (conv + BatchNorm + LeakyReLU(0.1), residual
1x1/3x3 blocks, strided 3x3 downsampling), in the spirit of YOLOv3's Darknet-53 (Redmon & Farhadi
2018) at about 1/50 of its size: 1.15 M parameters, one output map at stride 32.

A component of the ``fasterrcnn_mini_darknet*`` builders, trained from scratch (no pretrained
weights exist), so its BatchNorm layers train.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_bn_act(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    """``Conv2d(k, stride s, no bias) -> BatchNorm2d -> LeakyReLU(0.1)``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


class Residual(nn.Module):
    """Darknet residual block: ``x + conv3x3(conv1x1(x, c/2), c)``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(c, c // 2, 1), conv_bn_act(c // 2, c, 3))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MiniDarknet(nn.Module):
    """``float32 [N, 3, H, W] -> float32 [N, 256, ceil(H/32), ceil(W/32)]``.

    Stages (channels, residual blocks): stem 16 (stride 2), 32 (/4), 64x1 (/8), 128x1 (/16),
    256x2 (/32). ``out_channels`` = 256, as torchvision's detection heads expect.
    """

    out_channels = 256

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128, 256),
                 blocks: tuple[int, ...] = (0, 0, 1, 1, 2)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c, n in zip(widths, blocks):
            layers.append(conv_bn_act(c_in, c, 3, 2))
            layers += [Residual(c) for _ in range(n)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.out_channels = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
