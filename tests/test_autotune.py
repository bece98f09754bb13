"""Automatic choice of the fastest exact method (``flow.hvp(method="auto")``)."""

import pytest
import torch

from gfverify import autotune, flow
from gfverify.flow import LossSpec
from gfverify.models.small import SmallNetSpec


def _rel(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over all parameters."""
    ra, rb = flow.restrict(a), flow.restrict(b)
    return float((ra - rb).norm() / rb.norm())


class FakeClock:
    """A clock that advances only when a candidate 'works' for its cost."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.now = 0.0
        self.costs = costs
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def run(self, method: str) -> str:
        self.calls.append(method)
        if self.costs[method] < 0:
            raise RuntimeError(f"{method} is not supported here")
        self.now += self.costs[method]
        return f"result of {method}"


@pytest.fixture(autouse=True)
def _fresh_cache():
    autotune.forget()
    yield
    autotune.forget()


def test_the_fastest_candidate_is_chosen_and_its_timed_result_returned():
    clock = FakeClock({"a": 3.0, "b": 1.0, "c": 2.0})
    method, result = autotune.choose("case", ["a", "b", "c"], clock.run, clock)
    assert (method, result) == ("b", "result of b")
    assert clock.calls == ["a", "a", "b", "b", "c", "c"]  # one untimed warm-up each
    assert autotune.choices()["case"].seconds == {"a": 3.0, "b": 1.0, "c": 2.0}


def test_a_choice_is_remembered_per_case():
    clock = FakeClock({"a": 3.0, "b": 1.0})
    autotune.choose("case", ["a", "b"], clock.run, clock)
    clock.calls.clear()
    assert autotune.choose("case", ["a", "b"], clock.run, clock) == ("b", None)
    assert clock.calls == []
    autotune.choose("other case", ["a", "b"], clock.run, clock)
    assert len(clock.calls) == 4


def test_a_failing_candidate_is_skipped_and_all_failing_raises():
    clock = FakeClock({"a": -1.0, "b": 5.0})
    assert autotune.choose("case", ["a", "b"], clock.run, clock)[0] == "b"
    with pytest.raises(RuntimeError, match="not supported"):
        autotune.choose("case 2", ["a"], clock.run, clock)


def test_ties_go_to_the_first_candidate():
    clock = FakeClock({"a": 1.0, "b": 1.0})
    assert autotune.choose("case", ["a", "b"], clock.run, clock)[0] == "a"


def test_auto_hvp_equals_the_fixed_methods_in_float64():
    spec = SmallNetSpec(kind="cnn", depthwise=True, residual=True, seed=3)
    model = spec.build()
    batches = spec.data(9, 3)
    loss = LossSpec("cross_entropy", temperature=2.0)
    g = flow.gradient(model, batches, loss)
    g_auto, hv_auto = flow.hvp(model, batches, loss, g, method="auto")
    _, hv_rev = flow.hvp(model, batches, loss, g)
    _, hv_fwd = flow.hvp(model, batches, loss, g, method="forward_over_reverse")
    (choice,) = autotune.choices().values()
    assert choice.method in flow.WITH_GRADIENT and set(choice.seconds) == set(flow.WITH_GRADIENT)
    # the exact methods differ only by float64 rounding: norm-wise, as in test_flow
    assert _rel(hv_auto, hv_rev) <= 1e-12 and _rel(hv_auto, hv_fwd) <= 1e-12
    assert _rel(g_auto, g) <= 1e-12


def test_unknown_hvp_method_is_named_in_the_error():
    spec = SmallNetSpec(kind="mlp", seed=0)
    model = spec.build()
    batches = spec.data(4, 2)
    v = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    with pytest.raises(ValueError, match="'reverse_over_forward'"):
        flow.hvp(model, batches, LossSpec(), v, method="reverse_over_forward")


def test_auto_hessian_vector_chooses_among_all_three_methods():
    spec = SmallNetSpec(kind="cnn", depthwise=True, seed=4)
    model = spec.build()
    batches = spec.data(6, 3)
    loss = LossSpec("cross_entropy", temperature=3.0)
    g = flow.gradient(model, batches, loss)
    hv_auto = flow.hessian_vector(model, batches, loss, g, method="auto")
    _, hv_ref = flow.hvp(model, batches, loss, g)
    (choice,) = autotune.choices().values()
    assert set(choice.seconds) == set(flow.HV_METHODS)
    assert _rel(hv_auto, hv_ref) <= 1e-12
