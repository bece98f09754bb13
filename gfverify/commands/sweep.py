"""``gfverify sweep`` (run a grid of configs) and ``gfverify results`` (tabulate finished runs).

``gfverify sweep CONFIG`` expands CONFIG's ``[sweep]`` table (:func:`gfverify.config.expand_grid`)
into one run per grid point and runs them with :func:`gfverify.sweep.run_sweep`: a local pool
(``--launcher local``, ``--workers`` processes over ``--devices``) or a SLURM job array through
submitit (``--launcher slurm``). Finished runs are skipped and partial runs resume, so the same
command can be repeated until everything is done. ``--dry-run`` only lists the runs.

``gfverify results RUNS_DIR`` collects the finished runs (:func:`gfverify.runs.collect_results`)
and prints, per group, ``mean ± std`` of a result metric over seeds, with
``mean = Σx_i/n`` and ``std = sqrt(Σ(x_i − mean)²/(n − 1))`` (:func:`gfverify.runs.aggregate`).
"""

from __future__ import annotations

import argparse
import difflib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gfverify.commands import add_override_option
from gfverify.errors import ConfigError, GfverifyError

__all__ = [
    "add_parser",
    "cmd_sweep",
    "cmd_results",
    "parse_devices",
    "run_states",
    "default_group_by",
]

#: Always shown by ``--dry-run`` (then every other key that varies across the grid).
HEADLINE_KEYS = ("data.name", "model.name", "measure.name", "prune.ratio", "seed")
#: The base grouping of ``gfverify results``; keys that vary between runs are added to it.
BASE_GROUP_BY = ("data.name", "model.name", "measure.name")
#: The sweep parser's option strings (set by add_parser), for advice in failure lines.
_SWEEP_FLAGS: set[str] = {"--set", "--no-resume"}
_SLURM_FLAGS = {
    "partition": "--partition",
    "time_min": "--time-min",
    "gpus_per_node": "--gpus-per-node",
    "cpus_per_task": "--cpus-per-task",
    "mem_gb": "--mem-gb",
    "array_parallelism": "--array-parallelism",
}


# --------------------------------------------------------------------------------------------
# parsers


def add_parser(subparsers: Any) -> None:
    """Add the ``sweep`` and ``results`` sub-commands."""
    _add_sweep(subparsers)
    _add_results(subparsers)


def _add_sweep(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run every grid point of a TOML config (local pool or SLURM)",
        description=(
            "Expand CONFIG's [sweep] table into runs and run them. Each run lives in"
            " RUNS_DIR/<run id>; finished runs are skipped and unfinished ones resume, so the"
            " command can simply be repeated."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="a TOML run config, with or without [sweep]")
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: a process pool on this machine (default); slurm: a submitit job array,"
        " waited for",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local: parallel worker processes (0: sequential, in this process); default 1",
    )
    p.add_argument(
        "--devices",
        help="local: comma-separated devices taken round-robin by the workers, e.g."
        " cuda:0,cuda:1 (default: every visible GPU, else cpu)",
    )
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    add_override_option(
        p,
        "override a config key for every run (TOML value), e.g. train.epochs=2;"
        " sweep.KEY=[...] replaces or adds a grid axis, e.g. sweep.seed=[0,1]",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state; run none")
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="restart unfinished runs from scratch instead of their last checkpoint",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--train-fn",
        metavar="PKG.MOD:FN",
        help="advanced (tests, custom training loops): the function called as fn(config, run_dir)"
        " instead of gfverify.train:run_training; must be importable by the workers",
    )
    slurm = p.add_argument_group("SLURM (--launcher slurm; one array task per run)")
    slurm.add_argument("--partition")
    slurm.add_argument("--time-min", type=int, help="minutes per task (default 720)")
    slurm.add_argument("--gpus-per-node", type=int, help="GPUs per task (default 1)")
    slurm.add_argument("--cpus-per-task", type=int, help="default 4")
    slurm.add_argument("--mem-gb", type=int, help="default 32")
    slurm.add_argument("--array-parallelism", type=int, help="tasks running at once (default 64)")
    p.set_defaults(func=cmd_sweep)
    global _SWEEP_FLAGS
    from gfverify.commands import option_strings

    _SWEEP_FLAGS = option_strings(p)


def _add_results(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "results",
        help="table of mean ± std over seeds of the finished runs in a runs directory",
        description=(
            "Collect the finished runs of RUNS_DIR and print, per group, mean ± sample std of"
            " METRIC over seeds. Without --group-by, runs are grouped by data, model and"
            " measure plus every other config key that varies between them (never by seed)."
        ),
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR")
    p.add_argument("--metric", default="final_test_acc", help="result field (default: %(default)s)")
    p.add_argument(
        "--group-by",
        nargs="+",
        metavar="KEY",
        help="dotted config keys (or result fields) to group by; space- or comma-separated",
    )
    p.add_argument("--csv", metavar="PATH", help="write one tidy row per finished run to PATH")
    p.add_argument(
        "--summary-csv", metavar="PATH", help="write the grouped table (n, mean, std) to PATH"
    )
    p.add_argument(
        "--table1",
        action="store_true",
        help="print the paper's Table 1 layout instead: base accuracy (prune.ratio = 0 runs) and"
        " each measure's final test accuracy per dataset/network/ratio, then the best-val epoch,"
        " achieved pruned fraction, params and MACs after (gfverify.report.table1)",
    )
    p.set_defaults(func=cmd_results)


# --------------------------------------------------------------------------------------------
# sweep


def parse_devices(text: str | None) -> list[str] | None:
    """``"cuda:0, cuda:1"`` -> ``["cuda:0", "cuda:1"]``, each checked like ``config.device``."""
    if text is None:
        return None
    from gfverify.config import RunConfig, update_config

    devices = [d.strip() for d in text.split(",")]
    if not any(devices) or not all(devices):
        raise ConfigError(
            f"--devices must be a comma-separated list like cuda:0,cuda:1, got {text!r}"
        )
    for device in devices:
        try:
            update_config(RunConfig(), {"device": device})
        except ConfigError:
            raise ConfigError(
                f"--devices entry {device!r} must be cpu, mps, cuda or cuda:N"
            ) from None
    return devices


def _slurm_options(args: argparse.Namespace) -> Any:
    """SlurmOptions from the SLURM flags that were given (the rest keep their defaults)."""
    from gfverify.sweep import SlurmOptions

    given = {k: getattr(args, k) for k in _SLURM_FLAGS if getattr(args, k) is not None}
    if args.launcher != "slurm":
        if given:
            flags = ", ".join(_SLURM_FLAGS[k] for k in given)
            raise GfverifyError(f"SLURM options ({flags}) need --launcher slurm")
        return None
    try:
        return SlurmOptions(**given)
    except GfverifyError as exc:
        message = str(exc)
        for key, flag in _SLURM_FLAGS.items():
            message = message.replace(f"SlurmOptions.{key}", flag)
        raise GfverifyError(message) from None


def _config_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config path is not a file: {path}")
    return path


def run_states(configs: Sequence[Any], runs_dir: str | Path) -> list[str]:
    """State of each config's run directory: ``finished``, ``new``, ``conflict`` (a stored
    config.json disagrees), or the status.json state with its epoch, e.g. ``failed@3``;
    ``stale`` is a ``running`` run whose process (on this host) no longer exists."""
    from gfverify.runs import check_config_matches, read_status, result_state, run_path

    states = []
    for cfg in configs:
        path = run_path(cfg, runs_dir)
        result = result_state(path)
        if result == "ok":
            states.append("finished")
            continue
        if result == "corrupt":
            states.append("corrupt-result")  # run again (resuming) to rewrite it
            continue
        if not path.exists():
            states.append("new")
            continue
        try:
            check_config_matches(cfg, path)
        except ConfigError:
            states.append("conflict")
            continue
        status = read_status(path) or {}
        state = status.get("state", "started")
        if state == "running" and _is_dead(status):
            state = "stale"  # its process is gone (killed without a chance to record it)
        epoch = status.get("epoch")
        states.append(f"{state}@{epoch}" if epoch else str(state))
    return states


def _is_dead(status: Mapping[str, Any]) -> bool:
    """True if status.json names a process on this host that no longer exists."""
    import os
    import socket

    pid = status.get("pid")
    if status.get("hostname") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but owned by someone else
        return False
    return False


def _cell(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_cell(v) for v in value) + "]"
    return str(value)


def _varying_keys(flats: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _dry_run(
    configs: Sequence[Any],
    args: argparse.Namespace,
    devices: list[str] | None,
    slurm: Any,
) -> int:
    from gfverify.config import RunConfig, flatten_config, identity_keys, run_id

    flats = [flatten_config(c) for c in configs]
    varying = _varying_keys(flats, identity_keys())
    extra = [k for k in varying if k not in HEADLINE_KEYS]
    keys = [*HEADLINE_KEYS, *extra]
    default = flatten_config(RunConfig())
    common = [
        f"{k}={_cell(flats[0][k])}"
        for k in identity_keys()
        if k not in varying and k not in HEADLINE_KEYS and flats[0][k] != default[k]
    ]
    if common:
        print(f"every run (besides the defaults): {', '.join(common)}")
    states = run_states(configs, args.runs_dir)
    rows = [["#", "run_id", "state", *keys]]
    for i, (cfg, flat, state) in enumerate(zip(configs, flats, states)):
        rows.append([str(i), run_id(cfg), state, *(_cell(flat.get(k)) for k in keys)])
    print("\n".join(_columns(rows)))
    counts = Counter(s if s in ("finished", "new", "conflict") else "started" for s in states)
    todo = counts["new"] + counts["started"]
    verb = "resume" if args.resume else "restart"
    print(
        f"\n{len(configs)} runs in {args.runs_dir}: {counts['finished']} finished,"
        f" {todo} to run ({counts['started']} of them {verb} a started run)"
    )
    if args.launcher == "slurm":
        s = slurm
        where = f"partition {s.partition}" if s.partition else "the default partition"
        print(
            f"--launcher slurm would submit {todo} array tasks to {where}: {s.time_min} min,"
            f" {s.gpus_per_node} GPU(s), {s.cpus_per_task} CPUs, {s.mem_gb} GB each,"
            f" at most {s.array_parallelism} at once"
        )
    else:
        shown = ", ".join(devices) if devices else "every visible GPU, else cpu"
        mode = "sequentially in this process" if args.workers == 0 else f"{args.workers} worker(s)"
        print(f"--launcher local would run {todo} runs with {mode} on {shown}")
    conflicts = [run_id(c) for c, s in zip(configs, states) if s == "conflict"]
    if conflicts:
        raise ConfigError(
            f"{len(conflicts)} run(s) have a different config stored under the same run id"
            f" ({', '.join(conflicts[:5])}{', ...' if len(conflicts) > 5 else ''});"
            " the sweep would refuse to start"
        )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Expand the grid and run it (or list it with ``--dry-run``). Exit 1 if any run failed."""
    from gfverify.config import expand_grid

    configs = expand_grid(_config_path(args.config), args.overrides)
    devices = parse_devices(args.devices)
    if args.launcher == "slurm" and devices is not None:
        raise GfverifyError(
            "--devices only applies to --launcher local; SLURM gives each task its own GPUs"
            " (--gpus-per-node)"
        )
    if args.workers < 0:
        raise GfverifyError(f"--workers must be >= 0, got {args.workers}")
    if args.launcher == "slurm" and args.workers != 1:
        raise GfverifyError("--workers only applies to --launcher local")
    slurm = _slurm_options(args)
    from gfverify import io as gio
    from gfverify.commands import check_grid

    # Every grid point is checked (config, model, device) before anything runs or is listed;
    # SLURM nodes have their own devices, so only the local launcher checks them here.
    check_grid(configs, devices if args.launcher == "local" else ["cpu"])
    if args.dry_run:
        return _dry_run(configs, args, devices, slurm)

    from gfverify.runs import resolve_train_fn
    from gfverify.sweep import run_sweep, summarize

    resolve_train_fn(args.train_fn)  # fail now, with one line, if it cannot be imported
    gio.check_writable(args.runs_dir, directory=True, what="runs directory")
    results = run_sweep(
        configs,
        args.runs_dir,
        launcher=args.launcher,
        workers=args.workers,
        devices=devices,
        slurm=slurm,
        train_fn=args.train_fn,
        resume=args.resume,
        progress=not args.quiet,
    )
    counts = summarize(results)
    failed = [r for r in results if r.status == "failed"]
    _report_failures(failed, _flags_of(args))
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{len(results)} runs in {args.runs_dir}: {summary}")
    if counts.get("busy"):
        print("busy runs are being run by another process; repeat the command to collect them")
    if not failed:
        print(f"results: gfverify results {args.runs_dir}")
    return 1 if failed else 0


def _flags_of(args: argparse.Namespace) -> set[str]:
    return set(getattr(args, "sweep_flags", ())) or _SWEEP_FLAGS


def _report_failures(failed: Sequence[Any], flags: set[str]) -> None:
    """Failed runs on stderr: one line per distinct error (with how many runs and which), so a
    cause shared by every run (missing data) is printed once, in the spelling of sweep's own
    flags."""
    import sys

    from gfverify.errors import cli_advice

    groups: dict[str, list[Any]] = {}
    for r in failed:
        text = (r.error or "unknown error").replace(r.run_id, "<run>")
        groups.setdefault(text, []).append(r)
    for text, runs in groups.items():
        text = cli_advice(text, flags)
        if len(runs) == 1:
            r = runs[0]
            line = f"failed  {r.run_id}  {text.replace('<run>', r.run_id)}"
            print(f"{line}  (see {r.path / 'status.json'})", file=sys.stderr)
        else:
            ids = ", ".join(r.run_id for r in runs[:3]) + (", ..." if len(runs) > 3 else "")
            print(f"failed  {len(runs)} runs ({ids})  {text}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# results


def default_group_by(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """data, model and measure names, then every other identity config key (except seed) whose
    value differs between rows, in config order, so a group never mixes settings."""
    from gfverify.config import identity_keys

    extra = [k for k in identity_keys() if k not in BASE_GROUP_BY and k != "seed"]
    return [*BASE_GROUP_BY, *_varying_keys(rows, extra)]


def _parse_group_by(items: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from gfverify.config import config_keys

    keys = [k.strip() for item in items for k in item.split(",") if k.strip()]
    if not keys:
        raise GfverifyError("--group-by needs at least one key")
    known = set(config_keys()).union(*(r.keys() for r in rows))
    for key in keys:
        if key not in known:
            match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise GfverifyError(f"unknown --group-by key '{key}'{hint}")
    return keys


def _check_metric(metric: str, rows: Sequence[Mapping[str, Any]]) -> None:
    if any(metric in r for r in rows):
        return
    from gfverify.config import config_keys

    config = set(config_keys()) | {"run_id", "run_dir"}
    numeric = sorted(
        {
            k
            for r in rows
            for k, v in r.items()
            if k not in config and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    raise GfverifyError(
        f"metric '{metric}' is in no result; numeric result fields: {', '.join(numeric) or 'none'}"
    )


def _run_dirs(runs_dir: Path) -> list[Path]:
    from gfverify.runs import CONFIG_FILE

    return [p for p in runs_dir.iterdir() if p.is_dir() and (p / CONFIG_FILE).exists()]


def cmd_results(args: argparse.Namespace) -> int:
    """Print the grouped mean ± std table; optionally write the per-run and grouped CSVs."""
    from gfverify.runs import aggregate, collect_results, results_table, write_csv

    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise GfverifyError(f"runs directory not found: {runs_dir}")
    rows = collect_results(runs_dir)
    started = len(_run_dirs(runs_dir))
    if not rows:
        raise GfverifyError(
            f"no finished runs in {runs_dir} ({started} run directories, none with result.json);"
            f" run `gfverify sweep CONFIG --runs-dir {runs_dir}` first"
        )
    if getattr(args, "table1", False):
        from gfverify.report.table1 import format_table1, table1

        print(format_table1(table1(rows)))
        unfinished = started - len(rows)
        note = f"; {unfinished} unfinished run(s) not shown" if unfinished else ""
        print(f"\n{len(rows)} finished run(s) in {runs_dir}{note}")
        return 0
    _check_metric(args.metric, rows)
    group_by = _parse_group_by(args.group_by, rows) if args.group_by else default_group_by(rows)
    print(results_table(rows, group_by, args.metric))
    unfinished = started - len(rows)
    note = f"; {unfinished} unfinished run(s) not shown" if unfinished else ""
    print(f"\n{len(rows)} finished run(s) in {runs_dir}{note}")
    if args.csv:
        print(f"wrote {write_csv(rows, args.csv)}")
    if args.summary_csv:
        summary = aggregate(rows, group_by, args.metric)
        for row in summary:
            row["metric"] = args.metric
        print(f"wrote {write_csv(summary, args.summary_csv)}")
    return 0
