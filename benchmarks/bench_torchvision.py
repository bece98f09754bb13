"""Every torchvision classification model through gfverify: a record, not a speed test.

For each constructor of ``torchvision.models.list_models(module=torchvision.models)`` this
builds the model with ``num_classes=10`` at the smallest input size of ``SIZES`` that it
accepts (ViTs: ``image_size`` set to it; GoogLeNet/Inception: no aux logits), then, each step
in its own subprocess with a timeout:

1. ``probe``: gfverify's own view, in process: prunable filters (``gfverify.groups``), the
   layers left out with their one-line reasons, params/MACs (``count_complexity``) before
   and after a 30 % plan by magnitude (``gfverify.prune.prune``, full mode), and a forward
   pass of the pruned model;
2. ``check``: ``gfverify check --model benchmarks.bench_torchvision:tv_<name> --input-shape
   3,S,S --num-classes 10 --claims CLAIMS`` and its exit status and verdict counts.

Nothing may end in a traceback: a subprocess whose stderr holds one is recorded as such.
Results: ``benchmarks/results/torchvision.json`` and ``.md``. ``python -m
benchmarks.bench_torchvision [--phase probe|check|table] [--only a,b]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "results" / "torchvision"
SIZES = (32, 64, 75, 96, 224)
#: the claims the sweep runs on each model (a subset, to fit the 2-core CPU): a flow identity
#: through Hg, GraSP's formula through Hg, and surgery == zeroing.
CLAIMS = "E4,M-grasp,P2"
PROBE_TIMEOUT = 150
CHECK_TIMEOUT = 100
#: models over this many parameters are not run (recorded with the reason)
MAX_PARAMS = 100_000_000


def _kwargs(name: str, size: int) -> dict[str, Any]:
    kw: dict[str, Any] = {"num_classes": 10}
    if name.startswith("vit_"):
        kw["image_size"] = size
    if name in ("googlenet", "inception_v3"):
        kw["aux_logits"] = False
        kw["init_weights"] = False
    return kw


def build(name: str, size: int):
    import torchvision

    return torchvision.models.get_model(name, **_kwargs(name, size)).eval()


def _size_file(name: str) -> Path:
    return OUT_DIR / f"{name}.size"


def __getattr__(attr: str):
    """``tv_<name>``: a zero-argument factory for ``gfverify check --model``, at the input size
    the probe chose (``<name>.size``), else 32."""
    if not attr.startswith("tv_"):
        raise AttributeError(attr)
    name = attr[3:]
    path = _size_file(name)
    size = int(path.read_text()) if path.exists() else 32

    def factory():
        return build(name, size)

    return factory


def probe(name: str) -> dict[str, Any]:
    """gfverify's own analysis of one model (runs in a subprocess)."""
    import warnings

    import torch

    from gfverify.complexity import count_complexity
    from gfverify.errors import GfverifyError
    from gfverify.groups import analyze
    from gfverify.measures import score
    from gfverify.prune import prune

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    rec: dict[str, Any] = {"model": name}
    try:  # count parameters without allocating them
        with torch.device("meta"):
            n_meta = sum(p.numel() for p in build(name, 224).parameters())
    except Exception:  # noqa: BLE001 - counted below on the real build
        n_meta = 0
    if n_meta > MAX_PARAMS:
        rec["params_before"] = n_meta
        rec["reason"] = f"not run: {n_meta:,} parameters > {MAX_PARAMS:,} on this 2-core CPU"
        return rec
    model, size = None, None
    for s in SIZES:
        try:
            m = build(name, s)
            with torch.no_grad():
                out = m(torch.zeros(1, 3, s, s))
            if out.shape == (1, 10):
                model, size = m, s
                break
        except Exception as e:  # noqa: BLE001 - a size the model rejects
            rec["build_error"] = " ".join(f"{type(e).__name__}: {e}".split())[:200]
    if model is None:
        rec["reason"] = f"does not build at sizes {SIZES}: {rec.get('build_error', '')}"
        return rec
    rec.pop("build_error", None)
    rec["input_size"] = size
    _size_file(name).write_text(str(size))
    n_params = sum(p.numel() for p in model.parameters())
    rec["params_before"] = n_params
    if n_params > MAX_PARAMS:
        rec["reason"] = f"not run: {n_params:,} parameters > {MAX_PARAMS:,} on this 2-core CPU"
        return rec
    x = torch.randn(2, 3, size, size)
    try:
        info = analyze(model, x[:1])
        prunable = {k: g for k, g in info.groups.items() if k not in info.output_layers}
        rec["prunable_layers"] = len(prunable)
        rec["prunable_filters"] = sum(g.num_filters for g in prunable.values())
        rec["left_out_layers"] = len(info.skipped)
        rec["left_out_example"] = next(iter(info.skipped.values()), None)
        before = count_complexity(model, (3, size, size))
        rec["macs_before"] = before.macs
        if not prunable:
            rec["reason"] = f"no prunable layer ({rec['left_out_example']})"
            return rec
        scores = score(model, "magnitude", [(x, torch.arange(2))], groups=prunable)
        result = prune(model, scores, 0.3, measure="magnitude", example_input=x[:1])
        rec["filters_removed"] = sum(int(v.numel()) for v in result.plan.plan.values())
        after = count_complexity(model, (3, size, size))
        rec["params_after"], rec["macs_after"] = after.params, after.macs
        rec["params_before"] = before.params
        with torch.no_grad():
            assert model(x).shape == (2, 10)
    except GfverifyError as e:
        rec["reason"] = str(e)
    return rec


def _run(cmd: list[str], timeout: int) -> tuple[int | None, str, str, float]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err, time.perf_counter() - t0


def run_probe(name: str, timeout: int = PROBE_TIMEOUT) -> dict[str, Any]:
    code, out, err, wall = _run(
        [sys.executable, "-m", "benchmarks.bench_torchvision", "--probe-one", name], timeout
    )
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if code == 0 and lines:
        rec = json.loads(lines[-1])
    else:
        rec = {"model": name}
        rec["reason"] = (
            f"probe timed out after {timeout} s"
            if code is None
            else f"probe exited {code}: {_last_line(err)}"
        )
    rec["probe_traceback"] = "Traceback" in err
    rec["probe_wall_s"] = round(wall, 1)
    return rec


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def run_check(name: str, size: int, claims: str = CLAIMS, timeout: int = CHECK_TIMEOUT) -> dict:
    js = OUT_DIR / f"{name}.check.json"
    js.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "gfverify.cli",
        "check",
        "--model",
        f"benchmarks.bench_torchvision:tv_{name}",
        "--input-shape",
        f"3,{size},{size}",
        "--num-classes",
        "10",
        "--claims",
        claims,
        "--json",
        str(js),
        "--quiet",
    ]
    code, out, err, wall = _run(cmd, timeout)
    rec: dict[str, Any] = {
        "check_exit": code,
        "check_wall_s": round(wall, 1),
        "check_traceback": "Traceback" in err,
    }
    counts: dict[str, int] = {}
    if js.exists():
        try:
            payload = json.loads(js.read_text())
            for r in payload.get("results", []):
                v = str(r.get("verdict", r.get("status", "?")))
                counts[v] = counts.get(v, 0) + 1
        except (json.JSONDecodeError, OSError):
            pass
    rec["check_verdicts"] = counts
    rec["check_reason"] = _check_reason(code, js, err, out, timeout)
    return rec


def _check_reason(code: int | None, js: Path, err: str, out: str, timeout: int) -> str | None:
    """Why a check did not exit 0: a timeout, the claims that failed (exit 1) or errored, or
    the last line it printed; ``None`` for exit 0."""
    if code == 0:
        return None
    if code is None:
        return f"check timed out after {timeout} s"
    if code < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        done = ""
        try:
            payload = json.loads(js.read_text())
            pending = payload.get("claims_pending") or []
            done = f" while running {pending[0]}" if pending else ""
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
        return f"check killed by {sig}{done} (on this machine: out of memory, see dmesg)"
    try:
        results = json.loads(js.read_text()).get("results", [])
    except (OSError, json.JSONDecodeError):
        results = []
    bad = [
        f"{r['id']} {r['verdict']}: {r.get('details', {}).get('reason', '')}"
        if r.get("verdict") == "error"
        else f"{r['id']} {r['verdict']} ({r.get('case')})"
        for r in results
        if r.get("verdict") in ("fail", "error")
    ]
    return "; ".join(bad)[:300] if bad else (_last_line(err) or _last_line(out))


def _load_average() -> float:
    """The 1-minute load average when a step ended (timeouts on a shared machine say so)."""
    return round(os.getloadavg()[0], 1)


def _models() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _load(name: str) -> dict[str, Any]:
    path = OUT_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {"model": name}


def _save(rec: dict[str, Any]) -> None:
    (OUT_DIR / f"{rec['model']}.json").write_text(json.dumps(rec, indent=1, sort_keys=True))


def table(names: list[str]) -> dict[str, Any]:
    rows = [_load(n) for n in names]
    header = (
        "| model | size | exit | verdicts | check s | prunable filters | left out | "
        "params before → after | MACs before → after | reason |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(r.get("check_verdicts", {}).items()))
        pa = (
            f"{r['params_before']:,} → {r['params_after']:,}"
            if "params_after" in r
            else f"{r.get('params_before', '')}"
        )
        ma = (
            f"{r['macs_before']:,} → {r['macs_after']:,}"
            if "macs_after" in r
            else f"{r.get('macs_before', '')}"
        )
        reason = r.get("reason") or r.get("check_reason") or ""
        checked = r.get("check_reason") and not r.get("reason")
        load = r.get("check_load") if checked else r.get("load")
        if "timed out" in reason and load is not None:
            reason += f" (1-min load average {load} on 2 cores)"
        lines.append(
            f"| {r['model']} | {r.get('input_size', '')} | {r.get('check_exit', '')} | "
            f"{verdicts} | {r.get('check_wall_s', '')} | {r.get('prunable_filters', '')} | "
            f"{r.get('left_out_layers', '')} | {pa} | {ma} | {reason.replace('|', '/')} |"
        )
    summary = {
        "models": len(rows),
        "check_exit_0": sum(r.get("check_exit") == 0 for r in rows),
        "check_exit_1": sum(r.get("check_exit") == 1 for r in rows),
        "check_exit_2": sum(r.get("check_exit") == 2 for r in rows),
        "check_timeout_or_not_run": sum(r.get("check_exit") is None for r in rows),
        "check_killed_by_signal": sum((r.get("check_exit") or 0) < 0 for r in rows),
        "pruned_30pct": sum("macs_after" in r for r in rows),
        "with_reason": sum(bool(r.get("reason") or r.get("check_reason")) for r in rows),
        "tracebacks": sum(bool(r.get("probe_traceback") or r.get("check_traceback")) for r in rows),
        "claims": CLAIMS,
    }
    md = (
        "# torchvision models through gfverify\n\n"
        f"Claims run by `gfverify check --model`: `{CLAIMS}`; 30 % plan by magnitude, full "
        "mode; input size per model in the table (smallest of "
        f"{SIZES} that builds).\n\n```\n{json.dumps(summary, indent=1)}\n```\n\n"
        + header
        + "\n".join(lines)
        + "\n"
    )
    (REPO / "benchmarks" / "results" / "torchvision.md").write_text(md)
    (REPO / "benchmarks" / "results" / "torchvision.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=1, sort_keys=True)
    )
    return summary


def run(quick: bool = False) -> dict:
    """Benchmark entry (``python -m benchmarks``): the whole sweep and its table; ``quick``:
    the probe of two models only, nothing written but their input sizes."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if quick:
        return {"probe": [run_probe(n) for n in ("resnet18", "shufflenet_v2_x0_5")]}
    main(["--phase", "all"])
    return json.loads((REPO / "benchmarks" / "results" / "torchvision.json").read_text())["summary"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe-one")
    ap.add_argument("--phase", choices=("probe", "check", "table", "all"), default="all")
    ap.add_argument("--only", default="")
    ap.add_argument("--skip-done", action="store_true")
    ap.add_argument("--claims", default=CLAIMS)
    ap.add_argument("--reverse", action="store_true", help="models in reverse order")
    ap.add_argument(
        "--retry-timeouts", action="store_true", help="with --skip-done: redo steps that timed out"
    )
    ap.add_argument("--probe-timeout", type=int, default=PROBE_TIMEOUT)
    ap.add_argument("--check-timeout", type=int, default=CHECK_TIMEOUT)
    args = ap.parse_args(argv)
    if args.probe_one:
        print(json.dumps(probe(args.probe_one)))
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.only.split(",") if n] or _models()
    for name in reversed(names) if args.reverse else names:
        rec = _load(name)
        probe_done = "probe_wall_s" in rec and not (
            args.retry_timeouts and "timed out" in str(rec.get("reason", ""))
        )
        if args.phase in ("probe", "all") and not (args.skip_done and probe_done):
            check_keys = {k: v for k, v in rec.items() if k.startswith("check")}
            rec = {**run_probe(name, args.probe_timeout), **check_keys, "load": _load_average()}
            _save(rec)
            print(name, "probe", rec.get("reason", "ok"), rec["probe_wall_s"], flush=True)
        check_done = "check_wall_s" in rec and not (
            args.retry_timeouts and "timed out" in str(rec.get("check_reason", ""))
        )
        if args.phase in ("check", "all") and not (args.skip_done and check_done):
            if rec.get("input_size") and "not run" not in str(rec.get("reason", "")):
                rec.update(run_check(name, rec["input_size"], args.claims, args.check_timeout))
                rec["check_load"] = _load_average()
            else:
                rec.update({"check_exit": None, "check_reason": "not run (see reason)"})
            _save(rec)
            print(name, "check", rec.get("check_exit"), rec.get("check_verdicts"), flush=True)
    print(json.dumps(table(_models()), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
