"""Grouped (depthwise) conv2d whose second derivatives run as whole-layer kernels.

Why this exists: PyTorch's double backward of a grouped convolution
(``_convolution_double_backward``) computes the derivative of the input gradient with respect
to the weight one group at a time — one small convolution per channel for a depthwise layer,
4480 of them per batch in MobileNet-V1. That makes a reverse-over-reverse Hessian-vector
product through MobileNet-V1 cost ~4.4 gradients instead of ~3.6 on a 2-core CPU (much more
under load). The cost sits in one op's derivative formula, below the level HVP code built on
autograd reaches, so this module writes that double backward out of whole-layer native
kernels.

The formulas. For y = conv(x, W) (no bias) with upstream gradient gO = ∂L/∂y, the first
backward is

    gI = ∂L/∂x = convT(gO, W),      gW = ∂L/∂W = corr(x, gO),

with ``aten.convolution_backward`` computing both. Both are bilinear, so given cotangents
(ggI, ggW) of (gI, gW) the second backward is

    ∂/∂gO = conv(ggI, W) + conv(x, ggW)
    ∂/∂x  = convT(gO, ggW)          (input gradient of conv(·, ggW) at gO)
    ∂/∂W  = corr(ggI, gO)           (weight gradient of conv(ggI, ·) at gO)

— three grouped native kernels, no loop over groups. The same function as autograd's, so
results agree to float rounding (tested in float64 with stride, dilation, groups < channels and
bias).

Reverse mode only (``torch.autograd``, ``torch.func.grad``/``vjp``): the Functions define no
``jvp``, so forward-mode transforms must run without :func:`whole_layer_grouped_conv`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

#: (stride, padding, dilation, groups) of one convolution, as ``aten.convolution`` takes them.
ConvConfig = tuple[list[int], list[int], list[int], int]


def _conv_backward(g_out: Tensor, x: Tensor, w: Tensor, cfg: ConvConfig, mask: list[bool]):
    """``aten.convolution_backward``: (∂/∂x, ∂/∂W, ∂/∂b) of conv(x, W) for upstream ``g_out``."""
    stride, padding, dilation, groups = cfg
    return torch.ops.aten.convolution_backward(
        g_out, x, w, None, stride, padding, dilation, False, [0, 0], groups, mask
    )


class _GroupedConvGrads(torch.autograd.Function):
    """(gI, gW) = (convT(gO, W), corr(x, gO)); backward by the module docstring's formulas."""

    @staticmethod
    def forward(g_out: Tensor, x: Tensor, w: Tensor, cfg: ConvConfig) -> tuple[Tensor, Tensor]:
        g_in, g_w, _ = _conv_backward(g_out, x, w, cfg, [True, True, False])
        return g_in, g_w

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        g_out, x, w, cfg = inputs
        ctx.save_for_backward(g_out, x, w)
        ctx.cfg = cfg

    @staticmethod
    def backward(ctx: Any, gg_in: Tensor | None, gg_w: Tensor | None):
        g_out, x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.cfg
        d_gout = d_x = d_w = None
        if gg_in is not None:
            d_gout = F.conv2d(gg_in, w, None, stride, padding, dilation, groups)
            d_w = _conv_backward(g_out, gg_in, w, ctx.cfg, [False, True, False])[1]
        if gg_w is not None:
            t = F.conv2d(x, gg_w, None, stride, padding, dilation, groups)
            d_gout = t if d_gout is None else d_gout + t
            d_x = _conv_backward(g_out, x, gg_w, ctx.cfg, [True, False, False])[0]
        return d_gout, d_x, d_w, None


class _GroupedConv(torch.autograd.Function):
    """y = conv(x, W) (no bias), whose backward is the differentiable :class:`_GroupedConvGrads`."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, cfg: ConvConfig) -> Tensor:
        stride, padding, dilation, groups = cfg
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        x, w, cfg = inputs
        ctx.save_for_backward(x, w)
        ctx.cfg = cfg

    @staticmethod
    def backward(ctx: Any, g_out: Tensor):
        x, w = ctx.saved_tensors
        g_in, g_w = _GroupedConvGrads.apply(g_out, x, w, ctx.cfg)
        return g_in, g_w, None


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = (None, None, None, 1, 0, 1, 1)


class _WholeLayerGroupedConvMode(TorchFunctionMode):
    """Routes ``conv2d`` calls with groups > 1 (numeric padding, 4-D input) to
    :class:`_GroupedConv`; a bias is added after it (y + b, whose derivatives are trivial)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            a = dict(zip(_CONV_ARGS, _CONV_DEFAULTS)) | dict(zip(_CONV_ARGS, args)) | kwargs
            if a["groups"] > 1 and not isinstance(a["padding"], str) and a["input"].dim() == 4:
                cfg = (
                    list(_pair(a["stride"])),
                    list(_pair(a["padding"])),
                    list(_pair(a["dilation"])),
                    int(a["groups"]),
                )
                out = _GroupedConv.apply(a["input"], a["weight"], cfg)
                if a["bias"] is not None:
                    out = out + a["bias"].view(1, -1, 1, 1)
                return out
        return func(*args, **kwargs)


def has_grouped_conv(model: nn.Module) -> bool:
    """Whether ``model`` holds an ``nn.Conv2d`` with groups > 1."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


@contextmanager
def whole_layer_grouped_conv(model: nn.Module | None = None) -> Iterator[None]:
    """While active, grouped ``conv2d`` calls differentiate twice by whole-layer kernels.

    With ``model`` given and free of grouped convs, nothing is installed (no per-op overhead).
    """
    if model is not None and not has_grouped_conv(model):
        yield
        return
    with _WholeLayerGroupedConvMode():
        yield
