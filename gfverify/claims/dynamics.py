"""Statistical claims S1–S6: the paper's empirical tendencies under real training.

One engine, one evaluator per claim. Every claim reads finished, probed training runs
(:mod:`gfverify.train`, ``[probe] enabled = true``) grouped into experiments by
:func:`gfverify.claims.experiment.experiments`: runs paired by everything but the measure and
the seed, plus the unpruned control arm. Where they come from (:func:`_evidence`):
``ctx.options["train_scale"]`` (``--scale NAME``) trains the sweep file
``experiments/claims_NAME.toml`` first (:mod:`gfverify.claims.scales`, resumable) into
``runs_dir`` (default: a cache folder keyed by the file's content); ``runs_dir`` alone
(``--runs-dir``) evaluates the runs already there; with neither, ``ctx.scale`` names the scale.
The quick scale: a six-conv VGG (the official Conv→ReLU→BN block) on the 8×8 digits, trained
1 epoch ("minimally trained"), pruned once to ``ratio`` = 50 % of its filters by each measure,
then trained 4 more epochs on identical batches; 8 seeds.

Decision rule, fixed before any outcome was seen and shared by every record here
(:func:`gfverify.claims.stats.decide`): each seed yields one value d_i oriented so that the
paper's prediction is E[d] > 0; the 95 % t interval of the mean over seeds decides —
*supported* if it lies above 0 (non-inferiority: above −margin), *contradicted* if it lies
below 0 (below −margin), *inconclusive* otherwise. Each claim's docstring names its d_i.
Records carry the effect (mean d), the interval, n, t, p, a sign-test p, the per-seed values,
the raw series (lists) behind them and ``runs``: the run directories used. With several
experiments in the runs (datasets, models, ratios), each gives its own records, the case
prefixed by the experiment's label.

Log-ratios are used where a claim compares sizes of changes (S2, S5a, S6): they are
scale-free, so a seed whose unpruned rate happens to be small cannot dominate the mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gfverify.claims import scales
from gfverify.claims.base import ClaimResult, register
from gfverify.claims.experiment import ArmRecord, Experiment, experiments, runs_in
from gfverify.claims.problems import CheckContext
from gfverify.claims.stats import claim_result, decide, inconclusive_result

MAG, LP, BLP = "magnitude", "loss_preservation", "biased_loss_preservation"
GRASP, GNP, RAND, NONE = "grasp", "gradient_norm_preservation", "random", "none"

S1 = "after early pruning at equal ratio, magnitude-pruned models' train loss falls faster than loss-preservation-pruned ones' (result i)"  # noqa: E501
S2 = "loss-preservation changes d‖θ‖²/dt of the kept parameters least, against magnitude and random (result ii)"  # noqa: E501
S3 = "early in training, |θ_pᵀg| ranks filters like the true loss change of removing each"
S4 = "biased loss-preservation |θ²g| at least matches loss-preservation"
S5 = "GraSP raises ‖g‖² after pruning, gradient-norm preservation keeps it; GraSP thins early layers more and ends less accurate (result iii)"  # noqa: E501
S6 = "after pruning, ‖θ‖² evolves closest to the unpruned model under loss-preservation, ‖g‖² under gradient-norm preservation"  # noqa: E501

#: Non-inferiority margins of S4 (chosen before any run): the biased measure may be worse by
#: at most 5 % of loss-preservation's mean loss AUC, or by at most 1 percentage point of test
#: accuracy (≈ 3.6 test images of the 357 digits), and still count as "at least matching".
S4_AUC_MARGIN_REL = 0.05
S4_ACC_MARGIN = 0.01


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


_EVIDENCE: dict[tuple, tuple[list[Experiment], list[str]]] = {}


def _evidence(ctx: CheckContext) -> tuple[str | None, list[Experiment], list[str]]:
    """(runs dir, experiments, reasons runs were left out) for ``ctx`` (module docstring)."""
    opts = dict(ctx.options or {})
    if not opts.get("train_scale") and not opts.get("runs_dir"):
        opts["train_scale"] = ctx.scale
    runs_dir, dirs = scales.runs_for(opts)
    if runs_dir is None or not Path(runs_dir).is_dir():
        return runs_dir, [], [f"runs directory {runs_dir} does not exist"]
    dirs = dirs if dirs is not None else runs_in(runs_dir)
    key = tuple(str(d) for d in dirs)
    if key not in _EVIDENCE:
        _EVIDENCE[key] = experiments(dirs)
    exps, skipped = _EVIDENCE[key]
    return runs_dir, exps, skipped


def clear_cache() -> None:
    """Forget the loaded runs (and the scales trained) of this process."""
    _EVIDENCE.clear()
    scales._TRAINED.clear()


Evaluate = Callable[[str, dict[str, list[ArmRecord]], dict], list[ClaimResult]]


def _each_experiment(
    ctx: CheckContext, cid: str, statement: str, measures: Sequence[str], evaluate: Evaluate
) -> list[ClaimResult]:
    """Run ``evaluate(prefix, arms, settings)`` for every experiment that has all of
    ``measures`` for at least one seed; inconclusive (naming what is missing) if none has."""
    runs_dir, exps, skipped = _evidence(ctx)
    out: list[ClaimResult] = []
    usable = [e for e in exps if e.seeds_with(measures)]
    for e in usable:
        seeds, arms = e.select(measures)
        runs = [a.run_dir for m in measures for a in arms[m]]
        settings = {
            **e.settings,
            "experiment": e.label,
            "seeds": seeds,
            "scale": (ctx.options or {}).get("train_scale") or ctx.scale,
            "runs_dir": runs_dir,
        }
        prefix = f"{e.label}: " if len(usable) > 1 else ""
        for r in evaluate(prefix, arms, settings):
            r.details["runs"] = runs
            out.append(r)
    if not out:
        have = "; ".join(f"{e.label}: {sorted(e.arms)}" for e in exps) or "no probed runs"
        reason = (
            f"{cid} needs, per seed, finished probed runs (probe.enabled = true) of the arms "
            f"{', '.join(measures)} ('none' = prune.ratio 0, one_shot) in {runs_dir}; found {have}"
        )
        if skipped:
            reason += f"; {len(skipped)} run(s) left out, first: {skipped[0]}"
        out.append(inconclusive_result(cid, statement, "runs", reason, runs_dir=runs_dir))
    return out


def _col(arms: list[ArmRecord], fn) -> list[float]:
    return [float(fn(a)) for a in arms]


# --------------------------------------------------------------------------------------------
# S1


@register("S1", S1, "statistical", "statistical")
def check_s1(ctx: CheckContext) -> list[ClaimResult]:
    """S1, result (i): magnitude-pruned nets converge faster than loss-preservation-pruned.

    Per seed, both arms pruned at the same epoch to the same ratio and trained on the same
    batches for k epochs; AUC = (1/k) Σ_e L̄_e, L̄_e the epoch's mean minibatch training loss.

    - primary: d = AUC(loss_preservation) − AUC(magnitude); predicted > 0.
    - corollary [SUM]: d = L_after(magnitude) − L_after(loss_preservation), the probe loss
      right after pruning; predicted > 0 (magnitude ignores the loss when pruning).

    Rule: 95 % paired t interval over seeds, superiority (module docstring).
    """
    return _each_experiment(ctx, "S1", S1, (MAG, LP), _s1)


def _s1(prefix: str, arms: dict[str, list[ArmRecord]], settings: dict) -> list[ClaimResult]:
    auc = {m: _col(arms[m], ArmRecord.loss_auc) for m in (MAG, LP)}
    after = {m: _col(arms[m], lambda a: a.after.loss) for m in (MAG, LP)}
    series = {
        "epoch": arms[MAG][0].epochs["epoch"],
        "train_loss": {m: [a.epochs["train_loss"] for a in arms[m]] for m in (MAG, LP)},
        "auc": auc,
        "loss_before_pruning": _col(arms[MAG], lambda a: a.before.loss),
        "loss_after_pruning": after,
        "base_train_loss": [a.base_epochs["train_loss"] for a in arms[MAG]],
    }
    primary = decide([lp - mag for lp, mag in zip(auc[LP], auc[MAG])])
    corollary = decide([mag - lp for mag, lp in zip(after[MAG], after[LP])])
    return [
        claim_result(
            "S1",
            S1,
            prefix + "train-loss AUC over k epochs: loss_preservation − magnitude",
            primary,
            "AUC(loss_preservation) − AUC(magnitude) > 0",
            series,
            settings,
        ),
        claim_result(
            "S1",
            S1,
            prefix + "corollary: probe loss right after pruning, magnitude − loss_preservation",
            corollary,
            "L_after(magnitude) − L_after(loss_preservation) > 0",
            series,
            settings,
        ),
    ]


# --------------------------------------------------------------------------------------------
# S2


def _rel_rate_change(a: ArmRecord) -> float:
    """|D1(pruned) − D1(unpruned)| / |D1(unpruned)|, D1 = −2θᵀg on the probe loss."""
    return abs(a.after.norm_rate - a.before.norm_rate) / max(abs(a.before.norm_rate), 1e-300)


@register("S2", S2, "statistical", "statistical")
def check_s2(ctx: CheckContext) -> list[ClaimResult]:
    """S2, result (ii): loss-preservation preserves first-order dynamics best.

    ρ_m = |D1_after − D1_before| / |D1_before| with D1 = d‖θ‖²/dt = −2θᵀg over all trainable
    parameters, D1_after from the pruned net's own gradient (probe loss, see experiment).

    - primary: d = log(min(ρ_magnitude, ρ_random) / ρ_loss_preservation); predicted > 0
      (loss-preservation changes D1 less than the better of its two competitors).
    - per competitor c: d = log(ρ_c / ρ_loss_preservation); predicted > 0.

    Rule: 95 % paired t interval over seeds, superiority. The fixed-g first-order estimate
    −2Σ_kept θᵀg (unpruned g) is reported beside it.
    """
    return _each_experiment(ctx, "S2", S2, (LP, MAG, RAND), _s2)


def _s2(prefix: str, arms: dict[str, list[ArmRecord]], settings: dict) -> list[ClaimResult]:
    rho = {m: _col(arms[m], _rel_rate_change) for m in (LP, MAG, RAND)}
    series = {
        "relative_change": rho,
        "norm_rate_before": _col(arms[LP], lambda a: a.before.norm_rate),
        "norm_rate_after": {m: _col(arms[m], lambda a: a.after.norm_rate) for m in rho},
        "norm_rate_kept_fixed_g": {
            m: _col(arms[m], lambda a: a.norm_rate_kept_fixed_g) for m in rho
        },
    }
    best = [min(a, b) for a, b in zip(rho[MAG], rho[RAND])]
    out = [
        claim_result(
            "S2",
            S2,
            prefix + "log(min(ρ_magnitude, ρ_random) / ρ_loss_preservation)",
            decide([_log(b) - _log(lp) for b, lp in zip(best, rho[LP])]),
            "loss_preservation changes d‖θ‖²/dt less than the best competitor",
            series,
            settings,
        )
    ]
    for comp in (MAG, RAND):
        out.append(
            claim_result(
                "S2",
                S2,
                f"{prefix}log(ρ_{comp} / ρ_loss_preservation)",
                decide([_log(c) - _log(lp) for c, lp in zip(rho[comp], rho[LP])]),
                f"loss_preservation changes d‖θ‖²/dt less than {comp}",
                series,
                settings,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# S3


@register("S3", S3, "statistical", "statistical")
def check_s3(ctx: CheckContext) -> list[ClaimResult]:
    """S3: |θ_fᵀg| (taylor_fo) ranks filters like their true removal effect, early on.

    At every epoch boundary 0..end of the unpruned arm: τ_e = Kendall τ-b over filters
    (a seeded subset) between taylor_fo(f) = |θ_fᵀg_f| and |ΔL_f|, ΔL_f = L(θ_f := 0) − L(θ)
    on the probe loss (:func:`gfverify.claims.experiment.filter_tau`).

    - early: d = τ at the pruning epoch (1, "minimally trained"); predicted > 0.
    - trend [REC]: d = τ(pruning epoch) − τ(last epoch); predicted > 0 (the first-order
      estimate matters most early in training).

    Rule: 95 % t interval over seeds (one-sample for "early", paired for "trend").
    τ of the code's loss_preservation Σ|θg| and of the signed pair (−θ_fᵀg_f, ΔL_f) are
    reported in the series, with the per-filter (taylor_fo, ΔL_f) pairs at the pruning epoch
    (``importance``, ``loss_change``).
    """
    return _each_experiment(ctx, "S3", S3, (NONE,), _s3)


def _s3(prefix: str, arms: dict[str, list[ArmRecord]], settings: dict) -> list[ClaimResult]:
    control = [a for a in arms[NONE] if a.taus.get("epoch")]
    if not control:
        reason = "the control runs recorded no S3 study (probe.tau_epochs is empty)"
        return [inconclusive_result("S3", S3, prefix + "Kendall τ", reason)]
    taus = [a.taus for a in control]
    epochs = taus[0]["epoch"]
    prune_epoch = int(control[0].base_epochs["epoch"][-1])
    if prune_epoch not in epochs or any(t["epoch"] != epochs for t in taus):
        reason = f"the S3 study must cover the pruning epoch {prune_epoch} in every seed"
        return [inconclusive_result("S3", S3, prefix + "Kendall τ", reason)]
    early = epochs.index(prune_epoch)
    tau = [t["tau_taylor_fo"] for t in taus]
    series = {
        "epoch": epochs,
        "tau_taylor_fo": tau,
        "tau_loss_preservation": [t["tau_loss_preservation"] for t in taus],
        "tau_signed": [t["tau_signed"] for t in taus],
        "probe_loss": [t["probe_loss"] for t in taus],
        "grad_norm_sq": [t["grad_norm_sq"] for t in taus],
        "importance": [t["importance"][early] for t in taus],
        "loss_change": [t["loss_change"][early] for t in taus],
        "mean_tau_taylor_fo": [float(np.mean([t[i] for t in tau])) for i in range(len(epochs))],
    }
    return [
        claim_result(
            "S3",
            S3,
            f"{prefix}Kendall τ(|θ_fᵀg|, |ΔL_f|) at epoch {epochs[early]}",
            decide([t[early] for t in tau], test="one-sample t (scipy.stats.t), 95% CI"),
            "τ > 0 on a minimally trained net",
            series,
            settings,
        ),
        claim_result(
            "S3",
            S3,
            f"{prefix}τ(epoch {epochs[early]}) − τ(epoch {epochs[-1]})",
            decide([t[early] - t[-1] for t in tau]),
            "the ranking agrees better early than at the end of training",
            series,
            settings,
        ),
    ]


# --------------------------------------------------------------------------------------------
# S4


@register("S4", S4, "statistical", "statistical")
def check_s4(ctx: CheckContext) -> list[ClaimResult]:
    """S4 [SUM RQ2]: biased loss-preservation Σ|θ²g| at least matches loss-preservation.

    Non-inferiority, margins fixed in advance (:data:`S4_AUC_MARGIN_REL`,
    :data:`S4_ACC_MARGIN`):

    - convergence: d = AUC(loss_preservation) − AUC(biased); margin 5 % of the mean
      AUC(loss_preservation).
    - final accuracy: d = test_acc(biased) − test_acc(loss_preservation) at the last epoch;
      margin 0.01.

    Rule: 95 % paired t interval; supported if its lower end is above −margin, contradicted
    if its upper end is below −margin.
    """
    return _each_experiment(ctx, "S4", S4, (LP, BLP), _s4)


def _s4(prefix: str, arms: dict[str, list[ArmRecord]], settings: dict) -> list[ClaimResult]:
    auc = {m: _col(arms[m], ArmRecord.loss_auc) for m in (LP, BLP)}
    acc = {m: _col(arms[m], lambda a: a.epochs["test_acc"][-1]) for m in (LP, BLP)}
    series = {
        "epoch": arms[LP][0].epochs["epoch"],
        "train_loss": {m: [a.epochs["train_loss"] for a in arms[m]] for m in (LP, BLP)},
        "test_acc": {m: [a.epochs["test_acc"] for a in arms[m]] for m in (LP, BLP)},
        "auc": auc,
        "final_test_acc": acc,
    }
    auc_margin = S4_AUC_MARGIN_REL * float(np.mean(auc[LP]))
    return [
        claim_result(
            "S4",
            S4,
            prefix + "train-loss AUC: loss_preservation − biased (non-inferiority)",
            decide([lp - b for lp, b in zip(auc[LP], auc[BLP])], "noninferiority", auc_margin),
            f"AUC(lp) − AUC(biased) > −{auc_margin:.4g} (5% of mean AUC(lp))",
            series,
            settings,
        ),
        claim_result(
            "S4",
            S4,
            prefix + "final test accuracy: biased − loss_preservation (non-inferiority)",
            decide([b - lp for b, lp in zip(acc[BLP], acc[LP])], "noninferiority", S4_ACC_MARGIN),
            f"acc(biased) − acc(lp) > −{S4_ACC_MARGIN}",
            series,
            settings,
        ),
    ]


# --------------------------------------------------------------------------------------------
# S5


def _grad_log_ratio(a: ArmRecord, temperature: str | None = None) -> float:
    if temperature is None:
        return _log(a.after.grad_norm_sq) - _log(a.before.grad_norm_sq)
    before, after = a.grad_norm_sq_by_temperature[temperature]
    return _log(after) - _log(before)


@register("S5", S5, "statistical", "statistical")
def check_s5(ctx: CheckContext) -> list[ClaimResult]:
    """S5, result (iii): GraSP (T = 200) vs gradient-norm preservation (T = 1).

    With r_m = ‖g‖²_after / ‖g‖²_before (probe loss at the training T = 5; T = 1 and 200
    reported too), per seed:

    - (a1) d = log r_grasp; predicted > 0 (GraSP raises ‖g‖²).
    - (a2) d = |log r_grasp| − |log r_gnp|; predicted > 0 (gnp keeps ‖g‖² closer).
    - (b)  d = kept_gnp − kept_grasp, kept = kept / original filters over the first ⌊n/2⌋
      prunable layers; predicted > 0 (GraSP thins early layers more).
    - (c)  d = test_acc(gnp) − test_acc(grasp) at the last epoch; predicted > 0.

    Rule: 95 % t interval over seeds (one-sample for a1, paired otherwise), superiority.
    """
    return _each_experiment(ctx, "S5", S5, (GRASP, GNP), _s5)


def _s5(prefix: str, arms: dict[str, list[ArmRecord]], settings: dict) -> list[ClaimResult]:
    logr = {m: _col(arms[m], _grad_log_ratio) for m in (GRASP, GNP)}
    early = {m: _col(arms[m], ArmRecord.early_kept_fraction) for m in (GRASP, GNP)}
    acc = {m: _col(arms[m], lambda a: a.epochs["test_acc"][-1]) for m in (GRASP, GNP)}
    series = {
        "log_grad_ratio_T5": logr,
        "log_grad_ratio_T1": {m: _col(arms[m], lambda a: _grad_log_ratio(a, "1")) for m in logr},
        "log_grad_ratio_T200": {
            m: _col(arms[m], lambda a: _grad_log_ratio(a, "200")) for m in logr
        },
        "layers": arms[GRASP][0].layers,
        "kept_per_layer": {
            m: [[a.widths_after[n] / a.widths_before[n] for n in a.layers] for a in arms[m]]
            for m in logr
        },
        "early_kept_fraction": early,
        "test_acc": {m: [a.epochs["test_acc"] for a in arms[m]] for m in logr},
        "final_test_acc": acc,
    }
    one = "one-sample t (scipy.stats.t), 95% CI"
    return [
        claim_result(
            "S5",
            S5,
            prefix + "(a1) log(‖g‖² after / before) under GraSP",
            decide(logr[GRASP], test=one),
            "GraSP raises ‖g‖²: log ratio > 0",
            series,
            settings,
        ),
        claim_result(
            "S5",
            S5,
            prefix + "(a2) |log r_grasp| − |log r_gnp|",
            decide([abs(g) - abs(p) for g, p in zip(logr[GRASP], logr[GNP])]),
            "gradient-norm preservation changes ‖g‖² less than GraSP",
            series,
            settings,
        ),
        claim_result(
            "S5",
            S5,
            prefix + "(b) early-layer kept fraction: gnp − GraSP",
            decide([p - g for p, g in zip(early[GNP], early[GRASP])]),
            "GraSP keeps a smaller share of the first half of the layers",
            series,
            settings,
        ),
        claim_result(
            "S5",
            S5,
            prefix + "(c) final test accuracy: gnp − GraSP",
            decide([p - g for p, g in zip(acc[GNP], acc[GRASP])]),
            "GraSP ends less accurate",
            series,
            settings,
        ),
    ]


# --------------------------------------------------------------------------------------------
# S6


def curve_distance(arm: Sequence[float], ref: Sequence[float]) -> float:
    """RMS over steps j ≥ 1 of the difference of the *changes* since step 0:
    sqrt(mean_j [(a_j − a_0) − (r_j − r_0)]²)."""
    n = min(len(arm), len(ref))
    if n < 2:
        return math.nan
    diffs = [(arm[j] - arm[0]) - (ref[j] - ref[0]) for j in range(1, n)]
    return float(np.sqrt(np.mean(np.square(diffs))))


S6_THETA_COMPETITORS = (MAG, RAND, GNP, GRASP)
S6_GRAD_COMPETITORS = (MAG, RAND, LP, GRASP)


@register("S6", S6, "statistical", "statistical")
def check_s6(ctx: CheckContext) -> list[ClaimResult]:
    """S6: the first steps after pruning follow the unpruned net's ‖θ‖² (under
    loss-preservation) and ‖g‖² (under gradient-norm preservation) most closely.

    Over the first m SGD steps after pruning (same batches in every arm), for quantity Q and
    arm a: D_a = :func:`curve_distance` (Q_a, Q_unpruned), i.e. the RMS difference of the
    changes since pruning.

    - θ: d = log(min_c D_c / D_loss_preservation), c ∈ {magnitude, random, gnp, GraSP}.
    - g: d = log(min_c D_c / D_gnp), c ∈ {magnitude, random, loss_preservation, GraSP}.

    Predicted > 0 (the target measure beats the best competitor). Rule: 95 % paired t
    interval over seeds, superiority.
    """
    return _each_experiment(ctx, "S6", S6, S6_ARMS, _s6)


S6_ARMS = (NONE, LP, GNP, MAG, RAND, GRASP)


def _s6(prefix: str, arms: dict[str, list[ArmRecord]], settings: dict) -> list[ClaimResult]:
    arms_needed = S6_ARMS
    ref = arms[NONE]
    out = []
    for key, target, comps, label in (
        ("theta_norm_sq", LP, S6_THETA_COMPETITORS, "‖θ‖²"),
        ("grad_norm_sq", GNP, S6_GRAD_COMPETITORS, "‖g‖²"),
    ):
        dist = {
            m: [curve_distance(a.steps[key], r.steps[key]) for a, r in zip(arms[m], ref)]
            for m in (target, *comps)
        }
        best = [min(dist[c][i] for c in comps) for i in range(len(ref))]
        series = {
            "step": ref[0].steps["step"],
            key: {m: [a.steps[key] for a in arms[m]] for m in arms_needed},
            "distance": dist,
        }
        out.append(
            claim_result(
                "S6",
                S6,
                f"{prefix}{label}: log(min_c D_c / D_{target})",
                decide([_log(b) - _log(t) for b, t in zip(best, dist[target])]),
                f"{target} follows the unpruned {label} change most closely",
                series,
                settings,
            )
        )
    return out
