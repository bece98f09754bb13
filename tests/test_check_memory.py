"""A user model's claim whose gradient would not fit in memory is skipped with its reason, not
killed by the kernel (MaxViT-T at 3×224×224 in float64 was)."""

from __future__ import annotations

import json

import torch
from torch import nn

from gfverify.claims import problems
from gfverify.claims.problems import user_problem
from gfverify.cli import main


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def _saved_bytes_directly(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def test_gradient_bytes_extrapolated_from_two_samples_equals_the_full_batch():
    """b(N) = b(1) + (N − 1)(b(2) − b(1)) is exact where every saved activation scales with the
    batch (conv input, tanh output, linear input) and each parameter is saved once."""
    problem = user_problem(_conv_model(), (3, 6, 6), num_classes=3, samples=12, budget_s=10.0)
    merged = torch.cat([x for x, _ in problem.batches])
    assert problem.gradient_bytes == _saved_bytes_directly(problem.model, merged)


def test_check_skips_a_claim_whose_gradient_would_not_fit_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(problems, "available_memory_bytes", lambda: 1_000)
    out = tmp_path / "check.json"
    factory = "tests.test_check_memory:_conv_model"
    code = main(
        ["check", "--quiet", "--model", factory, "--input-shape", "3,6,6", "--num-classes", "3",
         "--claims", "E4,M-grasp", "--json", str(out)]
    )  # fmt: skip
    records = json.loads(out.read_text())["results"]
    assert code == 0, records
    assert {r["id"] for r in records} == {"E4", "M-grasp"}
    for r in records:
        assert r["verdict"] == "skipped", r
        assert "GB available" in r["details"]["reason"], r


def test_the_memory_guard_is_silent_where_memory_suffices(tmp_path, monkeypatch):
    monkeypatch.setattr(problems, "available_memory_bytes", lambda: 10**12)
    out = tmp_path / "check.json"
    factory = "tests.test_check_memory:_conv_model"
    code = main(
        ["check", "--quiet", "--model", factory, "--input-shape", "3,6,6", "--num-classes", "3",
         "--claims", "M-grasp", "--budget", "600", "--json", str(out)]
    )  # fmt: skip
    records = json.loads(out.read_text())["results"]
    assert code == 0 and [r["verdict"] for r in records] == ["pass"] * len(records), records
