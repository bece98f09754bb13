"""The controlled experiment behind the statistical claims: train, prune once, keep training.

One *seed* fixes the initialisation (``torch.manual_seed(seed)``) and the data order (the
project's seeded epoch loaders, :func:`gfverify.data.make_loaders`). Per seed:

1. **Base.** Train the unpruned net for ``prune_epoch`` epochs (SGD, lr 0.1, momentum 0.9,
   weight decay 1e-4, logits / T with T = 5: the official protocol, spec §3.3). θ is
   snapshotted at every epoch boundary (epoch 0 = initialisation).
2. **Arms.** From that same state, one arm per measure (plus ``"none"``, no pruning): score
   the filters (:func:`gfverify.measures.score`, official data rules at a reduced sample
   count), remove the globally lowest ``int(ratio · N)`` of the N filters with per-layer floors
   (:func:`gfverify.ranking.plan_from_fraction`, :func:`gfverify.surgery.prune_filters`),
   re-create the optimizer (momentum reset, as the official code does at every round; the
   unpruned arm resets too), then train ``epochs_after`` more epochs on the *same* batches
   in every arm. So the arms of one seed differ only by which filters were removed.

**The probe loss.** Dynamics are measured on a fixed *probe* set (the first ``probe_samples``
training images, unaugmented) as ONE batch whose BatchNorm layers use that batch's own
statistics (train-mode BN, running statistics untouched; :func:`batch_statistics`), at the
training temperature, without weight decay:

    L(θ) = CE(f_θ(X_probe; BN batch statistics) / T, y_probe),   g = ∇L.

This is the objective SGD actually descends (train-mode BN), and it is a deterministic function
of θ. Eval-mode BN was rejected after a pilot run: right after pruning, the running statistics
of the layers behind a pruned layer are stale, and in VGG's Conv→ReLU→BN order they switch most
ReLUs off, so the eval-mode ‖g‖² of a pruned net collapses by orders of magnitude — a property
of the stale buffers, not of the dynamics training sees (the measures themselves still score in
eval mode, the official rule, before pruning, where the buffers are current).

Recorded per arm (all lists, JSON-ready):

- ``before`` / ``after`` the pruning step: L, ‖θ‖², ‖g‖² and D1 = d‖θ‖²/dt = −2θᵀg (E3)
  over all trainable parameters of the net as it is (``after``: the pruned net with its own,
  recomputed gradient); ``norm_rate_kept_fixed_g`` = −2 Σ_kept θᵀg with the *unpruned* g
  (the first-order estimate); ‖g‖² before/after also at T = 1 and T = 200.
- ``steps``: ‖θ‖², ‖g‖² and the minibatch loss after each of the first ``step_records``
  SGD steps after pruning (index 0 = right after pruning, before any step).
- ``epochs``: per epoch after pruning, the mean minibatch training loss and accuracy (train
  mode, as training curves are drawn), test loss/accuracy (eval mode), probe L, ‖θ‖², ‖g‖².
- widths per prunable layer before and after, in forward order.

Runs are cached per (config, seed, arm) in this process, so claims sharing arms share work.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from gfverify.claims.stats import kendall_tau
from gfverify.errors import ConfigError, NonFiniteLossError
from gfverify.flow import Batch, LossSpec

#: Every arm a claim may ask for: "none" is the unpruned control.
ARMS = (
    "none",
    "magnitude",
    "loss_preservation",
    "biased_loss_preservation",
    "grasp",
    "gradient_norm_preservation",
    "random",
)

#: The quick-scale VGG: the official CifarVGG block (Conv→ReLU→BN, no conv bias, max-pools)
#: with six convs, for 8×8 digits (three pools: 8 → 1).
VGG6_CFG: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M", 64, 64, "M")


@dataclass(frozen=True)
class ExperimentConfig:
    """Settings of the prune-once experiment (defaults: the ``quick`` scale).

    - ``model``: "vgg" (:class:`gfverify.models.CifarVGG` with ``vgg_cfg``: the official VGG
      block), "vgg13" (the official VGG-13 at ``width_mult``; needs 32×32) or "small_cnn"
      (:class:`gfverify.models.SmallCNN` with ``widths``, Conv→BN→ReLU, no pooling).
    - ``dataset``: a :mod:`gfverify.data` name ("digits": offline, 1440 train / 357 test);
      ``image_size`` 8 is the digits' native size.
    - ``prune_epoch``: epochs trained before the one-shot pruning ("minimally trained": 1).
    - ``ratio``: fraction of all prunable filters removed (global ranking, per-layer floors
      int(0.05·w) + 1 chosen by ``floor_by``).
    - ``score_samples``: gradient measures use the first ≥ this many scoring samples, Hg
      measures int(score_samples / C) per class (official: 2560).
    - ``probe_samples``: training images of the probe batch (see the module docstring).
    - ``step_records``: SGD steps after pruning whose ‖θ‖², ‖g‖² are recorded (S6).
    - ``tau_filters``: filters (seeded random subset) whose true removal effect is measured
      at each snapshot (S3); ``None`` = all. ``tau_dtype``: precision of that study
      ("float32": 7× faster than float64 on CPU; τ moved by ≤ 0.025 in a pilot comparison).
    - ``threads``: torch intra-op threads while the experiment runs (``None``: unchanged).
    """

    model: str = "vgg"
    vgg_cfg: tuple[int | str, ...] = VGG6_CFG
    width_mult: float = 1.0
    widths: tuple[int, ...] = (16, 32, 32)
    image_size: int = 8
    dataset: str = "digits"
    augment: bool = False
    train_subset: int | None = None
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    temperature: float = 5.0
    prune_epoch: int = 1
    epochs_after: int = 4
    ratio: float = 0.5
    floor_by: str = "importance"
    score_samples: int = 640
    probe_samples: int = 512
    step_records: int = 10
    tau_filters: int | None = 64
    tau_dtype: str = "float32"
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.model not in ("vgg", "vgg13", "small_cnn"):
            raise ConfigError(
                f"experiment model must be 'vgg', 'vgg13' or 'small_cnn', got {self.model!r}"
            )
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"experiment ratio must be in (0, 1), got {self.ratio}")
        for key in ("prune_epoch", "epochs_after", "batch_size", "score_samples", "probe_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"experiment {key} must be ≥ 1, got {getattr(self, key)}")
        if self.step_records < 0:
            raise ConfigError(f"experiment step_records must be ≥ 0, got {self.step_records}")
        if self.tau_dtype not in ("float32", "float64"):
            raise ConfigError(f"experiment tau_dtype must be float32/float64, not {self.tau_dtype}")

    def settings(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (for claim details)."""
        d = asdict(self)
        d["vgg_cfg"] = list(self.vgg_cfg)
        d["widths"] = list(self.widths)
        return d


def config_with(base: ExperimentConfig, overrides: dict[str, Any] | None) -> ExperimentConfig:
    """``base`` with ``overrides`` applied (unknown keys raise ConfigError naming them)."""
    if not overrides:
        return base
    valid = {f.name for f in fields(ExperimentConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown experiment setting(s): {', '.join(unknown)}")
    changes = dict(overrides)
    for key in ("widths", "vgg_cfg"):
        if key in changes:
            changes[key] = tuple(changes[key])
    return replace(base, **changes)


# --------------------------------------------------------------------------------------------
# records


@dataclass
class ProbePoint:
    """Probe quantities at one θ: L, ‖θ‖², ‖g‖², D1 = d‖θ‖²/dt = −2θᵀg (trainable params)."""

    loss: float
    theta_norm_sq: float
    grad_norm_sq: float
    norm_rate: float


@dataclass
class ArmRecord:
    """Everything one arm of one seed recorded (see the module docstring)."""

    seed: int
    measure: str
    before: ProbePoint
    after: ProbePoint
    norm_rate_kept_fixed_g: float
    grad_norm_sq_by_temperature: dict[str, list[float]]
    layers: list[str]
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    steps: dict[str, list[float]]
    epochs: dict[str, list[float]]
    base_epochs: dict[str, list[float]]
    seconds: float

    def early_kept_fraction(self) -> float:
        """Σ kept / Σ original filters over the first ⌊n/2⌋ prunable layers (at least one)."""
        early = self.layers[: max(1, len(self.layers) // 2)]
        return sum(self.widths_after[n] for n in early) / sum(self.widths_before[n] for n in early)

    def loss_auc(self) -> float:
        """Area under the training-loss curve over the k epochs after pruning, unit-width
        epochs, divided by k: (1/k) Σ_{e=1..k} L̄_e with L̄_e the epoch's mean minibatch loss."""
        return float(np.mean(self.epochs["train_loss"]))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Base:
    state: dict[str, Tensor]
    epochs: dict[str, list[float]]
    snapshots: list[tuple[int, dict[str, Tensor]]]


# --------------------------------------------------------------------------------------------
# building blocks


def build_net(config: ExperimentConfig, seed: int, num_classes: int = 10) -> nn.Module:
    """The experiment's net, initialised under ``torch.manual_seed(seed)`` (global RNG kept)."""
    from gfverify.models import CifarVGG, SmallCNN, build_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if config.model == "vgg13":
            return build_model("vgg13", num_classes, config.width_mult, config.image_size)
        if config.model == "vgg":
            return CifarVGG(config.vgg_cfg, num_classes, config.width_mult, config.image_size)
        return SmallCNN(3, config.widths, num_classes, activation="relu", batchnorm=True)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode, with every BatchNorm normalising by the batch's own statistics and its
    running statistics left untouched (``track_running_stats`` off); flags restored after."""
    modes = {m: m.training for m in model.modules()}
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    tracked = {m: m.track_running_stats for m in bns}
    model.train()
    for m in bns:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m, flag in tracked.items():
            m.track_running_stats = flag
        for m, flag in modes.items():
            m.training = flag


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (restored after; ``None``: unchanged).

    The experiment's nets are tiny: intra-op threads cost more than they gain, and on a
    loaded machine OpenMP's spinning threads slow them down several-fold.
    """
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def probe_loss(model: nn.Module, probe: Batch, loss: LossSpec) -> float:
    """L(θ) on the probe batch with batch-statistics BN (no gradient)."""
    with batch_statistics(model), torch.no_grad():
        return float(loss(model(probe[0]), probe[1]))


def probe_gradient(
    model: nn.Module, probe: Batch, loss: LossSpec
) -> tuple[float, dict[str, Tensor]]:
    """(L, g) on the probe batch with batch-statistics BN; g keyed by parameter name."""
    params = _trainable(model)
    with batch_statistics(model), torch.enable_grad():
        value = loss(model(probe[0]), probe[1])
        grads = torch.autograd.grad(value, list(params.values()))
    return float(value.detach()), {n: g.detach() for n, g in zip(params, grads)}


def _dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def probe_point(model: nn.Module, probe: Batch, loss: LossSpec) -> ProbePoint:
    """L, ‖θ‖², ‖g‖², D1 = −2θᵀg on the probe batch (see the module docstring)."""
    value, g = probe_gradient(model, probe, loss)
    theta = {n: p.detach() for n, p in _trainable(model).items()}
    return ProbePoint(
        loss=value,
        theta_norm_sq=_dot(theta, theta),
        grad_norm_sq=_dot(g, g),
        norm_rate=-2.0 * _dot(theta, g),
    )


def grad_norm_sq(model: nn.Module, probe: Batch, loss: LossSpec) -> float:
    """‖g‖² of the probe loss."""
    _, g = probe_gradient(model, probe, loss)
    return _dot(g, g)


def theta_norm_sq(model: nn.Module) -> float:
    theta = {n: p.detach() for n, p in _trainable(model).items()}
    return _dot(theta, theta)


def evaluate(model: nn.Module, batches: Sequence[Batch], loss: LossSpec) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode (the test metric)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    total, correct, n = 0.0, 0, 0
    try:
        with torch.no_grad():
            for x, y in batches:
                out = model(x)
                total += float(loss(out, y)) * len(y)
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
    finally:
        for m, flag in modes.items():
            m.training = flag
    return total / n, correct / n


def kept_norm_rate(
    theta: dict[str, Tensor], g: dict[str, Tensor], kept_index_map: dict[str, Any]
) -> float:
    """−2 Σ θᵀg over the coordinates that survive the surgery, θ and g from *before* it.

    ``kept_index_map`` (:func:`gfverify.surgery.prune_filters`) gives, per cut parameter, the
    surviving positions along each cut dim; parameters absent from it survive whole.
    """
    total = 0.0
    for name, t in theta.items():
        a, b = t, g[name]
        ps = kept_index_map.get(name)
        if ps is not None:
            for dim, keep in sorted(ps.kept.items()):
                idx = torch.tensor(keep, dtype=torch.long)
                a, b = a.index_select(dim, idx), b.index_select(dim, idx)
        total += float((a.double() * b.double()).sum())
    return -2.0 * total


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _append(series: dict[str, list[float]], row: dict[str, float]) -> None:
    for k, v in row.items():
        series.setdefault(k, []).append(v)


_BATCHES: dict[tuple, Batch] = {}


def training_batch(
    dataset: str, image_size: int, samples: int, train_subset: int | None = None
) -> Batch:
    """The first ``samples`` images of a dataset's training split (split order, unaugmented,
    normalised as in training) as one float32 batch; cached per arguments."""
    key = (dataset, image_size, samples, train_subset)
    if key not in _BATCHES:
        from gfverify.data import DataSpec, TensorAugmentLoader, load_datasets

        spec = DataSpec(
            name=dataset, image_size=image_size, augment=False, train_subset=train_subset
        )
        ds = load_datasets(spec).train
        n = min(samples, len(ds))
        loader = TensorAugmentLoader(
            ds.uint8_images()[:n],
            torch.from_numpy(ds.targets[:n]),
            n,
            mean=ds.pipeline.mean,
            std=ds.pipeline.std,
            augment=False,
            shuffle=False,
        )
        _BATCHES[key] = next(iter(loader.epoch_loader(0)))
    return _BATCHES[key]


# --------------------------------------------------------------------------------------------
# the lab: data, cached base runs and arms


class Lab:
    """Runs (and caches) the experiment of one :class:`ExperimentConfig`."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.loss = LossSpec("cross_entropy", config.temperature)
        self._bases: dict[int, _Base] = {}
        self._arms: dict[tuple[int, str], ArmRecord] = {}
        self._snapshots: dict[int, list[tuple[int, dict[str, Tensor]]]] = {}
        self._taus: dict[int, dict[str, list]] = {}

    # data ----------------------------------------------------------------------------------
    @cached_property
    def datasets(self):
        from gfverify.data import DataSpec, load_datasets

        c = self.config
        spec = DataSpec(
            name=c.dataset,
            image_size=c.image_size,
            augment=c.augment,
            train_subset=c.train_subset,
        )
        return load_datasets(spec)

    def loaders(self, seed: int):
        from gfverify.data import make_loaders

        return make_loaders(self.datasets, self.config.batch_size, seed, fast_path=True)

    @cached_property
    def probe(self) -> Batch:
        """The first ``probe_samples`` training images in split order, unaugmented, as one
        batch."""
        c = self.config
        return training_batch(c.dataset, c.image_size, c.probe_samples, c.train_subset)

    @cached_property
    def test(self) -> list[Batch]:
        return list(self.loaders(0).test.epoch_loader(0))

    @property
    def num_classes(self) -> int:
        return self.datasets.num_classes

    def example(self) -> Tensor:
        return self.probe[0][:1]

    # training ------------------------------------------------------------------------------
    def _optimizer(self, model: nn.Module) -> torch.optim.SGD:
        c = self.config
        return torch.optim.SGD(
            model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
        )

    def _train_epoch(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        batches,
        on_step: Callable[[float], None] | None = None,
    ) -> tuple[float, float]:
        """One epoch of SGD in train mode; (mean minibatch loss, minibatch accuracy)."""
        model.train()
        total, correct, n = 0.0, 0, 0
        for x, y in batches:
            out = model(x)
            loss = self.loss(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(f"training loss became {value} in the claim experiment")
            total += value * len(y)
            correct += int((out.detach().argmax(1) == y).sum())
            n += len(y)
            if on_step is not None:
                on_step(value)
        return total / n, correct / n

    def _epoch_metrics(self, model: nn.Module, train_loss: float, train_acc: float) -> dict:
        test_loss, test_acc = evaluate(model, self.test, self.loss)
        pp = probe_point(model, self.probe, self.loss)
        return {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "probe_loss": pp.loss,
            "theta_norm_sq": pp.theta_norm_sq,
            "grad_norm_sq": pp.grad_norm_sq,
            "norm_rate": pp.norm_rate,
        }

    # base ----------------------------------------------------------------------------------
    def base(self, seed: int) -> _Base:
        """The unpruned net after ``prune_epoch`` epochs (cached), with its snapshots."""
        if seed not in self._bases:
            c = self.config
            model = build_net(c, seed, self.num_classes)
            opt = self._optimizer(model)
            loaders = self.loaders(seed)
            snaps = [(0, _clone_state(model))]
            series: dict[str, list[float]] = {}
            for e in range(c.prune_epoch):
                tl, ta = self._train_epoch(model, opt, loaders.train.epoch_loader(e))
                _append(series, {"epoch": e + 1, **self._epoch_metrics(model, tl, ta)})
                snaps.append((e + 1, _clone_state(model)))
            self._bases[seed] = _Base(_clone_state(model), series, snaps)
        return self._bases[seed]

    def _base_model(self, seed: int) -> nn.Module:
        model = build_net(self.config, seed, self.num_classes)
        model.load_state_dict(self.base(seed).state)
        return model

    # arms ----------------------------------------------------------------------------------
    def scoring_batches(self, seed: int) -> list[Batch]:
        """A seeded pass over the training set (the scoring stream), all batches."""
        return list(self.loaders(seed).scoring.epoch_loader(self.config.prune_epoch))

    def arm(self, seed: int, measure: str) -> ArmRecord:
        """Prune the base net of ``seed`` by ``measure`` ("none": not at all), keep training."""
        if measure not in ARMS:
            raise ConfigError(f"unknown experiment arm {measure!r}; choose from {list(ARMS)}")
        key = (seed, measure)
        if key not in self._arms:
            with torch_threads(self.config.threads):
                self._arms[key] = self._run_arm(seed, measure)
        return self._arms[key]

    def arms(self, seeds: Sequence[int], measures: Sequence[str]) -> dict[str, list[ArmRecord]]:
        """measure -> [arm of each seed], seeds in the given order."""
        return {m: [self.arm(s, m) for s in seeds] for m in measures}

    def _run_arm(self, seed: int, measure: str) -> ArmRecord:
        from gfverify.groups import filter_groups
        from gfverify.measures import score
        from gfverify.ranking import plan_from_fraction
        from gfverify.surgery import prune_filters

        started = time.perf_counter()
        c = self.config
        model = self._base_model(seed)
        example = self.example()
        groups = filter_groups(model, example)
        layers = list(groups)
        widths = {n: g.num_filters for n, g in groups.items()}
        temps = {"1": LossSpec("cross_entropy", 1.0), "200": LossSpec("cross_entropy", 200.0)}
        by_t = {t: [grad_norm_sq(model, self.probe, spec)] for t, spec in temps.items()}
        _, g0 = probe_gradient(model, self.probe, self.loss)
        theta0 = {n: p.detach().clone() for n, p in _trainable(model).items()}
        before = probe_point(model, self.probe, self.loss)
        widths_after = dict(widths)
        if measure == "none":
            kept_rate = before.norm_rate
        else:
            scores = score(
                model,
                measure,
                self.scoring_batches(seed),
                samples=c.score_samples,
                train_temperature=c.temperature,
                seed=seed,
                compute_batch_size=512,
                groups=groups,
            )
            plan = plan_from_fraction(scores, c.ratio, original_widths=widths, floor_by=c.floor_by)
            record = prune_filters(model, plan.remove, example_input=example)
            kept_rate = kept_norm_rate(theta0, g0, record.kept_index_map)
            widths_after = plan.remaining
        after = probe_point(model, self.probe, self.loss)
        for t, spec in temps.items():
            by_t[t].append(grad_norm_sq(model, self.probe, spec))

        opt = self._optimizer(model)  # momentum reset after pruning (official), in every arm
        steps: dict[str, list[float]] = {
            "step": [0],
            "theta_norm_sq": [after.theta_norm_sq],
            "grad_norm_sq": [after.grad_norm_sq],
            "batch_loss": [math.nan],
        }

        def on_step(value: float) -> None:
            if len(steps["step"]) <= c.step_records:
                _append(
                    steps,
                    {
                        "step": len(steps["step"]),
                        "theta_norm_sq": theta_norm_sq(model),
                        "grad_norm_sq": grad_norm_sq(model, self.probe, self.loss),
                        "batch_loss": value,
                    },
                )

        loaders = self.loaders(seed)
        epochs: dict[str, list[float]] = {}
        snaps: list[tuple[int, dict[str, Tensor]]] = []
        for e in range(c.epochs_after):
            epoch = c.prune_epoch + e
            tl, ta = self._train_epoch(model, opt, loaders.train.epoch_loader(epoch), on_step)
            _append(epochs, {"epoch": epoch + 1, **self._epoch_metrics(model, tl, ta)})
            if measure == "none":
                snaps.append((epoch + 1, _clone_state(model)))
        if measure == "none":
            self._snapshots[seed] = self.base(seed).snapshots + snaps
        return ArmRecord(
            seed=seed,
            measure=measure,
            before=before,
            after=after,
            norm_rate_kept_fixed_g=kept_rate,
            grad_norm_sq_by_temperature=by_t,
            layers=layers,
            widths_before=widths,
            widths_after=widths_after,
            steps=steps,
            epochs=epochs,
            base_epochs=copy.deepcopy(self.base(seed).epochs),
            seconds=time.perf_counter() - started,
        )

    # S3: the per-filter removal study ------------------------------------------------------
    def snapshots(self, seed: int) -> list[tuple[int, dict[str, Tensor]]]:
        """θ of the unpruned net at epochs 0..prune_epoch + epochs_after."""
        if seed not in self._snapshots:
            self._arms.pop((seed, "none"), None)
            self.arm(seed, "none")
        return self._snapshots[seed]

    def taus(self, seed: int) -> dict[str, list]:
        """Per snapshot of the unpruned net: :func:`filter_tau` (cached)."""
        if seed not in self._taus:
            snapshots = self.snapshots(seed)
            out: dict[str, list] = {}
            with torch_threads(self.config.threads):
                for epoch, state in snapshots:
                    model = build_net(self.config, seed, self.num_classes)
                    model.load_state_dict(state)
                    row = filter_tau(
                        model,
                        self.probe,
                        self.loss,
                        self.config.tau_filters,
                        seed,
                        getattr(torch, self.config.tau_dtype),
                    )
                    _append(out, {"epoch": epoch, **row})
            self._taus[seed] = out
        return self._taus[seed]


def filter_tau(
    model: nn.Module,
    probe: Batch,
    loss: LossSpec,
    max_filters: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Any]:
    """Kendall τ over filters f between first-order scores and the true removal effect.

    In ``dtype`` (float64 by default) on the probe loss (batch-statistics BN): with θ_f the
    filter's conv/linear weight slice and bias (the coordinates the official measures score),

    - ΔL_f = L(θ with θ_f := 0) − L(θ)  (the true effect of removing f's weights),
    - taylor_fo(f) = |θ_fᵀg_f|, loss_preservation(f) = Σ_i |θ_f,i g_f,i| (spec §1.3).

    Returns τ(taylor_fo, |ΔL|), τ(loss_preservation, |ΔL|), τ(−θ_fᵀg_f, ΔL) (signed, T1),
    the probe loss and ‖g‖², the number of filters, and the per-filter lists ``importance``
    (taylor_fo) and ``loss_change`` (ΔL_f). ``max_filters`` caps the filters
    studied (a random subset seeded by ``seed``).
    """
    from gfverify.groups import filter_groups

    model = copy.deepcopy(model).to(dtype)
    probe = (probe[0].to(dtype), probe[1])
    groups = filter_groups(model, probe[0][:1])
    base_loss, g = probe_gradient(model, probe, loss)
    params = dict(model.named_parameters())
    units = [(name, f) for name, grp in groups.items() for f in range(grp.num_filters)]
    if max_filters is not None and len(units) > max_filters:
        gen = np.random.default_rng([seed, 0x7A0])
        pick = sorted(gen.choice(len(units), size=max_filters, replace=False).tolist())
        units = [units[i] for i in pick]
    delta, first_order, s_tfo, s_lp = [], [], [], []
    for name, f in units:
        grp = groups[name]
        names = [p for p in (grp.weight, grp.bias) if p is not None]
        contrib = torch.cat([(params[p][f] * g[p][f]).detach().reshape(-1) for p in names])
        saved = {p: params[p][f].detach().clone() for p in names}
        with torch.no_grad():
            for p in names:
                params[p][f] = 0.0
            delta.append(probe_loss(model, probe, loss) - base_loss)
            for p in names:
                params[p][f] = saved[p]
        first_order.append(-float(contrib.sum()))
        s_tfo.append(abs(float(contrib.sum())))
        s_lp.append(float(contrib.abs().sum()))
    abs_delta = [abs(d) for d in delta]
    return {
        "tau_taylor_fo": kendall_tau(s_tfo, abs_delta),
        "tau_loss_preservation": kendall_tau(s_lp, abs_delta),
        "tau_signed": kendall_tau(first_order, delta),
        "probe_loss": base_loss,
        "grad_norm_sq": _dot(g, g),
        "n_filters": float(len(units)),
        "importance": s_tfo,
        "loss_change": delta,
    }


# --------------------------------------------------------------------------------------------
# process-wide cache

_LABS: dict[ExperimentConfig, Lab] = {}


def lab_for(config: ExperimentConfig) -> Lab:
    """The (cached) :class:`Lab` of ``config``: every claim of one process shares its runs."""
    if config not in _LABS:
        _LABS[config] = Lab(config)
    return _LABS[config]


def clear_cache() -> None:
    """Forget every cached run (tests use it to check reproducibility from scratch)."""
    _LABS.clear()


#: Seeds of the quick scale (override with ctx.options["seeds"]: a count or a list).
QUICK_SEEDS: tuple[int, ...] = tuple(range(8))


def plan_for(options: dict | None) -> tuple[ExperimentConfig, tuple[int, ...]]:
    """(config, seeds) of the quick-scale experiment from ``ctx.options``.

    ``options["experiment"]``: an :class:`ExperimentConfig` or a dict of overrides of the
    defaults; ``options["seeds"]``: a count n (seeds 0..n−1) or a list of seeds.
    """
    opts = options or {}
    exp = opts.get("experiment")
    config = exp if isinstance(exp, ExperimentConfig) else config_with(ExperimentConfig(), exp)
    seeds = opts.get("seeds", QUICK_SEEDS)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds must be a positive count or a list, got {seeds}")
        seeds = tuple(range(seeds))
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    return config, seeds
