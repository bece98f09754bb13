"""``gfverify run CONFIG``: train (and prune) one run described by a TOML config.

The run lives in ``RUNS_DIR/<run id>`` (:mod:`gfverify.runs`): a finished run is skipped (its
stored result is printed), an interrupted one resumes from its last checkpoint (unless
``--no-resume``), a run held by another process is reported busy (exit 1). Bad input prints
one line and exits 2 (handled by :func:`gfverify.cli.main`).
"""

from __future__ import annotations

import argparse
import math
import shlex
from typing import Any

from gfverify.commands import add_override_option

#: Result fields printed after a run, in order (all others are in result.json).
SUMMARY_KEYS = (
    "final_test_acc",
    "best_val_acc",
    "best_val_epoch",
    "final_train_loss",
    "pruned_fraction",
    "target_ratio",
    "params_ratio",
    "macs_ratio",
    "params",
    "macs",
    "rounds",
    "epochs",
    "seconds",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` sub-command."""
    p = subparsers.add_parser(
        "run",
        help="train and prune one run from a TOML config (resumable)",
        description=(
            "Train and prune one run. The run directory is RUNS_DIR/<run id> (a hash of the "
            "non-default config fields); finished runs are skipped, interrupted runs resume."
        ),
    )
    p.add_argument("config", help="TOML run config, e.g. experiments/smoke.toml")
    p.add_argument("--runs-dir", default="runs", help="where run directories live (default: runs)")
    add_override_option(
        p, "override config keys (TOML values), e.g. --set prune.ratio=0.5 seed=1; repeatable"
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="discard an unfinished run's checkpoint and metrics and start it over",
    )
    p.add_argument(
        "--download", action="store_true", help="let torchvision download CIFAR into data.root"
    )
    p.set_defaults(func=cmd_run)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def format_result(result: dict[str, Any]) -> str:
    """The summary lines printed after a run (``key: value``, see :data:`SUMMARY_KEYS`)."""
    width = max(len(k) for k in SUMMARY_KEYS)
    return "\n".join(f"  {k.ljust(width)}  {_fmt(result[k])}" for k in SUMMARY_KEYS if k in result)


def cmd_run(args: argparse.Namespace) -> int:
    """Load the config, check it, execute the run, print its directory and result.

    Everything that can be checked without training (config, model, device, a writable run
    directory) is checked before the run directory exists. On a terminal a per-epoch bar with
    an ETA is shown on stderr (off with ``GFVERIFY_NO_PROGRESS=1`` or when stderr is not a TTY).
    """
    from gfverify import io as gio
    from gfverify.commands import check_runnable, epoch_progress, progress_wanted
    from gfverify.config import load_config, update_config
    from gfverify.runs import RESULT_FILE, execute, read_metrics, run_path, update_env
    from gfverify.train.protocol import epoch_plan

    config = load_config(args.config, args.overrides)
    if args.download:
        config = update_config(config, {"data.download": True})
    check_runnable(config)  # config, model and device fail here, before a run dir exists
    path = run_path(config, args.runs_dir)
    gio.check_writable(path, directory=True, what="run directory")
    print(f"run {path.name}: {path}", flush=True)
    done = 0 if args.no_resume else max([int(m.get("epoch", 0)) for m in read_metrics(path)] or [0])
    with epoch_progress(
        len(epoch_plan(config)), initial=done, desc=f"run {path.name}", enabled=progress_wanted()
    ) as advance:
        outcome = execute(config, args.runs_dir, resume=not args.no_resume, on_epoch=advance)
    if outcome.status == "busy":
        print(f"run {outcome.run_id} is busy: another process holds {outcome.path / 'lock'}")
        return 1
    if outcome.status == "skipped":
        print(f"run {outcome.run_id} already finished; stored result:")
    else:
        update_env(outcome.path, command=shlex.join(["gfverify", *args.argv]))
        print(f"run {outcome.run_id} finished:")
    print(format_result(outcome.result or {}))
    print(f"  result: {outcome.path / RESULT_FILE}")
    return 0
