"""Inputs for the report tests, written through gfverify's own writers so their format is true.

- :func:`write_claims` writes a ``gfverify check --json`` payload from real
  :class:`~gfverify.claims.ClaimResult` records; identity details come from a real
  :class:`~gfverify.claims.numerics.ConvergenceStudy` on synthetic estimates D(h) = D + c·h^q,
  statistical ones from :func:`gfverify.claims.stats.claim_result` (S3, S1) or with the keys
  gfverify's F1 writes.
- :func:`write_runs` runs :func:`gfverify.runs.execute` with :func:`train_report` (a fake
  trainer logging the per-epoch fields the report reads), so config.json, env.json,
  status.json, metrics.jsonl and result.json are the real thing.

``python -m tests.report_fixture OUT_DIR`` writes both and renders ``OUT_DIR/index.html``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from gfverify.claims import SCHEMA_VERSION
from gfverify.claims.base import ClaimResult
from gfverify.claims.numerics import ConvergenceStudy, geometric_ladder
from gfverify.claims.stats import claim_result, decide
from gfverify.config import RunConfig
from gfverify.runs import RunDir, execute
from tests.fake_train import small_config

MEASURES = ("gradient_norm_preservation", "grasp")
SEEDS = (0, 1)
EPOCHS = 6
ROUNDS = 2
DENSE = {"features.0": 64, "features.3": 128, "features.7": 256, "features.10": 512}
ACC_BASE = {"gradient_norm_preservation": 0.80, "grasp": 0.70, "loss_preservation": 0.75}


def identity(claim: str, case: str, q: float, c: float = 1e-3) -> ClaimResult:
    """An identity result whose estimates converge at order ``q`` (passes iff q ≈ 2)."""
    steps = geometric_ladder(0.5, 4)
    exact = -0.25
    study = ConvergenceStudy(
        steps=steps,
        estimates=[exact + c * h**q for h in steps],
        closed_form=exact,
        scale=0.25,
        floor=[1e-16] * len(steps),
    )
    return ClaimResult(
        id=claim,
        statement=f"{claim} statement",
        kind="identity",
        measured=study.estimates[-1],
        expected=exact,
        error=study.relative_errors[-1],
        tolerance=study.tolerance / study.scale,
        passed=study.passed,
        details={**study.summary(), "problem": case.split("/")[0]},
        case=case,
    )


def h1(case: str) -> ClaimResult:
    hv = [math.sin(i) * 1e-3 for i in range(40)]
    fd_steps = geometric_ladder(0.1, 4)
    return ClaimResult(
        id="H1",
        statement="Hv from torch.func, double backward and finite differences of g agree",
        kind="identity",
        measured=0.0,
        expected=0.0,
        error=1e-15,
        tolerance=1e-10,
        passed=True,
        details={
            "problem": case,
            "vector": "g",
            "fd_steps": fd_steps,
            "fd_rel_errors": [3e-4 * h**2 for h in fd_steps],
            "fd_observed_order": 2.0,
            "hv_torch_func": hv,
            "hv_double_backward": [v * (1 + 1e-12) for v in hv],
        },
        case=f"{case}/v=g",
    )


def s3_records() -> list[ClaimResult]:
    """Two S3 records as gfverify's S3 writes them: τ per epoch and seed in a shared series."""
    tau = [[0.6 - 0.05 * e + 0.02 * s for e in range(5)] for s in range(3)]
    importance = [[1e-4 * (f + 1) for f in range(12)] for _ in range(3)]
    change = [[(-1) ** f * 1e-4 * (f + 1 + s * (f % 3)) for f in range(12)] for s in range(3)]
    series = {
        "epoch": [1, 2, 3, 4, 5],
        "tau_taylor_fo": tau,
        "importance": importance,  # per seed: |θ_fᵀg_f| of each filter at the pruning epoch
        "loss_change": change,  # per seed: ΔL_f (signed) of removing each filter
    }
    early = decide([t[0] for t in tau], test="one-sample t")
    trend = decide([t[0] - t[-1] for t in tau])
    return [
        claim_result("S3", "S3 statement", "τ at epoch 1", early, "τ > 0", series, {}),
        claim_result("S3", "S3 statement", "τ(1) − τ(5)", trend, "τ falls", series, {}),
    ]


def f1_record() -> ClaimResult:
    """An F1 record with the keys of gfverify's F1 (3 seeds, 4 checkpoints)."""
    seeds = range(3)
    series = {
        "t": [[0.0, 1.0, 2.0, 3.0] for _ in seeds],
        "tau": [[1.0, 0.95 - 0.01 * s, 0.9, 0.85] for s in seeds],
        "predicted_norm_rate": [[-1.0, -0.8, -0.6, -0.5] for _ in seeds],
        "realised_norm_rate": [[-1.1, -0.7 - 0.01 * s, -0.65, -0.4] for s in seeds],
    }
    return ClaimResult(
        id="F1",
        statement="F1 statement",
        kind="statistical",
        measured=0.08,
        expected=None,
        error=None,
        tolerance=None,
        passed=False,
        details={"effect": 0.08, "ci_low": 0.05, "ci_high": 0.11, "n_seeds": 3, "series": series},
        case="lr=0.01, momentum=0, wd=0 (headline)",
        verdict="inconclusive",
    )


def claim_results() -> list[ClaimResult]:
    contradicted = decide([-0.3, -0.31, -0.29])
    return [
        identity("E2", "net-a/all", 2.0),
        identity("E2", "net-b/all", 2.0, c=3e-3),
        identity("E3", "net-a/all", 1.0),  # first order: fails the order check
        h1("net-a"),
        *s3_records(),
        f1_record(),
        claim_result("S1", "S1 statement", "loss AUC", contradicted, "magnitude faster"),
    ]


def write_claims(path: Path, results: list[ClaimResult] | None = None, **changes: Any) -> Path:
    """The JSON ``gfverify check --json`` writes (same keys), with top-level ``changes``."""
    from gfverify.cli import environment

    payload = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "gfverify check --claims all --scale quick --json claims.json",
        "scale": "quick",
        "environment": environment(),
        "results": [r.to_json() for r in (claim_results() if results is None else results)],
    }
    payload.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    return path


def accuracy(config: RunConfig, epoch: int) -> float:
    """Rises to ACC_BASE[measure] + 0.01·seed at the last epoch."""
    final = ACC_BASE.get(config.measure.name, 0.6) + 0.01 * config.seed
    return final * (0.5 + 0.5 * epoch / config.train.epochs)


def kept_widths(config: RunConfig) -> dict[str, int]:
    """GraSP thins early layers more (paper §5); others keep a uniform fraction."""
    early = 0.25 if config.measure.name == "grasp" else 0.5
    return {k: max(1, int(n * (early if i < 2 else 0.5))) for i, (k, n) in enumerate(DENSE.items())}


def train_report(config: RunConfig, run: RunDir) -> dict[str, Any]:
    """Fake trainer with gfverify.train's field names: per-epoch train/test loss and accuracy,
    ‖θ‖², ‖g‖² (and their values around each pruning round's surgery); result widths, masked,
    MACs/params with dense_*; history.json with original_widths."""
    theta = 100.0
    grasp = config.measure.name == "grasp"
    for epoch in range(1, config.train.epochs + 1):
        rec: dict[str, Any] = {
            "epoch": epoch,
            "phase": "prune" if epoch <= config.prune.rounds else "final",
            "train_loss": 2.0 / epoch,
            "test_loss": 2.2 / epoch,
            "train_acc": min(1.0, accuracy(config, epoch) + 0.05),
            "test_acc": accuracy(config, epoch),
            "lr": 0.1,
        }
        grad = 1.0 / epoch
        if rec["phase"] == "prune":
            rec.update(prune_theta_sq_before=theta, prune_grad_sq_before=grad)
            theta, grad = 0.8 * theta, grad * (3.0 if grasp else 1.0)
            rec.update(prune_theta_sq_after=theta, prune_grad_sq_after=grad)
        else:
            theta *= 0.97
        run.log_epoch({**rec, "theta_sq": theta, "grad_sq": grad})
    kept = kept_widths(config)
    masked = {"features.10": 1}  # one filter zeroed in place (kept = widths - masked)
    run.write_json("history.json", {"original_widths": DENSE, "rounds": []})
    return {
        "final_test_acc": accuracy(config, config.train.epochs),
        "macs": 1e6 * sum(kept.values()),
        "params": 1e4 * sum(kept.values()),
        "dense_macs": 1e6 * sum(DENSE.values()),
        "dense_params": 1e4 * sum(DENSE.values()),
        "widths": {k: v + masked.get(k, 0) for k, v in kept.items()},
        "masked": masked,
    }


def configs(measures=MEASURES, seeds=SEEDS, **changes: Any) -> list[RunConfig]:
    return [
        small_config(
            **{
                "model.name": "vgg13",
                "measure.name": m,
                "seed": s,
                "train.epochs": EPOCHS,
                "prune.rounds": ROUNDS,
                "device": "cpu",
                **changes,
            }
        )
        for m in measures
        for s in seeds
    ]


def write_runs(runs_dir: Path, cfgs: list[RunConfig] | None = None) -> Path:
    for config in configs() if cfgs is None else cfgs:
        execute(config, runs_dir, train_fn=train_report)
    return runs_dir


def main(argv: list[str]) -> int:
    from gfverify.report import write_report

    out = Path(argv[0])
    claims = write_claims(out / "claims.json")
    runs = write_runs(out / "runs")
    path, _ = write_report(out / "index.html", [runs], [claims])
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
