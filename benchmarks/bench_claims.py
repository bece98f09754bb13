"""Wall time of the claims suite, ``gfverify check --claims all --scale quick``, claim by claim.

The same work as that command (every registered claim on the built-in problems, quick scale),
run in-process with each claim timed on its own, so the total and what dominates it are both
visible. ``quick`` (the harness's smoke mode) times the identity group only. Wall and process
CPU seconds are recorded: on a shared machine compare CPU seconds.

The statistical claims train the quick scale's sweep (experiments/claims_quick.toml, 56 runs,
in this process) into a fresh temporary runs directory, so the time includes the training
(a warm cache would skip it); the first statistical claim's time holds the training.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from gfverify.claims import select_claims
from gfverify.claims.problems import CheckContext, builtin_problems


def run(quick: bool = False) -> dict[str, Any]:
    """Seconds per claim and in total; result counts and failed identities."""
    claims = select_claims("identity" if quick else "all")
    tmp = tempfile.TemporaryDirectory(prefix="bench_claims_")
    options = {"train_scale": "quick", "runs_dir": tmp.name, "progress": False}
    ctx = CheckContext(problems=builtin_problems(), scale="quick", options=options)
    per_claim: dict[str, dict[str, float]] = {}
    results = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for claim in claims:
        w, c = time.perf_counter(), time.process_time()
        out = claim.run(ctx)
        per_claim[claim.id] = {
            "wall_s": round(time.perf_counter() - w, 2),
            "cpu_s": round(time.process_time() - c, 2),
            "results": len(out),
        }
        results += out
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tmp.cleanup()
    failed = sorted({r.id for r in results if r.kind == "identity" and not r.passed})
    slowest = sorted(per_claim, key=lambda k: -per_claim[k]["wall_s"])[:5]
    return {
        "command": "gfverify check --claims " + ("identity" if quick else "all") + " --scale quick",
        "claims": len(claims),
        "results": len(results),
        "failed_identities": failed,
        "per_claim": per_claim,
        "loadavg_1min_end": round(os.getloadavg()[0], 2),
        "summary": {
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "results": len(results),
            "failed_identities": len(failed),
            "slowest": ", ".join(f"{k} {per_claim[k]['wall_s']:.0f} s" for k in slowest),
        },
    }


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
