"""Probes: what a run records for the statistical claims S1–S6 (``[probe]``, off by default).

**The probe loss.** Dynamics are measured on a fixed *probe* batch (the first ``probe.samples``
training images in split order, unaugmented, :func:`probe_batch`) as ONE batch whose BatchNorm
layers use that batch's own statistics (train-mode BN, running statistics untouched;
:func:`batch_statistics`), at the training temperature T, without weight decay:

    L(θ) = CE(f_θ(X_probe; BN batch statistics) / T, y_probe),   g = ∇L.

This is the objective SGD actually descends (train-mode BN), and it is a deterministic function
of θ. Eval-mode BN was rejected after a pilot run: right after pruning, the running statistics
of the layers behind a pruned layer are stale, and in VGG's Conv→ReLU→BN order they switch most
ReLUs off, so the eval-mode ‖g‖² of a pruned net collapses by orders of magnitude — a property
of the stale buffers, not of the dynamics training sees (the measures themselves still score in
eval mode, the official rule, before pruning, where the buffers are current).

Recorded by :class:`ProbeRecorder` in the run's ``probes.json`` (and in its checkpoint, so a
resumed run records exactly what an uninterrupted one does):

- ``rounds``: per pruning round, ``before`` / ``after`` the surgery: L, ‖θ‖², ‖g‖² and
  D1 = d‖θ‖²/dt = −2θᵀg (E3) over all trainable parameters of the net as it is (``after``: the
  pruned net with its own, recomputed gradient); ``norm_rate_kept_fixed_g`` = −2 Σ_kept θᵀg with
  the *unpruned* g (:func:`kept_norm_rate`); ‖g‖² before/after at T = 1 and T = 200
  (``grad_norm_sq_by_temperature``); the prunable layers and their widths before/after; and
  ``steps``: ‖θ‖², ‖g‖² and the minibatch loss after each of the first ``probe.steps`` SGD
  steps after the round (index 0 = right after pruning, before any step; loss NaN there).
- ``epochs``: per epoch (after its training, before any round at its end): probe L, ‖θ‖²,
  ‖g‖², D1.
- ``tau``: at the epochs ``probe.tau_epochs`` (0 = the initialisation; empty = none), the S3
  study :func:`filter_tau` on a seeded subset of ``probe.tau_filters`` filters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from gfverify.claims.stats import kendall_tau
from gfverify.flow import Batch, LossSpec

PROBES_FILE = "probes.json"

#: Temperatures at which ‖g‖² is also probed around a round (GraSP's 200, gnp's 1).
EXTRA_TEMPERATURES = (1.0, 200.0)


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


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


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


def _point(value: float, theta: Mapping[str, Tensor], g: Mapping[str, Tensor]) -> dict:
    return {
        "loss": value,
        "theta_norm_sq": _dot(theta, theta),
        "grad_norm_sq": _dot(g, g),
        "norm_rate": -2.0 * _dot(theta, g),
    }


def _as_probe(point: Mapping[str, float]):
    from gfverify.train.loop import Probe

    return Probe(
        theta_sq=point["theta_norm_sq"],
        grad_sq=point["grad_norm_sq"],
        norm_rate=point["norm_rate"],
        loss=point["loss"],
    )


def probe_point(model: nn.Module, probe: Batch, loss: LossSpec) -> dict[str, float]:
    """{loss: L, theta_norm_sq: ‖θ‖², grad_norm_sq: ‖g‖², norm_rate: D1 = −2θᵀg}."""
    value, g = probe_gradient(model, probe, loss)
    theta = {n: p.detach() for n, p in _trainable(model).items()}
    return _point(value, theta, g)


def grad_norm_sq(model: nn.Module, probe: Batch, loss: LossSpec) -> float:
    """‖g‖² of the probe loss."""
    _, g = probe_gradient(model, probe, loss)
    return _dot(g, g)


def theta_norm_sq(model: nn.Module) -> float:
    """‖θ‖² over the trainable parameters."""
    theta = {n: p.detach() for n, p in _trainable(model).items()}
    return _dot(theta, theta)


def kept_norm_rate(
    theta: Mapping[str, Tensor], g: Mapping[str, Tensor], kept_index_map: Mapping[str, Any]
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
                idx = torch.tensor(keep, dtype=torch.long, device=a.device)
                a, b = a.index_select(dim, idx), b.index_select(dim, idx)
        total += float((a.double() * b.double()).sum())
    return -2.0 * total


def probe_batch(train_dataset: Any, samples: int, device: torch.device | None = None) -> Batch:
    """The first ``samples`` images of a training split (split order, unaugmented, normalised
    as in training) as one float32 batch."""
    from gfverify.data import TensorAugmentLoader

    ds = train_dataset
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
    x, y = next(iter(loader.epoch_loader(0)))
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


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
    (taylor_fo) and ``loss_change`` (ΔL_f). ``max_filters`` caps the filters studied (a random
    subset seeded by ``seed``).
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


class ProbeRecorder:
    """The trainer's probe callbacks (module docstring); ``state`` is JSON-ready.

    Call order per epoch e: :meth:`on_step` after every SGD step (records only the first
    ``steps`` steps after a round), :meth:`on_epoch` after training, then for a prune epoch
    :meth:`before_round` / :meth:`after_round` around the surgery.
    """

    def __init__(
        self,
        probe: Batch,
        temperature: float,
        *,
        steps: int,
        tau_epochs: tuple[int, ...] = (),
        tau_filters: int | None = None,
        tau_dtype: str = "float32",
        seed: int = 0,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.probe = probe
        self.loss = LossSpec("cross_entropy", temperature)
        self.extra = {f"{t:g}": LossSpec("cross_entropy", t) for t in EXTRA_TEMPERATURES}
        self.steps, self.tau_epochs = int(steps), tuple(int(e) for e in tau_epochs)
        self.tau_filters, self.tau_dtype, self.seed = tau_filters, tau_dtype, seed
        base = {"rounds": [], "epochs": [], "tau": []}
        self.state: dict[str, Any] = copy.deepcopy(dict(state)) if state else base
        self._pending: dict[str, Any] | None = None

    # ---------------------------------------------------------------- per epoch / S3
    def on_epoch(self, model: nn.Module, epoch: int) -> None:
        """Probe point after epoch ``epoch``'s training; the S3 study if asked for."""
        self.state["epochs"].append({"epoch": epoch, **probe_point(model, self.probe, self.loss)})
        self.maybe_tau(model, epoch)

    def maybe_tau(self, model: nn.Module, epoch: int) -> None:
        if epoch in self.tau_epochs and all(t["epoch"] != epoch for t in self.state["tau"]):
            dtype = getattr(torch, self.tau_dtype)
            row = filter_tau(model, self.probe, self.loss, self.tau_filters, self.seed, dtype)
            self.state["tau"].append({"epoch": epoch, **row})

    # ---------------------------------------------------------------- around a round
    def before_round(self, model: nn.Module, widths: Mapping[str, int], round_index: int):
        """Probe before the surgery (``widths``: prunable layer -> width, forward order);
        returns the probe point as a :class:`gfverify.train.loop.Probe`."""
        value, g = probe_gradient(model, self.probe, self.loss)
        theta = {n: p.detach().clone() for n, p in _trainable(model).items()}
        point = _point(value, theta, g)
        self._pending = {
            "round": round_index,
            "g": g,
            "theta": theta,
            "before": point,
            "by_t": {t: [grad_norm_sq(model, self.probe, s)] for t, s in self.extra.items()},
            "widths_before": dict(widths),
        }
        return _as_probe(point)

    def after_round(
        self,
        model: nn.Module,
        widths_after: Mapping[str, int],
        kept_index_map: Mapping[str, Any],
        epoch: int,
    ):
        """Probe after the surgery; returns it as a :class:`gfverify.train.loop.Probe`."""
        p = self._pending
        if p is None:
            raise RuntimeError("after_round without before_round")
        self._pending = None
        after = probe_point(model, self.probe, self.loss)
        for t, spec in self.extra.items():
            p["by_t"][t].append(grad_norm_sq(model, self.probe, spec))
        self.state["rounds"].append(
            {
                "round": p["round"],
                "epoch": epoch,
                "before": p["before"],
                "after": after,
                "norm_rate_kept_fixed_g": kept_norm_rate(p["theta"], p["g"], kept_index_map),
                "grad_norm_sq_by_temperature": p["by_t"],
                "layers": list(p["widths_before"]),
                "widths_before": p["widths_before"],
                "widths_after": {n: int(widths_after.get(n, 0)) for n in p["widths_before"]},
                "steps": {
                    "step": [0],
                    "theta_norm_sq": [after["theta_norm_sq"]],
                    "grad_norm_sq": [after["grad_norm_sq"]],
                    "batch_loss": [math.nan],
                },
            }
        )
        return _as_probe(after)

    def on_step(self, model: nn.Module, batch_loss: float) -> None:
        """After an SGD step: extend the latest round's ``steps`` (first ``steps`` only)."""
        if not self.state["rounds"]:
            return
        steps = self.state["rounds"][-1]["steps"]
        if len(steps["step"]) > self.steps:
            return
        steps["step"].append(len(steps["step"]))
        steps["theta_norm_sq"].append(theta_norm_sq(model))
        steps["grad_norm_sq"].append(grad_norm_sq(model, self.probe, self.loss))
        steps["batch_loss"].append(float(batch_loss))

    def wants_steps(self) -> bool:
        rounds = self.state["rounds"]
        return bool(rounds) and len(rounds[-1]["steps"]["step"]) <= self.steps
