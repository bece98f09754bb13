"""F1: how far real training (full-batch GD, momentum, weight decay, finite lr) drifts from the
gradient-flow predictions the paper's arguments rest on.

Setting: a small smooth net (tanh MLP, no BatchNorm, float64) on a fixed batch of digits
(8×8, the first ``samples`` training images) with the training loss L = CE(f(x)/T, y), T = 5.
From the same θ₀:

- gradient flow dθ/dt = −g(θ) is integrated exactly (``solve_ivp`` DOP853, rtol 1e-10, with
  dense output; the right-hand side is :func:`gfverify.flow.gradient`, as in
  :func:`gfverify.flow.integrate_flow`) up to the horizon t_end;
- full-batch GD runs ``torch.optim.SGD`` for every (lr, momentum β, weight decay) setting.
  Step k is matched to flow time t_k = k·η with η = lr / (1 − β) (the heavy-ball's effective
  step; η = lr for plain GD, the brief's t = lr·steps); for β > 0 the naive matching t = k·lr is
  reported beside it.

Per setting and seed:

- ``rel_err`` = ‖r − p‖₂ / ‖p‖₂ over all steps, with p_k = −2θ_kᵀg(θ_k) the gradient-flow
  prediction (E3) of d‖θ‖²/dt at the GD iterate and r_k = (‖θ_{k+1}‖² − ‖θ_k‖²) / η the
  realised change per unit time;
- ``tau`` = Kendall τ-b between the taylor_fo rankings (|θ_fᵀg_f| per hidden unit, i.e.
  per filter of the Linear layers) of the GD iterate and of the flow at matched times, at
  ``checkpoints`` evenly spaced times; ``tau_min`` its minimum;
- the parameter drift ‖θ_GD − θ_GF‖ / ‖θ_GF − θ₀‖ and both losses at the checkpoints.

Verdict (descriptive; fixed before any run): a setting *tracks* gradient flow in a seed when
tau_min > 0.9 and rel_err < 0.1. Per setting: *supported* if it tracks in every seed,
*contradicted* if in none, *inconclusive* otherwise. The headline record is plain GD (β = 0,
no weight decay) at the smallest lr: the regime where the theory should apply.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gfverify import flow
from gfverify.claims.base import ClaimResult, register
from gfverify.claims.experiment import torch_threads, training_batch
from gfverify.claims.problems import CheckContext
from gfverify.claims.stats import kendall_tau, t_interval
from gfverify.errors import ConfigError
from gfverify.flow import Batch, LossSpec

F1 = "how far SGD (momentum, weight decay, learning rate) drifts from gradient-flow predictions"


@dataclass(frozen=True)
class FlowConfig:
    """F1 settings (defaults: the quick scale). ``variants`` are (momentum, weight decay)."""

    widths: tuple[int, ...] = (32, 16)
    activation: str = "tanh"
    dataset: str = "digits"
    image_size: int = 8
    samples: int = 256
    temperature: float = 5.0
    horizon: float = 60.0
    checkpoints: int = 6
    lrs: tuple[float, ...] = (0.05, 0.2, 1.0)
    variants: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.9, 0.0), (0.0, 1e-4), (0.9, 1e-4))
    seeds: tuple[int, ...] = (0, 1, 2)
    rtol: float = 1e-10
    atol: float = 1e-12
    tau_threshold: float = 0.9
    err_threshold: float = 0.1

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


PAPER_FLOW = FlowConfig(
    widths=(64, 32),
    samples=512,
    horizon=100.0,
    checkpoints=10,
    lrs=(0.02, 0.05, 0.2, 1.0, 3.0),
    seeds=(0, 1, 2, 3, 4),
)


def flow_config(ctx: CheckContext) -> FlowConfig:
    """The scale's :class:`FlowConfig` with ``ctx.options["f1"]`` overrides."""
    base = PAPER_FLOW if ctx.scale == "paper" else FlowConfig()
    over = dict((ctx.options or {}).get("f1") or {})
    unknown = sorted(set(over) - {f.name for f in fields(FlowConfig)})
    if unknown:
        raise ConfigError(f"unknown F1 setting(s): {', '.join(unknown)}")
    for k in ("widths", "lrs", "seeds"):
        if k in over:
            over[k] = tuple(over[k])
    if "variants" in over:
        over["variants"] = tuple(tuple(v) for v in over["variants"])
    return replace(base, **over)


def build_mlp(config: FlowConfig, seed: int, in_features: int, num_classes: int) -> nn.Module:
    """The smooth float64 MLP of F1, initialised under ``torch.manual_seed(seed)``."""
    from gfverify.models import MLP

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLP(in_features, config.widths, num_classes, config.activation, batchnorm=False)
    return model.double().eval()


def flow_trajectory(
    model: nn.Module,
    batch: Batch,
    loss: LossSpec,
    t_end: float,
    theta0: dict[str, Tensor],
    rtol: float,
    atol: float,
):
    """Dense-output solution of dθ/dt = −g(θ) on [0, t_end]: ``sol(t)`` → flat θ(t)."""
    from scipy.integrate import solve_ivp

    def rhs(_: float, y: np.ndarray) -> np.ndarray:
        return -flow.flatten(flow.gradient(model, [batch], loss, flow.unflatten(y, theta0)))

    sol = solve_ivp(
        rhs,
        (0.0, t_end),
        flow.flatten(theta0),
        method="DOP853",
        rtol=rtol,
        atol=atol,
        dense_output=True,
    )
    if not sol.success:
        raise RuntimeError(f"gradient-flow integration failed: {sol.message}")
    return sol.sol


def _load(model: nn.Module, flat: np.ndarray) -> None:
    params = flow.trainable_params(model)
    new = flow.unflatten(flat, params)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(new[n])


def _ranking(model: nn.Module, batch: Batch, loss: LossSpec, groups) -> list[float]:
    """taylor_fo per filter (hidden unit), all layers concatenated in forward order."""
    from gfverify.measures import score

    n = len(batch[1])
    s = score(
        model,
        "taylor_fo",
        [batch],
        samples=n,
        train_temperature=loss.temperature,
        compute_batch_size=n,
        groups=groups,
    )
    return [float(v) for name in groups for v in s[name]]


def _steps(config: FlowConfig, lr: float, momentum: float) -> tuple[float, int]:
    """(η, number of GD steps): η = lr / (1 − β), steps = max(1, round(horizon / η))."""
    eta = lr / (1.0 - momentum)
    return eta, max(1, round(config.horizon / eta))


def run_setting(
    model0: nn.Module,
    batch: Batch,
    loss: LossSpec,
    traj,
    lr: float,
    momentum: float,
    weight_decay: float,
    config: FlowConfig,
    groups,
) -> dict[str, Any]:
    """Full-batch GD from ``model0``'s θ at one setting, compared with the flow ``traj``."""
    model = copy.deepcopy(model0)
    ref = copy.deepcopy(model0)
    x, y = batch
    eta, n_steps = _steps(config, lr, momentum)
    marks = sorted(
        {max(1, round(j * n_steps / config.checkpoints)) for j in range(1, 1 + config.checkpoints)}
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    theta0 = flow.flatten(flow.trainable_params(model))
    pred, real = [], []
    keys = ("step", "t", "tau", "tau_naive_time", "drift", "loss_gd", "loss_gf")
    out: dict[str, list] = {k: [] for k in (*keys, "theta_sq_gd", "theta_sq_gf")}

    def norm_sq() -> float:
        return float(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))

    n_prev = norm_sq()
    for k in range(1, n_steps + 1):
        opt.zero_grad(set_to_none=True)
        value = loss(model(x), y)
        value.backward()
        theta_dot_g = float(sum(float((p.detach() * p.grad).sum()) for p in model.parameters()))
        opt.step()
        n_new = norm_sq()
        if not math.isfinite(n_new):
            return {"diverged_at_step": k, "steps": n_steps, "eta": eta, **out}
        pred.append(-2.0 * theta_dot_g)
        real.append((n_new - n_prev) / eta)
        n_prev = n_new
        if k in marks:
            t = k * eta
            gf = traj(t)
            _load(ref, gf)
            r_gd = _ranking(model, batch, loss, groups)
            r_gf = _ranking(ref, batch, loss, groups)
            theta = flow.flatten(flow.trainable_params(model))
            out["step"].append(k)
            out["t"].append(t)
            out["tau"].append(kendall_tau(r_gd, r_gf))
            if momentum > 0:
                _load(ref, traj(k * lr))
                out["tau_naive_time"].append(kendall_tau(r_gd, _ranking(ref, batch, loss, groups)))
            out["drift"].append(
                float(np.linalg.norm(theta - gf) / max(np.linalg.norm(gf - theta0), 1e-300))
            )
            out["loss_gd"].append(float(flow.dataset_loss(model, [batch], loss)))
            _load(ref, gf)
            out["loss_gf"].append(float(flow.dataset_loss(ref, [batch], loss)))
            out["theta_sq_gd"].append(float(theta @ theta))
            out["theta_sq_gf"].append(float(gf @ gf))
    p, r = np.asarray(pred), np.asarray(real)
    rel_err = float(np.linalg.norm(r - p) / max(np.linalg.norm(p), 1e-300))
    finite = [t for t in out["tau"] if math.isfinite(t)]
    tau_min = min(finite) if len(finite) == len(out["tau"]) and finite else math.nan
    return {
        "eta": eta,
        "steps": n_steps,
        "rel_err": rel_err,
        "tau_min": tau_min,
        "tracks": bool(tau_min > config.tau_threshold and rel_err < config.err_threshold),
        "predicted_norm_rate": pred[:: max(1, len(pred) // 50)],
        "realised_norm_rate": real[:: max(1, len(real) // 50)],
        **out,
    }


def run_flow_study(config: FlowConfig) -> dict[tuple[float, float, float], list[dict]]:
    """(lr, momentum, weight decay) -> one :func:`run_setting` record per seed (one torch
    thread: the net is tiny)."""
    with torch_threads(1):
        return _run_flow_study(config)


def _run_flow_study(config: FlowConfig) -> dict[tuple[float, float, float], list[dict]]:
    from gfverify.groups import filter_groups

    x, y = training_batch(config.dataset, config.image_size, config.samples)
    batch = (x.double().flatten(1), y)
    loss = LossSpec("cross_entropy", config.temperature)
    results: dict[tuple[float, float, float], list[dict]] = {}
    for seed in config.seeds:
        model = build_mlp(config, seed, batch[0].shape[1], int(y.max()) + 1)
        groups = filter_groups(model, batch[0][:1])
        theta0 = flow.trainable_params(model)
        t_end = max(
            math.prod(_steps(config, lr, m)) for m, _ in config.variants for lr in config.lrs
        )
        traj = flow_trajectory(model, batch, loss, t_end, theta0, config.rtol, config.atol)
        for momentum, wd in config.variants:
            for lr in config.lrs:
                rec = run_setting(model, batch, loss, traj, lr, momentum, wd, config, groups)
                rec["seed"] = seed
                results.setdefault((lr, momentum, wd), []).append(rec)
    return results


def _verdict(recs: list[dict]) -> str:
    tracks = [bool(r.get("tracks", False)) for r in recs]
    if all(tracks):
        return "supported"
    if not any(tracks):
        return "contradicted"
    return "inconclusive"


def _record(config: FlowConfig, key, recs: list[dict], headline: bool) -> ClaimResult:
    lr, momentum, wd = key
    errs = [r.get("rel_err", math.nan) for r in recs]
    taus = [r.get("tau_min", math.nan) for r in recs]
    finite = [e for e in errs if math.isfinite(e)]
    mean, low, high, _ = t_interval(finite) if len(finite) >= 2 else (math.nan,) * 4
    verdict = _verdict(recs)
    case = f"lr={lr:g}, momentum={momentum:g}, wd={wd:g}" + (" (headline)" if headline else "")
    return ClaimResult(
        id="F1",
        statement=F1,
        kind="statistical",
        measured=float(np.mean(errs)) if errs else None,
        expected=None,
        error=None,
        tolerance=None,
        passed=verdict == "supported",
        details={
            "effect": float(np.mean(errs)),
            "ci_low": low,
            "ci_high": high,
            "n_seeds": len(recs),
            "statistic": "rel_err of predicted d‖θ‖²/dt (mean over seeds); tau_min per seed",
            "p_value": None,
            "test": "descriptive: tracks if tau_min > 0.9 and rel_err < 0.1 in a seed; "
            "supported if every seed tracks, contradicted if none",
            "rel_err": errs,
            "tau_min": taus,
            "tracks": [bool(r.get("tracks", False)) for r in recs],
            "eta": recs[0].get("eta"),
            "steps": recs[0].get("steps"),
            "series": {
                k: [r.get(k) for r in recs]
                for k in (
                    "t",
                    "tau",
                    "tau_naive_time",
                    "drift",
                    "loss_gd",
                    "loss_gf",
                    "theta_sq_gd",
                    "theta_sq_gf",
                    "predicted_norm_rate",
                    "realised_norm_rate",
                    "diverged_at_step",
                )
            },  # fmt: skip
            "settings": {**config.settings(), "lr": lr, "momentum": momentum, "weight_decay": wd},
            "headline": headline,
        },
        case=case,
        verdict=verdict,  # type: ignore[arg-type]
    )


@register("F1", F1, "statistical", "statistical")
def check_f1(ctx: CheckContext) -> list[ClaimResult]:
    """F1 (see the module docstring): one record per setting, the headline first."""
    config = flow_config(ctx)
    results = run_flow_study(config)
    head = (min(config.lrs), 0.0, 0.0)
    keys = ([head] if head in results else []) + [k for k in results if k != head]
    return [_record(config, k, results[k], k == head) for k in keys]
