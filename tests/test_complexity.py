"""Analytic MACs/params (gfverify.complexity) against the spec's numbers, ptflops, torch's
FlopCounterMode (FLOPs = 2·MACs), and masked vs physically removed channels."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ptflops import get_model_complexity_info
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gfverify.complexity import count_complexity, dead_channels
from gfverify.groups import coupled_groups
from gfverify.models import SmallNetSpec, build_model
from gfverify.surgery import prune_filters, random_plan
from tests.strategies import small_nets
from tests.vectors import load

CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def torch_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    p = next(model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros((1, *shape), dtype=p.dtype))
    return counter.get_total_flops()


def ptflops_conv_linear(model: nn.Module, shape: tuple[int, ...]) -> int:
    """ptflops counting only Conv/Linear modules (no functional ops)."""
    others = {type(m) for m in model.modules() if not isinstance(m, CONV_LINEAR)}
    macs, _ = get_model_complexity_info(
        model,
        shape,
        backend="pytorch",
        as_strings=False,
        print_per_layer_stat=False,
        ignore_modules=list(others),
        backend_specific_config={"count_functional": False},
    )
    return int(macs)


def bias_adds(model: nn.Module, shape: tuple[int, ...]) -> int:
    """ptflops counts one MAC per output element for a bias; we do not."""
    total = 0

    def hook(m, args, out):
        nonlocal total
        if m.bias is not None:
            total += out.numel()

    p = next(model.parameters())
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CONV_LINEAR)]
    with torch.no_grad():
        model.eval()(torch.zeros((1, *shape), dtype=p.dtype))
    for h in hooks:
        h.remove()
    return total


# --------------------------------------------------------------------------- reference numbers


@pytest.mark.parametrize(
    "name, macs_m, params",
    [("vgg13", 228.3, 9_413_066), ("mobilenet_v1", 46.4, 3_217_226), ("resnet56", 125.7, 855_770)],
)
def test_spec_reference_numbers(name, macs_m, params):
    model = build_model(name)
    c = count_complexity(model, (3, 32, 32))
    assert round(c.macs / 1e6, 1) == macs_m
    assert c.params == params == sum(p.numel() for p in model.parameters())
    assert torch_flops(model, (3, 32, 32)) == 2 * c.macs
    assert c.macs == sum(c.layer_macs.values())


@pytest.mark.parametrize("name", ["vgg13", "mobilenet_v1", "resnet56"])
def test_ptflops_conv_linear_and_params(name):
    model = build_model(name, width_mult=0.25)
    c = count_complexity(model, (3, 32, 32))
    assert ptflops_conv_linear(model, (3, 32, 32)) == c.macs + bias_adds(model, (3, 32, 32))
    _, params = get_model_complexity_info(
        model, (3, 32, 32), backend="pytorch", as_strings=False, print_per_layer_stat=False
    )
    assert params == c.params


def test_ptflops_total_is_ours_plus_analytic_extras():
    """ptflops' module count = our conv/linear MACs + bias adds + BN (2 per element, affine) +
    ReLU (1 per element) + pooling (1 per input element), each counted here from the shapes.
    With its default ``count_functional=True``, ptflops 0.7.5 also counts the F.relu /
    F.max_pool2d calls *inside* those modules, i.e. ReLU and pooling twice."""
    model, _, _, _ = load("official_tiny_vgg")
    shape = (3, 8, 8)
    bn = relu_pool = 0

    def hook(m, args, out):
        nonlocal bn, relu_pool
        if isinstance(m, nn.BatchNorm2d):
            bn += 2 * args[0].numel()
        elif isinstance(m, nn.ReLU):
            relu_pool += out.numel()
        elif isinstance(m, nn.MaxPool2d | nn.AdaptiveAvgPool2d):
            relu_pool += args[0].numel()

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, *shape, dtype=torch.float64))
    for h in hooks:
        h.remove()
    c = count_complexity(model, shape)
    ours = c.macs + bias_adds(model, shape) + bn + relu_pool
    modules_only, _ = get_model_complexity_info(
        model,
        shape,
        backend="pytorch",
        as_strings=False,
        print_per_layer_stat=False,
        backend_specific_config={"count_functional": False},
    )
    default, _ = get_model_complexity_info(
        model, shape, backend="pytorch", as_strings=False, print_per_layer_stat=False
    )
    assert modules_only == ours
    assert default == ours + relu_pool
    # conv: 64·6·3·9 + 64·8·6·9 + 16·10·8·9, linear: 10·4
    assert c.macs == 64 * 6 * 27 + 64 * 8 * 54 + 16 * 10 * 72 + 40


@settings(max_examples=25, deadline=None)
@given(spec=small_nets(max_width=8), seed=st.integers(0, 999))
def test_physically_pruned_small_nets_match_counters(spec, seed):
    model = spec.build()
    x = torch.zeros(1, *spec.input_shape, dtype=torch.float64)
    prune_filters(model, random_plan(model, x, "full", torch.Generator().manual_seed(seed)), x)
    c = count_complexity(model, spec.input_shape)
    assert torch_flops(model, spec.input_shape) == 2 * c.macs
    assert ptflops_conv_linear(model, spec.input_shape) == c.macs + bias_adds(
        model, spec.input_shape
    )
    assert c.params == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- masked channels


def test_fully_masked_coupled_channel_counts_as_removed():
    """Masking channel c in every member of a coupled group (paper mode) == removing c from the
    group (full mode), for MACs and params; the masked model's FLOP counters still see it."""
    torch.manual_seed(0)
    model = build_model("resnet56", width_mult=0.25).double()
    shape = (3, 32, 32)
    x = torch.zeros(1, *shape, dtype=torch.float64)
    dense = count_complexity(model, shape)
    for group in coupled_groups(model, x):
        full, paper = copy.deepcopy(model), copy.deepcopy(model)
        prune_filters(full, {group[0]: torch.tensor([0, 3])}, x, "full")
        prune_filters(paper, {n: torch.tensor([0, 3]) for n in group}, x, "paper")
        a, b = count_complexity(full, shape), count_complexity(paper, shape)
        assert (a.macs, a.params) == (b.macs, b.params)
        assert a.macs < dense.macs and a.params < dense.params
        assert torch_flops(paper, shape) == 2 * dense.macs  # masks are invisible to counters


def test_partially_masked_group_keeps_consumer_inputs():
    """Only the masked rows (and their BN γ/β) go when another member still writes the channel."""
    torch.manual_seed(0)
    model = build_model("resnet56", width_mult=0.25).double()
    shape = (3, 32, 32)
    dense = count_complexity(model, shape)
    plan = {"layer1.3.conv2": torch.tensor([1, 2]), "layer3.0.shortcut.0": torch.tensor([5])}
    prune_filters(model, plan, mode="paper")
    c = count_complexity(model, shape)
    conv2, short = model.layer1[3].conv2, model.layer3[0].shortcut[0]
    row2 = 32 * 32 * conv2.in_channels * 9  # one output channel of layer1.3.conv2
    row_s = 8 * 8 * short.in_channels * 1
    assert c.macs == dense.macs - 2 * row2 - row_s
    assert c.params == dense.params - 2 * (conv2.in_channels * 9 + 2) - (short.in_channels + 2)
    assert dead_channels(model, torch.zeros(1, *shape, dtype=torch.float64))[1] == {}


def test_tied_depthwise_keeps_masked_channel_alive():
    """A depthwise conv + BN after the add writes β into a masked channel: pw input stays."""
    spec = SmallNetSpec(kind="cnn", widths=(4, 6), residual=True, depthwise=True)
    model = spec.build()
    x = torch.zeros(1, *spec.input_shape, dtype=torch.float64)
    prune_filters(
        model, {n: torch.tensor([2]) for n in ("features.3", "features.6.conv2")}, x, "paper"
    )
    masked, dead = dead_channels(model, x)
    assert masked == {"features.3": {2}, "features.6.conv2": {2}}
    assert dead == {}
    no_dw = SmallNetSpec(kind="cnn", widths=(4, 6), residual=True).build()
    prune_filters(
        no_dw, {n: torch.tensor([2]) for n in ("features.3", "features.6.conv2")}, x, "paper"
    )
    assert dead_channels(no_dw, x)[1] == {"features.6.conv1": {2}, "classifier": {2}}


def test_counting_leaves_the_model_alone():
    spec = SmallNetSpec(kind="cnn", widths=(3, 4), residual=True)
    model = spec.build().train()
    before = copy.deepcopy(model.state_dict())
    c = count_complexity(model, spec.input_shape)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert c.params == sum(p.numel() for p in model.parameters())
    side = spec.image_size
    assert c.layer_macs["features.0"] == side * side * 3 * 3 * 9
    assert math.prod((side, side)) * 4 * 4 * 9 == c.layer_macs["features.6.conv1"]


def _vit(layers: int = 2):
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=16,
        patch_size=4,
        num_layers=layers,
        num_heads=3,
        hidden_dim=12,
        mlp_dim=24,
        num_classes=10,
    )


def test_attention_macs_by_hand():
    """ViT-like: L = 16 patches + 1 class token, E = 12. Per encoder layer: in-projections
    3·L·E², QKᵀ and A·V L²·E each, out-projection L·E², MLP 2·L·E·24; plus the patch conv
    16·12·3·4·4 and the head 12·10."""
    model = _vit(2)
    length, e = 17, 12
    attention = 3 * length * e * e + 2 * length * length * e + length * e * e
    mlp = 2 * length * e * 24
    expected = 16 * 12 * 3 * 16 + 2 * (attention + mlp) + 12 * 10
    c = count_complexity(model, (3, 16, 16))
    assert c.macs == expected
    assert c.layer_macs["encoder.layers.encoder_layer_0.self_attention"] == attention


def test_attention_macs_match_torch_flop_counter():
    """torch.utils.flop_counter (FLOPs = 2·MACs) on the math attention path, which it sees."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _vit(1).train()  # train mode: the python MHA path (dropout is 0 in this ViT)
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 16, 16))
    assert count_complexity(model, (3, 16, 16)).macs == counter.get_total_flops() // 2
