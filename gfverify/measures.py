"""Importance measures: a registry, per weight or per filter, on any ``nn.Module``.

Notation, for a filter f of a producing layer (conv output channel or linear output unit):
θ_f are its weights and bias if it has one (optionally with its BatchNorm γ_f, β_f; the
official nets have bias-free convs, so there θ_f is the weight slice W_f as in the code),
g = ∇L the dataset-averaged gradient, Hg the Hessian-gradient product, s = Σ_b (n_b/N)(∇L_b)²
the batch-size-weighted mean of squared per-batch gradients. Lowest score is pruned first
(spec/paper.md §1.3).

A measure is a per-weight *contribution* c_i and a rule turning the filter's summed
contributions Σ_i c_i into the score (identity, |·| or √·). E.g. ``taylor_fo`` has c_i = θ_i g_i
and score |Σ_i c_i|, while ``loss_preservation`` has c_i = |θ_i g_i| and score Σ_i c_i: the same
numbers summed before or after the absolute value, which rank filters differently (spec §6.2).

Data rules (the official protocol, spec §3.5), all overridable through ``score(**opts)``:
- gradient measures: logits / T with the training T (5), the first whole batches of the scoring
  data until ≥ ``samples`` (2560) samples, eval-mode BatchNorm;
- Hg measures: a class-balanced set, the first int(samples / C) samples of each class in data
  order; ḡ = mean over classes of the class-mean gradient and Hg = mean_c H_c ḡ at T = 200
  (GraSP) or T = 1 (gradient-norm preservation). With equal class counts this is exactly the
  gradient and Hessian of the balanced set's mean loss, so it is computed in a few large
  ``torch.func`` batches (``compute_batch_size``) instead of one small batch per class. Hg is
  one gradient pass for ḡ, then one Hv pass by reverse-over-forward
  (:func:`gfverify.flow.hessian_vector`), which differentiates no backward pass twice.

``compute_batch_size`` (samples per ``torch.func`` call) only trades memory for speed: in eval
mode the batch-size-weighted average is the same for any chunking, up to float rounding. Left
unset it is 128 on CPU and 512 elsewhere: on the 2-core development CPU, 512-sample chunks made
ResNet-56's gradient 1.6× and its GraSP scoring 1.3× slower than 128-sample ones
(benchmarks/bench_scoring.py, ``levers``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gfverify import flow
from gfverify.errors import ConfigError, DataError, ModelError
from gfverify.flow import Batch, LossSpec, Params

Granularity = Literal["weight", "filter"]
#: Default samples per torch.func call on CPU (fastest per sample on the 2-core dev machine).
CPU_COMPUTE_BATCH = 128
Needs = Literal["none", "gradient", "grad_sq", "hg", "synflow", "random"]


@dataclass
class ScoringInputs:
    """What measures may need, computed lazily once per call of :func:`score`."""

    model: nn.Module
    batches: Sequence[Batch]
    opts: dict[str, Any]
    num_classes: int
    #: how Hg was computed (set when :attr:`hg` is), e.g. a fallback's name
    hg_method = None

    @cached_property
    def theta(self) -> Params:
        return flow.trainable_params(self.model)

    @cached_property
    def gradient_batches(self) -> list[Batch]:
        """The first whole batches until at least ``samples`` samples (official rule)."""
        return first_batches(self.batches, self.opts["samples"])

    @cached_property
    def compute_batch_size(self) -> int:
        """Samples per ``torch.func`` call: the option, else 128 on CPU and 512 elsewhere."""
        size = self.opts.get("compute_batch_size")
        if size is None:
            device = next(iter(self.theta.values())).device if self.theta else None
            return CPU_COMPUTE_BATCH if device is None or device.type == "cpu" else 512
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"compute_batch_size must be a positive integer, got {size!r}")
        return size

    @cached_property
    def g(self) -> Params:
        """ḡ at the gradient temperature over :attr:`gradient_batches`, by one plain
        ``loss.backward()`` per batch (:func:`plain_gradient`: the official loop, faster here
        than ``torch.func.grad``; the same numbers up to float rounding)."""
        loss = LossSpec("cross_entropy", self.opts["temperature"], self.opts["loss_scale"])
        big = flow.rebatch(self.gradient_batches, self.compute_batch_size)
        return plain_gradient(self.model, big, loss, list(self.theta))

    @cached_property
    def grad_sq(self) -> Params:
        """s = Σ_b (n_b/N) (∇L_b)², per batch *as given* (depends on the batching)."""
        loss = LossSpec("cross_entropy", self.opts["temperature"], self.opts["loss_scale"])
        total = sum(len(y) for _, y in self.gradient_batches)
        acc: Params = {k: torch.zeros_like(v) for k, v in self.theta.items()}
        for x, y in self.gradient_batches:
            gb = flow.gradient(self.model, [(x, y)], loss, self.theta)
            for k in acc:
                acc[k] += (len(y) / total) * gb[k] ** 2
        return acc

    @cached_property
    def hg_theta(self) -> Params:
        """The parameters Hg is taken over (``hg_params``): ``"all"`` trainable parameters
        (default; the official filter scores), or ``"weights"``: the Conv/Linear weights only
        (GraSP's own weight-level choice), every other parameter held fixed."""
        choice = self.opts.get("hg_params", "all")
        if choice == "all":
            return self.theta
        if choice != "weights":
            raise ConfigError(f"hg_params must be 'all' or 'weights', got {choice!r}")
        names = weight_names(self.model)
        return {k: v for k, v in self.theta.items() if k in names}

    @cached_property
    def hg(self) -> Params:
        """Hg on the class-balanced set at the Hg temperature, over :attr:`hg_theta`:
        (Hg)_p = Σ_q H_pq g_q for p, q in that set (``"weights"``: H_ww g_w). Where the asked
        method cannot run (an op without forward-mode AD, e.g. attention) it falls back to an
        exact reverse-mode method (:func:`gfverify.flow.hessian_vector_exact`, recorded in
        :attr:`hg_method`)."""
        loss = LossSpec("cross_entropy", self.opts["hg_temperature"], self.opts["loss_scale"])
        per_class = self.opts["samples"] // self.num_classes
        balanced = class_balanced(self.batches, self.num_classes, per_class)
        big = flow.rebatch(balanced, self.compute_batch_size)
        g = flow.gradient(self.model, big, loss, self.hg_theta)
        hv, self.hg_method = flow.hessian_vector_exact(
            self.model,
            big,
            loss,
            g,
            self.hg_theta,
            method=self.opts["hvp_method"],
            whole_layer_grouped=self.opts["whole_layer_grouped"],
        )
        return hv

    @cached_property
    def synflow(self) -> Params:
        """∂R/∂θ at |θ| for R = 1ᵀ f_{|θ|}(1) (SynFlow's data-free objective, eval mode)."""
        abs_theta = {k: v.abs() for k, v in self.theta.items()}
        x = torch.ones((1, *self.batches[0][0].shape[1:]), dtype=self.batches[0][0].dtype)
        buffers = dict(self.model.named_buffers())

        def objective(p: Params) -> Tensor:
            return torch.func.functional_call(self.model, (p, buffers), (x,)).sum()

        with flow.eval_mode(self.model):
            return torch.func.grad(objective)(abs_theta)

    def init(self, name: str) -> Tensor:
        params_init = self.opts.get("params_init")
        if params_init is None or name not in params_init:
            raise ConfigError(f"use_init needs params_init with an entry for {name!r}")
        return params_init[name].to(self.theta[name])


@dataclass(frozen=True)
class Measure:
    """One importance measure: contribution per weight and the filter-level reduction."""

    name: str
    formula: str
    needs: Needs
    contribution: Callable[[ScoringInputs, str], Tensor]
    reduce: Literal["sum", "abs", "sqrt"] = "sum"
    granularities: tuple[str, ...] = ("weight", "filter")
    source: Literal["weights", "bn", "bn_gamma"] = "weights"
    temperature: float | None = None  # None: the training temperature (opts["train_temperature"])
    hg_temperature: float | None = None
    doc: str = ""

    def weight_score(self, c: Tensor) -> Tensor:
        """Per-weight score from the contribution: |c| for abs/sqrt reductions, else c."""
        if self.reduce == "sqrt":
            return c.sqrt()
        return c.abs() if self.reduce == "abs" else c

    def filter_score(self, summed: Tensor) -> Tensor:
        """Per-filter score from Σ_i c_i."""
        if self.reduce == "sqrt":
            return summed.sqrt()
        return summed.abs() if self.reduce == "abs" else summed


MEASURES: dict[str, Measure] = {}


def register_measure(measure: Measure) -> Measure:
    """Add a measure to the registry (names are what users type)."""
    if measure.name in MEASURES:
        raise ValueError(f"measure {measure.name!r} registered twice")
    MEASURES[measure.name] = measure
    return measure


def _theta(i: ScoringInputs, n: str) -> Tensor:
    return i.theta[n]


def _random(i: ScoringInputs, n: str) -> Tensor:
    seed = int(i.opts.get("seed", 0))
    key = sum(ord(ch) * 31**k for k, ch in enumerate(n)) % (2**31)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + key)
    t = i.theta[n]
    return torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)


def _biased(i: ScoringInputs, n: str) -> Tensor:
    base = (i.theta[n] - i.init(n)).abs() if i.opts.get("use_init") else i.theta[n].abs()
    return base * (i.theta[n] * i.g[n]).abs()


for _m in [
    Measure("magnitude", "‖θ_f‖₂ = sqrt(Σ_i θ_i²)", "none", lambda i, n: _theta(i, n) ** 2, "sqrt"),
    Measure("l1", "‖θ_f‖₁ = Σ_i |θ_i|", "none", lambda i, n: _theta(i, n).abs()),
    Measure(
        "loss_preservation",
        "Σ_i |θ_i g_i|  (official loss_based; |Taylor-1| summed per weight)",
        "gradient",
        lambda i, n: (i.theta[n] * i.g[n]).abs(),
    ),
    Measure(
        "taylor_fo",
        "|Σ_i θ_i g_i| = |θ_fᵀ g_f| = ½|d‖θ_f‖²/dt|  (official tfo)",
        "gradient",
        lambda i, n: i.theta[n] * i.g[n],
        "abs",
    ),
    Measure(
        "biased_loss_preservation",
        "Σ_i |θ_i|·|θ_i g_i| = Σ_i |θ_i² g_i|  (use_init: |θ_i − θ⁰_i|·|θ_i g_i|)",
        "gradient",
        _biased,
    ),
    Measure(
        "grasp",
        "Σ_i θ_i (Hg)_i = θ_fᵀ(Hg)_f, signed, Hg at T = 200",
        "hg",
        lambda i, n: i.theta[n] * i.hg[n],
        hg_temperature=200.0,
    ),
    Measure(
        "gradient_norm_preservation",
        "|Σ_i θ_i (Hg)_i| = |θ_fᵀ(Hg)_f|, Hg at T = 1",
        "hg",
        lambda i, n: i.theta[n] * i.hg[n],
        "abs",
        hg_temperature=1.0,
    ),
    Measure(
        "fisher",
        "Σ_i θ_i² s_i, s = Σ_b (n_b/N)(∇L_b)²  (Theis et al. 2018)",
        "grad_sq",
        lambda i, n: i.theta[n] ** 2 * i.grad_sq[n],
    ),
    Measure(
        "bn_fisher",
        "γ_f² s_γf + β_f² s_βf on the BatchNorm after the layer  (Molchanov et al. 2019)",
        "grad_sq",
        lambda i, n: i.theta[n] ** 2 * i.grad_sq[n],
        granularities=("filter",),
        source="bn",
    ),
    Measure(
        "bn_scale",
        "|γ_f| of the BatchNorm after the layer",
        "none",
        lambda i, n: i.theta[n].abs(),
        granularities=("filter",),
        source="bn_gamma",
    ),
    Measure("random", "uniform(0, 1), seeded by (seed, module name)", "random", _random),
    Measure(
        "snip",
        "|θ_i g_i| / Σ_j |θ_j g_j|  (Lee et al. 2019; unstructured, T = 1)",
        "gradient",
        lambda i, n: (i.theta[n] * i.g[n]).abs(),
        granularities=("weight",),
        temperature=1.0,
    ),
    Measure(
        "synflow",
        "|θ_i ∂R/∂θ_i|, R = 1ᵀ f_{|θ|}(1)  (Tanaka et al. 2020; unstructured, data-free)",
        "synflow",
        lambda i, n: (i.theta[n] * i.synflow[n]).abs(),
        granularities=("weight",),
    ),
]:
    register_measure(_m)


# --------------------------------------------------------------------------------------------
# Data selection


def plain_gradient(
    model: nn.Module, batches: Sequence[Batch], loss: LossSpec, names: Sequence[str]
) -> Params:
    """ḡ = Σ_b (n_b/N) ∇_θ L_b for the parameters ``names`` of ``model`` itself, eval mode.

    One ``(L_b · n_b/N).backward()`` per batch accumulating ``.grad``, as the official code
    does: no functional transform around the model. Gradients the parameters held before are
    put back afterwards; a parameter the loss does not reach gets zeros.
    """
    params = dict(model.named_parameters())
    saved = {k: p.grad for k, p in params.items()}
    total = sum(len(y) for _, y in batches)
    if total == 0:
        raise DataError("no scoring data: the list of batches is empty")
    try:
        for p in params.values():
            p.grad = None
        with flow.eval_mode(model), torch.enable_grad():
            for x, y in batches:
                (loss(model(x), y) * (len(y) / total)).backward()
        out = {}
        for k in names:
            grad = params[k].grad
            out[k] = torch.zeros_like(params[k]) if grad is None else grad.detach()
    finally:
        for k, p in params.items():
            p.grad = saved[k]
    return out


def first_batches(batches: Sequence[Batch], samples: int) -> list[Batch]:
    """Whole batches in order until at least ``samples`` samples are taken (official rule)."""
    out, seen = [], 0
    for b in batches:
        if seen >= samples:
            break
        out.append(b)
        seen += len(b[1])
    if not out:
        raise DataError("no scoring data: the list of batches is empty")
    return out


def class_balanced(batches: Sequence[Batch], num_classes: int, per_class: int) -> list[Batch]:
    """The first ``per_class`` samples of every class in data order, arranged class-major."""
    if per_class < 1:
        raise DataError(f"int(samples / num_classes) = {per_class}: need at least one per class")
    picked: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(num_classes)]
    for x, y in batches:
        for xi, yi in zip(x, y):
            c = int(yi)
            if len(picked[c]) < per_class:
                picked[c].append((xi, yi))
        if all(len(p) == per_class for p in picked):
            break
    short = [c for c, p in enumerate(picked) if len(p) < per_class]
    if short:
        raise DataError(
            f"class {short[0]} has only {len(picked[short[0]])} samples in the scoring data; "
            f"the Hg measures need {per_class} per class (lower `samples` or add data)"
        )
    return [(torch.stack([xi for xi, _ in p]), torch.stack([yi for _, yi in p])) for p in picked]


# --------------------------------------------------------------------------------------------
# Public entry


@dataclass(frozen=True)
class ScoreOptions:
    """Options of :func:`score` (all overridable through its keyword arguments).

    ``temperature`` None → the measure's own (snip: 1) or ``train_temperature`` (5, the
    official training T); ``hg_temperature`` None → the measure's own (GraSP 200, gradient-norm
    preservation 1); ``compute_batch_size`` None → 128 on CPU, 512 on other devices.
    ``hvp_method`` and ``whole_layer_grouped``: how Hg is computed (see
    :func:`gfverify.flow.hessian_vector`; every choice gives the same Hg to rounding).
    ``hg_params``: the parameter set Hg spans. ``"all"`` (default) = every trainable
    parameter, biases and BatchNorm γ/β included: the official code's filter scores.
    ``"weights"`` = the Conv/Linear weights only, θ_w ⊙ H_ww g_w, GraSP's own choice at weight
    granularity; the Hg measures then score weights only (other parameters contribute 0).
    """

    samples: int = 2560
    temperature: float | None = None
    train_temperature: float = 5.0
    hg_temperature: float | None = None
    include_bn: bool = False
    include_tied: bool = False
    use_init: bool = False
    params_init: dict[str, Tensor] | None = None
    seed: int = 0
    num_classes: int | None = None
    compute_batch_size: int | None = None
    loss_scale: float = 1.0
    groups: dict | None = field(default=None)
    hvp_method: str = "reverse_over_forward"
    whole_layer_grouped: bool = True
    hg_params: str = "all"


def _validate_labels(batches: Sequence[Batch], num_classes: int) -> None:
    for _, y in batches:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(
                f"labels must lie in [0, {num_classes - 1}] for a {num_classes}-class model; "
                f"found {int(y.min())}..{int(y.max())}"
            )


def get_measure(name: str) -> Measure:
    """The registered measure ``name`` (ConfigError listing the valid names otherwise)."""
    try:
        return MEASURES[name]
    except KeyError:
        valid = ", ".join(sorted(MEASURES))
        raise ConfigError(f"unknown measure {name!r}; valid measures: {valid}") from None


def score(
    model: nn.Module,
    name: str,
    batches: Sequence[Batch],
    granularity: Granularity = "filter",
    **opts: Any,
) -> dict[str, Tensor]:
    """Importance scores ``{module_name: tensor}`` of measure ``name`` (lowest pruned first).

    ``granularity="filter"``: a 1-D tensor per producing layer (conv output channel / linear
    unit; groups from :func:`gfverify.groups.filter_groups`). ``granularity="weight"``: a tensor
    of the weight's shape per conv/linear module (classifier and depthwise convs included).
    Options: see :class:`ScoreOptions`.
    """
    measure = get_measure(name)
    unknown = set(opts) - set(ScoreOptions.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown scoring option(s): {', '.join(sorted(unknown))}")
    options = ScoreOptions(**opts)
    if options.hvp_method not in (*flow.HV_METHODS, "auto"):
        raise ConfigError(
            f"unknown hvp_method {options.hvp_method!r}; use one of "
            f"{', '.join((*flow.HV_METHODS, 'auto'))}"
        )
    if granularity not in measure.granularities:
        raise ConfigError(
            f"measure {name!r} supports granularity {', '.join(measure.granularities)}, "
            f"not {granularity!r}"
        )
    if not batches:
        raise DataError("no scoring data: the list of batches is empty")
    with flow.eval_mode(model), torch.no_grad():
        logits = model(batches[0][0][:1])
    num_classes = options.num_classes or int(logits.shape[-1])
    _validate_labels(batches, num_classes)
    resolved = dict(options.__dict__)
    resolved["temperature"] = (
        options.temperature or measure.temperature or options.train_temperature
    )
    resolved["hg_temperature"] = options.hg_temperature or measure.hg_temperature or 1.0
    inputs = ScoringInputs(model, batches, resolved, num_classes)
    if granularity == "weight":
        return _weight_scores(model, measure, inputs)
    return _filter_scores(model, measure, inputs, options, batches[0][0][:2])


def weight_names(model: nn.Module) -> set[str]:
    """Parameter names of the Conv/Linear weights (``<module>.weight``)."""
    return {
        f"{n}.weight" if n else "weight"
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
        and isinstance(getattr(m, "weight", None), nn.Parameter)
    }


def _weight_scores(model: nn.Module, measure: Measure, inputs: ScoringInputs) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for mname, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            pname = f"{mname}.weight"
            if pname in inputs.theta:
                out[mname] = measure.weight_score(measure.contribution(inputs, pname)).detach()
    if not out:
        raise ModelError("the model has no conv or linear weights to score")
    if measure.name == "snip":
        total = sum(float(s.sum()) for s in out.values())
        out = {k: v / max(total, 1e-300) for k, v in out.items()}
    return out


#: model → (structure signature, filter groups): the dependency analysis (a trace of the whole
#: net, ~1 s on ResNet-56, the size of ~4 of its 128-sample gradients) once per model structure.
_GROUPS_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _structure(model: nn.Module, example: Tensor) -> tuple:
    """What the filter groups depend on: module names and types, parameter names, shapes,
    dtypes and trainability, and the example input's shape. Pruning or swapping a module
    changes it (masks do not: the groups trace bypasses them)."""
    modules = tuple((n, type(m).__name__) for n, m in model.named_modules())
    params = tuple(
        (n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in model.named_parameters()
    )
    return modules, params, tuple(example.shape[1:]), example.dtype


def _filter_groups(model: nn.Module, example: Tensor) -> dict:
    """:func:`gfverify.groups.filter_groups`, cached per model while its structure is unchanged."""
    from gfverify.groups import filter_groups

    key = _structure(model, example)
    try:
        cached = _GROUPS_CACHE.get(model)
    except TypeError:  # an unhashable module: no caching
        return filter_groups(model, example)
    if cached is not None and cached[0] == key:
        return cached[1]
    groups = filter_groups(model, example)
    _GROUPS_CACHE[model] = (key, groups)
    return groups


def _filter_scores(
    model: nn.Module,
    measure: Measure,
    inputs: ScoringInputs,
    options: ScoreOptions,
    example: Tensor,
) -> dict[str, Tensor]:
    groups = options.groups if options.groups is not None else _filter_groups(model, example)
    out: dict[str, Tensor] = {}
    for lname, group in groups.items():
        if measure.source in ("bn", "bn_gamma"):
            if group.bn_weight is None or group.bn_bias is None:
                raise ModelError(f"measure {measure.name!r} needs a BatchNorm after {lname!r}")
            names = [group.bn_weight] + ([group.bn_bias] if measure.source == "bn" else [])
        else:
            names = list(group.param_names(options.include_bn, options.include_tied))
        if measure.needs == "hg" and options.hg_params == "weights":
            names = [n for n in names if n in inputs.hg_theta]
        summed = None
        for pname in names:
            c = measure.contribution(inputs, pname)
            c = c.reshape(c.shape[0], -1).sum(dim=1)
            summed = c if summed is None else summed + c
        assert summed is not None
        if getattr(group, "channel_groups", 1) > 1:
            summed = group.fold(summed)  # one filter = the same position in every group
        out[lname] = measure.filter_score(summed).detach()
    return out


def describe() -> list[tuple[str, str, str]]:
    """(name, formula, data rule) for every registered measure, for ``gfverify measures``."""
    rules = {
        "none": "no data",
        "gradient": "ḡ over the first ≥samples (2560) samples, logits/T",
        "grad_sq": "per-batch squared gradients over the first ≥samples samples, logits/T",
        "hg": "Hg on int(samples/C) samples per class",
        "synflow": "data-free (all-ones input, |θ|)",
        "random": "seeded",
    }
    out = []
    for m in MEASURES.values():
        rule = rules[m.needs]
        if m.hg_temperature:
            rule += f", T = {m.hg_temperature:g}"
        elif m.temperature:
            rule += f", T = {m.temperature:g}"
        elif m.needs in ("gradient", "grad_sq"):
            rule += ", T = training T (5)"
        out.append((m.name, m.formula, rule + f"; granularity: {'/'.join(m.granularities)}"))
    return out
