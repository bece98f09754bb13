"""Decision rules of the statistical claims: paired t intervals, verdicts, rank correlation.

Every statistical claim reduces its experiment to one number per seed, d_i (a paired
difference, or a per-seed statistic such as a Kendall τ), oriented so that the paper's
prediction says E[d] > 0. With n seeds, mean d̄ and sample standard deviation s, the
two-sided (1 − α) interval is

    d̄ ± t_{1−α/2, n−1} · s / √n          (scipy.stats.t; α = 0.05 by default)

and the verdict is fixed by the rule chosen before any outcome is seen:

- ``superiority`` (the prediction is a direction): *supported* if the interval lies above 0,
  *contradicted* if it lies below 0, *inconclusive* otherwise.
- ``noninferiority`` with margin m > 0 (the prediction is "at least as good"): *supported* if
  the lower end is above −m, *contradicted* if the upper end is below −m (worse by more than
  the margin), *inconclusive* otherwise.

Either way a one-sided error rate of α/2 = 2.5 % per record under the null. Fewer than two
seeds, or a non-finite value, give *inconclusive*. With s = 0 (all seeds agree exactly) the
interval is the point d̄. The two-sided t-test p-value and an exact sign-test p-value are
reported with every interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from gfverify.claims.base import ClaimResult, Verdict

Rule = Literal["superiority", "noninferiority"]


@dataclass(frozen=True)
class Inference:
    """The outcome of one decision rule on per-seed values ``values`` (predicted E[d] > 0)."""

    effect: float
    ci_low: float
    ci_high: float
    n_seeds: int
    statistic: float
    p_value: float
    sign_test_p: float
    test: str
    rule: Rule
    margin: float
    alpha: float
    verdict: Verdict
    values: list[float]

    def to_details(self) -> dict:
        """The fields every statistical ClaimResult carries in ``details``."""
        return asdict(self)


def t_interval(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float, float, float]:
    """(mean, low, high, p): the two-sided t interval of the mean and the t-test p for mean 0.

    Needs n ≥ 2; with zero spread the interval collapses to the mean and p is 0 (or 1 when
    the mean is 0 too).
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    mean = float(x.mean())
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return mean, mean, mean, (1.0 if mean == 0.0 else 0.0)
    se = sd / math.sqrt(n)
    half = float(sps.t.ppf(1 - alpha / 2, n - 1)) * se
    p = float(2 * sps.t.sf(abs(mean / se), n - 1))
    return mean, mean - half, mean + half, p


def sign_test(values: Sequence[float]) -> float:
    """Exact two-sided binomial sign-test p-value for median 0 (zeros dropped)."""
    x = np.asarray(values, dtype=float)
    pos, neg = int((x > 0).sum()), int((x < 0).sum())
    if pos + neg == 0:
        return 1.0
    return float(sps.binomtest(pos, pos + neg, 0.5).pvalue)


def decide(
    values: Sequence[float],
    rule: Rule = "superiority",
    margin: float = 0.0,
    alpha: float = 0.05,
    test: str = "paired t (scipy.stats.t), two-sided 95% CI",
) -> Inference:
    """Apply the decision rule of the module docstring to per-seed values (predicted > 0)."""
    if rule not in ("superiority", "noninferiority"):
        raise ValueError(f"unknown decision rule {rule!r}")
    if rule == "noninferiority" and not margin > 0:
        raise ValueError(f"a non-inferiority rule needs a margin > 0, got {margin}")
    vals = [float(v) for v in values]
    n = len(vals)
    finite = n >= 2 and all(math.isfinite(v) for v in vals)
    if not finite:
        mean = float(np.mean(vals)) if n and all(math.isfinite(v) for v in vals) else math.nan
        return Inference(
            mean, math.nan, math.nan, n, math.nan, math.nan, math.nan, test, rule, margin, alpha,
            "inconclusive", vals,
        )  # fmt: skip
    mean, low, high, p = t_interval(vals, alpha)
    sd = float(np.std(vals, ddof=1))
    stat = mean / (sd / math.sqrt(n)) if sd > 0 else math.copysign(math.inf, mean or 1.0)
    threshold = -margin if rule == "noninferiority" else 0.0
    if low > threshold:
        verdict: Verdict = "supported"
    elif high < threshold:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Inference(
        mean, low, high, n, float(stat), p, sign_test(vals), test, rule, margin, alpha, verdict,
        vals,
    )  # fmt: skip


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b between two score vectors (scipy.stats.kendalltau); NaN if undefined."""
    if len(x) < 2:
        return math.nan
    tau = sps.kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic
    return float(tau) if tau is not None and math.isfinite(tau) else math.nan


def claim_result(
    claim_id: str,
    statement: str,
    case: str,
    inference: Inference,
    prediction: str,
    series: dict | None = None,
    settings: dict | None = None,
    **extra: object,
) -> ClaimResult:
    """A statistical :class:`ClaimResult` from an :class:`Inference`.

    ``measured`` = the effect (mean per-seed value, oriented so the prediction is > 0, or
    > −margin for non-inferiority); ``expected`` = +1.0, the predicted sign; ``passed`` =
    (verdict == "supported"). ``details`` holds the inference fields (effect, ci_low, ci_high,
    n_seeds, statistic, p_value, test, rule, margin, per-seed ``values``), ``prediction`` in
    words, the raw ``series`` behind it, the ``settings`` and any ``extra`` entries.
    """
    details = inference.to_details()
    details["prediction"] = prediction
    details["series"] = series or {}
    details["settings"] = settings or {}
    details.update(extra)
    return ClaimResult(
        id=claim_id,
        statement=statement,
        kind="statistical",
        measured=inference.effect,
        expected=1.0,
        error=None,
        tolerance=None,
        passed=inference.verdict == "supported",
        details=details,
        case=case,
        verdict=inference.verdict,
    )


def inconclusive_result(
    claim_id: str, statement: str, case: str, reason: str, **extra: object
) -> ClaimResult:
    """An *inconclusive* record that says why (missing runs, missing fields, ...)."""
    details: dict = {"reason": reason, "n_seeds": 0}
    details.update(extra)
    return ClaimResult(
        id=claim_id,
        statement=statement,
        kind="statistical",
        measured=None,
        expected=1.0,
        error=None,
        tolerance=None,
        passed=False,
        details=details,
        case=case,
        verdict="inconclusive",
    )
