"""The ``gfverify`` command line: check | measures | run | sweep | results | report.

Every user error (a ``GfverifyError``) prints one line, ``gfverify: error: ...``, and exits 2;
no traceback. ``check`` exits 0 when every claim ran and no identity failed, 1 when an identity
claim failed, 2 on a usage error or when a claim could not run (recorded as an error).
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
    """``"3,32,32"`` or ``"3x32x32"`` -> ``(3, 32, 32)``; every part must be a positive int
    (an empty or non-integer part is refused, never dropped)."""
    import re

    parts = [p.strip() for p in re.split(r"[,x×]", str(text).strip())]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise GfverifyError(
            f"--input-shape must be positive integers like 3,32,32 (or 3x32x32), got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _shape_arg(text: str) -> str:
    """argparse type for --input-shape: checked by :func:`_parse_shape` at parse time."""
    try:
        _parse_shape(text)
    except GfverifyError:
        raise argparse.ArgumentTypeError(
            f"must be positive integers like 3,32,32 (or 3x32x32), got {text!r}"
        ) from None
    return text


def environment() -> dict:
    """Versions, device and git commit: what a result was produced with."""
    import platform
    import subprocess

    import numpy
    import scipy
    import torch

    from gfverify import __version__
    from gfverify.runs import cpu_capability, cpu_model

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
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "git_commit": commit or None,
    }


def _fmt(x: float | None, spec: str = "+.4e") -> str:
    if x is None:
        return "-"
    return format(x, spec)


def _print_table(results: list, header: bool = True) -> None:
    if header:
        head = (
            f"{'claim':5} {'case':46} {'measured':>12} {'expected':>12} "
            f"{'rel.err':>9} {'tol':>9} {'order':>6}  verdict"
        )
        print(head)
        print("-" * len(head))
    for r in results:
        if r.verdict in ("error", "skipped"):
            print(f"{r.id:5} {r.verdict.upper()}: {r.details.get('reason', '')}")
            continue
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
    """Run claims on the built-in small nets (or a user model) and print/write the verdicts.

    Each claim runs on its own: one that raises becomes an ``error`` record with its one-line
    reason and the check goes on; on ``--model``, one whose estimated time (printed before it
    starts: counts of gradients × one timed gradient) exceeds ``--budget`` becomes a
    ``skipped`` record, so the flow integrations (E2–E5, L1, L2) never run for hours unasked.
    Rows are printed as each claim finishes, and with ``--json`` the file is rewritten
    atomically after every claim: valid JSON at every moment, holding the records of the
    claims done so far (``"complete": false`` and ``claims_pending`` until the last one).

    Exit status: 0 no identity failed and every claim ran (skipped ones included); 1 an identity
    claim failed (whatever else happened); 2 a usage error, or a claim could not run (error).
    """
    from gfverify.claims import SCHEMA_VERSION, select_claims
    from gfverify.claims.base import error_record
    from gfverify.claims.problems import CheckContext, builtin_problems, user_problem
    from gfverify.flow import LossSpec

    claims = select_claims(args.claims)
    if args.json:  # before any work: an unwritable --json must not cost the computation
        from gfverify.io import check_writable

        check_writable(args.json, what="--json file")
    if args.model:
        from gfverify.models import load_factory, require_module

        if not args.input_shape or not args.num_classes:
            raise GfverifyError("--model needs --input-shape and --num-classes")
        factory = load_factory(args.model)
        try:
            model = factory()
        except Exception as exc:
            raise GfverifyError(f"calling the factory {args.model!r} failed: {exc}") from None
        model = require_module(model, args.model)
        problems = [
            user_problem(
                model,
                _parse_shape(args.input_shape),
                args.num_classes,
                samples=args.samples,
                loss=LossSpec(args.loss, args.temperature),
                budget_s=args.budget if args.budget > 0 else None,
                max_layers=USER_MAX_LAYERS,
            )
        ]
    else:
        problems = builtin_problems()
    options: dict = {"user_model": bool(args.model)}
    if args.runs_dir:
        options["runs_dir"] = args.runs_dir
    if args.seeds:
        options["seeds"] = args.seeds
    scale = args.scale or ("quick" if not args.runs_dir else None)
    options.update(train_scale=scale, workers=args.workers, progress=not args.quiet)
    ctx = CheckContext(problems=problems, scale=scale or "quick", options=options)
    results: list = []
    started = time.time()
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    env = environment() if args.json else {}
    path = Path(args.json) if args.json else None

    def write(done: int) -> None:
        if path is None:
            return
        from gfverify import io as gio

        payload = {
            "schema_version": SCHEMA_VERSION,
            "created": created,
            "command": " ".join(sys.argv),
            "scale": scale,
            "environment": env,
            "complete": done == len(claims),
            "claims_done": [c.id for c in claims[:done]],
            "claims_pending": [c.id for c in claims[done:]],
            "seconds": round(time.time() - started, 3),
            "results": [r.to_json() for r in results],
        }
        gio.atomic_write_text(path, json.dumps(payload, indent=1))

    from gfverify.commands import CostEta, builtin_claim_costs, claim_costs_from

    # the ETA weighs claims by their seconds in an earlier --json file (read before it is
    # overwritten), else, on the built-in nets, by the costs shipped in claims/costs.json;
    # on a user model without an earlier file every claim counts the same
    costs = claim_costs_from(path) if path else {}
    if not costs and not args.model:
        costs = builtin_claim_costs()
    eta = CostEta([c.id for c in claims], costs)
    write(0)
    _print_table([], header=True)
    for i, claim in enumerate(claims):
        if not args.quiet:
            print(
                f"[{i + 1}/{len(claims)}] {claim.id} ... ({eta.line()})",
                file=sys.stderr,
                flush=True,
            )
        t0 = time.time()
        try:
            got = claim.run(ctx)
        except Exception as exc:  # noqa: BLE001 - a claim that cannot run is recorded, not fatal
            got = [error_record(claim, exc, seconds=round(time.time() - t0, 3))]
            if got[0].verdict == "error":
                print(f"gfverify: error: {claim.id}: {got[0].details['reason']}", file=sys.stderr)
        for r in got:
            r.details.setdefault("claim_seconds", round(time.time() - t0, 3))
        eta.finished(claim.id, time.time() - t0)
        results += got
        _print_table(got, header=False)
        sys.stdout.flush()
        write(i + 1)
    failed = [r for r in results if r.kind == "identity" and r.verdict == "fail"]
    errored = [r for r in results if r.verdict == "error"]
    skipped = [r for r in results if r.verdict == "skipped"]
    print(
        f"\n{len(results)} results from {len(claims)} claims in {time.time() - started:.1f} s; "
        f"{len(failed)} identity check(s) failed; {len(errored)} claim(s) errored; "
        f"{len(skipped)} skipped"
    )
    if path is not None:
        print(f"wrote {path}")
    if failed:
        return 1
    return 2 if errored else 0


#: Default ``--budget``: seconds one claim's expensive steps may take on a user model.
DEFAULT_BUDGET_S = 10.0
#: Per-layer claims (L1, L2, T1, T2, G1) on a user model look at this many layers at most,
#: evenly spread from the first to the last prunable layer.
USER_MAX_LAYERS = 3


def cmd_measures(args: argparse.Namespace) -> int:
    """List the registered importance measures with their formulas and data rules."""
    from gfverify.measures import describe

    for name, formula, rule in describe():
        print(f"{name}\n    score: {formula}\n    data:  {rule}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gfverify import __version__
    from gfverify.commands import Parser, positive_float, positive_int

    parser = Parser(
        prog="gfverify",
        description="Check the gradient-flow framework for pruning (Lubana & Dick, ICLR 2021).",
    )
    parser.add_argument("--version", action="version", version=f"gfverify {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser(
        "check",
        help="run the executable claims and print verdicts",
        description="Run the paper's executable claims (exact identities, measure properties,"
        " pruning, and with --claims statistical the seeded experiments) on the built-in small"
        " nets, or on your own model with --model, and print one verdict per case.",
        epilog="exit status: 0 no identity failed and every claim ran; 1 an identity claim "
        "failed; 2 a usage error or a claim could not run (an 'error' record). --json is "
        "rewritten after every claim, valid JSON at every moment.",
    )
    check.add_argument(
        "--claims",
        default="identity,measures,pruning",
        help="'all', groups (identity, measures, pruning, statistical) or ids: E2,E3,H1",
    )
    from gfverify.claims.scales import available as _scales

    check.add_argument(
        "--scale",
        choices=_scales(),
        help="statistical claims: train the sweep experiments/claims_SCALE.toml (resumable; "
        "finished runs are skipped) into --runs-dir, then evaluate (default: quick, unless "
        "--runs-dir alone is given)",
    )
    check.add_argument("--json", help="write the claim records to this JSON file")
    check.add_argument("--model", help="a user model factory 'pkg.module:callable'")
    check.add_argument(
        "--input-shape", type=_shape_arg, help="input shape of one sample, e.g. 3,32,32"
    )
    check.add_argument("--num-classes", type=positive_int, help="classes of --model's output")
    check.add_argument(
        "--samples",
        type=positive_int,
        default=16,
        help="random samples for --model (rounded up to a multiple of --num-classes)",
    )
    check.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="seconds one claim may take on --model, estimated from a timed gradient before it "
        "starts; a claim over it is skipped with its estimate (0: no limit)",
    )
    check.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "mse"])
    check.add_argument(
        "--temperature", type=positive_float, default=5.0, help="softmax temperature of the loss"
    )
    check.add_argument(
        "--runs-dir",
        help="runs of the statistical claims: with --scale, where its sweep trains (default: a "
        "cache folder keyed by the sweep file's content); alone, evaluate the finished runs there",
    )
    check.add_argument(
        "--seeds", type=positive_int, help="statistical claims: train/use seeds 0..N-1 of --scale"
    )
    check.add_argument(
        "--workers",
        type=int,
        default=0,
        help="parallel training processes for --scale's sweep (0: in this process)",
    )
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_check)

    meas = sub.add_parser(
        "measures",
        help="list the importance measures and their formulas",
        description="List every registered importance measure: its score formula and the data"
        " it is computed on (one batch, a class-balanced set, none).",
    )
    meas.set_defaults(func=cmd_measures)

    import importlib
    import pkgutil

    import gfverify.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"gfverify.commands.{info.name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a parse error (2, one line printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what commands may record
    _one_line_warnings()
    try:
        return int(args.func(args) or 0)
    except GfverifyError as exc:
        from gfverify.errors import cli_advice

        message = " ".join(str(exc).split()) if "\n" in str(exc) else str(exc)
        print(f"gfverify: error: {cli_advice(message, _flags(parser, args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gfverify: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a path that cannot be read or written: one line, no traceback
        from gfverify.io import os_error_line

        print(f"gfverify: error: {os_error_line(exc)}", file=sys.stderr)
        return 2


def _one_line_warnings() -> None:
    """A GfverifyWarning prints as one line, ``gfverify: warning: ...`` (others unchanged)."""
    import warnings

    from gfverify.errors import GfverifyWarning

    if getattr(warnings.formatwarning, "_gfverify", False):
        return
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):  # noqa: ANN001
        if isinstance(category, type) and issubclass(category, GfverifyWarning):
            return f"gfverify: warning: {' '.join(str(message).split())}\n"
        return default(message, category, filename, lineno, line)

    formatwarning._gfverify = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


def _flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The option strings of the sub-command that ran (advice must name flags it accepts)."""
    from gfverify.commands import option_strings

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices.get(getattr(args, "command", None))
            if sub is not None:
                return option_strings(sub)
    return option_strings(parser)


if __name__ == "__main__":
    sys.exit(main())
