"""Problems the claims run on: a float64 net, its data and loss, and named parameter subsets.

``builtin_problems()`` are the small smooth nets ``gfverify check`` uses; ``user_problem()``
wraps any ``nn.Module`` factory with random data of a given shape.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gfverify import flow
from gfverify.claims.numerics import geometric_ladder
from gfverify.errors import ModelError
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

    def __post_init__(self) -> None:
        self.model = self.model.double().eval()
        self.batches = [(x.double(), y) for x, y in self.batches]
        if not self.subsets:
            self.subsets = default_subsets(flow.trainable_params(self.model))

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
        run = lambda t: flow.integrate_flow(  # noqa: E731
            self.model, self.batches, self.loss, t, self.state.theta, self.integrator
        )
        return [(run(h), run(-h)) for h in self.steps]

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
) -> FlowProblem:
    """Wrap a user's model with seeded Gaussian inputs of ``input_shape`` and balanced labels.

    Raises ModelError (one line) for a model without trainable parameters, an input shape it
    can't take, logits of the wrong shape, or a non-finite loss.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError("the model has no trainable parameters")
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
    problem = FlowProblem("user-model", model, batches, loss or LossSpec("cross_entropy", 5.0))
    problem.kinked = has_kinks(model)
    if not torch.isfinite(torch.tensor(problem.state.loss)):
        raise ModelError(f"the loss is not finite on random inputs ({problem.state.loss})")
    return problem
