"""Cost of the Hessian-gradient product Hg relative to one gradient g = ∇L.

Hg enters every second-order measure of the paper (d²‖θ‖²/dt² = 2‖g‖² + 2θᵀHg, GraSP,
gradient-norm preservation), so its price in gradients decides what is affordable. Cases:
ResNet-56 (eval mode, batch 128 of 3×32×32) and an MLP 3072→512→512→10 (batch 128), both
float32 on random data with cross-entropy loss.

Gradient (the denominator is the faster of the two, named in ``gradient.denominator``):

- ``torch_func_grad``: ``flow.gradient`` (``torch.func.grad`` of ``functional_call``)
- ``autograd_backward``: ``loss.backward()`` on the module's own parameters

Hessian-vector methods. "Hv given v" methods need g first, so Hg from scratch costs one
gradient plus their pass; "Hg from scratch" methods get g from the same pass:

- ``fwd_over_rev`` (Hv given v): ``flow.hvp(method="forward_over_reverse")`` =
  ``jvp(grad(L))``. It returns g as well, but the tangent v = g must be known before the pass
  starts, so g cannot come from it.
- ``double_backward`` (Hv given v): ``flow.hvp_double_backward``.
- ``rev_over_fwd`` (Hv given v): ``grad`` of the tangent output of ``jvp(L, θ, v)``, i.e.
  ∇_θ(∇L · v) with the directional derivative in forward mode (a candidate measured here,
  not offered by gfverify).
- ``auto`` (Hv given v): ``flow.hvp(method="auto")``; its first call times the exact methods
  and keeps the fastest (``auto_choice`` records which, and the trial seconds).
- ``double_backward_fused`` (Hg from scratch): one forward, a ``create_graph`` backward giving
  g, then ∇_θ(g · stopgrad(g)) = Hg by a second backward.
- ``rev_over_rev`` (Hg from scratch): ``vjp(grad(L))`` returns g and the pull-back u ↦ uᵀH;
  applied to g it gives gᵀH = (Hg)ᵀ since H is symmetric.
- ``linearize`` (Hg from scratch, MLP only): ``torch.func.linearize(grad(L))`` traces the
  jvp once, then applies it to g. Tracing ResNet-56 took 67-95 s per call on CPU in
  development, so it is skipped there (recorded as skipped, with the reason).

Per method: median/min seconds, ``pass_ratio`` = median pass time / median gradient time,
``hg_from_scratch_ratio`` (pass_ratio + 1 for "Hv given v" methods, pass_ratio otherwise),
``meets_3x_goal`` = hg_from_scratch_ratio ≤ 3, the same ratio from minimum times
(``hg_from_scratch_ratio_of_mins``: less sensitive to other processes' load), the first call's
time, and per-call medians of user/system CPU seconds and minor page faults. All methods are
timed round-robin in the same run. Agreement: each method's Hg against ``fwd_over_rev``'s, as
‖a − b‖/‖b‖ (float32), and the two gradients against each other.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize, vjp

from benchmarks import common
from gfverify import autotune, flow
from gfverify.flow import LossSpec, Params

GOAL_RATIO = 3.0
AGREE_RTOL = 1e-3  # float32 Hg of these nets agree to ~1e-7; 1e-3 flags a real discrepancy
SEED = 0


@dataclass(frozen=True)
class Case:
    """One network and batch to benchmark."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    batch: int
    repeats: int
    warmup: int
    with_linearize: bool
    linearize_skip_reason: str = ""


def _resnet56() -> nn.Module:
    from gfverify.models import build_model

    return build_model("resnet56", num_classes=10)


def _mlp() -> nn.Module:
    from gfverify.models.small import MLP

    return MLP(3072, [512, 512], 10)


def cases(quick: bool) -> list[Case]:
    """The benchmarked cases: full sizes, or (``quick``) smaller batches and fewer repeats."""
    skip = (
        "torch.func.linearize of ResNet-56 (batch 128) took 67-95 s per call on a 2-core CPU"
        " in development, about 40-60 gradients: not useful for a one-off Hg"
    )
    return [
        Case(
            "resnet56",
            _resnet56,
            (3, 32, 32),
            batch=32 if quick else 128,
            repeats=2 if quick else 5,
            warmup=0,
            with_linearize=False,
            linearize_skip_reason=skip,
        ),
        Case(
            "mlp_3072_512_512_10",
            _mlp,
            (3, 32, 32),
            batch=128,
            repeats=3 if quick else 20,
            warmup=1 if quick else 3,
            with_linearize=True,
        ),
    ]


# --------------------------------------------------------------------------------------------
# Methods not in gfverify.flow (each takes one batch; the model must already be in eval mode)


def _loss_fn(model: nn.Module, loss: LossSpec, x: Tensor, y: Tensor) -> Callable[[Params], Tensor]:
    buffers = dict(model.named_buffers())

    def f(params: Params) -> Tensor:
        return loss(functional_call(model, (params, buffers), (x,), strict=False), y)

    return f


def gradient_backward(model: nn.Module, loss: LossSpec, x: Tensor, y: Tensor) -> Params:
    """g = ∇_θ L by plain autograd: ``loss(model(x), y).backward()``; returns ``{name: grad}``."""
    model.zero_grad(set_to_none=True)
    loss(model(x), y).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def hg_double_backward_fused(
    model: nn.Module, loss: LossSpec, x: Tensor, y: Tensor, params: Params
) -> tuple[Params, Params]:
    """(g, Hg) in one pass: g = ∇L with ``create_graph``, then Hg = ∇_θ(g · stopgrad(g))."""
    names = list(params)
    leaves = {k: params[k].detach().requires_grad_(True) for k in names}
    value = _loss_fn(model, loss, x, y)(leaves)
    grads = torch.autograd.grad(value, [leaves[k] for k in names], create_graph=True)
    dot = sum((gk * gk.detach()).sum() for gk in grads)
    hg = torch.autograd.grad(dot, [leaves[k] for k in names], allow_unused=True)
    return (
        {k: gk.detach() for k, gk in zip(names, grads)},
        {k: (h if h is not None else torch.zeros_like(params[k])) for k, h in zip(names, hg)},
    )


def hg_reverse_over_reverse(
    model: nn.Module, loss: LossSpec, x: Tensor, y: Tensor, params: Params
) -> tuple[Params, Params]:
    """(g, Hg) by ``vjp(grad(L))``: the pull-back of g is gᵀH = (Hg)ᵀ (H symmetric)."""
    g, pull_back = vjp(grad(_loss_fn(model, loss, x, y)), params)
    (hg,) = pull_back(g)
    return g, hg


def hv_reverse_over_forward(
    model: nn.Module, loss: LossSpec, x: Tensor, y: Tensor, params: Params, v: Params
) -> Params:
    """Hv = ∇_θ(∇L · v) with the directional derivative ∇L · v by forward mode: ``grad`` of
    ``jvp(L, θ, v)``'s tangent output (not in gfverify: measured here as a candidate)."""
    f = _loss_fn(model, loss, x, y)
    return grad(lambda p: jvp(f, (p,), (v,))[1])(params)


def hg_linearize(
    model: nn.Module, loss: LossSpec, x: Tensor, y: Tensor, params: Params
) -> tuple[Params, Params]:
    """(g, Hg) by ``linearize(grad(L))``: trace the jvp of grad(L) at θ once, apply it to g."""
    g, push_forward = linearize(grad(_loss_fn(model, loss, x, y)), params)
    return g, push_forward(g)


# --------------------------------------------------------------------------------------------


def _recording(fn: Callable[[], Any], log: list[tuple[float, float, int]]) -> Callable[[], Any]:
    """``fn`` that appends (user CPU s, system CPU s, minor page faults) of each call to ``log``.

    Process-wide counters: CPU seconds sum over threads. Many minor page faults per call mean
    the call maps fresh memory every time (large buffers the allocator hands back to the OS).
    """

    def wrapped() -> Any:
        a = resource.getrusage(resource.RUSAGE_SELF)
        value = fn()
        b = resource.getrusage(resource.RUSAGE_SELF)
        log.append((b.ru_utime - a.ru_utime, b.ru_stime - a.ru_stime, b.ru_minflt - a.ru_minflt))
        return value

    return wrapped


def _rel_diff(a: Params, b: Params) -> float:
    va, vb = flow.restrict(a), flow.restrict(b)
    return float((va - vb).norm() / vb.norm().clamp_min(torch.finfo(vb.dtype).tiny))


def run_case(case: Case, device: torch.device) -> dict[str, Any]:
    """Time every method on ``case``; return timings, ratios, the fastest method, agreement."""
    torch.manual_seed(SEED)
    autotune.forget()
    model = case.build().to(device).eval()
    x = torch.randn(case.batch, *case.input_shape, device=device)
    y = torch.randint(0, 10, (case.batch,), device=device)
    batches = [(x, y)]
    loss = LossSpec("cross_entropy")
    params = flow.trainable_params(model)
    n_params = sum(p.numel() for p in params.values())

    ref: dict[str, Params] = {}  # g, set by the first call of torch_func_grad (runs first)
    fns: dict[str, Callable[[], Any]] = {
        "torch_func_grad": lambda: flow.gradient(model, batches, loss, params),
        "autograd_backward": lambda: gradient_backward(model, loss, x, y),
        "fwd_over_rev": lambda: flow.hvp(
            model, batches, loss, ref["g"], params, method="forward_over_reverse"
        ),
        "rev_over_fwd": lambda: hv_reverse_over_forward(model, loss, x, y, params, ref["g"]),
        "auto": lambda: flow.hvp(model, batches, loss, ref["g"], params, method="auto"),
        "double_backward": lambda: flow.hvp_double_backward(model, batches, loss, ref["g"], params),
        "double_backward_fused": lambda: hg_double_backward_fused(model, loss, x, y, params),
        "rev_over_rev": lambda: hg_reverse_over_reverse(model, loss, x, y, params),
    }
    if case.with_linearize:
        fns["linearize"] = lambda: hg_linearize(model, loss, x, y, params)

    # Agreement round, timed once: it is also the first warm-up round (first calls pay one-off
    # costs such as allocator growth and dispatcher caches), reported as ``first_call_s``.
    first_call: dict[str, float] = {}
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        out[name] = fn()
        first_call[name] = time.perf_counter() - start
        if name == "torch_func_grad":
            ref["g"] = out[name]
    hg_ref = out["fwd_over_rev"][1]
    rel = {
        name: _rel_diff(
            out[name] if name in ("double_backward", "rev_over_fwd") else out[name][1], hg_ref
        )
        for name in fns
        if name not in ("torch_func_grad", "autograd_backward", "fwd_over_rev")
    }
    grad_rel = _rel_diff(out["autograd_backward"], out["torch_func_grad"])
    del out

    usage: dict[str, list[tuple[float, float, int]]] = {name: [] for name in fns}
    times = common.timeit_interleaved(
        {name: _recording(fn, usage[name]) for name, fn in fns.items()},
        repeats=case.repeats,
        warmup=case.warmup,
    )
    for name, t in times.items():
        t["first_call_s"] = first_call[name]
        timed_usage = usage[name][case.warmup :]
        t["median_user_s"] = statistics.median(u[0] for u in timed_usage)
        t["median_sys_s"] = statistics.median(u[1] for u in timed_usage)
        t["median_minor_page_faults"] = statistics.median(u[2] for u in timed_usage)

    grads = {k: times[k] for k in ("torch_func_grad", "autograd_backward")}
    denominator = min(grads, key=lambda k: grads[k]["median_s"])
    den_s = grads[denominator]["median_s"]
    den_min_s = grads[denominator]["min_s"]
    given_v = {"fwd_over_rev", "double_backward", "rev_over_fwd", "auto"}

    methods: dict[str, Any] = {}
    for name, t in times.items():
        if name in grads:
            continue
        extra = 1.0 if name in given_v else 0.0
        pass_ratio = t["median_s"] / den_s
        scratch = pass_ratio + extra
        methods[name] = {
            **t,
            "pass": "Hv given v" if name in given_v else "Hg from scratch",
            "pass_ratio": pass_ratio,
            "hg_from_scratch_ratio": scratch,
            "hg_from_scratch_ratio_of_mins": t["min_s"] / den_min_s + extra,
            "meets_3x_goal": scratch <= GOAL_RATIO,
            "rel_diff_vs_fwd_over_rev": 0.0 if name == "fwd_over_rev" else rel[name],
        }
    if not case.with_linearize:
        methods["linearize"] = {"skipped": case.linearize_skip_reason}
    timed = {k: v for k, v in methods.items() if "skipped" not in v}
    fastest = min(timed, key=lambda k: timed[k]["hg_from_scratch_ratio"])
    max_rel = max(rel.values())
    (chosen,) = autotune.choices().values()  # this case's only choice (forgotten at start)

    return {
        "model": case.name,
        "parameters": n_params,
        "batch": case.batch,
        "input_shape": list(case.input_shape),
        "dtype": "float32",
        "repeats": case.repeats,
        "gradient": {
            **grads,
            "denominator": denominator,
            "denominator_s": den_s,
            "rel_diff_backward_vs_func": grad_rel,
        },
        "methods": methods,
        "fastest_hg_from_scratch": fastest,
        "auto_choice": {
            "method": chosen.method,
            "trial_seconds": chosen.seconds,
        },
        "fastest_ratio": timed[fastest]["hg_from_scratch_ratio"],
        "goal_3x_met_by": [k for k, v in timed.items() if v["meets_3x_goal"]],
        "agreement": {
            "reference": "fwd_over_rev",
            "max_rel_diff": max_rel,
            "rtol": AGREE_RTOL,
            "all_agree": max_rel <= AGREE_RTOL and grad_rel <= AGREE_RTOL,
        },
        "peak_rss_mb_after": common.peak_rss_mb(),
    }


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, r in results.items():
        out[f"{name}.gradient_s ({r['gradient']['denominator']})"] = r["gradient"]["denominator_s"]
        for m, v in r["methods"].items():
            if "skipped" in v:
                continue
            out[f"{name}.{m}.hg_from_scratch_ratio"] = v["hg_from_scratch_ratio"]
            out[f"{name}.{m}.hg_from_scratch_ratio_of_mins"] = v["hg_from_scratch_ratio_of_mins"]
        out[f"{name}.fwd_over_rev.hv_pass_ratio"] = r["methods"]["fwd_over_rev"]["pass_ratio"]
        out[f"{name}.fastest"] = r["fastest_hg_from_scratch"]
        out[f"{name}.auto_choice"] = r["auto_choice"]["method"]
        out[f"{name}.goal_3x_met"] = bool(r["goal_3x_met_by"])
        out[f"{name}.max_rel_diff"] = r["agreement"]["max_rel_diff"]
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Benchmark Hg against one gradient on every case; JSON-serialisable."""
    device = common.default_device()
    results = {}
    for case in cases(quick):
        results[case.name] = run_case(case, device)
    return {
        "summary": _summary(results),
        "cases": results,
        "goal": f"Hg from scratch <= {GOAL_RATIO:g} gradients",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_average_end": common.load_average(),
    }
