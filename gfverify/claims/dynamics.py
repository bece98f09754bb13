"""Statistical claims S1–S6: the paper's empirical tendencies under real training.

Quick scale (default): the prune-once experiment of :mod:`gfverify.claims.experiment` — a
six-conv VGG (the official Conv→ReLU→BN block) on the 8×8 digits, trained 1 epoch ("minimally
trained"), pruned once to ``ratio`` = 50 % of its filters by each measure, then trained 4
more epochs on identical batches; 8 seeds. Paper scale: finished runs of ``gfverify run`` /
``sweep`` in ``ctx.options["runs_dir"]`` (:mod:`gfverify.claims.paper_runs`).

Decision rule, fixed before any outcome was seen and shared by every record here
(:func:`gfverify.claims.stats.decide`): each seed yields one value d_i oriented so that the
paper's prediction is E[d] > 0; the 95 % t interval of the mean over seeds decides —
*supported* if it lies above 0 (non-inferiority: above −margin), *contradicted* if it lies
below 0 (below −margin), *inconclusive* otherwise. Each claim's docstring names its d_i.
Records carry the effect (mean d), the interval, n, t, p, a sign-test p, the per-seed values
and the raw series (lists) behind them.

Log-ratios are used where a claim compares sizes of changes (S2, S5a, S6): they are
scale-free, so a seed whose unpruned rate happens to be small cannot dominate the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gfverify.claims import paper_runs
from gfverify.claims.base import ClaimResult, register
from gfverify.claims.experiment import ArmRecord, Lab, lab_for, plan_for
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


def _quick(ctx: CheckContext, measures: Sequence[str]):
    config, seeds = plan_for(ctx.options)
    lab = lab_for(config)
    arms = lab.arms(seeds, measures)
    settings = {**config.settings(), "seeds": list(seeds), "scale": ctx.scale}
    return lab, seeds, arms, settings


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
    if ctx.scale == "paper":
        return _paper_s1(ctx)
    _, _, arms, settings = _quick(ctx, (MAG, LP))
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
            "train-loss AUC over k epochs: loss_preservation − magnitude",
            primary,
            "AUC(loss_preservation) − AUC(magnitude) > 0",
            series,
            settings,
        ),
        claim_result(
            "S1",
            S1,
            "corollary: probe loss right after pruning, magnitude − loss_preservation",
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
    if ctx.scale == "paper":
        return _paper_needs(
            ctx, "S2", S2, ["prune_norm_rate_before", "prune_norm_rate_after"], "d‖θ‖²/dt"
        )
    _, _, arms, settings = _quick(ctx, (LP, MAG, RAND))
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
            "log(min(ρ_magnitude, ρ_random) / ρ_loss_preservation)",
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
                f"log(ρ_{comp} / ρ_loss_preservation)",
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
    if ctx.scale == "paper":
        return _paper_needs(ctx, "S3", S3, ["tau_taylor_fo"], "per-filter removal effects")
    config, seeds = plan_for(ctx.options)
    lab: Lab = lab_for(config)
    taus = [lab.taus(s) for s in seeds]
    settings = {**config.settings(), "seeds": list(seeds), "scale": ctx.scale}
    epochs = taus[0]["epoch"]
    early = epochs.index(config.prune_epoch)
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
            f"Kendall τ(|θ_fᵀg|, |ΔL_f|) at epoch {epochs[early]}",
            decide([t[early] for t in tau], test="one-sample t (scipy.stats.t), 95% CI"),
            "τ > 0 on a minimally trained net",
            series,
            settings,
        ),
        claim_result(
            "S3",
            S3,
            f"τ(epoch {epochs[early]}) − τ(epoch {epochs[-1]})",
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
    if ctx.scale == "paper":
        return _paper_s4(ctx)
    _, _, arms, settings = _quick(ctx, (LP, BLP))
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
            "train-loss AUC: loss_preservation − biased (non-inferiority)",
            decide([lp - b for lp, b in zip(auc[LP], auc[BLP])], "noninferiority", auc_margin),
            f"AUC(lp) − AUC(biased) > −{auc_margin:.4g} (5% of mean AUC(lp))",
            series,
            settings,
        ),
        claim_result(
            "S4",
            S4,
            "final test accuracy: biased − loss_preservation (non-inferiority)",
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
    if ctx.scale == "paper":
        return _paper_s5(ctx)
    _, _, arms, settings = _quick(ctx, (GRASP, GNP))
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
            "(a1) log(‖g‖² after / before) under GraSP",
            decide(logr[GRASP], test=one),
            "GraSP raises ‖g‖²: log ratio > 0",
            series,
            settings,
        ),
        claim_result(
            "S5",
            S5,
            "(a2) |log r_grasp| − |log r_gnp|",
            decide([abs(g) - abs(p) for g, p in zip(logr[GRASP], logr[GNP])]),
            "gradient-norm preservation changes ‖g‖² less than GraSP",
            series,
            settings,
        ),
        claim_result(
            "S5",
            S5,
            "(b) early-layer kept fraction: gnp − GraSP",
            decide([p - g for p, g in zip(early[GNP], early[GRASP])]),
            "GraSP keeps a smaller share of the first half of the layers",
            series,
            settings,
        ),
        claim_result(
            "S5",
            S5,
            "(c) final test accuracy: gnp − GraSP",
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
    if ctx.scale == "paper":
        return _paper_s6(ctx)
    arms_needed = (NONE, LP, GNP, MAG, RAND, GRASP)
    _, _, arms, settings = _quick(ctx, arms_needed)
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
                f"{label}: log(min_c D_c / D_{target})",
                decide([_log(b) - _log(t) for b, t in zip(best, dist[target])]),
                f"{target} follows the unpruned {label} change most closely",
                series,
                settings,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# paper scale: finished runs


def _paper_needs(
    ctx: CheckContext, cid: str, statement: str, fields: list[str], what: str
) -> list[ClaimResult]:
    """Claims whose quantities the training runs do not (yet) record: inconclusive, naming the
    metrics fields that would make them checkable, unless the runs have them."""
    ev = paper_runs.load(ctx)
    if ev.reason:
        return [inconclusive_result(cid, statement, "paper scale", ev.reason)]
    have = any(all(f in m for f in fields) for r in ev.runs for m in r.metrics)
    if have:
        reason = (
            f"runs record {', '.join(fields)}, but the paper-scale analysis of {cid} is not "
            "implemented yet; use the quick scale"
        )
    else:
        reason = (
            f"{cid} needs {what}; the runs in {ev.runs_dir} record no metrics field "
            f"{' / '.join(fields)} (train.py logs theta_sq, grad_sq and loss around each round, "
            "not these); run the quick scale"
        )
    return [inconclusive_result(cid, statement, "paper scale", reason, runs_dir=ev.runs_dir)]


def _paired_results(
    ctx: CheckContext,
    cid: str,
    statement: str,
    label: str,
    measure_a: str,
    measure_b: str,
    value,
    prediction: str,
    rule: str = "superiority",
    margin=None,
) -> list[ClaimResult]:
    """One record per context: d_i = value(run_a, run_b) over seeds (None = missing)."""
    ev = paper_runs.load(ctx)
    if ev.reason:
        return [inconclusive_result(cid, statement, f"paper scale: {label}", ev.reason)]
    pairs = paper_runs.paired(
        ev.runs, paper_runs.by_measure(measure_a), paper_runs.by_measure(measure_b)
    )
    if not pairs:
        reason = (
            f"no pair of finished runs pruned by {measure_a} and by {measure_b} with the same "
            f"config and seed in {ev.runs_dir}"
        )
        return [inconclusive_result(cid, statement, f"paper scale: {label}", reason)]
    out = []
    for key, runs in pairs.items():
        case = f"{paper_runs.describe_context(key)}: {label}"
        vals = [value(a, b) for a, b in runs]
        missing = [a.row.get("seed") for (a, _), v in zip(runs, vals) if v is None]
        if missing:
            reason = f"runs of seeds {missing} lack the metrics {label} needs"
            out.append(inconclusive_result(cid, statement, case, reason))
            continue
        m = margin(runs) if callable(margin) else (margin or 0.0)
        inf = decide(vals, rule, m)  # type: ignore[arg-type]
        series = {"seeds": [a.row.get("seed") for a, _ in runs], "runs": [a.path for a, _ in runs]}
        out.append(
            claim_result(cid, statement, case, inf, prediction, series, {"runs_dir": ev.runs_dir})
        )
    return out


def _auc(run: paper_runs.Run, k: int) -> float | None:
    e0 = run.first_prune_epoch()
    if e0 is None:
        return None
    curve = run.series("train_loss", e0 + 1, e0 + k)
    return float(np.mean(curve)) if curve else None


def _auc_epochs(ctx: CheckContext) -> int:
    return int((ctx.options or {}).get("auc_epochs", 10))


def _paper_s1(ctx: CheckContext) -> list[ClaimResult]:
    k = _auc_epochs(ctx)

    def auc_diff(mag, lp):
        a, b = _auc(lp, k), _auc(mag, k)
        return None if a is None or b is None else a - b

    def after_diff(mag, lp):
        e = mag.first_prune_epoch()
        lm, ll = mag.line(e) if e else None, lp.line(e) if e else None
        if not lm or not ll or "prune_loss_after" not in lm or "prune_loss_after" not in ll:
            return None
        return float(lm["prune_loss_after"]) - float(ll["prune_loss_after"])

    return _paired_results(
        ctx, "S1", S1, f"train-loss AUC over {k} epochs after the first round", MAG, LP,
        auc_diff, "AUC(loss_preservation) − AUC(magnitude) > 0",
    ) + _paired_results(
        ctx, "S1", S1, "corollary: loss right after the first round", MAG, LP, after_diff,
        "L_after(magnitude) − L_after(loss_preservation) > 0",
    )  # fmt: skip


def _final_acc(run: paper_runs.Run) -> float | None:
    v = run.row.get("final_test_acc")
    return float(v) if isinstance(v, int | float) else None


def _paper_s4(ctx: CheckContext) -> list[ClaimResult]:
    k = _auc_epochs(ctx)

    def auc_diff(lp, blp):
        a, b = _auc(lp, k), _auc(blp, k)
        return None if a is None or b is None else a - b

    def acc_diff(lp, blp):
        a, b = _final_acc(blp), _final_acc(lp)
        return None if a is None or b is None else a - b

    def auc_margin(runs):
        vals = [_auc(lp, k) for lp, _ in runs]
        return S4_AUC_MARGIN_REL * float(np.mean([v for v in vals if v is not None] or [0.0]))

    return _paired_results(
        ctx, "S4", S4, f"train-loss AUC over {k} epochs (non-inferiority)", LP, BLP, auc_diff,
        "AUC(lp) − AUC(biased) > −5% of mean AUC(lp)", "noninferiority", auc_margin,
    ) + _paired_results(
        ctx, "S4", S4, "final test accuracy (non-inferiority)", LP, BLP, acc_diff,
        f"acc(biased) − acc(lp) > −{S4_ACC_MARGIN}", "noninferiority", S4_ACC_MARGIN,
    )  # fmt: skip


def _first_round_log_ratio(run: paper_runs.Run) -> float | None:
    e = run.first_prune_epoch()
    line = run.line(e) if e else None
    if not line or "prune_grad_sq_before" not in line or "prune_grad_sq_after" not in line:
        return None
    return _log(float(line["prune_grad_sq_after"])) - _log(float(line["prune_grad_sq_before"]))


def _early_kept(run: paper_runs.Run) -> float | None:
    if not run.history or not run.metrics or "widths" not in run.metrics[-1]:
        return None
    original = run.history.get("original_widths") or {}
    widths = run.metrics[-1]["widths"]
    masked = run.metrics[-1].get("masked") or {}
    layers = [n for n in original if n in widths]
    if not layers:
        return None
    early = layers[: max(1, len(layers) // 2)]
    kept = sum(int(widths[n]) - int(masked.get(n, 0)) for n in early)
    return kept / sum(int(original[n]) for n in early)


def _paper_s5(ctx: CheckContext) -> list[ClaimResult]:
    def a2(grasp, gnp):
        a, b = _first_round_log_ratio(grasp), _first_round_log_ratio(gnp)
        return None if a is None or b is None else abs(a) - abs(b)

    def b(grasp, gnp):
        x, y = _early_kept(gnp), _early_kept(grasp)
        return None if x is None or y is None else x - y

    def c(grasp, gnp):
        x, y = _final_acc(gnp), _final_acc(grasp)
        return None if x is None or y is None else x - y

    note = "eval-mode BN probe of train.py (see gfverify.claims.experiment on stale BN stats)"
    return (
        _paired_results(
            ctx, "S5", S5, "(a1) log(‖g‖² after/before the first GraSP round)", GRASP, GNP,
            lambda g, _: _first_round_log_ratio(g), f"log ratio > 0; {note}",
        )
        + _paired_results(
            ctx, "S5", S5, "(a2) |log r_grasp| − |log r_gnp| (first round)", GRASP, GNP, a2,
            f"gnp changes ‖g‖² less; {note}",
        )
        + _paired_results(
            ctx, "S5", S5, "(b) early-layer kept fraction: gnp − GraSP", GRASP, GNP, b,
            "GraSP keeps a smaller share of the first half of the layers",
        )
        + _paired_results(
            ctx, "S5", S5, "(c) final test accuracy: gnp − GraSP", GRASP, GNP, c,
            "GraSP ends less accurate",
        )
    )  # fmt: skip


def _paper_s6(ctx: CheckContext) -> list[ClaimResult]:
    """Epoch-level S6 on runs: the change of ‖θ‖² / ‖g‖² over the ``s6_epochs`` (default 3)
    epochs after the first round, against a dense run (ratio 0) of the same config and seed."""
    ev = paper_runs.load(ctx)
    if ev.reason:
        return [inconclusive_result("S6", S6, "paper scale", ev.reason)]
    k = int((ctx.options or {}).get("s6_epochs", 3))
    out = []
    for key, target, comps, label in (
        ("theta_sq", LP, S6_THETA_COMPETITORS, "‖θ‖²"),
        ("grad_sq", GNP, S6_GRAD_COMPETITORS, "‖g‖²"),
    ):
        dist: dict[str, dict[tuple, dict[int, float]]] = {}
        for m in (target, *comps):
            pairs = paper_runs.paired(
                ev.runs, paper_runs.by_measure(m), paper_runs.dense, ignore=("prune.",)
            )
            for ctx_key, runs in pairs.items():
                for run, base in runs:
                    e0 = run.first_prune_epoch()
                    a = run.series(key, e0, e0 + k) if e0 else None
                    r = base.series(key, e0, e0 + k) if e0 else None
                    if a and r:
                        d = curve_distance(a, r)
                        dist.setdefault(m, {}).setdefault(ctx_key, {})[int(run.row["seed"])] = d
        contexts = set(dist.get(target, {}))
        rows = []
        for ctx_key in sorted(contexts, key=str):
            seeds = set(dist[target][ctx_key])
            for c in comps:
                seeds &= set(dist.get(c, {}).get(ctx_key, {}))
            if seeds:
                vals = [
                    _log(min(dist[c][ctx_key][s] for c in comps)) - _log(dist[target][ctx_key][s])
                    for s in sorted(seeds)
                ]
                rows.append((ctx_key, vals))
        if not rows:
            reason = (
                f"S6 needs, per config and seed, a dense run (prune.ratio 0) and runs pruned by "
                f"{target} and by each of {', '.join(comps)} with '{key}' logged per epoch; "
                f"none complete in {ev.runs_dir}"
            )
            out.append(inconclusive_result("S6", S6, f"paper scale: {label}", reason))
        for ctx_key, vals in rows:
            case = f"{paper_runs.describe_context(ctx_key)}: {label} over {k} epochs"
            out.append(
                claim_result(
                    "S6", S6, case, decide(vals),
                    f"{target} follows the dense {label} change most closely",
                    {}, {"runs_dir": ev.runs_dir},
                )
            )  # fmt: skip
    return out
