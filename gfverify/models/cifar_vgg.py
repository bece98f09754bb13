"""VGG-13, CIFAR variant, as in the official code (paper spec §3.2).

Ten 3×3 convolutions (pad 1, **no bias**), each followed by ReLU and then BatchNorm
(Conv → ReLU → BN, BN *after* the activation), five 2×2 max-pools, then Linear(512, C).

Module names (used by other code to find prunable groups): ``features`` is an ``nn.Sequential``
with exactly the official indices, so the BNs are ``features.{2,5,9,12,16,19,23,26,30,33}`` and
each BN's conv sits two places before it (``features.{0,3,7,...}``); ``pool`` is an
``AdaptiveAvgPool2d(1)`` (the identity on the 1×1 map that 32×32 inputs leave, an average for
64×64 inputs; it has no parameters); ``classifier`` is the Linear head.

Initialisation is PyTorch's default (conv/linear: Kaiming-uniform with a=√5, bias uniform in
±1/√fan_in; BN: γ=1, β=0), exactly as the official code, so ``torch.manual_seed`` fixes it.

This module also holds the two helpers shared by the three CIFAR builders: :func:`scale_width`
and :func:`check_build_args`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gfverify.errors import ModelError

VGG13_CFG = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def scale_width(channels: int, width_mult: float) -> int:
    """Channel count for a width multiplier: max(1, round_half_up(channels · width_mult))."""
    return max(1, int(math.floor(channels * width_mult + 0.5)))


def check_in_channels(model: str, in_channels: int) -> None:
    """Raise :class:`ModelError` unless ``in_channels`` (image channels: 3 RGB, 1 grey) is a
    positive integer."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ModelError(f"{model}: in_channels must be a positive integer, got {in_channels!r}")


def check_build_args(
    model: str, num_classes: int, width_mult: float, input_size: int, min_input_size: int
) -> None:
    """Raise :class:`ModelError` unless the common builder arguments are usable.

    ``min_input_size`` is 2**(number of stride-2 reductions), the smallest side length that every
    down-sampling stage can still halve.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"{model}: num_classes must be a positive integer, got {num_classes!r}")
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, int | float)
        or not math.isfinite(width_mult)
        or width_mult <= 0
    ):
        raise ModelError(f"{model}: width_mult must be a finite number > 0, got {width_mult!r}")
    if (
        isinstance(input_size, bool)
        or not isinstance(input_size, int)
        or input_size < min_input_size
    ):
        raise ModelError(
            f"{model}: input_size must be an integer >= {min_input_size}, got {input_size!r}"
        )


class CifarVGG(nn.Module):
    """VGG for ``in_channels``-channel images (3 RGB, 1 greyscale): ``features``
    (Conv→ReLU→BN / MaxPool), ``pool``, ``classifier``.

    forward(x) = classifier(flatten(pool(features(x)))).
    """

    def __init__(
        self,
        cfg: tuple[int | str, ...] = VGG13_CFG,
        num_classes: int = 10,
        width_mult: float = 1.0,
        input_size: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        n_pools = sum(1 for v in cfg if v == "M")
        name = "vgg13" if tuple(cfg) == VGG13_CFG else "vgg"
        check_build_args(name, num_classes, width_mult, input_size, 2**n_pools)
        check_in_channels(name, in_channels)
        self.input_size = input_size
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out_channels = scale_width(int(v), width_mult)
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.ReLU(),
                nn.BatchNorm2d(out_channels),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg13(
    num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32, in_channels: int = 3
) -> CifarVGG:
    """VGG-13 (CIFAR): 9,413,066 parameters for C=10, 9,459,236 for C=100 (width_mult=1, 3
    input channels; 1 channel, as Fashion-MNIST: 1,152 fewer)."""
    return CifarVGG(VGG13_CFG, num_classes, width_mult, input_size, in_channels)
