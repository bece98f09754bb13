"""ResNet-56, CIFAR variant, as in the official code (paper spec §3.2).

Stem: 3×3 conv 3→16 (no bias) → BN → ReLU. Three stages of 9 BasicBlocks with widths 16/32/64;
stages 2 and 3 open with a stride-2 block. A BasicBlock computes

    relu2( bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x) ),

where ``shortcut`` is the identity, except in the first block of stages 2 and 3, where it is a
1×1 stride-2 conv + BN projection ("option B"). Then global average pooling and Linear(64, C).
57 BatchNorms = stem + 2 per block × 27 + 2 shortcut BNs.

Module names: ``stem.conv``, ``stem.bn``, ``stem.act``; ``layer{1,2,3}.{0..8}.conv1``, ``.bn1``,
``.relu1``, ``.conv2``, ``.bn2``, ``.relu2``; projection shortcuts ``layer{2,3}.0.shortcut.0``
(conv) and ``.shortcut.1`` (BN), identity shortcuts are ``nn.Identity``; ``pool``;
``classifier``. Each BN directly follows its conv in that order.

Initialisation is PyTorch's default (see :mod:`gfverify.models.cifar_vgg`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from gfverify.models.cifar_vgg import check_build_args, check_in_channels, scale_width

RESNET_CIFAR_WIDTHS: tuple[int, int, int] = (16, 32, 64)


class BasicBlock(nn.Module):
    """relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x)); 3×3 convs without bias."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    @property
    def has_projection(self) -> bool:
        """Whether the shortcut is a 1×1 conv + BN projection (not the identity)."""
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6·n + 2: stem, ``layer1..3`` of n BasicBlocks, pool, classifier.

    forward(x) = classifier(flatten(pool(layer3(layer2(layer1(stem(x))))))).
    """

    def __init__(
        self,
        blocks_per_stage: int = 9,
        num_classes: int = 10,
        width_mult: float = 1.0,
        input_size: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        name = f"resnet{6 * blocks_per_stage + 2}"
        check_build_args(name, num_classes, width_mult, input_size, 4)
        check_in_channels(name, in_channels)
        self.input_size = input_size
        widths = [scale_width(w, width_mult) for w in RESNET_CIFAR_WIDTHS]
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False),
                bn=nn.BatchNorm2d(widths[0]),
                act=nn.ReLU(),
            )
        )
        in_channels = widths[0]
        stages: list[nn.Sequential] = []
        for stage, width in enumerate(widths):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def resnet56(
    num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32, in_channels: int = 3
) -> CifarResNet:
    """ResNet-56 (CIFAR): 855,770 parameters for C=10, 861,620 for C=100 (width_mult=1, 3
    input channels)."""
    return CifarResNet(9, num_classes, width_mult, input_size, in_channels)
