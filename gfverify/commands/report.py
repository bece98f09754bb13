"""``gfverify report``: write one self-contained HTML page from claims JSON files and runs.

Without ``--runs``/``--claims`` it is the main job on a fresh machine: run the quick claims
(``gfverify check --claims all --scale quick --json <out dir>/claims.json``, in-process) and
the smoke experiment (``experiments/smoke.toml`` into ``runs/smoke``), then write the page and
print its path. A step that cannot run is named in the page and on stderr; the page is written
regardless.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from gfverify import io as gio
from gfverify.errors import GfverifyError
from gfverify.report import write_report
from gfverify.report.build import Gap

DEFAULT_OUTPUT = "reports/latest/index.html"
SMOKE_CONFIG = "experiments/smoke.toml"
SMOKE_RUNS = "runs/smoke"
#: The smoke runs' train function (None: gfverify.runs' default, gfverify.train).
TRAIN_FN: str | None = None


def _say(message: str) -> None:
    print(f"gfverify report: {message}", file=sys.stderr)


def run_quick_claims(path: Path, quiet: bool = False, claims: str = "all") -> list[Gap]:
    """``gfverify check --claims all --scale quick --json path`` in-process (its table goes to
    ``path.with_suffix('.log')``); the JSON's ``command`` names that equivalent command."""
    from gfverify.cli import main

    argv = ["check", "--claims", claims, "--scale", "quick", "--json", str(path)]
    log = path.with_suffix(".log")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # never show a previous run's claims as this run's
    try:
        with log.open("w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
            code = main(argv + (["--quiet"] if quiet else []))
    except Exception as exc:  # noqa: BLE001 - a crashed check must still leave a report
        return [Gap("quick claims", f"gfverify check crashed ({type(exc).__name__}: {exc})")]
    if code == 130:
        raise KeyboardInterrupt  # the user stopped the check: stop the report too
    if code not in (0, 1) or not path.exists():
        return [Gap("quick claims", f"gfverify check exited with {code}; see {log}")]
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload["command"] = shlex.join(["gfverify", *argv])
    gio.atomic_write_text(path, json.dumps(payload, indent=1))
    return []


def find_smoke_config(name: str = SMOKE_CONFIG) -> Path | None:
    """``name`` relative to the working directory, else to the repository holding gfverify."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / name).is_file():
            return base / name
    return None


def run_smoke(
    config_path: Path, runs_dir: Path, quiet: bool = False
) -> tuple[list[Gap], dict[str, str]]:
    """Execute every config of the smoke experiment (finished runs are skipped). Returns the
    gaps and, per run id of this experiment, the command that regenerates it."""
    from tqdm import tqdm

    from gfverify.config import expand_grid, run_id
    from gfverify.runs import execute

    try:
        configs = expand_grid(config_path)
    except GfverifyError as exc:
        return [Gap(str(config_path), str(exc))], {}
    verb = "run" if len(configs) == 1 else "sweep"
    shown = (
        config_path.relative_to(Path.cwd())
        if config_path.is_relative_to(Path.cwd())
        else config_path
    )
    command = shlex.join(["gfverify", verb, str(shown), "--runs-dir", str(runs_dir)])
    gaps: list[Gap] = []
    with _quiet_trainer(quiet):
        for config in tqdm(configs, desc="smoke runs", unit="run", disable=quiet, file=sys.stderr):
            try:
                execute(config, runs_dir, train_fn=TRAIN_FN)
            except GfverifyError as exc:
                gaps.append(Gap("smoke experiment", str(exc).splitlines()[0]))
                if "cannot import train_fn" in str(exc):
                    break  # every other run would fail the same way
    return gaps, {run_id(c): command for c in configs}


@contextlib.contextmanager
def _quiet_trainer(quiet: bool) -> Iterator[None]:
    """``GFVERIFY_NO_PROGRESS=1`` (no per-batch bars from gfverify.train) inside the block when
    ``quiet``; the previous value is restored after."""
    key = "GFVERIFY_NO_PROGRESS"
    old = os.environ.get(key)
    if quiet:
        os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report; with no inputs given, first run the quick claims and the smoke runs.

    Exits 1 (after writing the page) when an identity claim in it failed, as ``check`` does;
    empirical verdicts, whichever way they fall, never change the exit status.

    Named inputs (``--runs``/``--claims``) that are missing or unreadable are an error (exit 2,
    nothing written). Without inputs, a step that could not run leaves a page with a gap; if
    that page would replace an existing one, it is written beside it (``*.incomplete.html``)
    and the old page is kept. ``-o``'s folder is checked for writability before any work.
    """
    out = Path(args.output)
    gio.check_writable(out, what="report")
    gaps: list[Gap] = []
    known: dict[str, str] = {}
    named = bool(args.runs or args.claims)
    if named:
        runs, claims = list(args.runs), list(args.claims)
        cmd = ["gfverify", "report"]
        cmd += ["--runs", *runs] if runs else []
        cmd += ["--claims", *claims] if claims else []
        command = shlex.join([*cmd, "-o", str(out)])
    else:
        claims_path = out.parent / "claims.json"
        runs_dir = Path(args.smoke_runs)
        _say(f"1/3 quick claims -> {claims_path}")
        gaps += run_quick_claims(claims_path, args.quiet)
        smoke = find_smoke_config(args.smoke_config)
        _say(f"2/3 smoke experiment {smoke or args.smoke_config} -> {runs_dir}")
        if smoke is None:
            gaps.append(Gap("smoke experiment", f"{args.smoke_config} not found"))
        else:
            smoke_gaps, known = run_smoke(smoke, runs_dir, args.quiet)
            gaps += smoke_gaps
        runs, claims = [runs_dir], [claims_path]
        command = shlex.join(["gfverify", "report", "-o", str(out)])
        _say("3/3 report")
    target = out
    if gaps and not named and out.exists():  # never replace a page by one that lost content
        target = out.with_name(f"{out.stem}.incomplete{out.suffix or '.html'}")
        _say(f"a step could not run: {out} is kept, the new page goes to {target}")
    path, data = write_report(
        target,
        runs,
        claims,
        known_commands=known,
        extra_gaps=gaps,
        report_command=command,
        strict=named,
    )
    for gap in data.gaps:
        if gap.where not in ("claims", "runs"):  # "not given" is a choice, not a problem
            _say(f"warning: {gap.line()}")
    print(path)
    failed = sorted(
        {row.id for row in data.claims if row.kind == "identity" and row.verdict == "fail"}
    )
    if failed:  # as `gfverify check`: a failed exact identity is a defect, not a finding
        _say(f"{len(failed)} identity claim(s) failed: {', '.join(failed)} (the page shows why)")
        return 1
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write one self-contained HTML report (no inputs: run quick claims + smoke first)",
        description=(
            "Write one self-contained HTML page (no network needed to view it) from claims"
            " files and runs directories. With neither --runs nor --claims: run `gfverify check"
            " --claims all --scale quick` and the smoke experiment (experiments/smoke.toml into"
            " runs/smoke) first, then write the page (-o) and print its path."
        ),
    )
    p.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="runs directories (each holds run directories)",
    )
    p.add_argument(
        "--claims",
        nargs="+",
        action="extend",
        default=[],
        metavar="JSON",
        help="claims files written by `gfverify check --json`",
    )
    p.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help=f"default {DEFAULT_OUTPUT}")
    p.add_argument("--smoke-config", default=SMOKE_CONFIG, help=argparse.SUPPRESS)
    p.add_argument("--smoke-runs", default=SMOKE_RUNS, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)
