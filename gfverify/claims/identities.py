"""Identity claims E2–E5 and H1: closed forms against an exactly integrated gradient flow.

For each problem (a float64 net in eval mode, its data and loss) the flow dθ/dt = −g(θ) is
integrated with ``solve_ivp`` (DOP853, rtol 2.3e-14) to θ(±h) on a ladder h = h₀·2^{-i},
h₀ = 0.2·τ with τ = ‖g‖/‖Hg‖ the flow's own time unit. Central differences of L, ‖θ_p‖² and
‖g‖² along that trajectory are compared with the closed forms of :mod:`gfverify.flow`; the
verdict needs both the finest error within the order-derived tolerance and an observed order of
2 ± 0.5 (see :mod:`gfverify.claims.numerics`).

ReLU networks: the loss is only piecewise smooth. At a random point no sample sits exactly on
a kink, so g and Hg exist (H is the Hessian of the active linear piece), but the trajectory can
cross a kink inside ±h, which breaks the O(h²) expansion. The built-in problems therefore use
smooth activations; on a user's ReLU model a failed order is reported with that explanation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gfverify import flow
from gfverify.claims.base import ClaimResult, register
from gfverify.claims.numerics import (
    ConvergenceStudy,
    central_first,
    central_second,
    geometric_ladder,
    study_result,
)
from gfverify.claims.problems import CheckContext, FlowProblem
from gfverify.flow import FlowState, Params, Subset

EPS64 = 2.220446049250313e-16


@dataclass(frozen=True)
class IdentitySpec:
    """One identity: which trajectory quantity, which derivative, its closed form and scale."""

    id: str
    statement: str
    derivative: int  # 1 or 2
    quantity: str  # "loss" | "norm" | "grad_norm"
    closed_form: Callable[[FlowState, Subset | None], float]
    scale: Callable[[FlowState, Subset | None], float]
    per_subset: bool


def _parts(state: FlowState, subset: Subset | None) -> tuple[torch.Tensor, ...]:
    return tuple(flow.restrict(v, subset) for v in (state.theta, state.g, state.hg))


def _norm(t: torch.Tensor) -> float:
    return float(t.norm())


IDENTITIES: dict[str, IdentitySpec] = {
    "E2": IdentitySpec(
        "E2",
        "dL/dt = −‖g‖² under gradient flow",
        1,
        "loss",
        lambda s, p: flow.time_derivatives(s).loss_rate,
        lambda s, p: _norm(_parts(s, None)[1]) ** 2,
        per_subset=False,
    ),
    "E3": IdentitySpec(
        "E3",
        "d‖θ_p‖²/dt = −2θ_pᵀg_p, for θ and any subset p",
        1,
        "norm",
        lambda s, p: flow.time_derivatives(s, p).norm_rate,
        lambda s, p: 2 * _norm(_parts(s, p)[0]) * _norm(_parts(s, p)[1]),
        per_subset=True,
    ),
    "E4": IdentitySpec(
        "E4",
        "d²‖θ_p‖²/dt² = 2‖g_p‖² + 2θ_pᵀ(Hg)_p, for θ and any subset p",
        2,
        "norm",
        lambda s, p: flow.time_derivatives(s, p).norm_accel,
        lambda s, p: (
            2 * _norm(_parts(s, p)[1]) ** 2 + 2 * _norm(_parts(s, p)[0]) * _norm(_parts(s, p)[2])
        ),
        per_subset=True,
    ),
    "E5": IdentitySpec(
        "E5",
        "d‖g‖²/dt = −2gᵀHg under gradient flow",
        1,
        "grad_norm",
        lambda s, p: flow.time_derivatives(s).grad_norm_rate,
        lambda s, p: 2 * _norm(_parts(s, None)[1]) * _norm(_parts(s, None)[2]),
        per_subset=False,
    ),
}


def _quantity_series(
    problem: FlowProblem, quantity: str, subset: Subset | None
) -> tuple[float, list[tuple[float, float]], float]:
    """Q(0), [(Q(+h), Q(−h))] and the estimated round-off δQ of one evaluation."""
    state = problem.state
    dtheta = problem.displacement
    if quantity == "loss":
        q = problem.loss_at
        q0 = state.loss
        g_norm = _norm(_parts(state, None)[1])
        delta = g_norm * dtheta + 10 * max(EPS64 * (abs(q0) + 1), problem.roundoff["loss"])
        return q0, [(q(a), q(b)) for a, b in problem.points], delta
    if quantity == "norm":

        def q(p: Params) -> float:
            return float(flow.restrict(p, subset).pow(2).sum())

        q0 = q(state.theta)
        theta_p = flow.restrict(state.theta, subset)
        delta = 2 * _norm(theta_p) * dtheta + 10 * EPS64 * q0
        return q0, [(q(a), q(b)) for a, b in problem.points], delta
    if quantity == "grad_norm":

        def qg(g: Params) -> float:
            return float(flow.restrict(g, subset).pow(2).sum())

        q0 = qg(state.g)
        rho = 1.0 / flow.flow_time_scale(state)
        delta = 2 * (q0**0.5) * rho * dtheta + 10 * max(EPS64 * q0, problem.roundoff["grad_norm"])
        return q0, [(qg(a), qg(b)) for a, b in problem.gradients], delta
    raise ValueError(f"unknown quantity {quantity!r}")


def study_identity(
    problem: FlowProblem, spec: IdentitySpec, subset: Subset | None
) -> ConvergenceStudy:
    """Central differences of ``spec.quantity`` along the integrated flow vs the closed form."""
    q0, pairs, delta = _quantity_series(problem, spec.quantity, subset)
    estimates, floors = [], []
    for h, (qp, qm) in zip(problem.steps, pairs):
        if spec.derivative == 1:
            estimates.append(central_first(qp, qm, h))
            floors.append(delta / h)
        else:
            estimates.append(central_second(qp, q0, qm, h))
            floors.append(4 * delta / h**2)
    return ConvergenceStudy(
        steps=list(problem.steps),
        estimates=estimates,
        closed_form=spec.closed_form(problem.state, subset),
        scale=max(spec.scale(problem.state, subset), 1e-300),
        floor=floors,
    )


def identity_result(
    problem: FlowProblem, spec: IdentitySpec, subset_name: str, subset: Subset | None
) -> ClaimResult:
    """Run one identity on one problem and subset, as a ClaimResult with the full study."""
    study = study_identity(problem, spec, subset)
    details = {
        "problem": problem.name,
        "subset": subset_name,
        "loss": problem.loss.kind,
        "temperature": problem.loss.temperature,
        "method": "central difference of a DOP853-integrated gradient-flow trajectory",
    }
    if problem.kinked and not study.passed:
        details["note"] = (
            "ReLU-type kinks: the trajectory may cross a non-differentiable point within ±h, "
            "which breaks the O(h²) expansion; the identity itself holds on each smooth piece"
        )
    return study_result(spec.id, spec.statement, study, f"{problem.name}/{subset_name}", **details)


def _run_identity(identity_id: str) -> Callable[[CheckContext], list[ClaimResult]]:
    spec = IDENTITIES[identity_id]

    def run(ctx: CheckContext) -> list[ClaimResult]:
        out = []
        for problem in ctx.problems:
            problem.check_flow_budget()  # before θ, g, Hg: skip a net too big to integrate
            subsets = problem.subsets.items() if spec.per_subset else [("all", None)]
            out += [identity_result(problem, spec, n, s) for n, s in subsets]
        return out

    return run


for _id, _spec in IDENTITIES.items():
    register(_id, _spec.statement, "identity", "identity")(_run_identity(_id))


# --------------------------------------------------------------------------------------------
# H1: three ways to a Hessian-vector product


def hvp_agreement(problem: FlowProblem, vector: Params, label: str) -> ClaimResult:
    """Hv by every ``torch.func`` method, by double backward and by finite differences.

    Reference: ``flow.hvp`` (reverse-over-reverse). Each other exact method
    (forward-over-reverse, ``flow.hessian_vector``'s reverse-over-forward, double backward)
    must agree with it to a relative (norm-wise) error ≤ 1e-8. The finite difference
    [g(θ+εv) − g(θ−εv)]/2ε is O(ε²); on the ladder ε₀·2^{-i} its observed order must be
    2 ± 0.5, and its Richardson extrapolation (O(ε⁴)) must agree to ≤ 1e-8 as well.
    """
    model, batches, loss, theta = problem.model, problem.batches, problem.loss, problem.state.theta
    _, hv_func = flow.hvp(model, batches, loss, vector, theta)
    hv_double = flow.hvp_double_backward(model, batches, loss, vector, theta)
    others = {
        "forward_over_reverse": flow.hvp(
            model, batches, loss, vector, theta, method="forward_over_reverse"
        )[1],
        "reverse_over_forward": flow.hessian_vector(model, batches, loss, vector, theta),
    }
    ref = flow.restrict(hv_func)
    ref_norm = max(_norm(ref), 1e-300)

    def rel(other: Params) -> float:
        return _norm(flow.restrict(other) - ref) / ref_norm

    v_norm = _norm(flow.restrict(vector))
    g_norm = _norm(flow.restrict(problem.state.g))
    # ε₀ moves θ as far as the flow does in 0.02·τ: the O(ε²) regime, far above round-off
    eps0 = 0.02 * flow.flow_time_scale(problem.state) * g_norm / max(v_norm, 1e-300)
    ladder = geometric_ladder(eps0, 4)
    fds = [flow.hvp_finite_difference(model, batches, loss, vector, e, theta) for e in ladder]
    fd_errors = [rel(fd) for fd in fds]
    richardson = {k: fds[-1][k] + (fds[-1][k] - fds[-2][k]) / 3 for k in fds[-1]}
    err_double, err_rich = rel(hv_double), rel(richardson)
    err_methods = {name: rel(hv) for name, hv in others.items()}
    orders = [
        float(torch.log2(torch.tensor(fd_errors[i] / fd_errors[i + 1])))
        for i in range(len(fd_errors) - 1)
        if fd_errors[i + 1] > 1e-12
    ]
    order = sorted(orders)[len(orders) // 2] if orders else None
    tolerance = 1e-8
    worst = max(err_double, err_rich, *err_methods.values())
    passed = worst <= tolerance and (order is None or abs(order - 2) <= 0.5)
    return ClaimResult(
        id="H1",
        statement="Hv from torch.func, double backward and finite differences of g agree",
        kind="identity",
        measured=worst,
        expected=0.0,
        error=worst,
        tolerance=tolerance,
        passed=passed,
        details={
            "problem": problem.name,
            "vector": label,
            "rel_error_double_backward": err_double,
            **{f"rel_error_{name}": err for name, err in err_methods.items()},
            "rel_error_fd_richardson": err_rich,
            "fd_steps": ladder,
            "fd_rel_errors": fd_errors,
            "fd_observed_order": order,
            "hv_torch_func": ref.tolist() if ref.numel() <= 4096 else None,
            "hv_double_backward": (
                flow.restrict(hv_double).tolist() if ref.numel() <= 4096 else None
            ),
        },
        case=f"{problem.name}/v={label}",
    )


@register("H1", "Hv from torch.func, double backward and finite differences of g agree")
def _h1(ctx: CheckContext) -> list[ClaimResult]:
    out = []
    for problem in ctx.problems:
        # per vector: 4 exact Hv (3 torch.func methods, double backward) and 4 FD pairs of g
        problem.require_budget("H1", gradients=2 + 2 * 8, hvs=2 * 4)
        gen = torch.Generator().manual_seed(0)
        theta = problem.state.theta
        random_v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in theta.items()}
        out.append(hvp_agreement(problem, problem.state.g, "g"))
        out.append(hvp_agreement(problem, random_v, "random"))
    return out
