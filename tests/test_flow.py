"""The gradient-flow core: g, Hv, closed-form derivatives, trajectories (float64)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify import flow
from gfverify.flow import LossSpec
from gfverify.models.small import SmallNetSpec
from tests.strategies import losses, small_nets


def _plain_autograd_gradient(model, batches, loss):
    """Reference: one big batch through ordinary autograd on the module's own parameters."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    model.eval()
    model.zero_grad()
    loss(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@given(small_nets(), losses(), st.integers(1, 9))
@settings(max_examples=20)
def test_batched_gradient_equals_one_big_batch(spec, loss, batch_size):
    model = spec.build()
    batches = spec.data(10, batch_size)
    g = flow.gradient(model, batches, loss)
    ref = _plain_autograd_gradient(model, batches, loss)
    for name in ref:
        torch.testing.assert_close(g[name], ref[name], rtol=1e-10, atol=1e-14)


@given(small_nets(), losses())
@settings(max_examples=20)
def test_hvp_torch_func_equals_double_backward(spec, loss):
    model = spec.build()
    batches = spec.data(8, 3)
    gen = torch.Generator().manual_seed(spec.seed)
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in model.named_parameters()}
    g, hv = flow.hvp(model, batches, loss, v)
    hv2 = flow.hvp_double_backward(model, batches, loss, v)
    a, b = flow.restrict(hv), flow.restrict(hv2)
    err = float((a - b).norm() / b.norm().clamp_min(1e-300))
    print(f"relative HVP difference torch.func vs double backward: {err:.2e}")
    assert err <= 1e-10
    torch.testing.assert_close(flow.restrict(g), flow.restrict(flow.gradient(model, batches, loss)))


@given(small_nets(), losses(), st.sampled_from(flow.HV_METHODS))
@settings(max_examples=20)
def test_hessian_vector_every_method_equals_double_backward(spec, loss, method):
    model = spec.build()
    batches = spec.data(8, 3)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in model.named_parameters()}
    hv = flow.hessian_vector(model, batches, loss, v, method=method)
    ref = flow.hvp_double_backward(model, batches, loss, v)
    a, b = flow.restrict(hv), flow.restrict(ref)
    err = float((a - b).norm() / b.norm().clamp_min(1e-300))
    print(f"relative HVP difference {method} vs double backward: {err:.2e}")
    assert err <= 1e-10


@given(small_nets(), losses(), st.integers(0, 1000))
@settings(max_examples=20)
def test_subset_derivatives_add_up_over_a_partition(spec, loss, seed):
    """d‖θ_p‖²/dt etc. are sums over coordinates: a partition of θ adds up to the whole."""
    model = spec.build()
    state = flow.flow_state(model, spec.data(6, 3), loss)
    gen = torch.Generator().manual_seed(seed)
    mask = {k: torch.rand(v.shape, generator=gen) < 0.5 for k, v in state.theta.items()}
    comp = {k: ~m for k, m in mask.items()}
    whole = flow.time_derivatives(state)
    a, b = flow.time_derivatives(state, mask), flow.time_derivatives(state, comp)
    for field in ("loss_rate", "norm_rate", "norm_accel", "grad_norm_rate"):
        total = getattr(a, field) + getattr(b, field)
        scale = abs(getattr(a, field)) + abs(getattr(b, field)) + 1e-300
        assert abs(total - getattr(whole, field)) <= 1e-12 * scale, field


def test_closed_forms_match_their_definitions():
    spec = SmallNetSpec(kind="mlp", widths=(3,), image_size=2, seed=4)
    model = spec.build()
    state = flow.flow_state(model, spec.data(6, 6), LossSpec("cross_entropy", 2.0))
    th, g, hg = (flow.restrict(v) for v in (state.theta, state.g, state.hg))
    d = flow.time_derivatives(state)
    assert d.loss_rate == -float(g @ g)
    assert d.norm_rate == float(-2 * th @ g)
    assert abs(d.norm_accel - float(2 * g @ g + 2 * th @ hg)) <= 1e-15 * abs(d.norm_accel)
    assert d.grad_norm_rate == float(-2 * g @ hg)


def test_trajectory_is_reversible():
    """Integrating to +t and from there back to 0 returns θ(0) (a solver-accuracy check)."""
    spec = SmallNetSpec(kind="cnn", widths=(3,), image_size=4, seed=5)
    model = spec.build()
    batches = spec.data(6, 6)
    loss = LossSpec("cross_entropy", 1.0)
    theta0 = flow.trainable_params(model)
    there = flow.integrate_flow(model, batches, loss, 0.5, theta0)
    back = flow.integrate_flow(model, batches, loss, -0.5, there)
    moved = float((flow.restrict(there) - flow.restrict(theta0)).norm())
    err = float((flow.restrict(back) - flow.restrict(theta0)).norm())
    print(f"moved {moved:.3e}, returned within {err:.3e}")
    assert moved > 1e-6
    assert err <= 1e-10 * (1 + float(flow.restrict(theta0).norm()))


def test_float32_gradient_and_hvp_run_and_match_float64():
    spec = SmallNetSpec(kind="cnn", widths=(4,), image_size=4, seed=6)
    m64 = spec.build(torch.float64)
    m32 = spec.build(torch.float32)
    loss = LossSpec("cross_entropy", 1.0)
    b64 = spec.data(8, 4)
    b32 = [(x.float(), y) for x, y in b64]
    s64 = flow.flow_state(m64, b64, loss)
    s32 = flow.flow_state(m32, b32, loss)
    assert flow.restrict(s32.hg).dtype == torch.float32
    rel = float((flow.restrict(s32.hg).double() - flow.restrict(s64.hg)).norm())
    rel /= float(flow.restrict(s64.hg).norm())
    assert rel < 1e-4


def test_mse_loss_definition():
    logits = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([1])
    value = LossSpec("mse", 2.0)(logits, y)
    expected = 0.5 * ((0.5 - 0) ** 2 + (1.0 - 1) ** 2 + (0.25 - 0) ** 2)
    assert abs(float(value) - expected) < 1e-15


def test_eval_mode_is_restored():
    model = SmallNetSpec(kind="cnn", widths=(2,), image_size=3).build().train()
    flow.gradient(model, SmallNetSpec(kind="cnn", widths=(2,), image_size=3).data(4, 4), LossSpec())
    assert all(m.training for m in model.modules())


@given(small_nets(max_width=8), losses())
@settings(max_examples=10)
def test_hvp_methods_agree(spec, loss):
    model = spec.build()
    batches = spec.data(8, 4)
    v = flow.gradient(model, batches, loss)
    g1, a = flow.hvp(model, batches, loss, v, method="reverse_over_reverse")
    g2, b = flow.hvp(model, batches, loss, v, method="forward_over_reverse")
    ra, rb = flow.restrict(a), flow.restrict(b)
    assert float((ra - rb).norm()) <= 1e-12 * float(rb.norm()) + 1e-300
    # norm-wise, like Hv: the two compute g with differently ordered float64 sums (grouped convs
    # through whole-layer kernels in reverse-over-reverse), so an entry that cancels to ~1e-8 of
    # the others can differ by more than 1e-12 of itself while the vector agrees to ~1e-16
    rg1, rg2 = flow.restrict(g1), flow.restrict(g2)
    assert float((rg1 - rg2).norm()) <= 1e-12 * float(rg2.norm()) + 1e-300
