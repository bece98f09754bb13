"""Importance measures: formulas, links to the flow, Taylor order, GraSP sign, invariances."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify import measures
from gfverify.claims.measure_claims import (
    FORMULA_CHECKED,
    _g1,
    _i1,
    _l1,
    _l2,
    _score_opts,
    reference_scores,
    taylor_study,
)
from gfverify.claims.problems import CheckContext, FlowProblem
from gfverify.errors import ConfigError, DataError, ModelError
from gfverify.flow import LossSpec
from gfverify.models.small import SmallNetSpec
from tests.strategies import small_nets

TEMPS = st.sampled_from([0.5, 1.0, 5.0, 200.0])


def _problem(spec, t=1.0, n=None):
    n = n or 4 * spec.num_classes
    return FlowProblem("drawn", spec.build(), spec.data(n, 5), LossSpec("cross_entropy", t))


@given(small_nets(kinds=("cnn",), max_width=8), TEMPS)
@settings(max_examples=10)
def test_every_measure_equals_its_formula(spec, t):
    problem = _problem(spec, t)
    for name in FORMULA_CHECKED:
        if name.startswith("bn_") and not spec.batchnorm:
            with pytest.raises(ModelError):
                measures.score(problem.model, name, problem.batches, **_score_opts(problem))
            continue
        mine = measures.score(problem.model, name, problem.batches, **_score_opts(problem))
        ref = reference_scores(problem, name)
        for k in ref:
            torch.testing.assert_close(mine[k], ref[k], rtol=1e-10, atol=1e-300)


def test_loss_preservation_and_taylor_fo_rank_differently_somewhere():
    """Σ|θg| and |Σθg| are different measures (spec §6.2): not the same ranking in general."""
    spec = SmallNetSpec(kind="cnn", widths=(12,), image_size=5, seed=7)
    p = _problem(spec, 1.0)
    a = measures.score(p.model, "loss_preservation", p.batches, **_score_opts(p))
    b = measures.score(p.model, "taylor_fo", p.batches, **_score_opts(p))
    assert all((a[k] >= b[k] - 1e-15).all() for k in a)  # triangle inequality
    assert any(not torch.equal(a[k].argsort(), b[k].argsort()) for k in a)


@given(small_nets(kinds=("cnn",), max_width=4), st.sampled_from([1.0, 5.0]))
@settings(max_examples=2)
def test_L1_L2_measures_are_time_derivatives_of_the_filter_norm(spec, t):
    ctx = CheckContext([_problem(spec, t)])
    for result in _l1(ctx) + _l2(ctx):
        print(
            result.id,
            result.case,
            f"{result.error:.2e} <= {result.tolerance:.2e}",
            result.details["observed_order"],
        )
        assert result.passed, result.details


@given(small_nets(kinds=("cnn",), max_width=6), TEMPS, st.sampled_from(["loss", "grad_norm"]))
@settings(max_examples=6)
def test_T1_T2_first_order_remainder_is_second_order(spec, t, which):
    problem = _problem(spec, t)
    from gfverify.groups import filter_groups

    group = next(iter(filter_groups(problem.model, problem.batches[0][0][:2]).values()))
    study, full, slope = taylor_study(problem, group, 0, which)
    print(which, study.relative_errors, study.orders, "s=1:", full, slope)
    assert study.passed, study.summary()


def test_T1_is_not_exact_at_full_removal():
    """At s = 1 (actual removal) the first-order estimate is off: reported, not assumed."""
    spec = SmallNetSpec(kind="cnn", widths=(4,), image_size=5, seed=1)
    problem = _problem(spec, 1.0)
    from gfverify.groups import filter_groups

    group = next(iter(filter_groups(problem.model, problem.batches[0][0][:2]).values()))
    _, full, slope = taylor_study(problem, group, 0, "loss")
    assert full != pytest.approx(slope, rel=1e-3)


@given(small_nets(kinds=("cnn",), max_width=8), TEMPS)
@settings(max_examples=5)
def test_G1_lowest_grasp_score_raises_gradient_norm_most(spec, t):
    for r in _g1(CheckContext([_problem(spec, t)])):
        assert r.passed, r.details


def test_G1_would_catch_a_flipped_sign(monkeypatch):
    spec = SmallNetSpec(kind="cnn", widths=(6,), image_size=5, seed=3)
    problem = _problem(spec, 1.0)
    original = measures.score

    def flipped(*a, **k):
        return {n: -v for n, v in original(*a, **k).items()}

    monkeypatch.setattr(measures, "score", flipped)
    results = _g1(CheckContext([problem]))
    assert results and not any(r.passed for r in results)


@given(small_nets(kinds=("cnn",), max_width=8), TEMPS)
@settings(max_examples=5)
def test_I1_invariances(spec, t):
    for r in _i1(CheckContext([_problem(spec, t)])):
        assert r.passed, r.case


def test_weight_granularity_shapes_and_snip_normalised():
    spec = SmallNetSpec(kind="cnn", widths=(3, 4), depthwise=True, image_size=4, seed=2)
    p = _problem(spec)
    w = measures.score(p.model, "snip", p.batches, granularity="weight", **_score_opts(p))
    mods = dict(p.model.named_modules())
    assert all(w[k].shape == mods[k].weight.shape for k in w)
    assert "classifier" in w
    assert sum(float(v.sum()) for v in w.values()) == pytest.approx(1.0, rel=1e-12)
    sf = measures.score(p.model, "synflow", p.batches, granularity="weight")
    assert all((v >= 0).all() for v in sf.values())
    mag = measures.score(p.model, "magnitude", p.batches, granularity="weight")
    assert all(torch.equal(mag[k], mods[k].weight.detach().abs()) for k in mag)


def test_include_bn_and_tied_add_their_terms():
    spec = SmallNetSpec(kind="cnn", widths=(3,), depthwise=True, image_size=4, seed=2)
    p = _problem(spec)
    plain = measures.score(p.model, "magnitude", p.batches)
    with_bn = measures.score(p.model, "magnitude", p.batches, include_bn=True)
    params = dict(p.model.named_parameters())
    from gfverify.groups import filter_groups

    groups = filter_groups(p.model, p.batches[0][0][:2])
    for name, g in groups.items():
        expect = (plain[name] ** 2 + params[g.bn_weight] ** 2 + params[g.bn_bias] ** 2).sqrt()
        torch.testing.assert_close(with_bn[name], expect.detach())
    tied_layer = next(n for n, g in groups.items() if g.tied)
    tied = measures.score(p.model, "l1", p.batches, include_tied=True)
    assert (tied[tied_layer] > measures.score(p.model, "l1", p.batches)[tied_layer]).all()


def test_unknown_measure_lists_valid_names():
    spec = SmallNetSpec(kind="cnn", widths=(2,), image_size=3)
    p = _problem(spec)
    with pytest.raises(ConfigError, match="valid measures: .*grasp"):
        measures.score(p.model, "grasp_plus", p.batches)


def test_unstructured_measure_refuses_filter_granularity():
    spec = SmallNetSpec(kind="cnn", widths=(2,), image_size=3)
    p = _problem(spec)
    with pytest.raises(ConfigError, match="granularity"):
        measures.score(p.model, "synflow", p.batches, granularity="filter")


def test_labels_out_of_range_are_rejected():
    spec = SmallNetSpec(kind="cnn", widths=(2,), image_size=3, num_classes=3)
    p = _problem(spec)
    bad = [(x, y + 5) for x, y in p.batches]
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\]"):
        measures.score(p.model, "loss_preservation", bad)


def test_model_without_prunable_layers_is_rejected():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    batches = [(torch.randn(6, 1, 2, 2, dtype=torch.float64), torch.arange(6) % 3)]
    with pytest.raises(ModelError):
        measures.score(model, "magnitude", batches)


def test_hg_measures_need_enough_samples_per_class():
    spec = SmallNetSpec(kind="cnn", widths=(2,), image_size=3, num_classes=3)
    p = _problem(spec)
    with pytest.raises(DataError, match="per class"):
        measures.score(p.model, "grasp", p.batches, samples=3000)


def test_gradient_measures_use_whole_batches_until_enough_samples():
    spec = SmallNetSpec(kind="cnn", widths=(3,), image_size=3)
    data = spec.data(30, 10)
    assert len(measures.first_batches(data, 11)) == 2
    assert len(measures.first_batches(data, 10)) == 1
    assert len(measures.first_batches(data, 1000)) == 3


@pytest.mark.parametrize(
    "opts",
    [
        {"compute_batch_size": 1},
        {"compute_batch_size": 7},
        {"hvp_method": "forward_over_reverse"},
        {"hvp_method": "reverse_over_reverse"},
        {"hvp_method": "auto"},
        {"whole_layer_grouped": False},
    ],
)
def test_hg_computation_options_change_only_rounding(opts):
    """How Hg is computed (batching, AD method, grouped-conv kernels) is not a modelling choice:
    scores equal the defaults' to float64 rounding on a net with depthwise convs."""
    spec = SmallNetSpec(kind="cnn", widths=(4, 4), depthwise=True, residual=True, seed=2)
    p = _problem(spec, t=5.0, n=12)
    base = measures.score(p.model, "grasp", p.batches, samples=12)
    other = measures.score(p.model, "grasp", p.batches, samples=12, **opts)
    for k in base:
        torch.testing.assert_close(other[k], base[k], rtol=1e-11, atol=1e-15)


def test_unknown_hvp_method_is_a_config_error_naming_the_valid_ones():
    spec = SmallNetSpec(kind="cnn", widths=(2,), image_size=3)
    p = _problem(spec)
    with pytest.raises(ConfigError, match="reverse_over_forward, reverse_over_reverse"):
        measures.score(p.model, "magnitude", p.batches, hvp_method="newton")


def test_compute_batch_size_defaults_to_128_on_cpu_and_rejects_bad_values():
    spec = SmallNetSpec(kind="cnn", widths=(2,), image_size=3)
    p = _problem(spec)
    inputs = measures.ScoringInputs(p.model, p.batches, {"compute_batch_size": None}, 3)
    assert inputs.compute_batch_size == measures.CPU_COMPUTE_BATCH == 128
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="compute_batch_size"):
            measures.score(p.model, "loss_preservation", p.batches, compute_batch_size=bad)


def test_describe_lists_every_measure():
    names = [row[0] for row in measures.describe()]
    assert names == list(measures.MEASURES)
    assert {
        "magnitude",
        "loss_preservation",
        "taylor_fo",
        "biased_loss_preservation",
        "grasp",
        "gradient_norm_preservation",
        "fisher",
        "bn_fisher",
        "l1",
        "bn_scale",
        "random",
        "snip",
        "synflow",
    } <= set(names)


def test_cli_measures_lists_formulas(capsys):
    from gfverify.cli import main

    assert main(["measures"]) == 0
    out = capsys.readouterr().out
    assert "gradient_norm_preservation" in out and "T = 200" in out
