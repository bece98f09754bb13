"""MobileNet-V1, CIFAR variant (kuangliu style, as in the official code; paper spec §3.2).

Stem: 3×3 conv 3→32 (stride 1, pad 1, no bias) → BN → ReLU. Then 13 depthwise-separable blocks,
cfg [64, (128,2), 128, (256,2), 256, (512,2), 512×5, (1024,2), 1024]; each block is a depthwise
3×3 conv (groups = in-channels, stride s, no bias) → BN → ReLU, then a pointwise 1×1 conv (no
bias) → BN → ReLU. Then average pooling to 1×1 and Linear(1024, C).

The official code pools with ``avg_pool2d(2)`` on the 2×2 map that 32×32 inputs leave; we use
``AdaptiveAvgPool2d(1)``, which is the same function there and also accepts 64×64 inputs, with
the same parameters.

Module names: ``stem.conv``, ``stem.bn``, ``stem.act``; ``blocks.<i>.dw``, ``blocks.<i>.dw_bn``,
``blocks.<i>.dw_act``, ``blocks.<i>.pw``, ``blocks.<i>.pw_bn``, ``blocks.<i>.pw_act`` (i = 0..12,
the same attribute names as :class:`gfverify.models.small.DepthwiseSeparable`); ``pool``;
``classifier``. 27 BatchNorms.

Initialisation is PyTorch's default (see :mod:`gfverify.models.cifar_vgg`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from gfverify.models.cifar_vgg import check_build_args, check_in_channels, scale_width

MOBILENET_V1_CFG: tuple[int | tuple[int, int], ...] = (
    64,
    (128, 2),
    128,
    (256, 2),
    256,
    (512, 2),
    512,
    512,
    512,
    512,
    512,
    (1024, 2),
    1024,
)


class StridedDepthwiseSeparable(nn.Module):
    """relu(BN(pw(relu(BN(dw(x)))))) with a stride-``stride`` depthwise 3×3 conv ``dw``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            groups=in_channels,
            bias=False,
        )
        self.dw_bn = nn.BatchNorm2d(in_channels)
        self.dw_act = nn.ReLU()
        self.pw = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out_channels)
        self.pw_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pw_act(self.pw_bn(self.pw(x)))


class CifarMobileNetV1(nn.Module):
    """forward(x) = classifier(flatten(pool(blocks(stem(x)))))."""

    def __init__(
        self,
        cfg: tuple[int | tuple[int, int], ...] = MOBILENET_V1_CFG,
        num_classes: int = 10,
        width_mult: float = 1.0,
        input_size: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        n_down = sum(1 for v in cfg if not isinstance(v, int) and v[1] != 1)
        check_build_args("mobilenet_v1", num_classes, width_mult, input_size, 2**n_down)
        check_in_channels("mobilenet_v1", in_channels)
        self.input_size = input_size
        stem_width = scale_width(32, width_mult)
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(
                    in_channels, stem_width, kernel_size=3, stride=1, padding=1, bias=False
                ),
                bn=nn.BatchNorm2d(stem_width),
                act=nn.ReLU(),
            )
        )
        blocks: list[nn.Module] = []
        in_channels = stem_width
        for v in cfg:
            width, stride = (v, 1) if isinstance(v, int) else v
            out_channels = scale_width(width, width_mult)
            blocks.append(StridedDepthwiseSeparable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def mobilenet_v1(
    num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32, in_channels: int = 3
) -> CifarMobileNetV1:
    """MobileNet-V1 (CIFAR): 3,217,226 parameters for C=10, 3,309,476 for C=100 (width 1, 3
    input channels)."""
    return CifarMobileNetV1(MOBILENET_V1_CFG, num_classes, width_mult, input_size, in_channels)
