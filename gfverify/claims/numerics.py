"""Finite-difference convergence studies: error, observed order and a tolerance from the order.

For a method of order p (central differences: p = 2), D(h) = D* + C·h^p + O(h^{p+2}). On a
ladder h_i = h₀·2^{-i}:

- the observed order between two levels is log₂(e_i / e_{i+1}) with e_i = |D(h_i) − closed|;
- the truncation error at the finest level is estimated from the ladder alone (Richardson):
  e_K ≈ |D(h_{K−1}) − D(h_K)| / (2^p − 1).

The tolerance is twice that estimate plus twice the round-off floor, so it is derived from the
method, not picked: a wrong closed form leaves an error that does not shrink with h, which
both the order test and the tolerance catch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gfverify.claims.base import ClaimResult


def central_first(q_plus: float, q_minus: float, h: float) -> float:
    """dQ/dt ≈ [Q(h) − Q(−h)] / 2h, error O(h²)."""
    return (q_plus - q_minus) / (2 * h)


def central_second(q_plus: float, q0: float, q_minus: float, h: float) -> float:
    """d²Q/dt² ≈ [Q(h) − 2Q(0) + Q(−h)] / h², error O(h²)."""
    return (q_plus - 2 * q0 + q_minus) / h**2


@dataclass(frozen=True)
class ConvergenceStudy:
    """Estimates D(h) on a ladder of steps against a closed form, with orders and a tolerance."""

    steps: list[float]
    estimates: list[float]
    closed_form: float
    scale: float
    floor: list[float]
    method_order: int = 2

    @property
    def errors(self) -> list[float]:
        """Absolute errors |D(h_i) − closed form|."""
        return [abs(d - self.closed_form) for d in self.estimates]

    @property
    def relative_errors(self) -> list[float]:
        """Errors divided by ``scale`` (the size of the terms that make up the closed form)."""
        return [e / self.scale for e in self.errors]

    @property
    def orders(self) -> list[float | None]:
        """log₂(e_i/e_{i+1}) for each pair of levels whose errors lie 10× above round-off."""
        out: list[float | None] = []
        e = self.errors
        for i in range(len(e) - 1):
            usable = e[i + 1] > 10 * self.floor[i + 1] and e[i] > 10 * self.floor[i]
            out.append(math.log2(e[i] / e[i + 1]) if usable and e[i + 1] > 0 else None)
        return out

    @property
    def observed_order(self) -> float | None:
        """Median of the usable pairwise orders (None when every error sits at round-off)."""
        usable = sorted(o for o in self.orders if o is not None)
        if not usable:
            return None
        mid = len(usable) // 2
        return usable[mid] if len(usable) % 2 else 0.5 * (usable[mid - 1] + usable[mid])

    @property
    def tolerance(self) -> float:
        """2 × Richardson estimate of the finest level's truncation error + 2 × round-off."""
        d = self.estimates
        richardson = abs(d[-2] - d[-1]) / (2**self.method_order - 1)
        return 2 * richardson + 2 * self.floor[-1]

    @property
    def extrapolated(self) -> float:
        """Richardson extrapolation of the two finest levels: error O(h^{p+2})."""
        d = self.estimates
        return d[-1] + (d[-1] - d[-2]) / (2**self.method_order - 1)

    @property
    def order_ok(self) -> bool:
        """The observed order is within ±0.5 of the method's order, or unresolvable (round-off)."""
        o = self.observed_order
        return o is None or abs(o - self.method_order) <= 0.5

    @property
    def passed(self) -> bool:
        """Finest error within the derived tolerance and the observed order as predicted."""
        return self.errors[-1] <= self.tolerance and self.order_ok

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers for ClaimResult.details."""
        d = asdict(self)
        d.update(
            errors=self.errors,
            relative_errors=self.relative_errors,
            orders=self.orders,
            observed_order=self.observed_order,
            tolerance=self.tolerance,
            extrapolated=self.extrapolated,
        )
        return d


def geometric_ladder(h0: float, levels: int) -> list[float]:
    """h₀, h₀/2, …, h₀/2^{levels−1}."""
    return [h0 / 2**i for i in range(levels)]


def relative(value: float, reference: float, scale: float | None = None) -> float:
    """|value − reference| / scale (scale defaults to |reference|, guarded against 0)."""
    s = abs(reference) if scale is None else scale
    return abs(value - reference) / max(s, 1e-300)


def max_relative_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """max_i |a_i − b_i| / max_i |b_i| (norm-relative, robust to entries near zero)."""
    num = max(abs(x - y) for x, y in zip(a, b))
    den = max(abs(y) for y in b)
    return num / max(den, 1e-300)


def refine_until_asymptotic(
    estimate: Callable[[float], float],
    closed_form: float,
    scale: float,
    floor: Callable[[float], float],
    h0: float,
    levels: int = 4,
    method_order: int = 2,
    max_levels: int = 16,
) -> tuple[ConvergenceStudy, list[float]]:
    """Halve h until the last ``levels`` estimates are in the asymptotic regime.

    D(h) − D* = C₁h^p + C₂h^{p+1} + …: when C₁ is small the higher terms dominate at moderate
    h and the observed order is not p yet. The ladder is extended (up to ``max_levels``) until
    the last ``levels`` points show order p ± 0.5, or their errors reach round-off. A wrong
    closed form never reaches that state, so it still fails. Returns the study over the last
    ``levels`` points and the steps of the whole ladder (for the record).
    """
    steps: list[float] = []
    estimates: list[float] = []
    h = h0
    study = None
    for _ in range(max_levels):
        steps.append(h)
        estimates.append(estimate(h))
        h /= 2
        if len(steps) < levels:
            continue
        study = ConvergenceStudy(
            steps=steps[-levels:],
            estimates=estimates[-levels:],
            closed_form=closed_form,
            scale=scale,
            floor=[floor(s) for s in steps[-levels:]],
            method_order=method_order,
        )
        usable = [o for o in study.orders if o is not None]
        at_floor = study.errors[-1] <= 10 * study.floor[-1]
        if at_floor or (len(usable) >= levels - 1 and study.order_ok):
            break
    assert study is not None
    return study, steps


def study_result(
    claim_id: str, statement: str, study: ConvergenceStudy, case: str, **details: Any
) -> ClaimResult:
    """An identity verdict from a convergence study: the finest estimate against the closed form.

    ``error`` is the finest relative error, ``tolerance`` the derived one (relative), and
    ``details`` the study's summary updated with the given ``details``.
    """
    summary = study.summary()
    summary.update(details)
    return ClaimResult(
        id=claim_id,
        statement=statement,
        kind="identity",
        measured=study.estimates[-1],
        expected=study.closed_form,
        error=study.relative_errors[-1],
        tolerance=study.tolerance / study.scale,
        passed=study.passed,
        details=summary,
        case=case,
    )
