"""Claims P1 (the official schedule) and P2 (surgery equals the zeroed model): they pass on
gfverify's own code, and they fail when the schedule or the surgery is wrong."""

from __future__ import annotations

import json

import torch
from torch import nn

from gfverify import schedule
from gfverify.claims import pruning_claims
from gfverify.claims.problems import CheckContext, builtin_problems
from gfverify.cli import main


def _builtin_context() -> CheckContext:
    return CheckContext(problems=builtin_problems())


def test_P1_official_schedule_leaves_exactly_1_minus_P():
    results = pruning_claims._p1(CheckContext(problems=[]))
    assert len(results) == len(pruning_claims.P1_CASES)
    for r in results:
        assert r.passed, r.details
        assert all(r.details["exact_arithmetic"].values())
        assert r.error <= r.tolerance == pruning_claims._gamma(pruning_claims.P1_OPS)
        for got, want in r.details["remaining_filters_vs_round_N0_1_minus_P"].values():
            assert got == want


def test_P1_fails_when_the_per_round_fractions_drift(monkeypatch):
    """Fractions off by 1e-13 (≈ 450 ulps) are beyond γ₅ = 5.6e-16 and must be caught."""
    exact = schedule.official_fractions
    monkeypatch.setattr(
        schedule, "official_fractions", lambda p, n: [f * (1 + 1e-13) for f in exact(p, n)]
    )
    results = pruning_claims._p1(CheckContext(problems=[]))
    assert results and not any(r.passed for r in results)
    assert all(r.error > r.tolerance for r in results)


def test_P1_fails_with_the_official_truncating_counts(monkeypatch):
    """int(p_k · current) per round (the official VGG count) undershoots the target."""

    def truncating(total_original, total_current, sched, round_index):
        return schedule.official_filters_to_prune(total_current, sched.fractions()[round_index])

    monkeypatch.setattr(schedule, "filters_to_prune", truncating)
    results = pruning_claims._p1(CheckContext(problems=[]))
    failed = [r for r in results if not r.passed]
    assert failed
    for r in failed:
        counts = r.details["remaining_filters_vs_round_N0_1_minus_P"].values()
        assert any(got != want for got, want in counts)


def test_P2_pruned_model_equals_zeroed_model_on_the_builtin_nets():
    results = pruning_claims._p2(_builtin_context())
    n_problems = len(builtin_problems())
    assert len(results) == n_problems * len(pruning_claims.MODES) * len(pruning_claims.PLAN_SEEDS)
    for r in results:
        assert r.passed, r.details
        assert r.details["filters_planned"] > 0
        # the bound is at float32 rounding (u32 = 6e-8) of the output ...
        assert 0 < r.tolerance < 1e-5 * max(1.0, r.details["output_scale"])
        # ... while the measured error stays at float64 rounding, 2^29 times finer: the bound's
        # slack hides no error (2^9 of that factor left to the float64 error's fluctuation)
        assert r.error <= r.tolerance * 2.0**-20


def test_P2_fails_when_surgery_removes_the_wrong_filters(monkeypatch):
    """Surgery that removes each planned layer's filters shifted by one index must fail."""
    real = pruning_claims.prune_filters

    def off_by_one(model, plan, x, mode):
        widths = {n: m.weight.shape[0] for n, m in model.named_modules() if n in plan}
        shifted = {n: (torch.as_tensor(v) + 1) % widths[n] for n, v in plan.items()}
        return real(model, shifted, x, mode)

    monkeypatch.setattr(pruning_claims, "prune_filters", off_by_one)
    results = pruning_claims._p2(_builtin_context())
    assert not any(r.passed for r in results)
    assert all(r.error > 1e3 * r.tolerance for r in results)


def test_P2_does_not_pass_where_pruning_cannot_change_the_output():
    """A net whose ReLUs are all dead returns its bias for any plan: such a case can't fail,
    so it must not count as a pass."""
    torch.manual_seed(0)
    dead = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).double()
    dead[1].running_mean.fill_(1e3)  # every channel far below zero before the ReLU
    dead.eval()
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    plan = {"0": torch.tensor([0, 2])}
    case = pruning_claims.surgery_case(dead, x, "full", plan)
    assert case["error"] <= case["tolerance"] and case["effect"] == 0.0
    result = pruning_claims._p2_result("dead", "full", 0, case)
    assert not result.passed and result.details["informative"] is False
    assert result.verdict == "inconclusive" and "cannot tell" in result.details["reason"]


def test_P2_exceeding_the_bound_fails_even_where_the_effect_is_below_it():
    case = {"error": 2e-9, "tolerance": 1e-9, "effect": 0.0}
    result = pruning_claims._p2_result("m", "full", 0, case)
    assert result.verdict == "fail"


def _prunable_user_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.Tanh(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 3),
    )


def _check_p2(factory: str, input_shape: str, *extra: str) -> int:
    argv = ["check", "--claims", "P2", "--quiet", "--model", factory]
    return main([*argv, "--input-shape", input_shape, "--num-classes", "3", *extra])


def test_P2_runs_on_a_user_model_from_the_cli(capsys, tmp_path):
    out_json = tmp_path / "p2.json"
    factory = "tests.test_pruning_claims:_prunable_user_model"
    code = _check_p2(factory, "3,4,4", "--json", str(out_json))
    out = capsys.readouterr().out
    assert code == 0, out
    records = json.loads(out_json.read_text())["results"]
    assert len(records) == len(pruning_claims.MODES) * len(pruning_claims.PLAN_SEEDS)
    assert all(r["id"] == "P2" and r["passed"] for r in records)
    assert {r["details"]["model"] for r in records} == {"user-model"}


def test_P2_on_a_model_gfverify_cannot_prune_is_a_one_line_error(capsys):
    code = _check_p2("tests.test_identities:_tiny_model", "3,2,2")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "no prunable layer" in err and len(err.splitlines()) == 1, err


def _mnasnet0_75() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.mnasnet0_75(num_classes=10).eval()


def test_P2_bound_holds_on_a_torchvision_net_with_depthwise_bn_and_residual_adds(tmp_path):
    """torchvision's MnasNet-0.75 at 3×32×32, the torchvision record's input: the record's run
    (unseeded init) had a false failure under P2's old tolerance, an estimate (the float64
    error was 1.1× it). Here, seeded: every case is within the bound and still informative
    (the plan's effect above the bound), so a wrong surgery could fail it."""
    out_json = tmp_path / "p2.json"
    factory = "tests.test_pruning_claims:_mnasnet0_75"
    argv = ["check", "--claims", "P2", "--quiet", "--model", factory, "--input-shape", "3,32,32"]
    budget = ["--budget", "600"]  # all four cases, however loaded the machine
    code = main([*argv, "--num-classes", "10", *budget, "--json", str(out_json)])
    records = json.loads(out_json.read_text())["results"]
    assert code == 0, records
    assert len(records) == len(pruning_claims.MODES) * len(pruning_claims.PLAN_SEEDS)
    for r in records:
        assert r["passed"] and r["details"]["informative"], r
