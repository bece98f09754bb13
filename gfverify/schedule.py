"""Pruning schedules: what fraction of filters each round removes (spec/paper.md §2.2-6, §3.4).

With target ratio P (fraction of filters *removed* at the end) and n rounds, the official
schedule prunes in round k = 1..n the fraction

    p_k = P / (k·P + n·(1 − P))                         (of the *current* filters)

which leaves the cumulative remaining fraction

    r_k = Π_{j≤k} (1 − p_j) = n(1 − P) / (n(1 − P) + k·P),

so r_n = 1 − P exactly and 1/r_k is linear in k. Pruning is heavier early and lighter late.

Alternatives: manual cumulative thresholds [a, b, c, ...] (fractions pruned after each round,
converted to per-round fractions a, (b − a)/(1 − a), ...) and one-shot pruning ([P]).

Integer counts: :func:`filters_to_prune` aims every round at the cumulative *target* remaining
count round(N₀·r_k) against the ORIGINAL total N₀, so rounding never accumulates.
:func:`official_filters_to_prune` and :func:`official_resnet_cumulative_percent` reproduce the
official code's integer arithmetic (including ResNet's integer-percent truncation, §6.6).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gfverify.errors import ConfigError

#: The official README's range for ``--prune_percent`` is 0–95.
MAX_RATIO = 0.95

ScheduleKind = Literal["official", "thresholds", "one_shot"]


def _check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise ConfigError(f"pruning ratio must be a number in [0, {MAX_RATIO}], got {ratio!r}")
    if not 0.0 <= ratio <= MAX_RATIO:  # also rejects NaN
        raise ConfigError(
            f"pruning ratio {ratio!r} is outside [0, {MAX_RATIO}] (fraction of filters removed)"
        )
    return float(ratio)


def _check_rounds(rounds: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
        raise ConfigError(f"number of pruning rounds must be an integer >= 1, got {rounds!r}")
    return int(rounds)


def _check_cumulative(cumulative: Sequence[float], upper: float, closed: bool) -> list[float]:
    values = list(cumulative)
    if not values:
        raise ConfigError("pruning thresholds must be a non-empty list of cumulative fractions")
    for i, c in enumerate(values):
        if isinstance(c, bool) or not isinstance(c, numbers.Real):
            raise ConfigError(f"pruning threshold #{i} is not a number: {c!r}")
        inside = 0.0 < c <= upper if closed else 0.0 < c < upper
        if not inside:
            bracket = "]" if closed else ")"
            raise ConfigError(
                f"pruning threshold #{i} = {c!r} is outside (0, {upper}{bracket} "
                "(cumulative fraction pruned)"
            )
        if i > 0 and not c > values[i - 1]:
            raise ConfigError(
                f"pruning thresholds must be strictly increasing: #{i - 1} = {values[i - 1]!r}, "
                f"#{i} = {c!r}"
            )
    return [float(c) for c in values]


def official_fractions(ratio: float, rounds: int) -> list[float]:
    """Per-round fractions of the current filters, p_k = P / (k·P + n·(1 − P)), k = 1..n.

    The arithmetic mirrors the official ``main.py`` operation for operation
    (``p_total / (arange(1, n+1) * p_total + n_rounds * (1 - p_total))``), so the floats are
    bit-identical to the official ones.
    """
    p = _check_ratio(ratio)
    n = _check_rounds(rounds)
    return [p / (k * p + n * (1 - p)) for k in range(1, n + 1)]


def remaining_after(ratio: float, rounds: int, k: int) -> float:
    """Cumulative remaining fraction after k of n official rounds, r_k = n(1−P)/(n(1−P) + kP).

    r_0 = 1; at k = n the closed form equals 1 − P, and 1 − P is returned exactly (no
    round-off) so that integer targets computed from it are exact.
    """
    p = _check_ratio(ratio)
    n = _check_rounds(rounds)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= n:
        raise ConfigError(f"round count k must be an integer in [0, {n}], got {k!r}")
    if k == n:
        return 1.0 - p
    return n * (1 - p) / (n * (1 - p) + k * p)


def threshold_fractions(cumulative: Sequence[float]) -> list[float]:
    """Cumulative pruned fractions [c_1, c_2, ...] -> per-round fractions of the current filters.

    p_1 = c_1 and p_k = (c_k − c_{k−1}) / (1 − c_{k−1}), so that Π_{j≤k}(1 − p_j) = 1 − c_k
    (the official ``--thresholds`` conversion, with fractions instead of percentages). The
    thresholds must be strictly increasing and lie in (0, 1).
    """
    c = _check_cumulative(cumulative, 1.0, closed=False)
    return [c[0]] + [(c[i] - c[i - 1]) / (1 - c[i - 1]) for i in range(1, len(c))]


def one_shot(ratio: float) -> list[float]:
    """One round that removes the whole fraction: [P]."""
    return [_check_ratio(ratio)]


@dataclass(frozen=True)
class Schedule:
    """A pruning schedule.

    - ``official``: needs ``ratio`` (P) and ``rounds`` (n); fractions p_k = P/(kP + n(1−P)).
    - ``thresholds``: needs ``thresholds`` (cumulative fractions pruned, strictly increasing,
      within (0, 0.95]); ``ratio`` defaults to the last threshold and ``rounds`` to their number.
    - ``one_shot``: needs ``ratio``; ``rounds`` is 1.

    ``ratio`` is always the final fraction of filters removed and must lie in [0, 0.95].
    """

    kind: ScheduleKind = "official"
    ratio: float | None = None
    rounds: int | None = None
    thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "official":
            if self.ratio is None or self.rounds is None:
                raise ConfigError("an 'official' schedule needs both ratio and rounds")
            if self.thresholds:
                raise ConfigError("an 'official' schedule takes no thresholds")
            _check_ratio(self.ratio)
            _check_rounds(self.rounds)
        elif self.kind == "thresholds":
            t = tuple(_check_cumulative(self.thresholds, MAX_RATIO, closed=True))
            object.__setattr__(self, "thresholds", t)
            if self.ratio is None:
                object.__setattr__(self, "ratio", t[-1])
            elif _check_ratio(self.ratio) != t[-1]:
                raise ConfigError(
                    f"schedule ratio {self.ratio!r} disagrees with the last threshold {t[-1]!r}"
                )
            if self.rounds is None:
                object.__setattr__(self, "rounds", len(t))
            elif _check_rounds(self.rounds) != len(t):
                raise ConfigError(
                    f"schedule rounds {self.rounds!r} disagrees with the {len(t)} thresholds"
                )
        elif self.kind == "one_shot":
            if self.ratio is None:
                raise ConfigError("a 'one_shot' schedule needs a ratio")
            if self.thresholds:
                raise ConfigError("a 'one_shot' schedule takes no thresholds")
            _check_ratio(self.ratio)
            if self.rounds is None:
                object.__setattr__(self, "rounds", 1)
            elif self.rounds != 1:
                raise ConfigError(f"a 'one_shot' schedule has 1 round, got rounds={self.rounds!r}")
        else:
            raise ConfigError(
                f"unknown schedule kind {self.kind!r}; use 'official', 'thresholds' or 'one_shot'"
            )
        object.__setattr__(self, "ratio", float(self.ratio))

    def fractions(self) -> list[float]:
        """Per-round fractions p_k of the *current* filters, k = 1..n."""
        if self.kind == "official":
            return official_fractions(self.ratio, self.rounds)
        if self.kind == "thresholds":
            return threshold_fractions(self.thresholds)
        return one_shot(self.ratio)

    def cumulative_remaining(self) -> list[float]:
        """Remaining fractions r_1..r_n of the ORIGINAL filters after each round (r_n = 1 − P).

        Computed in closed form (official: n(1−P)/(n(1−P)+kP); thresholds: 1 − c_k;
        one-shot: [1 − P]), not by multiplying the per-round fractions, so there is no drift.
        """
        if self.kind == "official":
            return [remaining_after(self.ratio, self.rounds, k) for k in range(1, self.rounds + 1)]
        if self.kind == "thresholds":
            return [1.0 - c for c in self.thresholds]
        return [1.0 - self.ratio]


def filters_to_prune(
    total_original: int, total_current: int, schedule: Schedule, round_index: int
) -> int:
    """Filters to remove in round ``round_index`` (0-based: round k = round_index + 1).

    n_prune = max(0, total_current − round(total_original · r_k)), where r_k is the schedule's
    cumulative remaining fraction after round k, taken against the ORIGINAL total. Every round
    aims at the same closed-form target, so rounding errors never accumulate, a round that fell
    short (floors, protected layers) is caught up in the next one, and after the last round
    exactly round(total_original · (1 − P)) filters remain whenever the floors allow it.
    (``round`` is Python's, i.e. halves go to the even integer.)

    Contrast with the official code:

    - VGG / MobileNet prune int(p_k · current) each round (:func:`official_filters_to_prune`):
      the truncation compounds, so fewer filters are removed than the target (remaining ≥
      N₀ · (1 − P)), by a few filters over many rounds.
    - ResNet-56 drives pruning from ``p_cumulative = int(p_cumulative · (1 − p_k))``, an integer
      *percentage* truncated every round (:func:`official_resnet_cumulative_percent`,
      spec §6 item 6): with n = 25 a 75% target ends with 18% remaining (82% pruned).
    """
    for name, value in (("total_original", total_original), ("total_current", total_current)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if total_current > total_original:
        raise ConfigError(
            f"total_current ({total_current}) exceeds total_original ({total_original})"
        )
    rounds = schedule.rounds
    if isinstance(round_index, bool) or not isinstance(round_index, numbers.Integral):
        raise ConfigError(f"round_index must be an integer, got {round_index!r}")
    if not 0 <= round_index < rounds:
        raise ConfigError(f"round_index {round_index} is outside [0, {rounds - 1}] (0-based)")
    target = round(int(total_original) * schedule.cumulative_remaining()[round_index])
    return max(0, int(total_current) - target)


def official_filters_to_prune(total_current: int, p_k: float) -> int:
    """The official VGG/MobileNet count: n_prune = int(p_k · total_current) (truncation)."""
    if (
        isinstance(total_current, bool)
        or not isinstance(total_current, numbers.Integral)
        or total_current < 0
    ):
        raise ConfigError(f"total_current must be a non-negative integer, got {total_current!r}")
    if not 0.0 <= p_k <= 1.0:
        raise ConfigError(f"per-round fraction p_k must lie in [0, 1], got {p_k!r}")
    return int(p_k * total_current)


def official_resnet_cumulative_percent(ratio: float, rounds: int) -> list[int]:
    """The official ResNet ``p_cumulative`` after each round (integer percent remaining).

    c_0 = 100, c_k = int(c_{k−1} · (1 − p_k)) with the official p_k. The truncation to an
    integer percent every round overshoots the target (spec §6 item 6): with n = 25 the final
    values are 41, 32, 22, 18, 13, 2 for P = 0.5, 0.6, 0.7, 0.75, 0.8, 0.9.
    """
    c = 100
    out = []
    for p_k in official_fractions(ratio, rounds):
        c = int(c * (1 - p_k))
        out.append(c)
    return out


def official_resnet_round_fraction(p_cumulative: int, base_total: int, current_total: int) -> float:
    """The official ResNet per-round fraction of current BN channels (masked ones included).

    res_iter = 1 − (p_cumulative / 100) · (base_total / current_total); the official code then
    prunes int(res_iter · current_total) entries of the global ranking.
    """
    if current_total <= 0:
        raise ConfigError(f"current_total must be positive, got {current_total!r}")
    return 1 - (p_cumulative / 100) * (base_total / current_total)
