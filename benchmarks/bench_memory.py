"""Peak memory (RSS) of scoring and training ResNet-56 on CPU, by batch size.

Every case runs in a fresh ``python -m benchmarks.bench_memory --case ...`` process, so peaks
never mix. The child builds ResNet-56 (``width_mult`` scaled), records its RSS after setup
(``base_mb``: torch, model, data), runs the case, and reports its own peak
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, ``peak_mb``) and ``delta_mb = peak - base``.

- scoring: :func:`gfverify.measures.score` of ``taylor_fo`` (one gradient per chunk) and
  ``grasp`` (a Hessian-gradient product) on ``samples`` random CIFAR-shaped inputs, with
  ``compute_batch_size`` (samples processed at once) varied;
- training: ``steps`` SGD steps (momentum, CE(f(x)/5, y)) at batch size b.

``growth_mb_per_sample`` = slope of ``peak_mb`` between the smallest and largest batch size
of a case family: (peak_large − peak_small) / (b_large − b_small).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.common import REPO_ROOT

SAMPLES = 128


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind: str, name: str, batch: int, width: float, steps: int) -> dict:
    """Run one case in this (fresh) process; return its memory record."""
    import torch
    import torch.nn.functional as F

    from gfverify.measures import score
    from gfverify.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet56", num_classes=10, width_mult=width)
    n = SAMPLES if kind == "score" else batch
    x = torch.randn(n, 3, 32, 32)
    y = torch.arange(n) % 10  # balanced: the Hg measures need samples/C per class
    base = _rss_mb()
    start = time.perf_counter()
    if kind == "score":
        batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)]
        score(model, name, batches, samples=n, compute_batch_size=batch)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        model.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x) / 5.0, y).backward()
            opt.step()
    return {
        "base_mb": round(base, 1),
        "peak_mb": round(_peak_mb(), 1),
        "delta_mb": round(_peak_mb() - base, 1),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _spawn(kind: str, name: str, batch: int, width: float, steps: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--case", kind, name]
    cmd += [str(batch), str(width), str(steps)]
    env = {**os.environ, "GFVERIFY_NO_PROGRESS": "1"}
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"memory case {kind} {name} b={batch} failed: {tail[0]}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    # cross-check from the parent: the child's peak as the kernel accounted it
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rec["children_maxrss_mb"] = round(children / 1024, 1)
    return rec


def _family(records: dict[int, dict]) -> dict:
    sizes = sorted(records)
    lo, hi = sizes[0], sizes[-1]
    slope = (records[hi]["peak_mb"] - records[lo]["peak_mb"]) / (hi - lo)
    return {
        "by_batch": {str(b): records[b] for b in sizes},
        "growth_mb_per_sample": round(slope, 3),
    }


def run(quick: bool = False) -> dict:
    # full width trains at ~1 min per step of 128 on a loaded 2-core CPU: scaled down
    width = 0.125 if quick else 0.25
    score_sizes = (16, 128) if quick else (16, 64, 128)
    train_sizes = (32, 128)
    steps = 2
    measures = ("taylor_fo", "grasp")
    families: dict[str, dict] = {}
    for measure in measures:
        recs = {b: _spawn("score", measure, b, width, steps) for b in score_sizes}
        families[f"score_{measure}"] = _family(recs)
    recs = {b: _spawn("train", "sgd", b, width, steps) for b in train_sizes}
    families["train"] = _family(recs)
    summary = {}
    for fam, res in families.items():
        for b, r in res["by_batch"].items():
            summary[f"{fam}.b{b}.peak_mb"] = r["peak_mb"]
        summary[f"{fam}.mb_per_sample"] = res["growth_mb_per_sample"]
    return {
        "model": f"resnet56 width_mult={width}",
        "scoring_samples": SAMPLES,
        "train_steps": steps,
        "note": "children_maxrss_mb is the max over all children so far (RUSAGE_CHILDREN)",
        "cases": families,
        "summary": summary,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", nargs=5, metavar=("KIND", "NAME", "BATCH", "WIDTH", "STEPS"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.case:
        kind, name, batch, width, steps = args.case
        print(json.dumps(_child(kind, name, int(batch), float(width), int(steps))))
    else:
        print(json.dumps(run(quick=args.quick), indent=2))
