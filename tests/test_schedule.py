"""Tests for gfverify.schedule: the per-round fractions, their identities and integer counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gfverify.errors import ConfigError
from gfverify.ranking import default_floor, plan_global
from gfverify.schedule import (
    Schedule,
    filters_to_prune,
    official_filters_to_prune,
    official_fractions,
    official_resnet_cumulative_percent,
    official_resnet_round_fraction,
    one_shot,
    remaining_after,
    threshold_fractions,
)

ratios = st.floats(min_value=0.01, max_value=0.95, allow_nan=False)
rounds = st.integers(min_value=1, max_value=60)


def _cumulative_thresholds(draw_list: list[float]) -> list[float]:
    """Strictly increasing values in (0, 0.95] built from positive increments."""
    total = sum(draw_list)
    out, acc = [], 0.0
    for x in draw_list:
        acc += x
        out.append(min(0.95, 0.95 * acc / total))
    return out


increments = st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=1, max_size=12)


# --- the spec's worked example (§2.2 item 6) -------------------------------------------------


def test_spec_example_n25_p075() -> None:
    p = official_fractions(0.75, 25)
    assert len(p) == 25
    assert round(p[0], 4) == 0.1071
    assert round(p[-1], 4) == 0.03
    got = [round(remaining_after(0.75, 25, k), 3) for k in (1, 5, 10, 25)]
    assert got == [0.893, 0.625, 0.455, 0.25]
    r = Schedule("official", 0.75, 25).cumulative_remaining()
    assert [round(r[k - 1], 3) for k in (1, 5, 10, 25)] == [0.893, 0.625, 0.455, 0.25]


def test_official_resnet_truncation_matches_spec() -> None:
    finals = {
        p: official_resnet_cumulative_percent(p, 25)[-1] for p in (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
    }
    assert finals == {0.5: 41, 0.6: 32, 0.7: 22, 0.75: 18, 0.8: 13, 0.9: 2}


# --- identities of the official schedule ----------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(ratios, rounds)
def test_official_identities(P: float, n: int) -> None:
    p = official_fractions(P, n)
    assert len(p) == n
    assert all(a >= b for a, b in zip(p, p[1:])), "fractions must not increase"
    assert math.isclose(p[0], P / (P + n * (1 - P)), rel_tol=1e-12)
    assert math.isclose(p[-1], P / n, rel_tol=1e-12)
    # r_k = prod(1 - p_j) matches the closed form, r_n = 1 - P
    prod = 1.0
    for k, pk in enumerate(p, start=1):
        prod *= 1 - pk
        assert math.isclose(prod, remaining_after(P, n, k), rel_tol=1e-12)
    assert abs(remaining_after(P, n, n) - (1 - P)) <= 1e-12
    assert abs(prod - (1 - P)) <= 1e-12
    # 1/r_k is linear in k with slope P / (n (1 - P))
    inv = [1 / remaining_after(P, n, k) for k in range(0, n + 1)]
    slope = P / (n * (1 - P))
    for k in range(n + 1):
        assert math.isclose(inv[k], 1 + k * slope, rel_tol=1e-12)


def test_zero_ratio_prunes_nothing() -> None:
    assert official_fractions(0.0, 5) == [0.0] * 5
    assert Schedule("official", 0.0, 5).cumulative_remaining() == [1.0] * 5


@settings(max_examples=100, deadline=None)
@given(ratios, rounds)
def test_official_resnet_overshoots_never_undershoots(P: float, n: int) -> None:
    c = official_resnet_cumulative_percent(P, n)
    assert len(c) == n
    assert all(a >= b for a, b in zip(c, c[1:]))
    for k, ck in enumerate(c, start=1):
        # truncation only ever removes more: c_k <= 100 r_k
        assert ck <= 100 * remaining_after(P, n, k) + 1e-9


def test_official_resnet_round_fraction() -> None:
    # first round: nothing masked yet, base == current -> 1 - p_cumulative/100
    assert math.isclose(official_resnet_round_fraction(89, 2000, 2000), 0.11)
    # later round with fewer current channels: fraction of current that must go
    assert math.isclose(official_resnet_round_fraction(50, 2000, 1600), 1 - 0.5 * 2000 / 1600)


# --- thresholds and one-shot -----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(increments)
def test_thresholds_round_trip(incs: list[float]) -> None:
    cum = _cumulative_thresholds(incs)
    assume(all(b > a for a, b in zip(cum, cum[1:])))
    p = threshold_fractions(cum)
    assert len(p) == len(cum)
    prod = 1.0
    for pk, ck in zip(p, cum):
        assert 0 < pk < 1
        prod *= 1 - pk
        assert math.isclose(1 - prod, ck, rel_tol=1e-12, abs_tol=1e-12)
    s = Schedule("thresholds", thresholds=tuple(cum))
    assert s.rounds == len(cum) and s.ratio == cum[-1]
    assert s.fractions() == p
    assert s.cumulative_remaining() == [1 - c for c in cum]


def test_threshold_fractions_example() -> None:
    p = threshold_fractions([0.2, 0.5, 0.8])
    assert p[0] == 0.2
    assert math.isclose(p[1], 0.3 / 0.8)
    assert math.isclose(p[2], 0.3 / 0.5)


def test_one_shot() -> None:
    assert one_shot(0.6) == [0.6]
    s = Schedule("one_shot", 0.6)
    assert s.rounds == 1 and s.fractions() == [0.6] and s.cumulative_remaining() == [0.4]


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, 0.951, 1.0, float("nan"), float("inf")])
def test_ratio_out_of_range(bad: float) -> None:
    with pytest.raises(ConfigError) as e:
        Schedule("official", bad, 10)
    assert "\n" not in str(e.value) and "ratio" in str(e.value)
    with pytest.raises(ConfigError):
        official_fractions(bad, 10)


def test_ratio_edges_accepted() -> None:
    Schedule("official", 0.0, 3)
    Schedule("official", 0.95, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kind="official", ratio=0.5, rounds=0),
        dict(kind="official", ratio=0.5),
        dict(kind="official", ratio=0.5, rounds=2.5),
        dict(kind="thresholds", thresholds=(0.3, 0.3)),
        dict(kind="thresholds", thresholds=(0.5, 0.3)),
        dict(kind="thresholds", thresholds=(0.0, 0.3)),
        dict(kind="thresholds", thresholds=(0.3, 0.96)),
        dict(kind="thresholds", thresholds=()),
        dict(kind="thresholds", thresholds=(0.3, 0.6), rounds=3),
        dict(kind="thresholds", thresholds=(0.3, 0.6), ratio=0.5),
        dict(kind="one_shot", ratio=0.5, rounds=2),
        dict(kind="gradual", ratio=0.5, rounds=2),
    ],
)
def test_schedule_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as e:
        Schedule(**kwargs)
    assert "\n" not in str(e.value)


def test_threshold_fractions_validation() -> None:
    with pytest.raises(ConfigError):
        threshold_fractions([0.2, 0.1])
    with pytest.raises(ConfigError):
        threshold_fractions([0.2, 1.0])
    with pytest.raises(ConfigError):
        threshold_fractions([])


# --- integer counts -------------------------------------------------------------------------


def _schedules(P: float, n: int, cum: list[float]) -> list[Schedule]:
    return [
        Schedule("official", P, n),
        Schedule("thresholds", thresholds=tuple(cum)),
        Schedule("one_shot", P),
    ]


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=20000), ratios, rounds, increments)
def test_counts_hit_each_target_exactly(total: int, P: float, n: int, incs: list[float]) -> None:
    cum = _cumulative_thresholds(incs)
    assume(all(b > a for a, b in zip(cum, cum[1:])))
    for sched in _schedules(P, n, cum):
        current = total
        targets = [round(total * r) for r in sched.cumulative_remaining()]
        for k in range(sched.rounds):
            count = filters_to_prune(total, current, sched, k)
            assert count >= 0
            current -= count
            assert current == targets[k]
        assert current == round(total * (1 - sched.ratio))


def test_counts_catch_up_after_a_short_round() -> None:
    s = Schedule("official", 0.75, 25)
    total = 1000
    first = filters_to_prune(total, total, s, 0)
    # pretend round 1 removed nothing (e.g. floors): round 2 removes both rounds' worth
    second = filters_to_prune(total, total, s, 1)
    assert second == total - round(total * remaining_after(0.75, 25, 2)) > first
    # current already below the target: prune nothing, never a negative count
    assert filters_to_prune(total, 10, s, 0) == 0


def test_official_counts_drift_above_target() -> None:
    # VGG-13 has 2,944 prunable filters; int(p_k * current) truncates every round.
    total = 2 * 64 + 2 * 128 + 2 * 256 + 4 * 512
    s = Schedule("official", 0.75, 25)
    current = total
    for pk in s.fractions():
        current -= official_filters_to_prune(current, pk)
    assert current > round(total * 0.25)  # official leaves more than the target
    ours = total
    for k in range(s.rounds):
        ours -= filters_to_prune(total, ours, s, k)
    assert ours == round(total * 0.25)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=20000), ratios, rounds)
def test_official_counts_never_remove_more_than_exact(total: int, P: float, n: int) -> None:
    current = total
    for k, pk in enumerate(official_fractions(P, n), start=1):
        count = official_filters_to_prune(current, pk)
        assert count == int(pk * current)
        current -= count
        # truncation: at most one filter below the exact compounded count, from float noise
        assert current >= total * remaining_after(P, n, k) - 1


def test_filters_to_prune_validation() -> None:
    s = Schedule("official", 0.5, 4)
    with pytest.raises(ConfigError):
        filters_to_prune(100, 101, s, 0)
    with pytest.raises(ConfigError):
        filters_to_prune(100, 100, s, 4)
    with pytest.raises(ConfigError):
        filters_to_prune(100, 100, s, -1)
    with pytest.raises(ConfigError):
        filters_to_prune(-1, 0, s, 0)


# --- counts distributed over layers by the global ranking -----------------------------------

layer_widths = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    layer_widths,
    ratios,
    st.integers(min_value=1, max_value=12),
    st.sampled_from(["importance", "index"]),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_schedule_with_global_ranking(
    widths: list[int], P: float, n: int, floor_by: str, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    names = [f"layer{i}" for i in range(len(widths))]
    original = dict(zip(names, widths))
    floors = {name: min(default_floor(w), w) for name, w in original.items()}
    total_floor = sum(floors.values())
    total0 = sum(widths)
    sched = Schedule("official", P, n)
    current = dict(original)
    for k, r in enumerate(sched.cumulative_remaining()):
        total = sum(current.values())
        count = filters_to_prune(total0, total, sched, k)
        scores = {name: torch.rand(w, generator=gen) for name, w in current.items()}
        plan = plan_global(scores, count, original_widths=original, floor_by=floor_by)
        current = plan.remaining
        target = round(total0 * r)
        # exact when the floors allow it; otherwise everything down to the floors goes
        assert sum(current.values()) == max(target, total_floor)
        assert plan.shortfall == max(0, total_floor - target)
        for name in names:
            assert current[name] >= floors[name]
    assert sum(current.values()) == max(round(total0 * (1 - P)), total_floor)
