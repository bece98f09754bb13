"""Gradient-flow calculus on any ``nn.Module``.

Under gradient flow dθ/dt = −g(θ), with g = ∇L and H = ∇²L (spec/paper.md §1.4):

- (E2) dL/dt        = −‖g‖²
- (E3) d‖θ‖²/dt     = −2 θᵀg
- (E4) d²‖θ‖²/dt²   = 2‖g‖² + 2 θᵀHg
- (E5) d‖g‖²/dt     = −2 gᵀHg

Each holds for the whole θ and, coordinate-wise, for any subset p of it (θ_p, g_p, (Hg)_p).

Everything here is functional (``torch.func``): parameters are name-keyed dicts ``{name:
tensor}`` as in ``model.named_parameters()``, never positions. The model is evaluated in eval
mode (BatchNorm uses running statistics), so a dataset average over several batches, weighted
by batch size, equals the value on one big batch.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp

from gfverify import autotune
from gfverify.grouped_conv import whole_layer_grouped_conv

Params = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]
#: A parameter subset: parameter name -> boolean mask of that parameter's shape (or ``None``
#: for the whole tensor). Names absent from the mapping are not in the subset.
Subset = Mapping[str, Tensor | None]


@dataclass(frozen=True)
class LossSpec:
    """The training objective evaluated on logits z and targets y, averaged over samples.

    - ``cross_entropy``: L = c · mean_i CE(z_i / T, y_i)
    - ``mse``: L = c · mean_i ½‖z_i / T − onehot(y_i)‖² (or ``y_i`` itself when it is a float
      tensor of the logits' shape)

    with temperature T and a positive scale c (1 by default).
    """

    kind: Literal["cross_entropy", "mse"] = "cross_entropy"
    temperature: float = 1.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("cross_entropy", "mse"):
            raise ValueError(f"unknown loss {self.kind!r}; use 'cross_entropy' or 'mse'")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"loss scale must be a positive number, got {self.scale}")

    def __call__(self, logits: Tensor, target: Tensor) -> Tensor:
        z = logits / self.temperature
        if self.kind == "cross_entropy":
            return self.scale * nn.functional.cross_entropy(z, target)
        if target.is_floating_point() and target.shape == z.shape:
            t = target
        else:
            t = nn.functional.one_hot(target, z.shape[-1]).to(z.dtype)
        return self.scale * 0.5 * ((z - t) ** 2).sum(dim=-1).mean()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore each submodule's flag afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def trainable_params(model: nn.Module) -> Params:
    """θ as a name-keyed dict of detached tensors (only parameters with ``requires_grad``)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _buffers(model: nn.Module) -> Params:
    return {n: b for n, b in model.named_buffers()}


def _weights(batches: Sequence[Batch]) -> list[float]:
    sizes = [len(y) for _, y in batches]
    total = sum(sizes)
    if total == 0:
        raise ValueError("no samples: the list of batches is empty")
    return [s / total for s in sizes]


def _batch_loss_fn(
    model: nn.Module, loss: LossSpec, x: Tensor, y: Tensor
) -> Callable[[Params], Tensor]:
    buffers = _buffers(model)

    def f(params: Params) -> Tensor:
        logits = functional_call(model, (params, buffers), (x,), strict=False)
        return loss(logits, y)

    return f


def _resolve(model: nn.Module, params: Params | None) -> Params:
    return trainable_params(model) if params is None else params


def _axpy(acc: Params | None, w: float, v: Params) -> Params:
    if acc is None:
        return {k: w * t for k, t in v.items()}
    for k, t in v.items():
        acc[k] = acc[k] + w * t
    return acc


def rebatch(batches: Sequence[Batch], batch_size: int) -> list[Batch]:
    """Concatenate batches and split them again into chunks of ``batch_size`` samples.

    In eval mode the batch-size-weighted average of any per-batch mean is unchanged, so this
    only trades memory for speed (few large batches vectorise better than many small ones).
    """
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def dataset_loss(
    model: nn.Module, batches: Sequence[Batch], loss: LossSpec, params: Params | None = None
) -> Tensor:
    """L(θ) = Σ_b (n_b/N) L_b(θ): the loss on all samples, evaluated in eval mode."""
    params = _resolve(model, params)
    with eval_mode(model), torch.no_grad():
        total = None
        for w, (x, y) in zip(_weights(batches), batches):
            value = w * _batch_loss_fn(model, loss, x, y)(params)
            total = value if total is None else total + value
    assert total is not None
    return total


def gradient(
    model: nn.Module, batches: Sequence[Batch], loss: LossSpec, params: Params | None = None
) -> Params:
    """g = ∇_θ L = Σ_b (n_b/N) ∇_θ L_b, by ``torch.func.grad``."""
    params = _resolve(model, params)
    acc: Params | None = None
    with eval_mode(model):
        for w, (x, y) in zip(_weights(batches), batches):
            acc = _axpy(acc, w, grad(_batch_loss_fn(model, loss, x, y))(params))
    assert acc is not None
    return acc


HvpMethod = Literal["reverse_over_reverse", "forward_over_reverse", "reverse_over_forward", "auto"]
#: Methods that return the gradient alongside Hv (what :func:`hvp` offers), in order of
#: preference on a tie of ``method="auto"``.
WITH_GRADIENT = ("reverse_over_reverse", "forward_over_reverse")
#: Methods for Hv alone (what :func:`hessian_vector` offers).
HV_METHODS = ("reverse_over_forward", "reverse_over_reverse", "forward_over_reverse")


def _hvp_batch(
    model: nn.Module,
    loss: LossSpec,
    x: Tensor,
    y: Tensor,
    params: Params,
    tangent: Params,
    method: str,
    whole_layer_grouped: bool,
) -> tuple[Params | None, Params]:
    """(∇L_b or None, ∇²L_b·v) on one batch by ``method`` (eval mode set by the caller)."""
    if method == "reverse_over_forward":
        f = _batch_loss_fn(model, loss, x, y)
        hv_b = grad(lambda p: jvp(f, (p,), (tangent,))[1])(params)
        return None, {k: t.detach() for k, t in hv_b.items()}
    grad_fn = grad(_batch_loss_fn(model, loss, x, y))
    if method == "reverse_over_reverse":
        grouped = whole_layer_grouped_conv(model) if whole_layer_grouped else nullcontext()
        with grouped:
            g_b, pullback = vjp(grad_fn, params)
            (hv_b,) = pullback(tangent)
    elif method == "forward_over_reverse":
        g_b, hv_b = jvp(grad_fn, (params,), (tangent,))
    else:
        raise ValueError(f"unknown HVP method {method!r}")
    return {k: t.detach() for k, t in g_b.items()}, {k: t.detach() for k, t in hv_b.items()}


def _hvp_pass(
    model: nn.Module,
    batches: Sequence[Batch],
    loss: LossSpec,
    vector: Params,
    params: Params | None,
    method: str,
    whole_layer_grouped: bool,
    candidates: tuple[str, ...],
) -> tuple[Params | None, Params]:
    """Σ_b (n_b/N)·(∇L_b, ∇²L_b·v) over ``batches``; ``method="auto"`` picks among
    ``candidates`` on the first batch (:mod:`gfverify.autotune`)."""
    if method not in (*candidates, "auto"):
        raise ValueError(f"unknown HVP method {method!r}; use one of {(*candidates, 'auto')}")
    params = _resolve(model, params)
    tangent = {k: vector[k].to(params[k].dtype) for k in params}
    g_acc: Params | None = None
    hv_acc: Params | None = None
    with eval_mode(model):
        for w, (x, y) in zip(_weights(batches), batches):
            done = None
            if method == "auto":
                shapes = tuple((k, tuple(v.shape)) for k, v in params.items())
                key = (candidates, type(model).__qualname__, shapes, tuple(x.shape), x.dtype)
                key += (str(x.device), loss, whole_layer_grouped)

                def run(m: str, x=x, y=y) -> tuple[Params | None, Params]:
                    out = _hvp_batch(model, loss, x, y, params, tangent, m, whole_layer_grouped)
                    if x.device.type == "cuda":
                        torch.cuda.synchronize(x.device)
                    return out

                method, done = autotune.choose(key, candidates, run)
            if done is None:
                done = _hvp_batch(model, loss, x, y, params, tangent, method, whole_layer_grouped)
            g_b, hv_b = done
            g_acc = None if g_b is None else _axpy(g_acc, w, g_b)
            hv_acc = _axpy(hv_acc, w, hv_b)
    assert hv_acc is not None
    return g_acc, hv_acc


def hvp(
    model: nn.Module,
    batches: Sequence[Batch],
    loss: LossSpec,
    vector: Params,
    params: Params | None = None,
    method: HvpMethod = "reverse_over_reverse",
    whole_layer_grouped: bool = True,
) -> tuple[Params, Params]:
    """(g, Hv) with Hv = Σ_b (n_b/N) ∇²L_b · v, by ``torch.func`` in one pass per batch.

    - ``reverse_over_reverse`` (default): ``vjp(grad(L))`` applied to v (H is symmetric).
      On ResNet-56 on the 2-core CPU (benchmarks/bench_hvp.py) one pass cost 3.4 gradients;
      forward-over-reverse cost 3.2 on a quiet machine but 3.6–16.5 in three earlier runs, two
      of them slowed by ~2 GB of freshly mapped memory per call: the steadier method is the
      default.
    - ``forward_over_reverse``: ``jvp(grad(L), θ, v)``.
    - ``auto``: the faster of the two for this case, timed on the first batch and remembered
      (:mod:`gfverify.autotune`); opt-in, since a timed choice is not bit-reproducible.

    Both return the gradient as well, since the outer transform evaluates ``grad(L)``; for Hv
    alone, :func:`hessian_vector` is cheaper. With ``whole_layer_grouped`` (reverse-over-
    reverse), grouped/depthwise convs differentiate twice through whole-layer kernels
    (:mod:`gfverify.grouped_conv`) instead of PyTorch's per-group loop: the same Hv to
    rounding, faster on depthwise networks.
    """
    g, hv = _hvp_pass(
        model, batches, loss, vector, params, method, whole_layer_grouped, WITH_GRADIENT
    )
    assert g is not None
    return g, hv


def hessian_vector(
    model: nn.Module,
    batches: Sequence[Batch],
    loss: LossSpec,
    vector: Params,
    params: Params | None = None,
    method: HvpMethod = "reverse_over_forward",
    whole_layer_grouped: bool = True,
) -> Params:
    """Hv = Σ_b (n_b/N) ∇²L_b · v alone, by ``torch.func`` in one pass per batch.

    - ``reverse_over_forward`` (default): Hv = ∇_θ(∇L · v), the directional derivative
      ∇L · v taken in forward mode (``jvp(L, θ, v)``) and differentiated in reverse mode. It
      never differentiates a backward pass twice, so no double backward of a convolution
      runs; measured 2.8× a gradient on ResNet-56 (CPU) against 3.3× for reverse-over-reverse,
      which also computes g. It keeps primal and tangent activations for the backward pass:
      ~1.7× the memory per sample of reverse-over-reverse (benchmarks/bench_memory.py); lower
      the batch size, or pick ``reverse_over_reverse``, where memory is short.
    - ``reverse_over_reverse``, ``forward_over_reverse``: as in :func:`hvp`, g discarded.
    - ``auto``: the fastest of the three for this case (opt-in, see :func:`hvp`).
    """
    return _hvp_pass(model, batches, loss, vector, params, method, whole_layer_grouped, HV_METHODS)[
        1
    ]


class HgFallbackWarning(UserWarning):
    """Hv was computed by another exact method than the one asked for (an op lacked it)."""


_MISSING_OP = re.compile(
    r"(?:derivative for|forward AD with)\s+(?:aten::)?([A-Za-z0-9_.:]+)", re.IGNORECASE
)


def missing_derivative_op(error: BaseException) -> str | None:
    """The op named by torch's "derivative for aten::X is not implemented" / "Trying to use
    forward AD with X" errors, or ``None`` for any other error."""
    if not isinstance(error, NotImplementedError | RuntimeError):
        return None
    m = _MISSING_OP.search(str(error))
    return m.group(1).removeprefix("aten::") if m else None


def _module_of_op(model: nn.Module, op: str) -> str | None:
    """The first module whose class name matches ``op`` without its ``_backward`` suffix
    (``hardsigmoid_backward`` -> an ``nn.Hardsigmoid``); ``None`` if none does."""
    base = op.removesuffix("_backward").replace("_", "").lower()
    for name, m in model.named_modules():
        kind = type(m).__name__.lower()
        if kind == base or (len(base) > 3 and base in kind):
            return name or type(m).__name__
    if "attention" in base:
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention):
                return name
    return None


def hessian_vector_exact(
    model: nn.Module,
    batches: Sequence[Batch],
    loss: LossSpec,
    vector: Params,
    params: Params | None = None,
    method: HvpMethod = "reverse_over_forward",
    whole_layer_grouped: bool = True,
) -> tuple[Params, str]:
    """(Hv, the method that computed it): :func:`hessian_vector` by ``method``; where an op
    lacks forward-mode AD (``aten::_native_multi_head_attention``) or the double backward of a
    fused kernel (CPU flash attention), Hv again by ``reverse_over_reverse`` with
    ``scaled_dot_product_attention`` on its math backend — also exact — and a
    :class:`HgFallbackWarning` naming the op. Where an op has no double backward at all
    (``aten::hardsigmoid_backward``), a one-line :class:`gfverify.errors.ModelError` naming
    the op and the module that calls it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gfverify.errors import ModelError

    try:
        return hessian_vector(
            model, batches, loss, vector, params, method, whole_layer_grouped
        ), str(method)
    except (NotImplementedError, RuntimeError) as e:
        op = missing_derivative_op(e)
        if op is None:
            raise
        first = op
    fallback = "reverse_over_reverse (math attention)"
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            hv = hessian_vector(
                model, batches, loss, vector, params, "reverse_over_reverse", whole_layer_grouped
            )
    except (NotImplementedError, RuntimeError) as e:
        op = missing_derivative_op(e)
        if op is None:
            raise
        where = _module_of_op(model, op)
        at = f" (module {where!r})" if where else ""
        raise ModelError(
            f"Hg needs a second derivative through op aten::{op}{at}, which torch does not "
            "implement; replace that layer or use a measure without Hg"
        ) from None
    warnings.warn(
        f"Hg: {method} failed at op aten::{first}; computed by {fallback} instead (exact)",
        HgFallbackWarning,
        stacklevel=2,
    )
    return hv, fallback


def hvp_double_backward(
    model: nn.Module,
    batches: Sequence[Batch],
    loss: LossSpec,
    vector: Params,
    params: Params | None = None,
) -> Params:
    """Hv = ∇_θ (∇_θL · stopgrad(v)) by double backward (``torch.autograd``); a cross-check."""
    params = _resolve(model, params)
    acc: Params | None = None
    names = list(params)
    with eval_mode(model):
        for w, (x, y) in zip(_weights(batches), batches):
            leaves = {k: params[k].detach().requires_grad_(True) for k in names}
            value = _batch_loss_fn(model, loss, x, y)(leaves)
            grads = torch.autograd.grad(value, [leaves[k] for k in names], create_graph=True)
            dot = sum((gk * vector[k].detach()).sum() for gk, k in zip(grads, names))
            hv = torch.autograd.grad(dot, [leaves[k] for k in names], allow_unused=True)
            hv_d = {
                k: (h if h is not None else torch.zeros_like(params[k])) for k, h in zip(names, hv)
            }
            acc = _axpy(acc, w, hv_d)
    assert acc is not None
    return acc


def hvp_finite_difference(
    model: nn.Module,
    batches: Sequence[Batch],
    loss: LossSpec,
    vector: Params,
    eps: float,
    params: Params | None = None,
) -> Params:
    """Hv ≈ [g(θ + εv) − g(θ − εv)] / (2ε): a central difference, error O(ε²)."""
    params = _resolve(model, params)
    plus = gradient(model, batches, loss, {k: p + eps * vector[k] for k, p in params.items()})
    minus = gradient(model, batches, loss, {k: p - eps * vector[k] for k, p in params.items()})
    return {k: (plus[k] - minus[k]) / (2 * eps) for k in params}


@dataclass(frozen=True)
class FlowState:
    """θ, g, Hg and L at one point: everything the closed-form time derivatives need."""

    theta: Params
    g: Params
    hg: Params
    loss: float


def flow_state(
    model: nn.Module, batches: Sequence[Batch], loss: LossSpec, params: Params | None = None
) -> FlowState:
    """θ, g = ∇L and Hg = ∇²L·g (two passes: g first, then Hg with g fixed as the vector, by
    :func:`hessian_vector_exact`: its exact fallback where an op lacks forward-mode AD, a
    one-line ModelError where an op has no second derivative)."""
    params = _resolve(model, params)
    g = gradient(model, batches, loss, params)
    hg, _ = hessian_vector_exact(model, batches, loss, g, params)
    value = float(dataset_loss(model, batches, loss, params))
    return FlowState(theta={k: v.detach() for k, v in params.items()}, g=g, hg=hg, loss=value)


def restrict(values: Params, subset: Subset | None = None) -> Tensor:
    """Concatenate the entries of ``values`` that lie in ``subset`` (all of them if ``None``)."""
    if subset is None:
        return torch.cat([v.reshape(-1) for v in values.values()])
    parts = []
    for name, mask in subset.items():
        v = values[name]
        parts.append(v.reshape(-1) if mask is None else v[mask].reshape(-1))
    if not parts:
        raise ValueError("empty parameter subset")
    return torch.cat(parts)


@dataclass(frozen=True)
class TimeDerivatives:
    """Closed-form time derivatives under gradient flow, for θ or one subset θ_p of it.

    - ``loss_rate``      = −‖g_p‖²            (dL/dt when p is all of θ; E2)
    - ``norm_rate``      = −2 θ_pᵀg_p          (d‖θ_p‖²/dt; E3)
    - ``norm_accel``     = 2‖g_p‖² + 2θ_pᵀ(Hg)_p (d²‖θ_p‖²/dt²; E4)
    - ``grad_norm_rate`` = −2 g_pᵀ(Hg)_p       (d‖g_p‖²/dt; E5 when p is all of θ)
    """

    loss_rate: float
    norm_rate: float
    norm_accel: float
    grad_norm_rate: float


def time_derivatives(state: FlowState, subset: Subset | None = None) -> TimeDerivatives:
    """Evaluate E2–E5 in closed form at ``state`` for the coordinates in ``subset``."""
    theta, g, hg = (restrict(v, subset) for v in (state.theta, state.g, state.hg))
    gg = float(g @ g)
    return TimeDerivatives(
        loss_rate=-gg,
        norm_rate=float(-2 * (theta @ g)),
        norm_accel=float(2 * gg + 2 * (theta @ hg)),
        grad_norm_rate=float(-2 * (g @ hg)),
    )


# --------------------------------------------------------------------------------------------
# Exact trajectories


def flatten(params: Params) -> np.ndarray:
    """θ as one float64 numpy vector, in the dict's key order."""
    return torch.cat([p.detach().reshape(-1) for p in params.values()]).cpu().double().numpy()


def unflatten(vector: np.ndarray, like: Params) -> Params:
    """Inverse of :func:`flatten`, with the dtype and device of ``like``."""
    out: Params = {}
    i = 0
    for k, p in like.items():
        n = p.numel()
        t = torch.from_numpy(np.ascontiguousarray(vector[i : i + n])).reshape(p.shape)
        out[k] = t.to(dtype=p.dtype, device=p.device)
        i += n
    return out


@dataclass(frozen=True)
class IntegratorSettings:
    """``scipy.integrate.solve_ivp`` settings for exact gradient-flow trajectories.

    DOP853 (8th order) with rtol at scipy's floor (100·ε ≈ 2.2e-14) keeps the integration error
    far below the finite-difference truncation errors the identity claims measure.
    """

    method: str = "DOP853"
    rtol: float = 2.3e-14
    atol: float = 1e-16


def integrate_flow(
    model: nn.Module,
    batches: Sequence[Batch],
    loss: LossSpec,
    t: float,
    params: Params | None = None,
    settings: IntegratorSettings = IntegratorSettings(),
) -> Params:
    """θ(t) solving dθ/dt = −g(θ), θ(0) = θ₀, by ``solve_ivp`` in float64 (t may be negative).

    The model must be float64. Each right-hand-side evaluation is one full dataset gradient,
    so this is meant for small nets (a few thousand parameters).
    """
    from scipy.integrate import solve_ivp

    params = _resolve(model, params)
    if any(p.dtype != torch.float64 for p in params.values()):
        raise ValueError("integrate_flow needs a float64 model (call model.double())")
    if t == 0:
        return {k: v.clone() for k, v in params.items()}

    merged = rebatch(batches, 4096)  # few large batches: same average, far faster

    def rhs(_: float, y: np.ndarray) -> np.ndarray:
        return -flatten(gradient(model, merged, loss, unflatten(y, params)))

    sol = solve_ivp(
        rhs,
        (0.0, t),
        flatten(params),
        method=settings.method,
        rtol=settings.rtol,
        atol=settings.atol,
    )
    if not sol.success:
        raise RuntimeError(f"gradient-flow integration failed: {sol.message}")
    return unflatten(sol.y[:, -1], params)


def flow_time_scale(state: FlowState) -> float:
    """A natural time unit of the flow at ``state``: 1/ρ with ρ = ‖Hg‖/‖g‖.

    ρ is how fast the velocity −g turns or changes length (dg/dt = −Hg), so ρ·h is the small
    parameter of every Taylor expansion in h along the trajectory.
    """
    g = restrict(state.g)
    hg = restrict(state.hg)
    gn = float(g.norm())
    if gn == 0.0:
        raise ValueError("the gradient is exactly zero: θ is a stationary point of the flow")
    rho = float(hg.norm()) / gn
    return 1.0 / max(rho, 1e-12)
