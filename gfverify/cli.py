"""The ``gfverify`` command line: check | measures | run | sweep | results | report.

Every user error (a ``GfverifyError``) prints one line, ``gfverify: error: ...``, and exits 2;
no traceback. ``check`` exits 1 when an identity claim fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gfverify.errors import GfverifyError


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise GfverifyError(f"--input-shape must be integers like 3,32,32, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise GfverifyError(f"--input-shape must be positive integers like 3,32,32, got {text!r}")
    return shape


def environment() -> dict:
    """Versions, device and git commit: what a result was produced with."""
    import platform
    import subprocess

    import numpy
    import scipy
    import torch

    from gfverify import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "gfverify": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "git_commit": commit or None,
    }


def _fmt(x: float | None, spec: str = "+.4e") -> str:
    if x is None:
        return "-"
    return format(x, spec)


def _print_table(results: list) -> None:
    header = (
        f"{'claim':5} {'case':46} {'measured':>12} {'expected':>12} "
        f"{'rel.err':>9} {'tol':>9} {'order':>6}  verdict"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        order = r.details.get("observed_order", r.details.get("fd_observed_order"))
        if r.kind == "statistical" and r.details.get("ci_low") is not None:
            lo, hi = r.details["ci_low"], r.details["ci_high"]
            print(
                f"{r.id:5} {r.case[:46]:46} {_fmt(r.measured):>12} {'> 0':>12} "
                f"CI [{_fmt(lo, '+.3g')}, {_fmt(hi, '+.3g')}]  n={r.details.get('n_seeds')}"
                f"  {r.verdict}"
            )
            continue
        print(
            f"{r.id:5} {r.case[:46]:46} {_fmt(r.measured):>12} {_fmt(r.expected):>12} "
            f"{_fmt(r.error, '.2e'):>9} {_fmt(r.tolerance, '.2e'):>9} "
            f"{_fmt(order, '.2f'):>6}  {r.verdict}"
        )


def cmd_check(args: argparse.Namespace) -> int:
    """Run claims on the built-in small nets (or a user model) and print/write the verdicts."""
    from gfverify.claims import SCHEMA_VERSION, select_claims
    from gfverify.claims.problems import CheckContext, builtin_problems, user_problem
    from gfverify.flow import LossSpec

    claims = select_claims(args.claims)
    if args.model:
        from gfverify.models import load_factory

        if not args.input_shape or not args.num_classes:
            raise GfverifyError("--model needs --input-shape and --num-classes")
        factory = load_factory(args.model)
        try:
            model = factory()
        except Exception as exc:
            raise GfverifyError(f"calling the factory {args.model!r} failed: {exc}") from None
        problems = [
            user_problem(
                model,
                _parse_shape(args.input_shape),
                args.num_classes,
                samples=args.samples,
                loss=LossSpec(args.loss, args.temperature),
            )
        ]
    else:
        problems = builtin_problems()
    options: dict = {"user_model": bool(args.model)}
    if args.runs_dir:
        options["runs_dir"] = args.runs_dir
    if args.seeds:
        options["seeds"] = args.seeds
    ctx = CheckContext(problems=problems, scale=args.scale, options=options)
    results = []
    started = time.time()
    from tqdm import tqdm

    for claim in tqdm(claims, desc="claims", unit="claim", disable=args.quiet, file=sys.stderr):
        results += claim.run(ctx)
    _print_table(results)
    failed = [r for r in results if r.kind == "identity" and not r.passed]
    print(
        f"\n{len(results)} results from {len(claims)} claims in {time.time() - started:.1f} s; "
        f"{len(failed)} identity check(s) failed"
    )
    if args.json:
        payload = {
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
            "scale": args.scale,
            "environment": environment(),
            "results": [r.to_json() for r in results],
        }
        from gfverify import io as gio

        path = Path(args.json)
        gio.atomic_write_text(path, json.dumps(payload, indent=1))
        print(f"wrote {path}")
    return 1 if failed else 0


def cmd_measures(args: argparse.Namespace) -> int:
    """List the registered importance measures with their formulas and data rules."""
    from gfverify.measures import describe

    for name, formula, rule in describe():
        print(f"{name}\n    score: {formula}\n    data:  {rule}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gfverify",
        description="Check the gradient-flow framework for pruning (Lubana & Dick, ICLR 2021).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="run the executable claims and print verdicts")
    check.add_argument(
        "--claims",
        default="identity,measures,pruning",
        help="'all', groups (identity, measures, pruning, statistical) or ids: E2,E3,H1",
    )
    check.add_argument("--scale", default="quick", choices=["quick", "paper"])
    check.add_argument("--json", help="write the claim records to this JSON file")
    check.add_argument("--model", help="a user model factory 'pkg.module:callable'")
    check.add_argument("--input-shape", help="input shape of one sample, e.g. 3,32,32")
    check.add_argument("--num-classes", type=int)
    check.add_argument("--samples", type=int, default=16, help="random samples for --model")
    check.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse"])
    check.add_argument("--temperature", type=float, default=5.0)
    check.add_argument(
        "--runs-dir", help="finished runs for the statistical claims (--scale paper)"
    )
    check.add_argument("--seeds", type=int, help="seeds for the statistical claims (quick scale)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check)

    meas = sub.add_parser("measures", help="list the importance measures and their formulas")
    meas.set_defaults(func=cmd_measures)

    import importlib
    import pkgutil

    import gfverify.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"gfverify.commands.{info.name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what commands may record
    try:
        return int(args.func(args) or 0)
    except GfverifyError as exc:
        print(f"gfverify: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gfverify: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
