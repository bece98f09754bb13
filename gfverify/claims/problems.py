"""Problems the claims run on: a float64 net, its data and loss, and named parameter subsets.

``builtin_problems()`` are the small smooth nets ``gfverify check`` uses; ``user_problem()``
wraps any ``nn.Module`` factory with random data of a given shape.

Same samples everywhere: the Hg measures (GraSP, gradient-norm preservation) use the first
int(N/C) samples of each class, the gradient measures and the flow use all N. A
cross-entropy problem is therefore class-balanced on construction (:func:`balance_classes`):
every class has the same count m and N = m·C, so both rules select every sample and each side
of an identity describes the same L. ``user_problem`` draws N rounded up to a multiple of C.

Budget: a problem may carry ``budget_s`` (``gfverify check --model``: ``--budget``). Before an
expensive step (the gradient-flow integrations of E2–E5, L1, L2; H1; the Hg measures; T2; G1;
I1) a claim calls :meth:`FlowProblem.require_budget` with its count of gradients and Hv
products; the estimate (counts × the timed seconds of one of each) is printed, and over the
budget the claim raises :class:`~gfverify.claims.base.ClaimSkipped` instead of starting. A
running integration also stops at ``FLOW_HARD_STOP`` × max(budget, estimate).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gfverify import flow
from gfverify.claims.base import ClaimSkipped
from gfverify.claims.numerics import geometric_ladder
from gfverify.errors import DataError, ModelError
from gfverify.flow import Batch, FlowState, LossSpec, Params, Subset
from gfverify.models.small import SmallNetSpec


@dataclass
class FlowProblem:
    """A float64 model in eval mode, its batches and loss, and named parameter subsets."""

    name: str
    model: nn.Module
    batches: list[Batch]
    loss: LossSpec
    subsets: dict[str, Subset | None] = field(default_factory=dict)
    levels: int = 4
    h0_factor: float = 0.2
    integrator: flow.IntegratorSettings = field(default_factory=flow.IntegratorSettings)
    kinked: bool = False
    #: Seconds one claim's expensive steps may take (estimated first); None: no limit.
    budget_s: float | None = None
    #: Per-layer claims look at this many layers at most (evenly spread); None: every layer.
    max_layers: int | None = None
    #: Samples dropped by :func:`balance_classes` to make every class count equal.
    dropped_samples: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.model = self.model.double().eval()
        self.batches = [(x.double(), y) for x, y in self.batches]
        if self.loss.kind == "cross_entropy" and self.batches:
            with torch.no_grad():
                num_classes = int(self.model(self.batches[0][0][:1]).shape[-1])
            self.batches, self.dropped_samples = balance_classes(self.batches, num_classes)
        if not self.subsets:
            self.subsets = default_subsets(flow.trainable_params(self.model))

    @cached_property
    def filter_groups(self) -> dict:
        """The prunable filter groups (:func:`gfverify.groups.filter_groups`), computed once."""
        from gfverify.groups import filter_groups

        return filter_groups(self.model, self.batches[0][0][:2])

    @cached_property
    def case_groups(self) -> dict:
        """The groups per-layer claims visit: all, or ``max_layers`` spread first to last."""
        names = list(self.filter_groups)
        k = self.max_layers
        if k is None or len(names) <= k:
            return dict(self.filter_groups)
        picks = sorted({round(i * (len(names) - 1) / max(k - 1, 1)) for i in range(k)})
        return {names[i]: self.filter_groups[names[i]] for i in picks}

    @property
    def num_samples(self) -> int:
        return sum(len(y) for _, y in self.batches)

    @cached_property
    def gradient_seconds(self) -> float:
        """Seconds of one dataset gradient as the integrator computes it (min of wall, CPU).

        A slow first call (≥ 0.5 s: a big model) is timed once more and the faster of the two
        kept; a fast one gets 2 warm-up calls and the fastest of 3 timed calls (first calls pay
        one-off costs, ~50× on a tiny net). Cheap next to what it gates."""
        merged = flow.rebatch(self.batches, 4096)

        def timed() -> float:
            wall, cpu = time.perf_counter(), time.process_time()
            flow.gradient(self.model, merged, self.loss)
            # the smaller of wall and process-CPU seconds: on a machine shared with other jobs
            # wall time measures their load (×170 seen on a 2-core box at load 9), not the model
            return min(time.perf_counter() - wall, time.process_time() - cpu)

        first = timed()
        if first >= 0.5:
            return min(first, timed())
        timed()
        return min(timed() for _ in range(3))

    def estimate_seconds(self, gradients: float = 0.0, hvs: float = 0.0) -> float:
        """Estimated seconds of ``gradients`` dataset gradients and ``hvs`` Hv products
        (one Hv ≈ ``HV_OVER_GRADIENT`` gradients)."""
        return (gradients + HV_OVER_GRADIENT * hvs) * self.gradient_seconds

    @cached_property
    def gradient_bytes(self) -> int:
        """Estimated bytes autograd saves for one dataset gradient as the integrator computes it
        (all samples in one batch): the tensors saved for backward in a forward of 1 and of 2
        samples (``torch.autograd.graph.saved_tensors_hooks``), extrapolated linearly,
        b(N) = b(1) + (N − 1)(b(2) − b(1)), so parameters saved once are counted once."""
        x = self.batches[0][0]

        def saved(n: int) -> int:
            total = 0

            def pack(t: torch.Tensor) -> torch.Tensor:
                nonlocal total
                total += t.numel() * t.element_size()
                return t

            with (
                flow.eval_mode(self.model),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            ):
                self.model(x[:n])
            return total

        one = saved(1)
        two = saved(2) if len(x) > 1 else 2 * one
        return one + (self.num_samples - 1) * max(two - one, 0)

    def require_memory(self, what: str) -> None:
        """Raise ClaimSkipped when one dataset gradient would need more than the memory
        available (``MemAvailable``): :data:`BACKWARD_PEAK_FACTOR` × :attr:`gradient_bytes`.
        The kernel would kill the check otherwise. No-op without a budget (the built-in
        problems) or where the available memory is unknown."""
        available = available_memory_bytes()
        if self.budget_s is None or available is None:
            return
        saved = self.gradient_bytes
        if BACKWARD_PEAK_FACTOR * saved > available:
            raise ClaimSkipped(
                f"{what} on {self.name}: one gradient over its {self.num_samples} samples saves "
                f"~{saved / 1e9:.1f} GB for backward (peak up to "
                f"~{BACKWARD_PEAK_FACTOR * saved / 1e9:.1f} GB), {available / 1e9:.1f} GB "
                "available; pass fewer --samples or a smaller --input-shape"
            )

    def require_budget(self, what: str, gradients: float = 0.0, hvs: float = 0.0) -> None:
        """Before an expensive step: raise ClaimSkipped when one gradient would not fit in
        memory (:meth:`require_memory`); print the time estimate (≥ 1 s) and raise
        ClaimSkipped when it exceeds ``budget_s``. No-op without a budget (the built-in
        problems)."""
        if self.budget_s is None:
            return
        self.require_memory(what)
        seconds = self.estimate_seconds(gradients, hvs)
        params = sum(p.numel() for p in flow.trainable_params(self.model).values())
        cost = f"~{gradients:.0f} gradients"
        if hvs:
            cost += f" + ~{hvs:.0f} Hv (x{HV_OVER_GRADIENT:g} each)"
        cost += f" x {self.gradient_seconds:.3g} s"
        msg = (
            f"{what} on {self.name} ({params:,} parameters, {self.num_samples} samples): "
            f"{cost} = ~{seconds:.0f} s estimated"
        )
        if seconds > self.budget_s:
            raise ClaimSkipped(
                f"{msg}, over the per-claim budget of {self.budget_s:g} s; "
                f"pass --budget {max(1, 2 * round(seconds))} to run it"
            )
        if seconds >= 1:
            print(f"gfverify: {msg} (budget {self.budget_s:g} s)", file=sys.stderr)

    def check_flow_budget(self) -> float | None:
        """The flow integrations' budget check (call it before anything else in a flow claim);
        returns the hard-stop deadline (``time.perf_counter`` seconds) or None (no budget)."""
        if self.budget_s is None:
            return None
        evals = 2 * self.levels * FLOW_EVALS_PER_INTEGRATION
        self.require_budget("gradient-flow integration", gradients=evals)
        seconds = self.estimate_seconds(evals)
        return time.perf_counter() + FLOW_HARD_STOP * max(self.budget_s, seconds)

    def _integrate(self, t: float, deadline: float | None) -> Params:
        """θ(t) as :func:`gfverify.flow.integrate_flow`, stopping at ``deadline`` (perf_counter)."""
        if deadline is None:
            return flow.integrate_flow(
                self.model, self.batches, self.loss, t, self.state.theta, self.integrator
            )
        from scipy.integrate import solve_ivp

        theta = self.state.theta
        merged = flow.rebatch(self.batches, 4096)
        calls = [0]

        def rhs(_: float, y):
            if time.perf_counter() > deadline:
                raise ClaimSkipped(
                    f"gradient-flow integration of {self.name} stopped at the hard limit "
                    f"({FLOW_HARD_STOP:g} x budget) after {calls[0]} gradients; raise --budget"
                )
            calls[0] += 1
            return -flow.flatten(
                flow.gradient(self.model, merged, self.loss, flow.unflatten(y, theta))
            )

        s = self.integrator
        sol = solve_ivp(
            rhs, (0.0, t), flow.flatten(theta), method=s.method, rtol=s.rtol, atol=s.atol
        )
        if not sol.success:
            raise RuntimeError(f"gradient-flow integration failed: {sol.message}")
        return flow.unflatten(sol.y[:, -1], theta)

    @cached_property
    def state(self) -> FlowState:
        """θ, g, Hg and L at the starting point."""
        return flow.flow_state(self.model, self.batches, self.loss)

    @cached_property
    def steps(self) -> list[float]:
        """The step ladder h₀·2^{-i}, h₀ = ``h0_factor`` · τ."""
        return geometric_ladder(self.h0_factor * flow.flow_time_scale(self.state), self.levels)

    @cached_property
    def points(self) -> list[tuple[Params, Params]]:
        """θ(+h) and θ(−h) for every step, each by its own integration from θ(0)."""
        deadline = self.check_flow_budget()
        return [(self._integrate(h, deadline), self._integrate(-h, deadline)) for h in self.steps]

    @cached_property
    def gradients(self) -> list[tuple[Params, Params]]:
        """g(θ(+h)) and g(θ(−h)) for every step."""
        grad = lambda p: flow.gradient(self.model, self.batches, self.loss, p)  # noqa: E731
        return [(grad(a), grad(b)) for a, b in self.points]

    @cached_property
    def reordered_batches(self) -> list[Batch]:
        """The same samples in reverse order: equal in exact arithmetic, other rounding."""
        return [(x.flip(0), y.flip(0)) for x, y in reversed(self.batches)]

    @cached_property
    def roundoff(self) -> dict[str, float]:
        """Empirical round-off of L and ‖g‖² at θ₀: |Q(reordered samples) − Q(samples)|.

        Cancellation inside the gradient's sum over samples (e.g. near-uniform softmax at
        T = 200 with balanced labels) can make ‖g‖² far less precise than ε·‖g‖²; reordering
        the summation exposes that error where a formula in ε alone would not.
        """
        st = self.state
        loss_alt = float(flow.dataset_loss(self.model, self.reordered_batches, self.loss))
        g_alt = flow.gradient(self.model, self.reordered_batches, self.loss, st.theta)
        gg = float(flow.restrict(st.g).pow(2).sum())
        gg_alt = float(flow.restrict(g_alt).pow(2).sum())
        return {"loss": abs(loss_alt - st.loss), "grad_norm": abs(gg_alt - gg)}

    def loss_at(self, params: Params) -> float:
        return float(flow.dataset_loss(self.model, self.batches, self.loss, params))

    @cached_property
    def displacement(self) -> float:
        """Estimated global integration error in θ: 10 · rtol · ‖θ‖ (+ atol)."""
        theta = flow.restrict(self.state.theta)
        return 10 * (self.integrator.rtol * float(theta.norm()) + self.integrator.atol)


#: Gradient evaluations one DOP853 integration of :attr:`FlowProblem.points` takes, for the
#: estimate printed before it starts (measured: 65 on the issue-12 net, 29–49 on the built-in
#: nets; h₀ = 0.2·τ is in the flow's own time unit, so the count hardly depends on the net).
FLOW_EVALS_PER_INTEGRATION = 80
#: One Hessian-vector product costs about this many gradients in the budget estimates
#: (resnet18, float64, 20 samples: 2.6 on an idle 2-core machine; up to ~3.5 at 32x32 under load).
HV_OVER_GRADIENT = 3.0
#: Peak memory of one backward pass as a multiple of what the forward saved for it: the saved
#: tensors, plus at most as much again in gradients alive at once. MaxViT-T at 3×224×224 in
#: float64 (20 samples) saves 13.2 GB and was killed at 24 GB resident: ratio 1.8. (An Hv needs
#: more; this only stops a check the kernel would certainly kill.)
BACKWARD_PEAK_FACTOR = 2.0


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (Linux), else None."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


#: A running integration stops at this multiple of max(budget, estimate).
FLOW_HARD_STOP = 3.0


def balance_classes(batches: list[Batch], num_classes: int) -> tuple[list[Batch], int]:
    """The first m samples of every class in data order, m = the smallest class count.

    Keeps the samples' order and the first batch's size. With equal counts every rule of
    :mod:`gfverify.measures` (all samples for gradients, int(N/C) per class for Hg) selects all
    N = m·C samples, so the measures and the flow see the same data. Returns the batches and
    how many samples were dropped (0 when already balanced). DataError when a class has none.
    """
    ys = torch.cat([y for _, y in batches])
    if ys.is_floating_point() or ys.dim() != 1:
        return batches, 0
    counts = torch.bincount(ys, minlength=num_classes)
    m = int(counts.min())
    if m == 0:
        missing = int((counts == 0).nonzero()[0])
        raise DataError(
            f"class {missing} has no sample among {len(ys)}: every class needs at least one "
            f"(use at least {num_classes} samples)"
        )
    if bool((counts == m).all()):
        return batches, 0
    xs = torch.cat([x for x, _ in batches])
    rank = torch.zeros_like(ys)
    seen = torch.zeros(num_classes, dtype=torch.long)
    for i, c in enumerate(ys.tolist()):
        rank[i] = seen[c]
        seen[c] += 1
    keep = (rank < m).nonzero().flatten()
    size = len(batches[0][1])
    xs, ys = xs[keep], ys[keep]
    out = [(xs[i : i + size], ys[i : i + size]) for i in range(0, len(ys), size)]
    return out, len(rank) - len(keep)


def calibrated_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm running statistics are those of ``x``.

    Every BN's running mean and variance become the batch mean and (unbiased) variance of its
    input on ``x`` (one train-mode forward with cumulative averaging). A fresh net's default
    statistics (mean 0, variance 1) let activations die out with depth: VGG-13, MobileNet-V1
    and ResNet-56 at 1/8 width then return the same logits for every input (MobileNet-V1
    exactly), and a check that compares outputs could not fail. The original is untouched.
    """
    calibrated = copy.deepcopy(model)
    norms = [m for m in calibrated.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    calibrated.train()
    with torch.no_grad():
        calibrated(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return calibrated.eval()


def default_subsets(params: Params, seed: int = 0) -> dict[str, Subset | None]:
    """The whole θ, one filter (row 0 of the first weight), one layer, and a random 30% mask."""
    names = list(params)
    first_weight = next((n for n in names if params[n].dim() >= 2), names[0])
    row = torch.zeros_like(params[first_weight], dtype=torch.bool)
    row[0] = True
    gen = torch.Generator().manual_seed(seed)
    random_mask = {
        n: torch.rand(p.shape, generator=gen, dtype=torch.float64) < 0.3 for n, p in params.items()
    }
    return {
        "all": None,
        f"filter:{first_weight}[0]": {first_weight: row},
        f"layer:{first_weight}": {first_weight: None},
        "random30%": random_mask,
    }


@dataclass
class CheckContext:
    """What the claims run on: flow problems (identities) and settings for the other claims."""

    problems: list[FlowProblem]
    scale: str = "quick"
    options: dict = field(default_factory=dict)


#: The built-in nets of ``gfverify check``: smooth activations, BatchNorm in eval mode, a
#: residual block and a depthwise-separable block, cross-entropy at two temperatures and MSE.
BUILTIN_SPECS: dict[str, tuple[SmallNetSpec, LossSpec]] = {
    "cnn-bn-res-dw/tanh/ce-T5": (
        SmallNetSpec(
            kind="cnn",
            widths=(4, 6),
            activation="tanh",
            residual=True,
            depthwise=True,
            image_size=5,
            seed=1,
        ),
        LossSpec("cross_entropy", 5.0),
    ),
    "cnn-bn/softplus/ce-T1": (
        SmallNetSpec(kind="cnn", widths=(5,), activation="softplus", image_size=6, seed=2),
        LossSpec("cross_entropy", 1.0),
    ),
    "mlp/gelu/mse": (
        SmallNetSpec(
            kind="mlp", widths=(12, 8), activation="gelu", batchnorm=True, image_size=3, seed=3
        ),
        LossSpec("mse", 1.0),
    ),
}


def builtin_problems(samples: int = 24, batch_size: int = 8) -> list[FlowProblem]:
    """The built-in small nets as flow problems (float64, eval mode, seeded data)."""
    return [
        FlowProblem(name, spec.build(), spec.data(samples, batch_size), loss)
        for name, (spec, loss) in BUILTIN_SPECS.items()
    ]


def has_kinks(model: nn.Module) -> bool:
    """True when the model contains piecewise-linear activations or max-pooling."""
    kinked = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.MaxPool2d, nn.MaxPool1d)
    return any(isinstance(m, kinked) for m in model.modules())


def user_problem(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    samples: int = 16,
    batch_size: int = 8,
    loss: LossSpec | None = None,
    seed: int = 0,
    budget_s: float | None = None,
    max_layers: int | None = None,
) -> FlowProblem:
    """Wrap a user's model with seeded Gaussian inputs of ``input_shape`` and balanced labels.

    ``samples`` is rounded up to a multiple of ``num_classes`` (labels 0, 1, …, C−1, 0, …), so
    every class has the same count and every claim, measures and flow alike, uses all of them.
    Raises ModelError (one line) for a model without trainable parameters, an input shape it
    can't take, logits of the wrong shape, or a non-finite loss.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError("the model has no trainable parameters")
    if num_classes < 1 or samples < 1:
        raise ModelError(f"need num_classes >= 1 and samples >= 1, got {num_classes}, {samples}")
    samples = -(-samples // num_classes) * num_classes
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *input_shape), generator=gen, dtype=torch.float64)
    y = torch.arange(samples) % num_classes
    model = model.double().eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as exc:  # any failure here means the shape does not fit the model
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"the model cannot take inputs of shape {tuple(input_shape)}: {msg}"
        ) from None
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise ModelError(
            f"the model returns shape {tuple(out.shape)} for 2 inputs; expected (2, {num_classes})"
        )
    batches = [
        (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, samples, batch_size)
    ]
    problem = FlowProblem(
        "user-model",
        model,
        batches,
        loss or LossSpec("cross_entropy", 5.0),
        budget_s=budget_s,
        max_layers=max_layers,
    )
    problem.kinked = has_kinks(model)
    start_loss = float(flow.dataset_loss(problem.model, problem.batches, problem.loss))
    if not torch.isfinite(torch.tensor(start_loss)):
        raise ModelError(f"the loss is not finite on random inputs ({start_loss})")
    return problem
