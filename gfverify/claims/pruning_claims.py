"""Claims about the pruning machinery itself: the schedule (P1) and physical surgery (P2).

- P1: the official schedule p_k = P / (kP + n(1 − P)) leaves r_k = Π_{j≤k}(1 − p_j) =
  n(1 − P)/(n(1 − P) + kP) of the filters after round k, so r_n = 1 − P and 1/r_k is linear
  in k with slope P / (n(1 − P)). Checked in exact rational arithmetic (``fractions.Fraction``
  of the float P, so no rounding at all), then the float implementation against the exact
  values (its error bound is derived from its operation count), then the integer filter counts
  of :func:`gfverify.schedule.filters_to_prune` round by round: after the last round exactly
  round(N₀(1 − P)) filters remain.
- P2: in eval mode the physically pruned model computes what the unpruned model computes with
  the pruned channels zeroed (at the consumers' inputs for removed channels, after the BN for
  masked ones: :func:`gfverify.surgery.pruning_reference`), in ``full`` and ``paper`` modes,
  on seeded random plans (half of every prunable layer's filters), for each problem's model
  (a user's model under ``--model``) and, with ``--scale paper`` on the built-in problems, the
  paper's three CIFAR nets at 1/8 width. BatchNorm statistics are first calibrated on the
  input (:func:`~gfverify.claims.problems.calibrated_batchnorm`), and a case passes only if the
  plan changes the output beyond rounding: on a fresh net whose activations died out, a wrong
  surgery would look right. The tolerance is a bound on the rounding error, from the float32
  twins' deviations (:func:`surgery_case`).
"""

from __future__ import annotations

import copy
import time
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn

from gfverify import schedule as sched
from gfverify.claims.base import ClaimResult, register
from gfverify.claims.problems import CheckContext, calibrated_batchnorm
from gfverify.surgery import Mode, prune_filters, pruning_reference, random_plan

#: Unit roundoffs of float64 and float32 (round to nearest): u = 2⁻ᵖ for p-bit significands.
U64 = 2.0**-53
U32 = 2.0**-24

# --------------------------------------------------------------------------------------------
# P1: the schedule

#: (P, n) cases: ratios up to the official maximum 0.95, rounds from one-shot to the official 25.
P1_CASES = tuple((p, n) for p in (0.25, 0.5, 0.6, 0.75, 0.9, 0.95) for n in (1, 3, 5, 25))
#: Filter totals for the integer counts: a small odd one, then the prunable filters of VGG-13
#: ×0.125 (368), ResNet-56 (2128), VGG-13 (2944) and MobileNet-V1 (5984).
P1_TOTALS = (7, 368, 2128, 2944, 5984)
#: Rounded operations in one evaluation of p_k = p / (k·p + n·(1 − p)) or of
#: r_k = n(1 − p) / (n(1 − p) + k·p): 1 − p, n·(…), k·p, +, /. Each is exact to a factor
#: (1 + δ), |δ| ≤ u, and every sum adds positive terms, so the relative error is at most
#: γ₅ = 5u / (1 − 5u) (Higham, Accuracy and Stability of Numerical Algorithms, Lemma 3.1).
P1_OPS = 5


def _gamma(k: int, u: float = U64) -> float:
    """γ_k = k·u / (1 − k·u): the bound on the relative error of k rounded operations."""
    return k * u / (1 - k * u)


def _rel(a: float, exact: Fraction) -> float:
    return float(abs(Fraction(a) - exact) / exact) if exact else abs(a)


def _p1_case(ratio: float, rounds: int) -> ClaimResult:
    p, n = Fraction(ratio), rounds
    exact_p = [p / (k * p + n * (1 - p)) for k in range(1, n + 1)]
    exact_r, product = [], Fraction(1)
    for p_k in exact_p:
        product *= 1 - p_k
        exact_r.append(product)
    closed = [n * (1 - p) / (n * (1 - p) + k * p) for k in range(1, n + 1)]
    inverse_steps = {1 / b - 1 / a for a, b in zip([Fraction(1), *exact_r], exact_r)}
    algebra = {
        "product_equals_closed_form": exact_r == closed,
        "remaining_after_n_is_1_minus_P": exact_r[-1] == 1 - p,
        "inverse_linear_in_k": inverse_steps == {p / (n * (1 - p))},
    }
    schedule = sched.Schedule("official", ratio=ratio, rounds=rounds)
    float_p, float_r = schedule.fractions(), schedule.cumulative_remaining()
    float_error = max(
        max(_rel(a, e) for a, e in zip(float_p, exact_p)),
        max(_rel(a, e) for a, e in zip(float_r, exact_r)),
    )
    tolerance = _gamma(P1_OPS)
    counts = {}
    for total in P1_TOTALS:
        current = total
        for i in range(rounds):
            current -= sched.filters_to_prune(total, current, schedule, i)
        counts[total] = (current, round(total * (1 - ratio)))
    passed = (
        all(algebra.values())
        and float_r[-1] == 1.0 - ratio
        and float_error <= tolerance
        and all(got == want for got, want in counts.values())
    )
    return ClaimResult(
        id="P1",
        statement="after n official rounds exactly 1 − P of the filters remain; 1/r_k is linear",
        kind="identity",
        measured=float_error,
        expected=0.0,
        error=float_error,
        tolerance=tolerance,
        passed=passed,
        details={
            "ratio": ratio,
            "rounds": rounds,
            "exact_arithmetic": algebra,
            "float_max_rel_error": float_error,
            "float_error_bound": f"gamma_{P1_OPS} = {tolerance:.3g}",
            "float_r_n_equals_1_minus_P": float_r[-1] == 1.0 - ratio,
            "remaining_filters_vs_round_N0_1_minus_P": {str(k): v for k, v in counts.items()},
        },
        case=f"P={ratio}/n={rounds}",
    )


@register(
    "P1",
    "official schedule: exactly 1 − P of the filters remain after n rounds; 1/r_k linear in k",
    group="pruning",
)
def _p1(ctx: CheckContext) -> list[ClaimResult]:
    return [_p1_case(p, n) for p, n in P1_CASES]


# --------------------------------------------------------------------------------------------
# P2: surgery


MODES: tuple[Mode, ...] = ("full", "paper")
PLAN_SEEDS = (0, 1)
#: Each planned layer loses this fraction of its filters (random ones, by the plan's seed).
PLAN_FRACTION = 0.5
#: The paper's nets at 1/8 width, checked with the built-in problems at ``--scale paper``.
PAPER_NETS = ("vgg13", "mobilenet_v1", "resnet56")


#: The one assumption of P2's bound: a float64 evaluation's error is at most 1/κ of its float32
#: twin's (RMS over the outputs). Their unit roundoffs differ by 2²⁹ ≈ 5·10⁸; measured on
#: torchvision's MnasNet-0.75, MobileNet-V3-Large and EfficientNet-B3 (12 plans each), P2's
#: float64 error is 0.8–1.6 × (u₆₄/u₃₂)·√(d_pruned² + d_ref²), so κ = 2 leaves eight orders of
#: magnitude of slack.
P2_KAPPA = 2.0


def _rms(t: Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def surgery_case(
    model: nn.Module, x: Tensor, mode: Mode, plan: dict[str, Tensor]
) -> dict[str, Any]:
    """Pruned vs zeroed-reference outputs in float64, against a bound on their rounding error.

    The model and input are first rounded to float32, so a float32 and a float64 copy compute
    the same function y. For each of the pruned and the reference model, ŷ is its float64 and
    ỹ its float32 evaluation, ‖·‖ the RMS over the output entries and d = ‖ỹ − ŷ‖ (measured).
    Assume ‖ŷ − y‖ ≤ ‖ỹ − y‖/κ (:data:`P2_KAPPA`). The triangle inequality gives
    ‖ỹ − y‖ ≤ d + ‖ỹ − y‖/κ, so ‖ŷ − y‖ ≤ d/(κ − 1); a right surgery has y_pruned = y_ref, so

        error = ‖ŷ_pruned − ŷ_ref‖ ≤ (d_pruned + d_ref)/(κ − 1) = tolerance.

    A bound, not an estimate: no false failure while the assumption holds. (P2 used to scale
    d by u₆₄/u₃₂ as an estimate of the float64 error; on torchvision's EfficientNet-B3 and
    MobileNet-V3-Large the float64 error is on average 1.2–1.3 × (u₆₄/u₃₂)·√(d_pruned² +
    d_ref²) (the cause is not established), and the max over the outputs it used fluctuates
    further: false failures.)
    ``float64_vs_scaled_float32`` keeps that ratio, error/((u₆₄/u₃₂)(d_pruned + d_ref)), as a
    diagnostic. The bound is ~10⁹ times looser than float64 rounding, but surgery only slices
    and copies tensors, so what it can get wrong (an index, a mask, a BatchNorm slice, a
    consumer's columns) moves the output by about one channel's effect, orders of magnitude
    above the bound (tested: an off-by-one surgery exceeds it by > 10³). ``effect`` =
    ‖unpruned − reference‖: how much the plan changes the function; a case whose effect is
    within the tolerance could not tell a wrong surgery from a right one, and does not pass.
    """
    m32 = copy.deepcopy(model).float().eval()
    m64 = copy.deepcopy(m32).double().eval()
    x32 = x.float()
    x64 = x32.double()
    out: dict[str, Tensor] = {}
    for tag, m, xx in (("32", m32, x32), ("64", m64, x64)):
        reference, pruned = copy.deepcopy(m), copy.deepcopy(m)
        prune_filters(pruned, plan, xx, mode)
        with torch.no_grad():
            with pruning_reference(reference, plan, xx, mode):
                out[f"reference{tag}"] = reference(xx).double()
            out[f"pruned{tag}"] = pruned(xx).double()
            out[f"unpruned{tag}"] = m(xx).double()

    error = out["pruned64"] - out["reference64"]
    deviation = _rms(out["pruned32"] - out["pruned64"]) + _rms(
        out["reference32"] - out["reference64"]
    )
    scaled = U64 / U32 * deviation
    return {
        "error": _rms(error),
        "tolerance": deviation / (P2_KAPPA - 1),
        "max_error": float(error.abs().max()),
        "float32_deviation": deviation,
        "float64_vs_scaled_float32": _rms(error) / scaled if scaled > 0 else None,
        "effect": _rms(out["unpruned64"] - out["reference64"]),
        "output_scale": float(out["reference64"].abs().max()),
        "filters_planned": sum(len(v) for v in plan.values()),
        "layers_planned": sum(1 for v in plan.values() if len(v)),
    }


def _p2_result(name: str, mode: Mode, seed: int, case: dict[str, Any]) -> ClaimResult:
    """One case's record: ``pass`` when the error is within the bound and the plan's effect is
    above it; ``fail`` when the error exceeds the bound; ``inconclusive`` when neither the
    error nor the effect exceeds it: the output does not see the plan (e.g. a zero-initialised
    classifier, as in torchvision's ViT), so the case could not fail."""
    within = case["error"] <= case["tolerance"]
    informative = case["effect"] > case["tolerance"]
    reason = {}
    if within and not informative:
        reason = {
            "reason": f"the plan does not change the output beyond the bound (effect "
            f"{case['effect']:.3g} <= tolerance {case['tolerance']:.3g}; a zero-initialised "
            "classifier?): this case cannot tell a wrong surgery from a right one"
        }
    return ClaimResult(
        id="P2",
        statement="the pruned model equals the unpruned one with the pruned channels zeroed",
        kind="identity",
        measured=case["error"],
        expected=0.0,
        error=case["error"],
        tolerance=case["tolerance"],
        passed=within and informative,
        details={
            "model": name,
            "mode": mode,
            "plan_seed": seed,
            "informative": informative,  # else it could not fail
            **reason,
            **case,
        },
        case=f"{name}/{mode}/plan{seed}",
        verdict="inconclusive" if within and not informative else None,
    )


def _p2_models(ctx: CheckContext) -> list[tuple[str, nn.Module, Tensor]]:
    """(name, model with BN calibrated on x, x): each problem's first batch; paper nets."""
    cases = [(p.name, p.model, p.batches[0][0]) for p in ctx.problems]
    if ctx.scale == "paper" and not ctx.options.get("user_model"):
        from gfverify.models import build_model

        gen = torch.Generator().manual_seed(0)
        for net in PAPER_NETS:
            torch.manual_seed(0)
            model = build_model(net, width_mult=0.125)
            cases.append((f"{net}x0.125", model, torch.randn(4, 3, 32, 32, generator=gen)))
    return [(name, calibrated_batchnorm(model, x), x) for name, model, x in cases]


@register(
    "P2",
    "surgery: the pruned model equals the masked model (channels zeroed), eval mode",
    group="pruning",
)
def _p2(ctx: CheckContext) -> list[ClaimResult]:
    """Every (model, plan seed, mode) case, modes alternating so both are covered first.

    Under a budget (a user model: ``--budget``) a case is started only while the elapsed time
    plus the mean time per case so far fits; the cases left are one ``skipped`` record.
    """
    budgets = [p.budget_s for p in ctx.problems if p.budget_s is not None]
    budget = min(budgets) if budgets else None
    cases = [(m, seed, mode) for m in _p2_models(ctx) for seed in PLAN_SEEDS for mode in MODES]
    out = []
    started = time.perf_counter()
    for i, ((name, model, x), seed, mode) in enumerate(cases):
        elapsed = time.perf_counter() - started
        if budget is not None and i > 0 and elapsed * (i + 1) / i > budget:
            left = ", ".join(f"{n}/{md}/plan{sd}" for (n, _, _), sd, md in cases[i:])
            out.append(_p2_skipped(left, elapsed, i, budget))
            break
        gen = torch.Generator().manual_seed(seed)
        plan = random_plan(model, x, mode, gen, fraction=PLAN_FRACTION)
        out.append(_p2_result(name, mode, seed, surgery_case(model, x, mode, plan)))
    return out


def _p2_skipped(left: str, elapsed: float, done: int, budget: float) -> ClaimResult:
    return ClaimResult(
        id="P2",
        statement="the pruned model equals the unpruned one with the pruned channels zeroed",
        kind="identity",
        measured=None,
        expected=None,
        error=None,
        tolerance=None,
        passed=False,
        details={
            "reason": f"{done} case(s) took {elapsed:.0f} s; the next would exceed the "
            f"per-claim budget of {budget:g} s (--budget): not run: {left}",
        },
        case="skipped",
        verdict="skipped",
    )
