"""Issue 12: every identity and measure claim compares quantities computed on the same samples.

The issue's net (two stride-2 conv → BatchNorm → tanh blocks, average pool, linear; 930
parameters; 10 classes; 3×32×32 inputs) with the default 16 samples: before the fix the Hg
measures used int(16/10) = 1 sample per class (10 samples) and the flow all 16, so G1 and L2
failed (L2 at observed order ≈ 0) although both identities hold.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gfverify import measures
from gfverify.claims.base import CLAIMS, load_all_claims
from gfverify.claims.measure_claims import SampleMismatch, _g1, _score_opts, assert_same_samples
from gfverify.claims.problems import CheckContext, FlowProblem, balance_classes, user_problem
from gfverify.errors import DataError
from gfverify.flow import LossSpec


def issue_net() -> nn.Module:
    """The net of issue 12 (930 parameters; one definition, in the check benchmark), seeded."""
    from benchmarks.bench_check import issue12_net

    torch.manual_seed(0)
    return issue12_net()


@pytest.fixture(scope="module")
def issue_problem() -> FlowProblem:
    return user_problem(
        issue_net(), (3, 32, 32), 10, samples=16, loss=LossSpec("cross_entropy", 5.0)
    )


def test_issue_net_has_930_parameters():
    assert sum(p.numel() for p in issue_net().parameters()) == 930


def test_user_problem_rounds_samples_up_to_balanced_classes(issue_problem):
    ys = torch.cat([y for _, y in issue_problem.batches])
    assert len(ys) == 20  # 16 rounded up to a multiple of 10
    assert torch.bincount(ys, minlength=10).tolist() == [2] * 10
    assert_same_samples(issue_problem)  # does not raise


def test_g1_and_l2_pass_on_the_issue_net_with_default_samples(issue_problem):
    """Failed before the fix: 8 of 8 cases (L2 observed order ≈ 0)."""
    load_all_claims()
    ctx = CheckContext(problems=[issue_problem], options={"user_model": True})
    results = CLAIMS["G1"].run(ctx) + CLAIMS["L2"].run(ctx)
    assert len(results) == 8
    bad = [(r.id, r.case, r.details.get("observed_order")) for r in results if not r.passed]
    assert not bad, bad
    for r in results:
        if r.id == "L2":
            assert abs(r.details["observed_order"] - 2) <= 0.5


def test_the_measure_side_sees_exactly_the_flow_samples(issue_problem):
    """GraSP at the problem's temperature equals θ_fᵀ(Hg)_f with Hg of the flow state itself."""
    scores = measures.score(
        issue_problem.model, "grasp", issue_problem.batches, **_score_opts(issue_problem)
    )
    st_ = issue_problem.state
    for lname, group in issue_problem.filter_groups.items():
        w = st_.theta[group.weight]
        hg = st_.hg[group.weight]
        direct = (w * hg).reshape(w.shape[0], -1).sum(1)
        if group.bias is not None:
            direct = direct + st_.theta[group.bias] * st_.hg[group.bias]
        torch.testing.assert_close(scores[lname], direct, rtol=1e-9, atol=1e-300)


def test_an_unbalanced_problem_is_refused_not_failed(issue_problem):
    """If the batches are made unbalanced after construction, the claims raise (→ an error
    record, exit 2) instead of comparing different samples (→ a false failure, exit 1)."""
    import copy

    p = copy.copy(issue_problem)
    p.batches = [(x[:7], y[:7]) for x, y in issue_problem.batches[:1]] + issue_problem.batches[1:]
    with pytest.raises(SampleMismatch, match="class counts"):
        _g1(CheckContext(problems=[p]))


def test_flow_problem_balances_unbalanced_cross_entropy_data():
    net = issue_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 32, 32, generator=gen)
    y = torch.arange(16) % 10  # classes 0-5 twice, 6-9 once
    p = FlowProblem(
        "unbalanced", net, [(x[:8], y[:8]), (x[8:], y[8:])], LossSpec("cross_entropy", 5.0)
    )
    ys = torch.cat([b[1] for b in p.batches])
    assert p.dropped_samples == 6
    assert torch.bincount(ys, minlength=10).tolist() == [1] * 10
    assert_same_samples(p)


@given(st.lists(st.integers(0, 3), min_size=4, max_size=40), st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_balance_classes_keeps_the_first_m_of_each_class_in_order(labels, batch_size):
    ys = torch.tensor(labels)
    xs = torch.arange(len(labels), dtype=torch.float64)[:, None]
    batches = [
        (xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, len(ys), batch_size)
    ]
    counts = torch.bincount(ys, minlength=4)
    if int(counts.min()) == 0:
        with pytest.raises(DataError, match="no sample"):
            balance_classes(batches, 4)
        return
    out, dropped = balance_classes(batches, 4)
    m = int(counts.min())
    kept_y = torch.cat([b[1] for b in out])
    kept_i = torch.cat([b[0] for b in out]).flatten().long()
    assert torch.bincount(kept_y, minlength=4).tolist() == [m] * 4
    assert dropped == len(labels) - 4 * m
    assert kept_i.tolist() == sorted(kept_i.tolist())  # data order kept
    expected = [i for i, c in enumerate(labels) if labels[: i + 1].count(c) <= m]
    assert kept_i.tolist() == expected
    # the Hg rule (first int(N/C) per class) now selects every kept sample
    picked = measures.class_balanced(out, 4, len(kept_y) // 4)
    assert sum(len(b[1]) for b in picked) == len(kept_y)
