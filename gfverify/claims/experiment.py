"""Arms of the one-shot experiment behind S1–S6, read from probed run directories.

There is ONE training engine (:mod:`gfverify.train`): a claims scale is a sweep file
(:mod:`gfverify.claims.scales`) whose runs record probes (:mod:`gfverify.train.probes`,
``[probe] enabled = true``). Here a finished run directory becomes an :class:`ArmRecord`
(the same fields the claims used when a separate in-memory loop produced them), and the runs of
a runs directory are grouped into *experiments*: runs that agree on every identity config key
except the measure (``measure.*``), the seed and the pruning ratio; within one experiment and
pruning ratio the arms of a seed are the pruned runs (one per measure) and the unpruned control
(``prune.ratio`` 0, one-shot schedule: arm ``"none"``). Arms of one seed therefore share the
initialisation, the batches and the optimizer reset and differ only by the removed filters.

Per arm (see :mod:`gfverify.train.probes` for the probe loss: train-mode BN batch statistics
on a fixed probe batch):

- ``before`` / ``after`` the first pruning round: L, ‖θ‖², ‖g‖², D1 = −2θᵀg;
  ``norm_rate_kept_fixed_g``; ‖g‖² at T = 1 and 200; widths per prunable layer before/after;
- ``steps``: ‖θ‖², ‖g‖², minibatch loss over the first SGD steps after the round;
- ``epochs`` / ``base_epochs``: per epoch after / up to the round: mean minibatch train loss
  and accuracy, test loss and accuracy (eval mode), probe L, ‖θ‖², ‖g‖², D1;
- ``taus``: the S3 study at the probed epochs (unpruned runs only).

Also here, for F1 (:mod:`gfverify.claims.dynamics_flow`): :func:`torch_threads` and
:func:`training_batch`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfverify.flow import Batch
from gfverify.train.probes import (  # noqa: F401 - the probe definitions, re-exported
    PROBES_FILE,
    batch_statistics,
    filter_tau,
    kept_norm_rate,
    probe_gradient,
    probe_loss,
)

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


@dataclass
class ProbePoint:
    """Probe quantities at one θ: L, ‖θ‖², ‖g‖², D1 = d‖θ‖²/dt = −2θᵀg (trainable params)."""

    loss: float
    theta_norm_sq: float
    grad_norm_sq: float
    norm_rate: float


@dataclass
class ArmRecord:
    """Everything one arm (one run) of one seed recorded (see the module docstring)."""

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
    run_dir: str = ""
    taus: dict[str, list] = field(default_factory=dict)

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


class MissingProbes(ValueError):
    """A run directory lacks what an arm needs (no probes.json / no pruning round)."""


_EPOCH_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")
_PROBE_KEYS = {"loss": "probe_loss", "theta_norm_sq": "theta_norm_sq",
               "grad_norm_sq": "grad_norm_sq", "norm_rate": "norm_rate"}  # fmt: skip


def _append(series: dict[str, list], row: dict[str, Any]) -> None:
    for k, v in row.items():
        series.setdefault(k, []).append(v)


def arm_from_run(path: str | Path) -> ArmRecord:
    """The :class:`ArmRecord` of a finished, probed run directory (MissingProbes if it is not
    one: no ``probes.json`` or no pruning round)."""
    from gfverify.runs import read_metrics

    path = Path(path)
    probes_path = path / PROBES_FILE
    if not probes_path.is_file():
        raise MissingProbes(f"run {path} recorded no probes (probe.enabled = false)")
    probes = json.loads(probes_path.read_text())
    if not probes.get("rounds"):
        raise MissingProbes(f"run {path} has no pruning round")
    config = json.loads((path / "config.json").read_text())
    result = json.loads((path / "result.json").read_text())
    rnd = probes["rounds"][0]
    e0 = int(rnd["epoch"])
    per_epoch = {int(p["epoch"]): p for p in probes.get("epochs", [])}
    base: dict[str, list] = {}
    after: dict[str, list] = {}
    for m in read_metrics(path):
        e = int(m["epoch"])
        p = per_epoch.get(e, {})
        row = {"epoch": e, **{k: m.get(k, math.nan) for k in _EPOCH_KEYS}}
        row.update({v: p.get(k, math.nan) for k, v in _PROBE_KEYS.items()})
        _append(base if e <= e0 else after, row)
    taus: dict[str, list] = {}
    for t in sorted(probes.get("tau", []), key=lambda r: r["epoch"]):
        _append(taus, t)
    prune = config.get("prune", {})
    ratio = float(prune.get("ratio", 0.0))
    measure = "none" if ratio == 0 else str(config.get("measure", {}).get("name"))
    return ArmRecord(
        seed=int(config.get("seed", 0)),
        measure=measure,
        before=ProbePoint(**rnd["before"]),
        after=ProbePoint(**rnd["after"]),
        norm_rate_kept_fixed_g=float(rnd["norm_rate_kept_fixed_g"]),
        grad_norm_sq_by_temperature={
            k: list(v) for k, v in rnd["grad_norm_sq_by_temperature"].items()
        },
        layers=list(rnd["layers"]),
        widths_before={n: int(rnd["widths_before"][n]) for n in rnd["layers"]},
        widths_after={n: int(rnd["widths_after"][n]) for n in rnd["layers"]},
        steps={k: list(v) for k, v in rnd["steps"].items()},
        epochs=after,
        base_epochs=base,
        seconds=float(result.get("seconds", math.nan)),
        run_dir=str(path),
        taus=taus,
    )


@dataclass
class Experiment:
    """The arms of one experiment and pruning ratio: ``arms[measure][seed]`` (``"none"``:
    the control), ``label`` a short description, ``settings`` the shared config keys."""

    label: str
    ratio: float
    arms: dict[str, dict[int, ArmRecord]]
    settings: dict[str, Any]

    def seeds_with(self, measures: Sequence[str]) -> list[int]:
        """Seeds (ascending) that have every arm in ``measures``."""
        sets = [set(self.arms.get(m, {})) for m in measures]
        return sorted(set.intersection(*sets)) if sets else []

    def select(self, measures: Sequence[str]) -> tuple[list[int], dict[str, list[ArmRecord]]]:
        seeds = self.seeds_with(measures)
        return seeds, {m: [self.arms[m][s] for s in seeds] for m in measures}


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _flat(v).items()})
        else:
            out[k] = v
    return out


def _context(flat: dict[str, Any]) -> tuple:
    from gfverify.config import identity_keys

    keys = [
        k
        for k in identity_keys()
        if not k.startswith("measure.") and k not in ("seed", "prune.ratio")
    ]
    return tuple((k, json.dumps(flat.get(k), sort_keys=True)) for k in keys)


def _label(flat: dict[str, Any], ratio: float) -> str:
    model = flat.get("model.factory") or flat.get("model.name")
    model = str(model).rsplit(":", 1)[-1]
    return f"{flat.get('data.name')}/{model}/{flat.get('prune.schedule')}/ratio={ratio:g}"


def experiments(run_dirs: Sequence[str | Path]) -> tuple[list[Experiment], list[str]]:
    """Group finished probed runs into experiments (module docstring); also the reasons why
    runs were left out. The first run per (experiment, arm, seed) is kept."""
    from gfverify.runs import is_finished

    groups: dict[tuple, dict[str, Any]] = {}
    controls: dict[tuple, dict[int, ArmRecord]] = {}
    skipped: list[str] = []
    for d in run_dirs:
        d = Path(d)
        if not is_finished(d):
            skipped.append(f"{d}: not finished")
            continue
        try:
            arm = arm_from_run(d)
        except (MissingProbes, KeyError, OSError, json.JSONDecodeError) as exc:
            skipped.append(f"{d}: {exc}")
            continue
        flat = _flat(json.loads((d / "config.json").read_text()))
        ctx = _context(flat)
        if arm.measure == "none":
            controls.setdefault(ctx, {}).setdefault(arm.seed, arm)
            continue
        ratio = float(flat.get("prune.ratio", 0.0))
        g = groups.setdefault((ctx, ratio), {"flat": flat, "ratio": ratio, "arms": {}})
        g["arms"].setdefault(arm.measure, {}).setdefault(arm.seed, arm)
    out = []
    for (ctx, ratio), g in groups.items():
        arms = dict(g["arms"])
        if ctx in controls:
            arms["none"] = controls[ctx]
        settings = {k: v for k, v in g["flat"].items() if not k.startswith("measure.")}
        settings.pop("seed", None)
        out.append(Experiment(_label(g["flat"], ratio), ratio, arms, settings))
    for ctx, by_seed in controls.items():
        if not any(c == ctx for c, _ in groups):  # S3 needs only the control
            flat = _flat(
                json.loads((Path(next(iter(by_seed.values())).run_dir) / "config.json").read_text())
            )
            settings = {k: v for k, v in flat.items() if not k.startswith("measure.")}
            out.append(Experiment(_label(flat, 0.0), 0.0, {"none": by_seed}, settings))
    out.sort(key=lambda e: e.label)
    return out, skipped


def runs_in(runs_dir: str | Path) -> list[Path]:
    """Every run directory (holding a config.json) directly under ``runs_dir``, sorted."""
    root = Path(runs_dir)
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file())


# --------------------------------------------------------------------------------------------
# helpers shared with F1


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
