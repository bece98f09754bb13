"""Whole-layer double backward of grouped convs: the same Hv as autograd's, in float64.

Both paths compute the same derivatives exactly, so they may differ only by float64 rounding.
Bound (Higham's γ_n ≈ n·ε for a sum of n terms): the longest sum in the chain is the linear
layer's N_MAX = 8·9·9 = 648 inputs; forward, backward and double backward chain at most
SUMS = 16 such sums (per conv: forward, two backward kernels, four double-backward kernels;
plus the linear layer); two computations are compared, so their norm-wise relative difference
is ≤ 2·SUMS·N_MAX·ε ≈ 4.6e-12, assuming no heavy cancellation across the whole vector. A
dropped term or a wrong kernel argument gives an O(1) relative error (tested).
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gfverify import flow, grouped_conv
from gfverify.flow import LossSpec
from gfverify.grouped_conv import has_grouped_conv, whole_layer_grouped_conv

EPS64 = torch.finfo(torch.float64).eps
N_MAX, SUMS = 8 * 9 * 9, 16
BOUND = 2 * SUMS * N_MAX * EPS64


def _net(groups: int, stride: int, dilation: int, bias: bool, seed: int) -> nn.Module:
    """conv(4→8, groups) → tanh → depthwise conv(8→8, stride, dilation) → tanh → linear."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=groups, bias=bias),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, stride=stride, padding=dilation, dilation=dilation, groups=8, bias=bias),
        nn.Tanh(),
        nn.Flatten(),
        nn.LazyLinear(5),
    )
    net(torch.zeros(1, 4, 9, 9))  # materialise the lazy layer
    return net.double()


def _data(seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 4, 9, 9, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=gen)
    return [(x[:4], y[:4]), (x[4:], y[4:])]


def _rel(a: dict, b: dict) -> float:
    num = math.sqrt(sum(float(((a[k] - b[k]) ** 2).sum()) for k in b))
    den = math.sqrt(sum(float((b[k] ** 2).sum()) for k in b))
    return num / den


configs = st.tuples(
    st.sampled_from([1, 2, 4]),  # groups of the first conv
    st.sampled_from([1, 2]),  # stride of the depthwise conv
    st.sampled_from([1, 2]),  # dilation of the depthwise conv
    st.booleans(),  # bias
    st.integers(0, 2**16),  # seed
)


@given(configs)
@settings(max_examples=12)
def test_whole_layer_hvp_equals_autograd_double_backward(config):
    groups, stride, dilation, bias, seed = config
    model = _net(groups, stride, dilation, bias, seed)
    batches = _data(seed)
    loss = LossSpec("cross_entropy", temperature=2.0)
    gen = torch.Generator().manual_seed(seed + 1)
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in model.named_parameters()}
    g_fast, hv_fast = flow.hvp(model, batches, loss, v, whole_layer_grouped=True)
    g_native, hv_native = flow.hvp(model, batches, loss, v, whole_layer_grouped=False)
    hv_db = flow.hvp_double_backward(model, batches, loss, v)
    bound = BOUND
    err_native, err_db = _rel(hv_fast, hv_native), _rel(hv_fast, hv_db)
    print(
        f"{config}: rel. diff vs torch.func native {err_native:.2e}, vs double backward "
        f"{err_db:.2e} (bound {bound:.1e})"
    )
    assert err_native <= bound and err_db <= bound
    assert _rel(g_fast, g_native) <= bound


def test_whole_layer_path_is_taken_for_grouped_convs():
    model = _net(2, 1, 1, True, 0)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    with whole_layer_grouped_conv(model):
        out = model[0](x)
    assert "GroupedConv" in type(out.grad_fn).__name__ or any(
        "GroupedConv" in type(f).__name__ for f, _ in out.grad_fn.next_functions if f is not None
    )
    plain = model[0](x)
    assert "GroupedConv" not in type(plain.grad_fn).__name__


def test_forward_values_unchanged_by_whole_layer_path():
    model = _net(4, 2, 2, True, 3)
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    with whole_layer_grouped_conv(model):
        fast = model(x)
    plain = model(x)
    # conv + bias added afterwards vs a fused bias: the forward chain only, within BOUND
    err = float((fast - plain).detach().norm() / plain.detach().norm())
    print(f"forward: norm-wise rel. diff {err:.2e}")
    assert err <= BOUND


def test_no_mode_installed_without_grouped_convs():
    dense = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    assert not has_grouped_conv(dense)
    depth = torch._C._len_torch_function_stack()
    with whole_layer_grouped_conv(dense):
        assert torch._C._len_torch_function_stack() == depth
    with whole_layer_grouped_conv(_net(2, 1, 1, False, 0)):
        assert torch._C._len_torch_function_stack() == depth + 1


def test_forward_over_reverse_still_works_on_grouped_convs():
    """The whole-layer Functions have no jvp; forward-over-reverse must use autograd's path."""
    model = _net(2, 2, 1, False, 5)
    batches = _data(5)
    loss = LossSpec("cross_entropy")
    v = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    _, hv_fwd = flow.hvp(model, batches, loss, v, method="forward_over_reverse")
    _, hv_rev = flow.hvp(model, batches, loss, v)
    assert _rel(hv_fwd, hv_rev) <= BOUND


def test_a_dropped_second_derivative_term_is_detected(monkeypatch):
    """The comparison can fail: without the ∂/∂x term of the second backward, Hv is wrong."""
    original = grouped_conv._GroupedConvGrads.backward

    def without_input_term(ctx, gg_in, gg_w):
        d_gout, _, d_w, cfg = original(ctx, gg_in, gg_w)
        return d_gout, None, d_w, cfg

    monkeypatch.setattr(
        grouped_conv._GroupedConvGrads, "backward", staticmethod(without_input_term)
    )
    model = _net(2, 1, 1, False, 1)
    batches = _data(1)
    loss = LossSpec("cross_entropy")
    v = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    _, hv_broken = flow.hvp(model, batches, loss, v)
    hv_ref = flow.hvp_double_backward(model, batches, loss, v)
    assert _rel(hv_broken, hv_ref) > 1e-3
