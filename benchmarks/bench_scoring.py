"""Time to score CIFAR networks with every importance measure, and GraSP vs the official way.

Parts (``run`` returns one dict with a ``summary`` for the table):

``measures``: seconds for :func:`gfverify.measures.score` of ResNet-56, VGG-13 and MobileNet-V1
(``build_model``, eval mode, float32, random 3×32×32 inputs with balanced labels, shuffled, in
batches of 128) with every measure in ``MEASURES`` at the official sample counts: gradient
measures on the first 2560 samples at T = 5, Hg measures on int(2560 / C) samples per class
(C = 10: 256 per class; C = 100: 25 per class, the official CIFAR-100 case). Granularity is
``filter`` where the measure has it, else ``weight`` (snip, synflow). C = 10 runs every measure;
C = 100 runs the Hg measures and ``loss_preservation`` (the gradient measures do not depend on
C but through the classifier's width). ``hg_over_gradient`` = Hg measure seconds / the median
seconds of the measures that need one gradient (``needs == "gradient"``); goal ≤ 3.

``official``: GraSP scores the official way (spec/paper.md §3.5), written here from that
description: one batch per class (the first int(2560 / C) samples of the class in data order);
ḡ = (1/C) Σ_c ∇L_c with L_c = mean CE(f(x)/200, y) over class c's batch; Hg = (1/C) Σ_c
∇_θ(∇_θL_c · stopgrad ḡ) by double backward (``torch.autograd.grad(create_graph=True)``);
score of filter f of a conv with groups = 1: Σ_i W_{f,i} (Hg)_{f,i}. Compared with
``score(model, "grasp", ...)`` on ResNet-56 and MobileNet-V1 at C = 100 and C = 10: speed-up =
official seconds / gfverify seconds (goal ≥ 1.4), and agreement per layer as
max_i |a_i − b_i| / max_i |b_i| (``max_rel_diff``, goal ≤ 1e-5 in float32) and ‖a − b‖/‖b‖.

``levers``: what limits the Hg measures, on 512 samples (C = 10) per network: ``grasp`` and
``loss_preservation`` at ``compute_batch_size`` 128 and 512; ``grasp`` with channels_last
model and inputs; and the HVP pass alone (given ḡ) by ``flow.hvp`` reverse-over-reverse,
forward-over-reverse (ResNet-56 only: one MobileNet call ran > 3 min under load) and
``flow.hvp_double_backward``, each divided by one gradient on the same data.

GraSP variants (:func:`grasp_variants`): gfverify's default computes Hg by reverse-over-
forward (``flow.hessian_vector``: no double backward of any conv); ``[rev_over_rev]`` uses
reverse-over-reverse, with grouped convs through the whole-layer kernels of
:mod:`gfverify.grouped_conv`; networks with grouped (depthwise) convs add
``[rev_over_rev, native grouped conv]``: PyTorch's own double backward of a grouped conv, which
loops over the groups (``_convolution_double_backward`` computes ∂gI/∂W one group at a time:
one small conv per channel, 4480 channels in MobileNet-V1's depthwise layers, per chunk).
Same function, so scores agree to float rounding.

``float64``: the float32 scores of GraSP at T = 200 on a random-init net carry large rounding
errors (ḡ is a small average of large per-class gradients: ~3-5e-3 against float64 on 512
samples), far above 1e-5, whichever procedure computes them. So the official and gfverify
scores are also computed in float64 (512 samples, C = 10): agreement there (~1e-13) shows the
same function, and each float32 result's error against the float64 official scores is given.
``float64_under_float32_roundoff`` measures the problem's condition: the change of the exact
(float64) scores when the weights move by one float32 unit roundoff
(:func:`roundoff_sensitivity`), the floor under any float32 procedure's error.

Before timing, each network gets one untimed gradient, HVP and cheap ``score`` call (one-off
costs). Every timing records wall seconds (``*_s``) and this process's CPU seconds
(``*_cpu_s``): other users load the shared machine, so compare ratios and look at
``load_average``.
Quick mode: 512 samples, ResNet-56, ``loss_preservation``, ``grasp``, one official
comparison (C = 10), the float64 check on 128 samples, no levers. ``BENCH_SCORING_PARTS``
(comma-separated ``measures``, ``measures100``, ``official``, ``float64``, ``levers``) and
``BENCH_SCORING_MODELS`` restrict a full run; the result's ``ran`` says what ran.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks import common
from gfverify import flow
from gfverify.flow import Batch, LossSpec
from gfverify.grouped_conv import has_grouped_conv
from gfverify.measures import MEASURES, score
from gfverify.models import build_model

SAMPLES = 2560
QUICK_SAMPLES = 512
LOADER_BATCH = 128
GRASP_T = 200.0
GOAL_HG_RATIO = 3.0
GOAL_SPEEDUP = 1.4
AGREE_RTOL = 1e-5
MODELS = ("resnet56", "vgg13", "mobilenet_v1")
OFFICIAL_MODELS = ("resnet56", "mobilenet_v1")
PARTS = ("measures", "measures100", "official", "official_lp", "float64", "levers")
HG_MEASURES = tuple(n for n, m in MEASURES.items() if m.needs == "hg")
GRADIENT_MEASURES = tuple(n for n, m in MEASURES.items() if m.needs == "gradient")
SEED = 0


# --------------------------------------------------------------------------------------------
# Data and timing


def scoring_batches(num_classes: int, samples: int, seed: int = SEED) -> list[Batch]:
    """Random CIFAR-shaped inputs, labels i mod C shuffled (balanced), in loader batches."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.arange(samples) % num_classes)[torch.randperm(samples, generator=gen)]
    x = torch.randn(samples, 3, 32, 32, generator=gen)
    b = LOADER_BATCH
    return [(x[i : i + b], y[i : i + b]) for i in range(0, samples, b)]


def _call(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn(), wall seconds, this process's CPU seconds)."""
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w0, time.process_time() - c0


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Call every function once per round, ``repeats`` rounds; keep each first result.

    Returns (first results, ``{name: {"median_s", "min_s", "median_cpu_s", "samples_s"}}``).
    """
    first: dict[str, Any] = {}
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            value, wall, cpu = _call(fn)
            if r == 0:
                first[name] = value
            walls[name].append(wall)
            cpus[name].append(cpu)
    times = {
        k: {
            "median_s": statistics.median(walls[k]),
            "min_s": min(walls[k]),
            "median_cpu_s": statistics.median(cpus[k]),
            "samples_s": [round(w, 3) for w in walls[k]],
        }
        for k in fns
    }
    return first, times


def warm_up(model: nn.Module, data: Sequence[Batch]) -> None:
    """Untimed: one gradient and one HVP on the first loader batch, one cheap ``score`` call.

    Takes one-off costs (allocator growth, oneDNN primitive creation for 128-sample shapes,
    the filter-group trace) out of the first timed call.
    """
    loss = LossSpec("cross_entropy", GRASP_T)
    theta = flow.trainable_params(model)
    first = [data[0]]
    g = flow.gradient(model, first, loss, theta)
    flow.hvp(model, first, loss, g, theta)
    score(model, "magnitude", data[:1])


# --------------------------------------------------------------------------------------------
# The official procedure, from spec/paper.md §3.5


def per_class_batches(batches: Sequence[Batch], num_classes: int, per_class: int) -> list[Batch]:
    """One batch per class: the first ``per_class`` samples with that label, in data order."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()[:per_class]
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} samples, need {per_class}")
        out.append((x[idx], y[idx]))
    return out


def official_grasp(
    model: nn.Module, class_batches: Sequence[Batch], temperature: float = GRASP_T
) -> dict[str, Tensor]:
    """Σ_i W_{f,i}(Hg)_{f,i} per filter of every conv with groups = 1, the official way.

    ḡ = (1/C) Σ_c ∇L_c, then Hg = (1/C) Σ_c ∇(∇L_c · stopgrad ḡ), L_c = mean CE(f(x_c)/T, y_c),
    one forward/backward per class for ḡ and one forward + double backward per class for Hg,
    in eval mode.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    c = len(class_batches)
    with flow.eval_mode(model):
        gbar = [torch.zeros_like(p) for p in params]
        for x, y in class_batches:
            loss = F.cross_entropy(model(x) / temperature, y)
            for acc, g in zip(gbar, torch.autograd.grad(loss, params)):
                acc.add_(g, alpha=1.0 / c)
        hg = [torch.zeros_like(p) for p in params]
        for x, y in class_batches:
            loss = F.cross_entropy(model(x) / temperature, y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * gb).sum() for g, gb in zip(grads, gbar))
            for acc, h in zip(hg, torch.autograd.grad(dot, params)):
                acc.add_(h, alpha=1.0 / c)
    by_param = {id(p): h for p, h in zip(params, hg)}
    return {
        name: (m.weight.detach() * by_param[id(m.weight)]).flatten(1).sum(1)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == 1 and id(m.weight) in by_param
    }


def agreement(mine: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, Any]:
    """Per-layer max|a−b|/max|b| and ‖a−b‖/‖b‖, worst over layers; same layer names?"""
    common_layers = [k for k in ref if k in mine]
    max_rel = max(
        float((mine[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-38))
        for k in common_layers
    )
    l2_rel = max(
        float((mine[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-38)) for k in common_layers
    )
    return {
        "same_layers": sorted(mine) == sorted(ref),
        "layers": len(common_layers),
        "max_rel_diff": max_rel,
        "max_l2_rel_diff": l2_rel,
        "agree": max_rel <= AGREE_RTOL,
    }


# --------------------------------------------------------------------------------------------
# Parts


def _granularity(name: str) -> str:
    return "filter" if "filter" in MEASURES[name].granularities else "weight"


#: GraSP scoring variants beside gfverify's default (``hvp_method="reverse_over_forward"``):
#: reverse-over-reverse (whole-layer grouped convs) and, on networks with grouped convs, the
#: same with PyTorch's per-group double backward.
REV_REV = "[rev_over_rev]"
NATIVE = "[rev_over_rev, native grouped conv]"


def grasp_variants(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Suffix -> ``score`` options of the GraSP variants timed for ``model``."""
    out: dict[str, dict[str, Any]] = {"": {}, REV_REV: {"hvp_method": "reverse_over_reverse"}}
    if has_grouped_conv(model):
        out[NATIVE] = {"hvp_method": "reverse_over_reverse", "whole_layer_grouped": False}
    return out


def _score_fn(model: nn.Module, name: str, data: list[Batch], samples: int, **kw):
    def f() -> dict[str, Tensor]:
        return score(model, name, data, granularity=_granularity(name), samples=samples, **kw)

    return f


def time_measures(
    model_name: str, num_classes: int, samples: int, names: Sequence[str]
) -> dict[str, Any]:
    """Seconds per measure (one call each, in registry order) and the Hg / gradient ratios."""
    torch.manual_seed(SEED)
    model = build_model(model_name, num_classes=num_classes).eval()
    data = scoring_batches(num_classes, samples)
    warm_up(model, data)
    fns = {n: _score_fn(model, n, data, samples) for n in names}
    if "grasp" in names:
        for suffix, kw in grasp_variants(model).items():
            if suffix:
                fns[f"grasp{suffix}"] = _score_fn(model, "grasp", data, samples, **kw)
    _, times = interleaved(fns, repeats=1)
    seconds = {k: round(v["median_s"], 3) for k, v in times.items()}
    cpu = {k: round(v["median_cpu_s"], 3) for k, v in times.items()}
    grad_names = [n for n in names if n in GRADIENT_MEASURES]
    grad_s = statistics.median(seconds[n] for n in grad_names)
    grad_cpu = statistics.median(cpu[n] for n in grad_names)
    hg = [k for k in seconds if k.split("[")[0] in HG_MEASURES]
    return {
        "model": model_name,
        "num_classes": num_classes,
        "samples": samples,
        "hg_per_class": samples // num_classes,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "gradient_measure_s": grad_s,
        "gradient_measures": grad_names,
        "hg_over_gradient": {k: seconds[k] / grad_s for k in hg},
        "hg_over_gradient_cpu": {k: cpu[k] / grad_cpu for k in hg},
        "goal_met": {k: seconds[k] / grad_s <= GOAL_HG_RATIO for k in hg},
    }


def compare_official(
    model_name: str, num_classes: int, samples: int, repeats: int = 1
) -> dict[str, Any]:
    """Official per-class GraSP vs ``score(..., "grasp")``: seconds, speed-up, agreement."""
    torch.manual_seed(SEED)
    model = build_model(model_name, num_classes=num_classes).eval()
    data = scoring_batches(num_classes, samples)
    warm_up(model, data)
    per_class = samples // num_classes

    def official() -> dict[str, Tensor]:
        return official_grasp(model, per_class_batches(data, num_classes, per_class))

    fns: dict[str, Callable[[], dict[str, Tensor]]] = {"official": official}
    for suffix, kw in grasp_variants(model).items():
        fns[f"gfverify{suffix}"] = _score_fn(model, "grasp", data, samples, **kw)
    results, times = interleaved(fns, repeats)
    ref_s = times["official"]["median_s"]
    ref_cpu = times["official"]["median_cpu_s"]
    out: dict[str, Any] = {
        "model": model_name,
        "num_classes": num_classes,
        "per_class": per_class,
        "samples": per_class * num_classes,
        "repeats": repeats,
        "times": times,
    }
    for k in fns:
        if k == "official":
            continue
        speedup = ref_s / times[k]["median_s"]
        out[k] = {
            "speedup": speedup,
            "speedup_cpu": ref_cpu / times[k]["median_cpu_s"],
            "goal_met": speedup >= GOAL_SPEEDUP,
            **agreement(results[k], results["official"]),
        }
    return out


def official_loss_preservation(model: nn.Module, batches: Sequence[Batch]) -> dict[str, Tensor]:
    """The official per-batch loop (spec/paper.md §3.5, ``cal_importance_loss_based``), written
    out: eval mode; for each loader batch ``(CE(f(x)/5, y) · n_b/N).backward()`` accumulating
    ``.grad``; then per conv Σ_i |W_f,i · ḡ_f,i| over each output channel f."""
    total = sum(len(y) for _, y in batches)
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        (F.cross_entropy(model(x) / 5.0, y) * (len(y) / total)).backward()
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            out[name] = (m.weight * m.weight.grad).abs().sum(dim=(1, 2, 3)).detach()
    model.zero_grad(set_to_none=True)
    return out


def _loss_preservation_before(model: nn.Module, data: list[Batch], samples: int):
    """gfverify's loss-preservation path before issue 12, replayed: the dependency analysis on
    every call and ḡ by ``torch.func.grad`` (:func:`gfverify.flow.gradient`) in 128-chunks."""
    from gfverify.groups import filter_groups
    from gfverify.measures import first_batches

    def f() -> dict[str, Tensor]:
        groups = filter_groups(model, data[0][0][:2])
        theta = flow.trainable_params(model)
        big = flow.rebatch(first_batches(data, samples), 128)
        g = flow.gradient(model, big, LossSpec("cross_entropy", 5.0), theta)
        out = {}
        for lname, group in groups.items():
            w = theta[group.weight]
            out[lname] = (w * g[group.weight]).abs().reshape(w.shape[0], -1).sum(1)
        return out

    return f


def compare_official_loss_preservation(
    model_name: str = "resnet56", samples: int = SAMPLES, repeats: int = 3
) -> dict[str, Any]:
    """Official per-batch loss-preservation loop vs ``score(model, "loss_preservation", ...)``
    now and as before issue 12, medians of ``repeats`` interleaved rounds in this process.

    ``speed_ratio`` = official seconds / gfverify seconds (≥ 1: gfverify at least as fast; the
    issue's outside comparison found 0.80 before). Agreement on the official's conv layers.
    """
    torch.manual_seed(SEED)
    model = build_model(model_name, num_classes=10).eval()
    data = scoring_batches(10, samples)
    warm_up(model, data)
    fns: dict[str, Callable[[], dict[str, Tensor]]] = {
        "official": lambda: official_loss_preservation(model, data),
        "gfverify": _score_fn(model, "loss_preservation", data, samples),
        "gfverify_before": _loss_preservation_before(model, data, samples),
    }
    for fn in fns.values():  # untimed: one-off costs of each path
        fn()
    results, times = interleaved(fns, repeats)
    ref_s, ref_cpu = times["official"]["median_s"], times["official"]["median_cpu_s"]
    out: dict[str, Any] = {
        "model": model_name,
        "samples": samples,
        "repeats": repeats,
        "times": times,
    }
    for k in ("gfverify", "gfverify_before"):
        shared = {n: v for n, v in results[k].items() if n in results["official"]}
        out[k] = {
            "speed_ratio": ref_s / times[k]["median_s"],
            "speed_ratio_cpu": ref_cpu / times[k]["median_cpu_s"],
            "goal_met": ref_s / times[k]["median_s"] >= 1.0,
            **agreement(shared, {n: results["official"][n] for n in shared}),
        }
    return out


def float64_check(model_name: str, samples: int = QUICK_SAMPLES) -> dict[str, Any]:
    """Are float32 differences between the procedures rounding? Both again in float64 (C = 10).

    ``float64_gfverify_vs_official`` near 1e-13 means the same function; the float32 results'
    own errors against the float64 official scores show how much float32 rounding GraSP at
    T = 200 carries (ḡ is a small average of large per-class gradients).
    """
    torch.manual_seed(SEED)
    m32 = build_model(model_name, num_classes=10).eval()
    m64 = copy.deepcopy(m32).double()
    data = scoring_batches(10, samples)
    d64 = [(x.double(), y) for x, y in data]
    per_class = samples // 10
    o64 = official_grasp(m64, per_class_batches(d64, 10, per_class))
    o64_as32 = {k: v.float() for k, v in o64.items()}
    o32 = official_grasp(m32, per_class_batches(data, 10, per_class))
    out: dict[str, Any] = {
        "model": model_name,
        "samples": per_class * 10,
        "float64_gfverify_vs_official": agreement(score(m64, "grasp", d64, samples=samples), o64),
        "float32_official_vs_float64_official": agreement(o32, o64_as32),
    }
    out["float64_under_float32_roundoff"] = roundoff_sensitivity(m64, d64, samples, o64)
    for suffix, kw in grasp_variants(m32).items():
        name = f"gfverify{suffix}"
        g32 = _score_fn(m32, "grasp", data, samples, **kw)()
        out[f"float32_{name}_vs_float64_official"] = agreement(g32, o64_as32)
        out[f"float32_{name}_vs_float32_official"] = agreement(g32, o32)
        if suffix:
            g64 = _score_fn(m64, "grasp", d64, samples, **kw)()
            out[f"float64_{name}_vs_official"] = agreement(g64, o64)
    return out


def roundoff_sensitivity(
    m64: nn.Module, d64: Sequence[Batch], samples: int, o64: dict[str, Tensor]
) -> dict[str, Any]:
    """How far exact GraSP scores move when every weight moves by at most one float32 unit
    roundoff: θ_i → θ_i(1 + u r_i), u = 2⁻²⁴, r_i ~ U[−1, 1], computed in float64.

    A backward-stable float32 computation returns the exact answer for data perturbed at about
    this level, so this change is the accuracy floor of any float32 procedure (the condition
    of the problem, not of an algorithm): when it is far above ``AGREE_RTOL``, two float32
    procedures can agree to ``AGREE_RTOL`` only by rounding alike.
    """
    gen = torch.Generator().manual_seed(SEED + 1)
    perturbed = copy.deepcopy(m64)
    with torch.no_grad():
        for p in perturbed.parameters():
            r = torch.rand(p.shape, generator=gen, dtype=p.dtype).mul_(2).sub_(1)
            p.mul_(1 + 2.0**-24 * r)
    return agreement(score(perturbed, "grasp", d64, samples=samples), o64)


def levers(model_name: str, samples: int = QUICK_SAMPLES, repeats: int = 1) -> dict[str, Any]:
    """Hg-measure cost under batch size, memory format and HVP method (C = 10)."""
    torch.manual_seed(SEED)
    model = build_model(model_name, num_classes=10).eval()
    data = scoring_batches(10, samples)
    warm_up(model, data)
    cl_data = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in data]

    def channels_last_grasp() -> None:
        model.to(memory_format=torch.channels_last)
        try:
            score(model, "grasp", cl_data, samples=samples, compute_batch_size=128)
        finally:
            model.to(memory_format=torch.contiguous_format)

    fns: dict[str, Callable[[], Any]] = {}
    for cbs in (128, 512):
        fns[f"loss_preservation_cbs{cbs}"] = _score_fn(
            model, "loss_preservation", data, samples, compute_batch_size=cbs
        )
        fns[f"grasp_cbs{cbs}"] = _score_fn(model, "grasp", data, samples, compute_batch_size=cbs)
    fns["grasp_cbs128_channels_last"] = channels_last_grasp
    for suffix, kw in grasp_variants(model).items():
        if suffix:
            fns[f"grasp_cbs128{suffix}"] = _score_fn(
                model, "grasp", data, samples, compute_batch_size=128, **kw
            )

    # The HVP pass alone, given ḡ, on 128-sample chunks, against one gradient on them.
    loss = LossSpec("cross_entropy", GRASP_T)
    chunks = flow.rebatch(data, 128)
    theta = flow.trainable_params(model)
    gbar = flow.gradient(model, chunks, loss, theta)
    fns["pass_gradient"] = lambda: flow.gradient(model, chunks, loss, theta)
    fns["pass_hvp_rev_over_fwd"] = lambda: flow.hessian_vector(model, chunks, loss, gbar, theta)
    fns["pass_hvp_rev_over_rev"] = lambda: flow.hvp(model, chunks, loss, gbar, theta)
    fns["pass_hvp_double_backward"] = lambda: flow.hvp_double_backward(
        model, chunks, loss, gbar, theta
    )
    if not has_grouped_conv(model):
        fns["pass_hvp_fwd_over_rev"] = lambda: flow.hvp(
            model, chunks, loss, gbar, theta, method="forward_over_reverse"
        )
    else:
        fns["pass_hvp_rev_over_rev_native_grouped"] = lambda: flow.hvp(
            model, chunks, loss, gbar, theta, whole_layer_grouped=False
        )
    _, times = interleaved(fns, repeats)
    med = {k: v["median_s"] for k, v in times.items()}
    cpu = {k: v["median_cpu_s"] for k, v in times.items()}
    ratios = {
        f"grasp_over_gradient_cbs{cbs}": med[f"grasp_cbs{cbs}"] / med[f"loss_preservation_cbs{cbs}"]
        for cbs in (128, 512)
    }
    ratios["grasp_cbs512_over_cbs128"] = med["grasp_cbs512"] / med["grasp_cbs128"]
    ratios["gradient_cbs512_over_cbs128"] = (
        med["loss_preservation_cbs512"] / med["loss_preservation_cbs128"]
    )
    ratios["grasp_channels_last_over_default"] = (
        med["grasp_cbs128_channels_last"] / med["grasp_cbs128"]
    )
    for suffix in grasp_variants(model):
        if suffix:
            ratios[f"grasp{suffix}_over_default"] = (
                med[f"grasp_cbs128{suffix}"] / med["grasp_cbs128"]
            )
    for k in med:
        if k.startswith("pass_hvp"):
            ratios[f"{k}_over_gradient"] = med[k] / med["pass_gradient"]
            ratios[f"{k}_over_gradient_cpu"] = cpu[k] / cpu["pass_gradient"]
    return {"model": model_name, "samples": samples, "times": times, "ratios": ratios}


# --------------------------------------------------------------------------------------------


def _env_list(name: str, default: Sequence[str]) -> list[str]:
    raw = os.environ.get(name, "").strip()
    return [s.strip() for s in raw.split(",") if s.strip()] if raw else list(default)


def _summary(out: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for r in out.get("measures", []):
        key = f"{r['model']}.c{r['num_classes']}"
        s[f"{key}.gradient_measure_s"] = r["gradient_measure_s"]
        for name, ratio in r["hg_over_gradient"].items():
            s[f"{key}.{name}_s"] = r["seconds"][name]
            s[f"{key}.{name}_over_gradient"] = ratio
    for r in out.get("official", []):
        key = f"{r['model']}.c{r['num_classes']}.official_grasp"
        s[f"{key}_s"] = r["times"]["official"]["median_s"]
        for k in r:
            if k.startswith("gfverify"):
                s[f"{key}.{k}_s"] = r["times"][k]["median_s"]
                s[f"{key}.{k}.speedup"] = r[k]["speedup"]
                s[f"{key}.{k}.max_rel_diff"] = r[k]["max_rel_diff"]
    for r in out.get("official_lp", []):
        key = f"{r['model']}.official_loss_preservation"
        s[f"{key}_s"] = r["times"]["official"]["median_s"]
        for k in ("gfverify", "gfverify_before"):
            s[f"{key}.{k}_s"] = r["times"][k]["median_s"]
            s[f"{key}.{k}.speed_ratio"] = r[k]["speed_ratio"]
            s[f"{key}.{k}.max_rel_diff"] = r[k]["max_rel_diff"]
    for r in out.get("float64", []):
        for k, v in r.items():
            if isinstance(v, dict):
                s[f"float64_check.{r['model']}.{k}"] = v["max_rel_diff"]
    for r in out.get("levers", []):
        for k, v in r["ratios"].items():
            s[f"levers.{r['model']}.{k}"] = v
    return s


def run(quick: bool = False) -> dict[str, Any]:
    """Scoring times per measure, Hg / gradient ratios, official GraSP comparison, levers."""
    out: dict[str, Any] = {"load_average_start": common.load_average()}
    if quick:
        parts, models = ["measures", "official"], ["resnet56"]
        out["measures"] = [
            time_measures("resnet56", 10, QUICK_SAMPLES, ["loss_preservation", "grasp"])
        ]
        out["official"] = [compare_official("resnet56", 10, QUICK_SAMPLES)]
        out["float64"] = [float64_check("resnet56", samples=128)]
        out["official_lp"] = [compare_official_loss_preservation("resnet56", QUICK_SAMPLES)]
    else:
        parts = _env_list("BENCH_SCORING_PARTS", PARTS)
        models = _env_list("BENCH_SCORING_MODELS", MODELS)
        unknown = set(parts) - set(PARTS) | set(models) - set(MODELS)
        if unknown:
            raise ValueError(f"unknown BENCH_SCORING part(s)/model(s): {sorted(unknown)}")
        out["measures"] = []
        if "measures" in parts:
            for m in models:
                out["measures"].append(time_measures(m, 10, SAMPLES, list(MEASURES)))
        if "measures100" in parts:
            names = ["loss_preservation", *HG_MEASURES]
            for m in models:
                out["measures"].append(time_measures(m, 100, SAMPLES, names))
        if "official" in parts:
            out["official"] = [
                compare_official(m, c, SAMPLES)
                for m in models
                if m in OFFICIAL_MODELS
                for c in (100, 10)
            ]
        if "official_lp" in parts:
            lp_samples = int(os.environ.get("BENCH_SCORING_LP_SAMPLES", SAMPLES))
            out["official_lp"] = [
                compare_official_loss_preservation(m, lp_samples)
                for m in models
                if m in OFFICIAL_MODELS
            ]
        if "float64" in parts:
            out["float64"] = [float64_check(m) for m in models if m in OFFICIAL_MODELS]
        if "levers" in parts:
            out["levers"] = [levers(m) for m in models if m in OFFICIAL_MODELS]
    out["ran"] = {"parts": parts, "models": models, "quick": quick}
    out["load_average_end"] = common.load_average()
    out["torch_threads"] = torch.get_num_threads()
    out["goals"] = {
        "hg_over_gradient": f"<= {GOAL_HG_RATIO:g}",
        "speedup_vs_official": f">= {GOAL_SPEEDUP:g}",
        "max_rel_diff": f"<= {AGREE_RTOL:g}",
    }
    return {"summary": _summary(out), **out}
