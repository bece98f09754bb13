"""Wall time of ``gfverify check --model`` on user models, as a new user runs it (issue 12).

Each case runs the real command in a subprocess from the repository root (the current folder
is importable for ``--model``; the factories are in this module), with ``--json`` into a
temporary file, and records: wall seconds, the child's CPU seconds (user + system), the exit
status, per-claim seconds and verdict counts from the JSON, and the load average before and
after (the 2-core machine is shared: compare CPU seconds when the load is high).

Cases: ``issue12_net`` (the 930-parameter net of issue 12: two stride-2 conv → BatchNorm →
tanh blocks, average pool, linear; 10 classes, 3×32×32) with ``--claims G1,L2`` (the false
failures of the issue) and with the default claims; ``resnet18`` (torchvision, 10 classes,
3×32×32) with the default claims: goal ≤ 60 s wall (``GOAL_RESNET18_S``). Quick mode: the
issue net with G1,L2 only.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks import common

GOAL_RESNET18_S = 60.0
SHAPE = "3,32,32"


def issue12_net() -> nn.Module:
    """Two stride-2 conv → BatchNorm → tanh blocks, average pool, linear: 930 parameters."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def resnet18() -> nn.Module:
    """torchvision's resnet18 with 10 classes (ImageNet stem; at 32×32 its last maps are 1×1)."""
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


def _console_script() -> str:
    """The ``gfverify`` console script of this interpreter's environment (what users run)."""
    here = Path(sys.executable).parent / "gfverify"
    found = str(here) if here.exists() else shutil.which("gfverify")
    if not found:
        raise RuntimeError("the gfverify console script is not installed (pip install -e .)")
    return found


def check_case(factory: str, claims: str | None = None, timeout: float = 1800) -> dict[str, Any]:
    """Run ``gfverify check --model benchmarks.bench_check:<factory>`` once; its numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "claims.json"
        cmd = [_console_script(), "check", "--model", f"benchmarks.bench_check:{factory}"]
        cmd += ["--input-shape", SHAPE, "--num-classes", "10", "--json", str(out), "--quiet"]
        if claims:
            cmd += ["--claims", claims]
        load0 = common.load_average()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=common.REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        data = json.loads(out.read_text()) if out.exists() else {"results": []}
    per_claim: dict[str, dict[str, Any]] = {}
    for r in data["results"]:
        c = per_claim.setdefault(r["id"], {"seconds": r["details"].get("claim_seconds")})
        c[r["verdict"]] = c.get(r["verdict"], 0) + 1
    verdicts: dict[str, int] = {}
    for r in data["results"]:
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "command": " ".join(["gfverify", *cmd[1:]]).replace(str(out), "claims.json"),
        "exit_status": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "load_average_start": load0,
        "load_average_end": common.load_average(),
        "results": len(data["results"]),
        "verdicts": verdicts,
        "per_claim": per_claim,
        "complete": data.get("complete"),
        "stderr_tail": proc.stderr[-1500:] if proc.returncode not in (0, 1) else "",
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The issue-12 net (G1,L2; default claims) and resnet18 (default claims), timed."""
    cases = {"issue12_net.G1_L2": check_case("issue12_net", "G1,L2")}
    if not quick:
        cases["issue12_net.default"] = check_case("issue12_net")
        cases["resnet18.default"] = check_case("resnet18")
    summary: dict[str, Any] = {}
    for name, c in cases.items():
        summary[f"{name}.wall_s"] = c["wall_s"]
        summary[f"{name}.cpu_s"] = c["cpu_s"]
        summary[f"{name}.exit_status"] = c["exit_status"]
        summary[f"{name}.verdicts"] = ", ".join(f"{k} {v}" for k, v in c["verdicts"].items())
    if "resnet18.default" in cases:
        summary["resnet18.goal_met"] = cases["resnet18.default"]["wall_s"] <= GOAL_RESNET18_S
    return {
        "summary": summary,
        "cases": cases,
        "goal_resnet18_wall_s": GOAL_RESNET18_S,
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
