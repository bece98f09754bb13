"""Claims about the importance measures: formulas, links to the flow, Taylor consistency, sign.

- M-<name>: each measure equals its written formula, recomputed by an independent plain-autograd
  reference (``loss.backward()``; Hg by double backward, one class at a time as the official
  code does) on the built-in nets.
- L1 / L2: taylor_fo(f) = ½|d‖θ_f‖²/dt| and grasp(f) = ½ d²‖θ_f‖²/dt² − ‖g_f‖², with the time
  derivatives from central differences of the integrated flow (order 2).
- T1 / T2: removing s·θ_f changes L by −s·θ_fᵀg + O(s²) and ‖g‖² by −2s·θ_fᵀHg + O(s²); the
  difference quotient's error must shrink as O(s) (remainder order 2). The error at s = 1, the
  paper's actual use (removal), is reported, not judged.
- G1: GraSP's sign: the filter with the lowest θ_fᵀHg raises ‖g‖² most at first order.
- I1: rankings are invariant to a positive scaling of the loss; magnitude ignores the data;
  ``random`` is reproducible by seed.

Every claim runs on the built-in cross-entropy problems (MSE problems are skipped: the measures
are defined on the cross-entropy loss), using the problem's own temperature and data for both
the measure and the flow, so the two sides describe the same L.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gfverify import flow, measures
from gfverify.claims.base import ClaimResult, register
from gfverify.claims.identities import IDENTITIES, study_identity
from gfverify.claims.numerics import ConvergenceStudy, refine_until_asymptotic, study_result
from gfverify.claims.problems import CheckContext, FlowProblem
from gfverify.flow import LossSpec, Params

EPS64 = 2.220446049250313e-16


def _ce_problems(ctx: CheckContext) -> list[FlowProblem]:
    return [p for p in ctx.problems if p.loss.kind == "cross_entropy"]


class SampleMismatch(RuntimeError):
    """The measure's data rule would select other samples than the flow side uses."""


def assert_same_samples(problem: FlowProblem) -> None:
    """Raise SampleMismatch unless every measure's data rule selects all the problem's samples.

    Gradient measures take the first whole batches until ≥ ``samples`` = N: all of them. Hg
    measures take the first int(N/C) samples of each class: all of them exactly when every
    class has N/C samples. Otherwise a measure and the flow would describe different losses
    and an identity between them could fail although it holds (issue 12).
    """
    ys = torch.cat([y for _, y in problem.batches])
    with torch.no_grad():
        num_classes = int(problem.model(problem.batches[0][0][:1]).shape[-1])
    counts = torch.bincount(ys, minlength=num_classes)
    if len(counts) != num_classes or not bool((counts == len(ys) // num_classes).all()):
        raise SampleMismatch(
            f"{problem.name}: class counts {counts.tolist()} are not equal, so the Hg measures "
            f"would use int({len(ys)}/{num_classes}) per class and the flow all {len(ys)} samples"
        )


def _score_opts(problem: FlowProblem) -> dict:
    """Measure options that make the measure see exactly the problem's loss and data.

    Checked: :func:`assert_same_samples` (the measure's samples are the problem's)."""
    assert_same_samples(problem)
    n = sum(len(y) for _, y in problem.batches)
    return {
        "samples": n,
        "train_temperature": problem.loss.temperature,
        "temperature": problem.loss.temperature,
        "hg_temperature": problem.loss.temperature,
        "loss_scale": problem.loss.scale,
        "compute_batch_size": n,
        "groups": problem.filter_groups,  # the dependency analysis once per problem, not per call
    }


def _groups(problem: FlowProblem) -> dict:
    return problem.filter_groups


# --------------------------------------------------------------------------------------------
# M-<name>: independent references


def _autograd_gradient(model: nn.Module, batches, loss: LossSpec) -> dict[str, Tensor]:
    """ḡ by plain autograd: Σ_b (n_b/N) ∇L_b with ``loss.backward()`` on the module itself."""
    n = sum(len(y) for _, y in batches)
    model.eval()
    model.zero_grad()
    for x, y in batches:
        (loss(model(x), y) * len(y) / n).backward()
    out = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad()
    return out


def _autograd_grad_sq(model: nn.Module, batches, loss: LossSpec) -> dict[str, Tensor]:
    n = sum(len(y) for _, y in batches)
    acc = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for x, y in batches:
        g = _autograd_gradient(model, [(x, y)], loss)
        for k in acc:
            acc[k] += len(y) / n * g[k] ** 2
    return acc


def _official_style_hg(model: nn.Module, batches, loss: LossSpec, num_classes: int, per_class: int):
    """Hg the way the official code computes it: one small batch per class, double backward.

    ḡ = (1/C) Σ_c ∇L_c; Hg = (1/C) Σ_c ∇(∇L_c · stopgrad(ḡ)).
    """
    xs = torch.cat([b[0] for b in batches])
    ys = torch.cat([b[1] for b in batches])
    per = []
    for c in range(num_classes):
        idx = (ys == c).nonzero().flatten()[:per_class]
        per.append((xs[idx], ys[idx]))
    model.eval()
    params = [p for p in model.parameters()]
    gbar = [torch.zeros_like(p) for p in params]
    for x, y in per:
        for acc, g in zip(gbar, torch.autograd.grad(loss(model(x), y), params)):
            acc += g / num_classes
    hg = [torch.zeros_like(p) for p in params]
    for x, y in per:
        grads = torch.autograd.grad(loss(model(x), y), params, create_graph=True)
        dot = sum((g * gb).sum() for g, gb in zip(grads, gbar))
        for acc, h in zip(hg, torch.autograd.grad(dot, params)):
            acc += h / num_classes
    names = [n for n, _ in model.named_parameters()]
    return dict(zip(names, hg))


def reference_scores(problem: FlowProblem, name: str) -> dict[str, Tensor]:
    """Per-filter scores of measure ``name`` written out directly from its formula."""
    model, batches, t = problem.model, problem.batches, problem.loss.temperature
    loss = LossSpec("cross_entropy", t)
    params = dict(model.named_parameters())
    num_classes = int(model(batches[0][0][:1]).shape[-1])
    n = sum(len(y) for _, y in batches)
    data_free = name in ("magnitude", "l1", "bn_scale")
    g = {} if data_free else _autograd_gradient(model, batches, loss)
    out: dict[str, Tensor] = {}
    needs_hg = name in ("grasp", "gradient_norm_preservation")
    hg = _official_style_hg(model, batches, loss, num_classes, n // num_classes) if needs_hg else {}
    s = _autograd_grad_sq(model, batches, loss) if name in ("fisher", "bn_fisher") else {}
    for lname, group in _groups(problem).items():

        def flat(src: dict[str, Tensor], grp=group) -> Tensor:
            """The filter's weights (and bias: part of the filter) as rows of a matrix."""
            cols = [src[grp.weight].reshape(src[grp.weight].shape[0], -1)]
            if grp.bias is not None:
                cols.append(src[grp.bias].reshape(-1, 1))
            return torch.cat(cols, dim=1).detach()

        W = flat(params)
        G = W if data_free else flat(g)
        # Per output channel: the formula's sum over the filter's weights, then (for a layer
        # whose channels reach a grouped conv) the sum over the channels of one filter unit,
        # then the formula's outer function.
        if name == "magnitude":
            c, outer = W.pow(2).sum(1), torch.sqrt
        elif name == "l1":
            c, outer = W.abs().sum(1), None
        elif name == "loss_preservation":
            c, outer = (W * G).abs().sum(1), None
        elif name == "taylor_fo":
            c, outer = (W * G).sum(1), torch.abs
        elif name == "biased_loss_preservation":
            c, outer = (W.pow(2) * G).abs().sum(1), None
        elif name == "grasp":
            c, outer = (W * flat(hg)).sum(1), None
        elif name == "gradient_norm_preservation":
            c, outer = (W * flat(hg)).sum(1), torch.abs
        elif name == "fisher":
            c, outer = (W.pow(2) * flat(s)).sum(1), None
        elif name == "bn_fisher":
            gam, bet = params[group.bn_weight].detach(), params[group.bn_bias].detach()
            c, outer = gam**2 * s[group.bn_weight] + bet**2 * s[group.bn_bias], None
        elif name == "bn_scale":
            c, outer = params[group.bn_weight].detach().abs(), None
        else:
            raise KeyError(name)
        if group.channel_groups > 1:  # written out, not FilterGroup.fold: an independent reference
            c = c.reshape(group.channel_groups, group.num_filters).sum(dim=0)
        v = c if outer is None else outer(c)
        out[lname] = v
    return out


FORMULA_CHECKED = (
    "magnitude",
    "l1",
    "loss_preservation",
    "taylor_fo",
    "biased_loss_preservation",
    "grasp",
    "gradient_norm_preservation",
    "fisher",
    "bn_fisher",
    "bn_scale",
)


def _max_rel(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    num = max(float((a[k] - b[k]).abs().max()) for k in b)
    den = max(float(b[k].abs().max()) for k in b)
    return num / max(den, 1e-300)


def _formula_cost(problem: FlowProblem, name: str) -> dict[str, float]:
    """Gradients and Hv products of the measure plus its reference (for the budget)."""
    needs = measures.MEASURES[name].needs
    if needs == "none":  # data-free: no gradient on either side
        return {"gradients": 0}
    if needs == "hg":  # ours: ḡ + Hg; reference: ḡ, C class gradients, C double backwards
        return {"gradients": 3, "hvs": 3}
    if needs == "grad_sq":
        return {"gradients": 2 * len(problem.batches) + 1}
    return {"gradients": 2}


def _formula_claim(name: str) -> Callable[[CheckContext], list[ClaimResult]]:
    def run(ctx: CheckContext) -> list[ClaimResult]:
        out = []
        for problem in _ce_problems(ctx):
            groups = _groups(problem)
            if name in ("bn_fisher", "bn_scale") and any(g.bn is None for g in groups.values()):
                continue
            problem.require_budget(f"M-{name}", **_formula_cost(problem, name))
            mine = measures.score(problem.model, name, problem.batches, **_score_opts(problem))
            ref = reference_scores(problem, name)
            err = _max_rel(mine, ref)
            tol = 1e-10  # float64: both sides are exact up to summation order
            out.append(
                ClaimResult(
                    id=f"M-{name}",
                    statement=f"{name} equals its formula {measures.MEASURES[name].formula}",
                    kind="identity",
                    measured=err,
                    expected=0.0,
                    error=err,
                    tolerance=tol,
                    passed=err <= tol,
                    details={"problem": problem.name, "layers": list(mine)},
                    case=problem.name,
                )
            )
        return out

    return run


for _name in FORMULA_CHECKED:
    register(
        f"M-{_name}",
        f"{_name} equals its written formula (independent autograd reference)",
        "identity",
        "measures",
    )(_formula_claim(_name))


# --------------------------------------------------------------------------------------------
# L1, L2: the measures as time derivatives of ‖θ_f‖²


def _filter_subsets(problem: FlowProblem, max_filters: int = 3) -> list[tuple[str, Any, int]]:
    """(layer, group, filter index) for the first filters of every layer."""
    out = []
    for lname, group in problem.case_groups.items():
        for f in range(min(group.num_filters, max_filters)):
            out.append((lname, group, f))
    return out


def filter_mask(problem: FlowProblem, group: Any, f: int) -> dict[str, Tensor]:
    """The subset θ_f: row f of the layer's weight and entry f of its bias (if any)."""
    out = {}
    for pname in (group.weight, group.bias):
        if pname is not None:
            mask = torch.zeros_like(problem.state.theta[pname], dtype=torch.bool)
            mask[f] = True
            out[pname] = mask
    return out


def _flow_link(
    claim_id: str,
    statement: str,
    measure: str,
    identity: str,
    from_derivative: Callable[[float, float], float],
) -> Callable[[CheckContext], list[ClaimResult]]:
    """A claim that ``measure``(f) = from_derivative(dᵏ‖θ_f‖²/dtᵏ, ‖g_f‖²) for each filter f.

    The derivative is the central-difference estimate of ``identity`` (E3: k = 1, E4: k = 2)
    on the integrated flow; ``from_derivative`` must be affine in it with slope ±½, so the
    study's scale and round-off floor are halved with it.
    """

    def run(ctx: CheckContext) -> list[ClaimResult]:
        out = []
        for problem in _ce_problems(ctx):
            problem.check_flow_budget()  # before anything else: skip a net too big
            scores = measures.score(problem.model, measure, problem.batches, **_score_opts(problem))
            for lname, group, f in _filter_subsets(problem):
                subset = filter_mask(problem, group, f)
                study = study_identity(problem, IDENTITIES[identity], subset)
                g_f = flow.restrict(problem.state.g, subset)
                gg = float(g_f @ g_f)
                linked = ConvergenceStudy(
                    steps=study.steps,
                    estimates=[from_derivative(d, gg) for d in study.estimates],
                    closed_form=float(scores[lname][f]),
                    scale=0.5 * study.scale,
                    floor=[0.5 * x for x in study.floor],
                )
                out.append(_study_result(claim_id, statement, linked, problem, f"{lname}[{f}]"))
        return out

    return run


_l1 = register(
    "L1", "taylor_fo(f) = |θ_fᵀg| = ½|d‖θ_f‖²/dt| on the integrated flow", group="measures"
)(_flow_link("L1", "taylor_fo(f) = ½|d‖θ_f‖²/dt|", "taylor_fo", "E3", lambda d, gg: 0.5 * abs(d)))
_l2 = register(
    "L2", "grasp(f) = θ_fᵀHg = ½ d²‖θ_f‖²/dt² − ‖g_f‖² on the integrated flow", group="measures"
)(_flow_link("L2", "grasp(f) = ½ d²‖θ_f‖²/dt² − ‖g_f‖²", "grasp", "E4", lambda d, gg: 0.5 * d - gg))


def _study_result(
    claim_id: str, statement: str, study: ConvergenceStudy, problem: FlowProblem, case: str
) -> ClaimResult:
    return study_result(
        claim_id,
        statement,
        study,
        f"{problem.name}/{case}",
        problem=problem.name,
        filter=case,
        temperature=problem.loss.temperature,
    )


# --------------------------------------------------------------------------------------------
# T1, T2: Taylor consistency of removal


def _removed(theta: Params, mask: dict[str, Tensor], s: float) -> Params:
    """θ − s·θ_f: the entries in ``mask`` scaled by (1 − s)."""
    out = dict(theta)
    for pname, m in mask.items():
        out[pname] = torch.where(m, (1 - s) * theta[pname], theta[pname])
    return out


def taylor_study(
    problem: FlowProblem, group: Any, f: int, which: str, levels: int = 4
) -> tuple[ConvergenceStudy, float, float]:
    """Difference quotients ΔQ(s)/s of removing s·θ_f, vs the first-order slope.

    ``which="loss"``: Q = L, slope −θ_fᵀg. ``which="grad_norm"``: Q = ‖g‖², slope −2θ_fᵀHg.
    The quotient's error is O(s) (the remainder is O(s²)), so the method order is 1.
    Returns the study, ΔQ(1) (full removal) and the first-order prediction at s = 1.
    """
    st = problem.state
    mask = filter_mask(problem, group, f)
    th_f = flow.restrict(st.theta, mask)
    if which == "loss":

        def q(p: Params) -> float:
            return problem.loss_at(p)

        slope = -float(th_f @ flow.restrict(st.g, mask))
        q0 = st.loss
        scale = float(th_f.norm() * flow.restrict(st.g, mask).norm())
    else:

        def q(p: Params) -> float:
            g = flow.gradient(problem.model, problem.batches, problem.loss, p)
            return float(flow.restrict(g).pow(2).sum())

        slope = -2 * float(th_f @ flow.restrict(st.hg, mask))
        q0 = float(flow.restrict(st.g).pow(2).sum())
        scale = 2 * float(th_f.norm() * flow.restrict(st.hg, mask).norm())
    full = q(_removed(st.theta, mask, 1.0)) - q0
    # round-off of one ΔQ: ε·|Q| or, where larger, the empirical reordering error of Q
    noise = max(EPS64 * abs(q0), problem.roundoff[which])
    study, ladder = refine_until_asymptotic(
        lambda s: (q(_removed(st.theta, mask, s)) - q0) / s,
        closed_form=slope,
        scale=max(scale, 1e-300),
        floor=lambda s: 10 * noise / s,
        h0=2.0**-3,
        levels=levels,
        method_order=1,
    )
    return study, full, slope


def _taylor_claim(claim_id: str, which: str, statement: str):
    def run(ctx: CheckContext) -> list[ClaimResult]:
        out = []
        for problem in _ce_problems(ctx):
            # a user model (max_layers set): one filter per visited layer, else two
            cases = _filter_subsets(problem, max_filters=1 if problem.max_layers else 2)
            # T1: ~8 levels of L (a forward ≈ ⅓ gradient); T2: ~8 levels of ‖g‖² per case
            per_case = 8 if which == "grad_norm" else 3
            problem.require_budget(claim_id, gradients=per_case * len(cases) + 1, hvs=1)
            for lname, group, f in cases:
                study, full, slope = taylor_study(problem, group, f, which)
                r = _study_result(claim_id, statement, study, problem, f"{lname}[{f}]")
                r.details.update(
                    remainder_order=(
                        None if study.observed_order is None else study.observed_order + 1
                    ),
                    change_at_s1=full,
                    first_order_at_s1=slope,
                    relative_error_at_s1=abs(full - slope) / max(abs(full), 1e-300),
                    sign_agrees_at_s1=(math.copysign(1, full) == math.copysign(1, slope)),
                )
                out.append(r)
        return out

    return run


register("T1", "removing s·θ_f changes L by −s·θ_fᵀg + O(s²)", group="measures")(
    _taylor_claim("T1", "loss", "removing s·θ_f changes L by −s·θ_fᵀg + O(s²)")
)
register("T2", "removing s·θ_f changes ‖g‖² by −2s·θ_fᵀHg + O(s²)", group="measures")(
    _taylor_claim("T2", "grad_norm", "removing s·θ_f changes ‖g‖² by −2s·θ_fᵀHg + O(s²)")
)


# --------------------------------------------------------------------------------------------
# G1: GraSP's sign convention


#: G1 on a problem with ``max_layers`` set (a user model) compares this many filters per layer.
G1_USER_FILTERS = 6


def _g1_filters(num_filters: int, max_layers: int | None) -> list[int]:
    """Every filter, or (``max_layers`` set, more than 8 filters) ``G1_USER_FILTERS`` spread
    evenly over the layer."""
    if max_layers is None or num_filters <= max(G1_USER_FILTERS, 8):
        return list(range(num_filters))
    k = G1_USER_FILTERS
    return sorted({round(i * (num_filters - 1) / (k - 1)) for i in range(k)})


@register(
    "G1", "the filter with the lowest θ_fᵀHg raises ‖g‖² most at first order", group="measures"
)
def _g1(ctx: CheckContext) -> list[ClaimResult]:
    """First-order change of ‖g‖² from removing filter f, by a central difference in s:
    d/ds ‖g(θ − sθ_f)‖² at s = 0 = −2θ_fᵀHg. GraSP prunes the lowest scores; the claim holds
    when that filter is the one whose removal raises ‖g‖² fastest, and the two orderings are
    exactly reversed (Kendall τ = −1 between score and measured rise)."""
    from scipy.stats import kendalltau

    out = []
    for problem in _ce_problems(ctx):
        rises = sum(
            len(_g1_filters(g.num_filters, problem.max_layers))
            for g in problem.case_groups.values()
            if g.num_filters >= 2
        )
        problem.require_budget("G1", gradients=2 * rises + 2, hvs=2)
        scores = measures.score(problem.model, "grasp", problem.batches, **_score_opts(problem))
        st = problem.state
        for lname, group in problem.case_groups.items():
            if group.num_filters < 2:
                continue
            filters = _g1_filters(group.num_filters, problem.max_layers)

            def gnorm(p: Params, pr: FlowProblem = problem) -> float:
                g = flow.gradient(pr.model, pr.batches, pr.loss, p)
                return float(flow.restrict(g).pow(2).sum())

            h = 1e-4
            masks = [filter_mask(problem, group, f) for f in filters]
            rise = [
                (gnorm(_removed(st.theta, m, h)) - gnorm(_removed(st.theta, m, -h))) / (2 * h)
                for m in masks
            ]
            sc = [float(scores[lname][f]) for f in filters]
            lowest = min(range(len(sc)), key=sc.__getitem__)
            steepest = max(range(len(rise)), key=rise.__getitem__)
            tau = float(kendalltau(sc, rise).statistic)
            out.append(
                ClaimResult(
                    id="G1",
                    statement="the filter with the lowest θ_fᵀHg raises ‖g‖² most (first order)",
                    kind="identity",
                    measured=float(steepest),
                    expected=float(lowest),
                    error=abs(tau + 1),
                    tolerance=0.0,
                    passed=lowest == steepest and tau <= -1 + 1e-12,  # τ is rational: ±ε
                    details={
                        "problem": problem.name,
                        "layer": lname,
                        "filters": filters,
                        "grasp": sc,
                        "d_gnorm_ds": rise,
                        "kendall_tau": tau,
                    },
                    case=f"{problem.name}/{lname}",
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# I1: invariances


def _same_ranking(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    flat_a = torch.cat([a[k] for k in a])
    flat_b = torch.cat([b[k] for k in a])
    return bool(torch.equal(torch.argsort(flat_a, stable=True), torch.argsort(flat_b, stable=True)))


@register(
    "I1",
    "rankings are invariant to a positive loss scale; magnitude ignores data; random is seeded",
    group="measures",
)
def _i1(ctx: CheckContext) -> list[ClaimResult]:
    out = []
    for problem in _ce_problems(ctx):
        opts = _score_opts(problem)
        # twice each: 3 one-gradient measures, 2 Hg measures (ḡ + Hg), fisher (per batch)
        problem.require_budget("I1", gradients=2 * (3 + 2 + len(problem.batches)), hvs=4)
        for name in (
            "loss_preservation",
            "taylor_fo",
            "biased_loss_preservation",
            "grasp",
            "gradient_norm_preservation",
            "fisher",
        ):
            base = measures.score(problem.model, name, problem.batches, **opts)
            scaled_opts = {**opts, "loss_scale": 7.5 * opts["loss_scale"]}
            scaled = measures.score(problem.model, name, problem.batches, **scaled_opts)
            ok = _same_ranking(base, scaled)
            out.append(_invariance(problem, f"{name}: loss × 7.5", ok))
        other = [(torch.randn_like(x), y) for x, y in problem.batches]
        m1 = measures.score(problem.model, "magnitude", problem.batches, **opts)
        m2 = measures.score(problem.model, "magnitude", other, **opts)
        out.append(
            _invariance(
                problem, "magnitude: other data", all(torch.equal(m1[k], m2[k]) for k in m1)
            )
        )
        r1 = measures.score(problem.model, "random", problem.batches, seed=3)
        r2 = measures.score(problem.model, "random", problem.batches, seed=3)
        r3 = measures.score(problem.model, "random", problem.batches, seed=4)
        same = all(torch.equal(r1[k], r2[k]) for k in r1)
        differs = any(not torch.equal(r1[k], r3[k]) for k in r1)
        out.append(
            _invariance(problem, "random: same seed same, other seed differs", same and differs)
        )
    return out


def _invariance(problem: FlowProblem, what: str, ok: bool) -> ClaimResult:
    return ClaimResult(
        id="I1",
        statement="rankings invariant to loss scale; magnitude ignores data; random is seeded",
        kind="identity",
        measured=float(ok),
        expected=1.0,
        error=0.0 if ok else 1.0,
        tolerance=0.0,
        passed=ok,
        details={"problem": problem.name, "check": what},
        case=f"{problem.name}/{what}",
    )
