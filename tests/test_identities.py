"""Identity claims E2–E5 and H1: the closed forms agree with the integrated flow, O(h²)."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify import flow
from gfverify.claims.identities import IDENTITIES, hvp_agreement, identity_result, study_identity
from gfverify.claims.problems import FlowProblem, builtin_problems, default_subsets
from gfverify.cli import main
from gfverify.models.small import SmallNetSpec
from tests.strategies import losses, small_nets


def _problem(spec, loss, samples=8, batch_size=4, levels=4):
    return FlowProblem("drawn", spec.build(), spec.data(samples, batch_size), loss, levels=levels)


def _report(r):
    d = r.details
    print(
        f"{r.id} {r.case}: rel.err {r.error:.2e} (tol {r.tolerance:.2e}), "
        f"order {d.get('observed_order')}"
    )


@given(small_nets(max_width=8), losses())
@settings(max_examples=6)
def test_E2_to_E5_hold_on_drawn_nets_with_order_two(spec, loss):
    problem = _problem(spec, loss)
    for claim_id, identity in IDENTITIES.items():
        subsets = problem.subsets.items() if identity.per_subset else [("all", None)]
        for name, subset in subsets:
            r = identity_result(problem, identity, name, subset)
            _report(r)
            assert r.passed, (claim_id, name, r.details)


@given(small_nets(max_width=6), losses(), st.integers(0, 10_000))
@settings(max_examples=4)
def test_E3_E4_hold_on_random_subsets(spec, loss, seed):
    problem = _problem(spec, loss)
    subsets = default_subsets(flow.trainable_params(problem.model), seed=seed)
    for claim_id in ("E3", "E4"):
        r = identity_result(problem, IDENTITIES[claim_id], "random30%", subsets["random30%"])
        _report(r)
        assert r.passed


@pytest.fixture(scope="module")
def cnn_problem():
    return builtin_problems()[0]


@pytest.mark.parametrize(
    "claim_id, wrong",
    [
        ("E2", lambda s, p: -flow.time_derivatives(s).loss_rate),  # flipped sign
        ("E3", lambda s, p: -flow.time_derivatives(s, p).norm_rate),  # flipped sign
        (
            "E4",
            lambda s, p: (
                flow.time_derivatives(s, p).norm_accel  # dropped the 2‖g‖² term
                - 2 * float(flow.restrict(s.g, p) @ flow.restrict(s.g, p))
            ),
        ),
        ("E5", lambda s, p: -flow.time_derivatives(s).grad_norm_rate / 2),  # wrong factor
    ],
)
def test_checker_rejects_a_wrong_closed_form(cnn_problem, claim_id, wrong):
    spec = dataclasses.replace(IDENTITIES[claim_id], closed_form=wrong)
    r = identity_result(cnn_problem, spec, "all", None)
    _report(r)
    assert not r.passed
    assert r.error > r.tolerance


def test_a_first_order_difference_shows_order_one_and_fails(cnn_problem):
    """A one-sided (Euler-like) difference has error O(h): the order check must see it."""
    study = study_identity(cnn_problem, IDENTITIES["E3"], None)
    forward = [
        (
            float(flow.restrict(p).pow(2).sum())
            - float(flow.restrict(cnn_problem.state.theta).pow(2).sum())
        )
        / h
        for (p, _), h in zip(cnn_problem.points, cnn_problem.steps)
    ]
    one_sided = dataclasses.replace(study, estimates=forward)
    print("orders of a forward difference:", one_sided.orders)
    assert one_sided.observed_order is not None and abs(one_sided.observed_order - 1) < 0.3
    assert not one_sided.passed


def test_identity_study_reports_order_two(cnn_problem):
    study = study_identity(cnn_problem, IDENTITIES["E4"], None)
    print("E4 errors", study.relative_errors, "orders", study.orders)
    assert abs(study.observed_order - 2) < 0.1
    assert all(a > b for a, b in zip(study.errors, study.errors[1:]))  # shrinks with h


@given(small_nets(max_width=10), losses())
@settings(max_examples=8)
def test_H1_every_hvp_method_agrees(spec, loss):
    problem = _problem(spec, loss, levels=3)
    r = hvp_agreement(problem, problem.state.g, "g")
    errors = {k: v for k, v in r.details.items() if k.startswith("rel_error_")}
    print(errors)
    assert set(errors) == {
        "rel_error_double_backward",
        "rel_error_fd_richardson",
        "rel_error_forward_over_reverse",
        "rel_error_reverse_over_forward",
    }
    assert r.passed, r.details


def test_relu_net_is_flagged_when_a_kink_breaks_the_order():
    from gfverify.claims.problems import has_kinks

    spec = SmallNetSpec(kind="cnn", widths=(3,), activation="relu", image_size=4)
    assert has_kinks(spec.build())
    assert not has_kinks(SmallNetSpec(kind="cnn", widths=(3,), activation="tanh").build())


def test_cli_check_writes_json_with_orders(tmp_path, capsys):
    out = tmp_path / "claims.json"
    code = main(["check", "--claims", "E3,E5", "--json", str(out), "--quiet"])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["schema_version"] == 1
    results = payload["results"]
    assert {r["id"] for r in results} == {"E3", "E5"}
    for r in results:
        assert r["passed"] and abs(r["details"]["observed_order"] - 2) < 0.5
    assert "E3" in capsys.readouterr().out


def _no_params():
    import torch

    return torch.nn.Flatten()


def _tiny_model():
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "no.such.module:f", "--input-shape", "3,2,2", "--num-classes", "3"],
            "no.such.module",
        ),
        (
            [
                "--model",
                "tests.test_identities:_no_params",
                "--input-shape",
                "3,2,2",
                "--num-classes",
                "3",
            ],
            "no trainable parameters",
        ),
        (
            [
                "--model",
                "tests.test_identities:_tiny_model",
                "--input-shape",
                "3,5,5",
                "--num-classes",
                "3",
            ],
            "cannot take inputs of shape",
        ),
        (
            [
                "--model",
                "tests.test_identities:_tiny_model",
                "--input-shape",
                "3,2,2",
                "--num-classes",
                "4",
            ],
            "expected (2, 4)",
        ),
        (
            [
                "--model",
                "tests.test_identities:_tiny_model",
                "--input-shape",
                "3,a",
                "--num-classes",
                "4",
            ],
            "--input-shape",
        ),
    ],
)
def test_cli_check_bad_user_model_gives_one_line_error(args, message, capsys):
    code = main(["check", "--claims", "E3", "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err


def test_cli_check_on_a_user_model(capsys):
    code = main(
        [
            "check",
            "--claims",
            "E2,H1",
            "--quiet",
            "--model",
            "tests.test_identities:_tiny_model",
            "--input-shape",
            "3,2,2",
            "--num-classes",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "user-model" in out
