"""Tests for gfverify.ranking: global ascending ranking, floors, protection, ties, quirks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify.errors import ConfigError, GfverifyError
from gfverify.ranking import (
    PruningPlan,
    default_floor,
    duplicate_tied,
    plan_from_fraction,
    plan_global,
    total_entries,
)

# --- strategies and independent references --------------------------------------------------

small_scores = st.integers(min_value=-3, max_value=3).map(float)  # many ties
wide_scores = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@st.composite
def problems(draw):
    """A random ranking problem: layers with scores, floors, protection, n_prune."""
    scores = draw(st.sampled_from([small_scores, wide_scores]))
    n_layers = draw(st.integers(min_value=1, max_value=5))
    layers: dict[str, list[float]] = {}
    floors: dict[str, int] = {}
    for i in range(n_layers):
        name = f"L{i}"
        layers[name] = draw(st.lists(scores, min_size=0, max_size=25))
        floors[name] = draw(st.integers(min_value=0, max_value=8))
    protected = {n for n in layers if draw(st.booleans()) and draw(st.booleans())}
    total = sum(len(s) for s in layers.values())
    n_prune = draw(st.integers(min_value=0, max_value=total + 3))
    floor_by = draw(st.sampled_from(["importance", "index"]))
    return layers, floors, protected, n_prune, floor_by


def floor_set(s: list[float], f: int, floor_by: str) -> set[int]:
    """Indices a layer keeps unconditionally (plain Python, independent of the module)."""
    w = len(s)
    f = min(f, w)
    if floor_by == "index":
        return set(range(w - f, w))
    order = sorted(range(w), key=lambda i: (s[i], i))
    return set(order[w - f :])


def reference_plan(layers, floors, protected, n_prune, floor_by) -> dict[str, list[int]]:
    """Brute force: sort (score, layer position, index) tuples of all candidates."""
    cands = []
    for pos, (name, s) in enumerate(layers.items()):
        if name in protected:
            continue
        fixed = floor_set(s, floors[name], floor_by)
        cands += [(s[i], pos, i, name) for i in range(len(s)) if i not in fixed]
    cands.sort()
    out: dict[str, list[int]] = {name: [] for name in layers}
    for _, _, i, name in cands[:n_prune]:
        out[name].append(i)
    return {name: sorted(v) for name, v in out.items()}


def as_tensors(layers: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(s, dtype=torch.float64) for name, s in layers.items()}


def official_numpy(layer_scores, original_widths, n_prune, protected_ids=(), dup_of=None):
    """Re-statement of the official main.py / pruner.py ranking (imp_order, constrain_ratios,
    argsort, prune_list). ``dup_of[i] = j`` makes entry-layer i a duplicate of layer j
    (MobileNet). Returns the per-entry-layer sorted pruned indices. A stable argsort is used
    so that ties between a layer and its duplicate are broken by entry-layer order."""
    dup_of = dup_of or {}
    imp_order = np.array([[], [], []]).transpose()
    for lid, s in enumerate(layer_scores):
        if lid in dup_of:
            s = imp_order[imp_order[:, 0] == dup_of[lid], 2]
        s = np.asarray(s, dtype=float)
        rows = np.array([np.repeat([lid], s.shape[0]), np.arange(s.shape[0]), s]).transpose()
        imp_order = np.concatenate((imp_order, rows), 0)
        if lid in protected_ids:
            imp_order[imp_order[:, 0] == lid, 2] = 1e7
    # constrain_ratios
    lids = np.unique(imp_order[:, 0])
    constraints = (0.05 * np.asarray(original_widths)).astype(int) + 1
    for lid_ind, lid in enumerate(lids):
        inds = np.where(imp_order[:, 0] == lid)
        imp_order[inds[0][-constraints[lid_ind] :], 2] = 1e7
    temp_order = imp_order[np.argsort(imp_order[:, 2], kind="stable")]
    prune_list = temp_order[0:n_prune]
    return [
        np.sort(prune_list[prune_list[:, 0] == lid, 1].astype(int)).tolist()
        for lid in range(len(layer_scores))
    ]


# --- the floor ------------------------------------------------------------------------------


def test_default_floor_spec_values() -> None:
    assert [default_floor(w) for w in (64, 128, 256, 512)] == [4, 7, 13, 26]
    assert default_floor(1) == 1 and default_floor(19) == 1 and default_floor(20) == 2


def test_floor_uses_original_width_and_caps_at_current() -> None:
    scores = {"a": torch.arange(30.0), "b": torch.arange(10.0)}
    plan = plan_global(scores, 100, original_widths={"a": 512, "b": 10})
    # a: original 512 -> floor 26 of its 30 current; b: floor int(0.5)+1 = 1
    assert plan.remaining == {"a": 26, "b": 1}
    assert plan.shortfall == 100 - 4 - 9
    plan = plan_global({"a": torch.arange(20.0)}, 5, original_widths={"a": 512})
    assert plan.remaining == {"a": 20} and plan.shortfall == 5  # min(26, 20) kept


# --- global ranking: reference, order, floors, protection -----------------------------------


@settings(max_examples=300, deadline=None)
@given(problems())
def test_matches_bruteforce_reference(problem) -> None:
    layers, floors, protected, n_prune, floor_by = problem
    plan = plan_global(
        as_tensors(layers), n_prune, min_keep=floors, protected=protected, floor_by=floor_by
    )
    expected = reference_plan(layers, floors, protected, n_prune, floor_by)
    assert {k: v.tolist() for k, v in plan.remove.items()} == expected
    n_cand = sum(
        len(s) - len(floor_set(s, floors[n], floor_by))
        for n, s in layers.items()
        if n not in protected
    )
    assert plan.n_removed == plan.n_selected == min(n_prune, n_cand)
    assert plan.shortfall == max(0, n_prune - n_cand)


@settings(max_examples=300, deadline=None)
@given(problems())
def test_plan_invariants(problem) -> None:
    layers, floors, protected, n_prune, floor_by = problem
    plan = plan_global(
        as_tensors(layers), n_prune, min_keep=floors, protected=protected, floor_by=floor_by
    )
    assert set(plan.remove) == set(plan.keep) == set(plan.counts) == set(layers)
    removed_scores, kept_nonfloor = [], []
    for name, s in layers.items():
        rem, kep = plan.remove[name], plan.keep[name]
        assert rem.dtype == kep.dtype == torch.long
        assert torch.equal(rem, torch.sort(rem).values)
        assert torch.equal(kep, torch.sort(kep).values)
        assert sorted(rem.tolist() + kep.tolist()) == list(range(len(s)))
        assert plan.counts[name] == rem.numel()
        assert kep.numel() >= min(floors[name], len(s))  # floor respected
        if name in protected:
            assert rem.numel() == 0  # protected untouched
            continue
        fixed = floor_set(s, floors[name], floor_by)
        assert fixed <= set(kep.tolist())
        removed_scores += [s[i] for i in rem.tolist()]
        kept_nonfloor += [s[i] for i in kep.tolist() if i not in fixed]
    if plan.shortfall == 0:
        assert plan.n_removed == n_prune
    if removed_scores and kept_nonfloor:
        assert max(removed_scores) <= min(kept_nonfloor)  # global ascending order


def test_deterministic_ties_follow_layer_order_then_index() -> None:
    scores = {"b": torch.zeros(5), "a": torch.zeros(5)}
    plan = plan_global(scores, 7, min_keep={"a": 0, "b": 0})
    assert plan.remove["b"].tolist() == [0, 1, 2, 3, 4]  # "b" comes first in the dict
    assert plan.remove["a"].tolist() == [0, 1]
    again = plan_global({k: v.clone() for k, v in scores.items()}, 7, min_keep={"a": 0, "b": 0})
    assert {k: v.tolist() for k, v in again.remove.items()} == {
        k: v.tolist() for k, v in plan.remove.items()
    }
    # importance floor among tied scores keeps the highest indices
    plan = plan_global({"a": torch.zeros(6)}, 6, min_keep={"a": 2})
    assert plan.keep["a"].tolist() == [4, 5]


def test_input_dtypes_and_devices_do_not_matter() -> None:
    s32 = {"a": torch.tensor([3.0, 1.0, 2.0], dtype=torch.float32), "b": torch.tensor([0.5, 4.0])}
    s64 = {k: v.double() for k, v in s32.items()}
    p32 = plan_global(s32, 2, min_keep={"a": 0, "b": 0})
    p64 = plan_global(s64, 2, min_keep={"a": 0, "b": 0})
    assert p32.remove["a"].tolist() == p64.remove["a"].tolist() == [1]
    assert p32.remove["b"].tolist() == p64.remove["b"].tolist() == [0]


# --- official behaviour: index floor, protected stem, plan_from_fraction -------------------


def test_index_floor_handwritten_example() -> None:
    # a: original width 6 -> floor int(0.3)+1 = 1 (index 5); b: original 40 -> floor 3 (5,6,7)
    scores = {
        "a": torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.0]),
        "b": torch.tensor([0.2, 0.8, 0.05, 0.6, 0.4, 0.01, 0.02, 0.03]),
    }
    widths = {"a": 6, "b": 40}
    idx = plan_global(scores, 4, original_widths=widths, floor_by="index")
    # the highest indices survive although they hold the lowest scores
    assert idx.remove["a"].tolist() == [1, 3]
    assert idx.remove["b"].tolist() == [0, 2]
    imp = plan_global(scores, 4, original_widths=widths, floor_by="importance")
    assert imp.remove["a"].tolist() == [5]
    assert imp.remove["b"].tolist() == [5, 6, 7]
    # official: n_prune = int(0.3 * 14) = 4 over all entries, floors included
    frac = plan_from_fraction(scores, 0.3, original_widths=widths, floor_by="index")
    assert frac.n_requested == 4
    assert {k: v.tolist() for k, v in frac.remove.items()} == {"a": [1, 3], "b": [0, 2]}
    expected = official_numpy([scores["a"].tolist(), scores["b"].tolist()], [6, 40], 4)
    assert expected == [[1, 3], [0, 2]]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=5),
    st.floats(min_value=0.0, max_value=0.9),
    st.booleans(),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_index_floor_matches_official(widths, fraction, protect_first, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    names = [f"conv{i}" for i in range(len(widths))]
    scores = {n: torch.rand(w, generator=gen, dtype=torch.float64) for n, w in zip(names, widths)}
    original = {n: w + w // 2 for n, w in zip(names, widths)}  # pruned before: floor from orig
    protected = {names[0]} if protect_first else set()
    plan = plan_from_fraction(
        scores, fraction, original_widths=original, protected=protected, floor_by="index"
    )
    n_total = sum(widths)
    assert plan.n_requested == int(fraction * n_total)
    floors = [
        0 if n in protected else min(default_floor(original[n]), w) for n, w in zip(names, widths)
    ]
    if plan.n_requested > n_total - sum(
        w if n in protected else f for n, w, f in zip(names, widths, floors)
    ):
        return  # the official code would then start pruning its 1e7 entries: not comparable
    expected = official_numpy(
        [scores[n].tolist() for n in names],
        [original[n] for n in names],
        plan.n_requested,
        protected_ids={0} if protect_first else set(),
    )
    assert [plan.remove[n].tolist() for n in names] == expected


def test_protected_layer_counts_in_fraction_but_is_never_pruned() -> None:
    # ResNet-56 stem: its entries are in the official imp_order (count in N) but forced to 1e7
    scores = {"stem": torch.zeros(16), "block": torch.arange(16.0)}
    plan = plan_from_fraction(scores, 0.5, min_keep={"block": 1}, protected={"stem"})
    assert plan.n_requested == 16
    assert plan.remove["stem"].numel() == 0
    assert plan.remove["block"].tolist() == list(range(15))
    assert plan.shortfall == 1


# --- MobileNet: channels feeding a depthwise layer counted twice ----------------------------


def test_duplicate_tied_order_and_copies() -> None:
    scores = {"stem": torch.tensor([1.0, 2.0]), "pw1": torch.tensor([3.0]), "pw2": torch.ones(2)}
    dup = duplicate_tied(scores, {"stem": ["dw1"], "pw1": ["dw2"]})
    assert list(dup) == ["stem", "dw1", "pw1", "dw2", "pw2"]
    assert torch.equal(dup["dw1"], scores["stem"]) and dup["dw1"] is not scores["stem"]
    assert total_entries(scores, ties={"stem": ["dw1"], "pw1": ["dw2"]}, count_tied_twice=True) == 8
    assert total_entries(scores) == 5


def test_count_tied_twice_handwritten() -> None:
    scores = {
        "stem": torch.tensor([0.1, 0.9, 0.3, 0.8]),
        "pw1": torch.tensor([0.2, 0.7, 0.05, 0.6]),
    }
    ties = {"stem": ["dw1"]}
    common = dict(min_keep={"stem": 0, "pw1": 0}, ties=ties)
    plan = plan_global(scores, 4, count_tied_twice=True, **common)
    # ascending entries: pw1[2]=.05, stem[0]=.1, dw1[0]=.1, pw1[0]=.2 -> 4 entries, 3 removals
    assert plan.remove["stem"].tolist() == [0]
    assert plan.remove["pw1"].tolist() == [0, 2]
    assert plan.virtual_counts == {"dw1": 1}
    assert plan.n_selected == 4 and plan.n_removed == 3 and plan.shortfall == 0
    assert "dw1" not in plan.remove
    plain = plan_global(scores, 4, **common)  # ties ignored unless count_tied_twice
    assert plain.remove["stem"].tolist() == [0, 2]
    assert plain.remove["pw1"].tolist() == [0, 2]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=30), min_size=2, max_size=5),
    st.floats(min_value=0.0, max_value=0.8),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_count_tied_twice_matches_official_mobilenet(widths, fraction, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    names = ["stem"] + [f"pw{i}" for i in range(1, len(widths))]
    scores = {n: torch.rand(w, generator=gen, dtype=torch.float64) for n, w in zip(names, widths)}
    ties = {names[i]: [f"dw{i + 1}"] for i in range(len(names) - 1)}  # all but the last feed a dw
    original = dict(zip(names, widths))
    plan = plan_from_fraction(
        scores,
        fraction,
        original_widths=original,
        floor_by="index",
        ties=ties,
        count_tied_twice=True,
    )
    # official entry layers: stem, dw1, pw1, dw2, pw2, ..., each dw a copy of the layer before
    entry_scores, entry_widths, dup_of = [], [], {}
    for i, n in enumerate(names):
        entry_scores.append(scores[n].tolist())
        entry_widths.append(original[n])
        if i < len(names) - 1:
            dup_of[len(entry_scores)] = len(entry_scores) - 1
            entry_scores.append(None)
            entry_widths.append(original[n])
    assert plan.n_requested == int(fraction * (2 * sum(widths) - widths[-1]))
    n_cand = 2 * sum(w - min(default_floor(w), w) for w in widths[:-1]) + (
        widths[-1] - min(default_floor(widths[-1]), widths[-1])
    )
    if plan.n_requested > n_cand:
        return
    expected = official_numpy(entry_scores, entry_widths, plan.n_requested, dup_of=dup_of)
    real = [expected[2 * i] for i in range(len(names))]  # mobile_pruner reads even ids only
    assert [plan.remove[n].tolist() for n in names] == real
    assert [plan.virtual_counts[f"dw{i + 1}"] for i in range(len(names) - 1)] == [
        len(expected[2 * i + 1]) for i in range(len(names) - 1)
    ]


# --- shortfall and errors -------------------------------------------------------------------


def test_shortfall_reported_not_raised() -> None:
    scores = {"stem": torch.rand(8), "a": torch.rand(10), "b": torch.rand(4)}
    plan = plan_global(scores, 20, min_keep={"a": 3, "b": 10}, protected={"stem"})
    assert isinstance(plan, PruningPlan)
    assert plan.counts == {"stem": 0, "a": 7, "b": 0}
    assert plan.shortfall == 13 and plan.n_selected == 7
    assert plan.remaining == {"stem": 8, "a": 3, "b": 4}


def test_nan_scores_raise_naming_the_layer() -> None:
    scores = {"ok": torch.rand(3), "features.4": torch.tensor([0.1, float("nan")])}
    with pytest.raises(GfverifyError, match="features.4") as e:
        plan_global(scores, 1, min_keep={"ok": 0, "features.4": 0})
    assert "\n" not in str(e.value)


def test_infinite_scores_are_ranked() -> None:
    scores = {"a": torch.tensor([float("inf"), 0.0, float("-inf")])}
    plan = plan_global(scores, 2, min_keep={"a": 0})
    assert plan.remove["a"].tolist() == [1, 2]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: plan_global(s, -1, min_keep={"a": 0}),
        lambda s: plan_global(s, 1),  # no floor information
        lambda s: plan_global(s, 1, min_keep={"a": -1}),
        lambda s: plan_global(s, 1, min_keep={"a": 0}, protected={"typo"}),
        lambda s: plan_global(s, 1, min_keep={"a": 0, "zz": 1}),
        lambda s: plan_global(s, 1, original_widths={"a": 2}),  # original < current
        lambda s: plan_global(s, 1, min_keep={"a": 0}, floor_by="magnitude"),
        lambda s: plan_global(s, 1, min_keep={"a": 0}, count_tied_twice=True),
        lambda s: plan_global(s, 1, min_keep={"a": 0}, ties={"a": ["a"]}, count_tied_twice=True),
        lambda s: plan_global(s, 1, min_keep={"a": 0}, ties={"x": ["d"]}, count_tied_twice=True),
        lambda s: plan_global({"a": torch.zeros(2, 2)}, 1, min_keep={"a": 0}),
        lambda s: plan_from_fraction(s, 1.5, min_keep={"a": 0}),
    ],
)
def test_bad_input_raises_config_or_model_error(call) -> None:
    scores = {"a": torch.rand(4)}
    with pytest.raises(GfverifyError) as e:
        call(scores)
    assert "\n" not in str(e.value)


def test_bad_floor_is_config_error() -> None:
    with pytest.raises(ConfigError):
        default_floor(-1)
