"""The prune-while-training protocol as pure functions of a :class:`~gfverify.config.RunConfig`.

Epochs are numbered 1..E (E = ``train.epochs``). With W = ``train.warmup_epochs`` and
n = the schedule's number of rounds (0 when ``prune.ratio == 0``: a dense baseline):

- epochs 1..W are ``warmup`` (plain training),
- epochs W+1..W+n are ``prune`` epochs: train one epoch, then pruning round k = e − W − 1
  (0-based) at its end,
- epochs W+n+1..E are ``final`` training.

The learning rate of epoch e is ``train.lrs[j]`` for the first phase j whose cumulative length
Σ_{i≤j} ``train.lr_epochs[i]`` reaches e. The phases count the warm-up and pruning epochs, as in
the official ``main.py`` (final training [80 − n, 40, 40] at [0.1, 0.01, 0.001] after n rounds
at 0.1; the config requires W + n ≤ lr_epochs[0], so every round runs at lrs[0]).

Differences from the official code, by decision: ``warmup_epochs = w`` trains exactly w epochs
before the first round (the official flag trains w − 1); a dense baseline (ratio 0) runs no
rounds at all.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch

from gfverify.config import RunConfig
from gfverify.data import DataSpec
from gfverify.errors import ConfigError
from gfverify.schedule import Schedule

Phase = Literal["warmup", "prune", "final"]

#: Layers whose filters are never pruned, per registered model name (spec §3.6: the official
#: ResNet-56 code forces the stem's importance to 1e7).
PROTECTED_LAYERS: dict[str, tuple[str, ...]] = {"resnet56": ("stem.conv",)}

#: ``DataConfig.normalize`` -> ``DataSpec.normalize`` (the data layer knows CIFAR statistics only).
_NORMALIZE = {"half": "half", "dataset": "cifar"}
_CIFAR = ("cifar10", "cifar100", "fashion_mnist", "mnist")  # the last two: training-split stats

#: Measures whose scores need data that one training batch cannot provide (class-balanced Hg).
_NO_EMA_NEEDS = ("hg",)


@dataclass(frozen=True)
class EpochSpec:
    """What epoch ``epoch`` (1-based) does: its ``phase``, learning rate ``lr`` and, for a
    ``prune`` epoch, the 0-based index ``round`` of the pruning round at its end."""

    epoch: int
    phase: Phase
    lr: float
    round: int | None = None


def make_schedule(config: RunConfig) -> Schedule:
    """The pruning schedule of ``config.prune`` (one-shot: 1 round whatever ``prune.rounds``)."""
    p = config.prune
    if p.schedule == "one_shot":
        return Schedule("one_shot", ratio=p.ratio)
    if p.schedule == "thresholds":
        return Schedule("thresholds", ratio=p.ratio, rounds=p.rounds, thresholds=p.thresholds)
    return Schedule("official", ratio=p.ratio, rounds=p.rounds)


def num_rounds(config: RunConfig) -> int:
    """Pruning rounds that will run: the schedule's, or 0 for ratio 0 (dense baseline) — except
    a ``one_shot`` schedule of ratio 0, the unpruned *control arm* of a one-shot experiment: its
    one round removes nothing but runs like any other (probes, optimizer rebuilt: momentum
    reset), so the arms of a seed differ only by which filters were removed."""
    if config.prune.ratio == 0:
        return 1 if config.prune.schedule == "one_shot" else 0
    return int(make_schedule(config).rounds)


def lr_at(config: RunConfig, epoch: int) -> float:
    """``train.lrs[j]`` for the first phase j with Σ_{i≤j} lr_epochs[i] ≥ ``epoch``."""
    t = config.train
    if not 1 <= epoch <= t.epochs:
        raise ConfigError(f"epoch {epoch} is outside 1..train.epochs={t.epochs}")
    for lr, end in zip(t.lrs, itertools.accumulate(t.lr_epochs)):
        if epoch <= end:
            return float(lr)
    raise AssertionError("train.lr_epochs sums to train.epochs (validated by TrainConfig)")


def epoch_plan(config: RunConfig) -> list[EpochSpec]:
    """Every epoch's :class:`EpochSpec`, in order (see the module docstring)."""
    t = config.train
    w, n = t.warmup_epochs, num_rounds(config)
    if w + n > t.epochs:
        raise ConfigError(
            f"train.warmup_epochs ({w}) plus {n} pruning rounds exceed train.epochs ({t.epochs})"
        )
    out = []
    for e in range(1, t.epochs + 1):
        if e <= w:
            out.append(EpochSpec(e, "warmup", lr_at(config, e)))
        elif e <= w + n:
            out.append(EpochSpec(e, "prune", lr_at(config, e), e - w - 1))
        else:
            out.append(EpochSpec(e, "final", lr_at(config, e)))
    return out


def data_spec(config: RunConfig) -> DataSpec:
    """The :class:`~gfverify.data.DataSpec` of a run: the run seed drives the validation split,
    subset and data order; images are fed at ``model.input_size``.

    ``data.normalize``: "half" → mean = std = 0.5 (official); "dataset" → the dataset's channel
    statistics, known for cifar10/cifar100 only; "none" is not supported by the data layer.
    """
    d = config.data
    if d.normalize not in _NORMALIZE:
        raise ConfigError(
            f"config key 'data.normalize'={d.normalize!r} is not supported by the data layer;"
            " use 'half' (official) or 'dataset' (CIFAR only)"
        )
    if d.normalize == "dataset" and d.name not in _CIFAR:
        raise ConfigError(
            f"config key 'data.normalize'='dataset' needs known channel statistics, available for"
            f" {'/'.join(_CIFAR)} only (data.name={d.name!r}); use 'half'"
        )
    return DataSpec(
        name=d.name,
        root=d.root,
        download=d.download,
        normalize=_NORMALIZE[d.normalize],
        augment=d.augment,
        val_fraction=d.val_fraction,
        train_subset=d.train_subset,
        image_size=config.model.input_size,
        fast_path=d.fast_path,
        num_workers=d.num_workers,
        seed=config.seed,
        verify_md5=d.verify_md5,
    )


def resolve_device(device: str) -> torch.device:
    """ "auto" → cuda if available, else cpu; an unavailable device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device'={device!r} but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"config key 'device'={device!r} but only {torch.cuda.device_count()} CUDA devices"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"config key 'device'={device!r} but MPS is not available")
    return dev


def param_dtype(precision: str) -> torch.dtype:
    """Parameter dtype: float64 for fp64, else float32 (bf16 = fp32 weights + bf16 autocast)."""
    return torch.float64 if precision == "fp64" else torch.float32


def protected_layers(config: RunConfig, layers: list[str] | tuple[str, ...]) -> frozenset[str]:
    """Never-pruned layers of the model (:data:`PROTECTED_LAYERS`, registry models only)."""
    if config.model.factory is not None:
        return frozenset()
    return frozenset(n for n in PROTECTED_LAYERS.get(config.model.name, ()) if n in layers)


def check_config(config: RunConfig) -> None:
    """Cheap checks that need no data or model: raise ConfigError for a run that cannot start.

    Checks the data mapping, the epoch plan, the measure name and its use with
    ``prune.ema_batches`` (an Hg measure needs a class-balanced set, not one batch).
    """
    from gfverify.measures import get_measure

    data_spec(config)
    epoch_plan(config)
    measure = get_measure(config.measure.name)
    if "filter" not in measure.granularities:
        raise ConfigError(
            f"config key 'measure.name'={measure.name!r} scores single weights only;"
            " filter pruning needs a filter-level measure"
        )
    if config.prune.ema_batches > 0 and measure.needs in _NO_EMA_NEEDS:
        raise ConfigError(
            f"config key 'prune.ema_batches' > 0 needs a measure scored on one batch; "
            f"{measure.name!r} needs a class-balanced set (use ema_batches=0)"
        )
