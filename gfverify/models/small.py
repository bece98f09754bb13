"""Small networks for claims and tests: MLPs, CNNs, residual and depthwise-separable blocks.

They are deliberately tiny so that exact gradient-flow trajectories (scipy ``solve_ivp`` on
the flattened parameter vector) are cheap. Activations default to smooth ones (``tanh``,
``softplus``, ``gelu``, ``silu``): the identities E2–E5 need a twice-differentiable loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

SMOOTH_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}
ACTIVATIONS: dict[str, type[nn.Module]] = {**SMOOTH_ACTIVATIONS, "relu": nn.ReLU}


def _act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}"
        ) from None


def _randomize_bn(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics.

    Fresh BatchNorm layers are the identity in eval mode (mean 0, var 1, γ=1, β=0), which would
    hide mistakes in how BN enters the measures; tests want them generic.
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.2 * torch.randn(n, generator=generator))


class MLP(nn.Module):
    """Linear → [BN] → act, ``depth`` times, then a linear head."""

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        num_classes: int,
        activation: str = "tanh",
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for w in widths:
            layers.append(nn.Linear(prev, w))
            if batchnorm:
                layers.append(nn.BatchNorm1d(w))
            layers.append(_act(activation))
            prev = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResidualBlock(nn.Module):
    """conv→BN→act→conv→BN, plus an identity shortcut, then act."""

    def __init__(self, channels: int, activation: str = "tanh") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = _act(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = _act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + x)


class DepthwiseSeparable(nn.Module):
    """depthwise 3×3 conv→BN→act, then pointwise 1×1 conv→BN→act (MobileNet-V1 block)."""

    def __init__(self, in_channels: int, out_channels: int, activation: str = "tanh") -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.dw_bn = nn.BatchNorm2d(in_channels)
        self.dw_act = _act(activation)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out_channels)
        self.pw_act = _act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pw_act(self.pw_bn(self.pw(x)))


class SmallCNN(nn.Module):
    """conv→[BN]→act stages (stride 1), optional residual and depthwise blocks, pool, linear."""

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        num_classes: int,
        activation: str = "tanh",
        batchnorm: bool = True,
        residual: bool = False,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for w in widths:
            layers.append(nn.Conv2d(prev, w, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(w))
            layers.append(_act(activation))
            prev = w
        if residual:
            layers.append(ResidualBlock(prev, activation))
        if depthwise:
            layers.append(DepthwiseSeparable(prev, prev, activation))
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class SmallNetSpec:
    """A reproducible description of a small net (what hypothesis draws)."""

    kind: str = "cnn"  # "mlp" | "cnn"
    widths: tuple[int, ...] = (4, 6)
    activation: str = "tanh"
    batchnorm: bool = True
    residual: bool = False
    depthwise: bool = False
    in_channels: int = 3
    image_size: int = 6
    num_classes: int = 3
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, self.image_size, self.image_size)

    def build(self, dtype: torch.dtype = torch.float64) -> nn.Module:
        """Instantiate the net with seeded weights (and randomised BN statistics), in eval mode."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            if self.kind == "mlp":
                in_features = self.in_channels * self.image_size**2
                model: nn.Module = MLP(
                    in_features, self.widths, self.num_classes, self.activation, self.batchnorm
                )
            elif self.kind == "cnn":
                model = SmallCNN(
                    self.in_channels,
                    self.widths,
                    self.num_classes,
                    self.activation,
                    self.batchnorm,
                    self.residual,
                    self.depthwise,
                )
            else:
                raise ValueError(f"unknown small net kind {self.kind!r}; use 'mlp' or 'cnn'")
        _randomize_bn(model, gen)
        return model.to(dtype).eval()

    def data(
        self, n: int, batch_size: int, dtype: torch.dtype = torch.float64, seed: int | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Random Gaussian inputs with labels cycling over every class, split into batches."""
        gen = torch.Generator().manual_seed(self.seed + 1 if seed is None else seed)
        x = torch.randn((n, *self.input_shape), generator=gen, dtype=dtype)
        y = torch.arange(n) % self.num_classes
        y = y[torch.randperm(n, generator=gen)]
        return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]
