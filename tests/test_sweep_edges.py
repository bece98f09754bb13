"""Issue 16 on ``gfverify sweep``: workers die with their sweep, every grid point is checked
before the first run, failures print once on stderr with advice naming sweep's own flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gfverify.cli import main
from gfverify.config import expand_grid
from gfverify.runs import read_status, run_path
from tests.test_sweep_cli import GRID, _importable_from_workers  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def grid(tmp_path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(GRID))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by PID 1) is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait(predicate, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_killed_sweep_takes_its_worker_with_it_and_frees_the_run(grid, tmp_path):
    """Class 1: kill -9 the sweep; its worker (and so the resource tracker) must exit, the run
    must be recorded interrupted and its lock be free for the next sweep."""
    runs = tmp_path / "runs"
    env = {**os.environ, "GFV_FAKE_DELAY": "60", "GFVERIFY_NO_PROGRESS": "1"}
    argv = [sys.executable, "-m", "gfverify.cli", "sweep", str(grid), "--runs-dir", str(runs)]
    argv += ["--workers", "1", "--quiet", "--train-fn", "tests.fake_train:train_light"]
    sweep = subprocess.Popen(argv, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        first = run_path(expand_grid(grid)[0], runs)
        assert _wait(lambda: (read_status(first) or {}).get("state") == "running", 90), (
            sweep.poll(),
            sweep.stderr.read() if sweep.poll() is not None else "",
        )
        worker = read_status(first)["pid"]
        assert worker != sweep.pid and _alive(worker)
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(timeout=10)
        assert _wait(lambda: not _alive(worker), 20), "the worker outlived its sweep"
    finally:
        if sweep.poll() is None:
            sweep.kill()
    status = read_status(first)
    assert status["state"] == "interrupted" and "SIGTERM" in status["reason"]
    from gfverify import io as gio

    with gio.file_lock(first / "lock", blocking=False) as held:
        assert held, "the dead worker's run is still busy"


def test_parent_watch_only_in_multiprocessing_children():
    from gfverify.sweep import _die_with_parent

    assert _die_with_parent() is False  # the test process has no multiprocessing parent


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", 'sweep.model.name=["vgg13","vgg99"]'], "'vgg99' is not a registered model"),
        (["--set", 'sweep.measure.name=["magnitude","nope"]'], "nope"),
        (["--devices", "cuda:7"], "cuda:7"),
    ],
)
@pytest.mark.parametrize("dry", [True, False])
def test_every_grid_point_is_checked_before_the_first_run(
    grid, tmp_path, capsys, extra, needle, dry
):
    """Class 7: an unknown model or measure in the grid, or a device this machine lacks: one
    line on stderr naming the grid point, exit 2, no run directory; ``--dry-run`` too."""
    runs = tmp_path / "runs"
    argv = ["sweep", str(grid), "--runs-dir", str(runs), "--workers", "0", *extra]
    argv += ["--train-fn", "tests.fake_train:train_light"]
    code = main(argv + (["--dry-run"] if dry else []))
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("gfverify: error: grid point ") and needle in line
    assert "nothing was run" in line and "to run" not in out
    assert not runs.exists() or not any(runs.iterdir())


def test_a_failure_shared_by_every_run_prints_once_on_stderr(grid, tmp_path, capsys):
    """Class 7/8: a sweep whose every run fails the same way (missing data) says so once, on
    stderr, and its advice names flags sweep accepts (no --download)."""
    runs = tmp_path / "runs"
    argv = ["sweep", str(grid), "--runs-dir", str(runs), "--workers", "0", "--quiet"]
    argv += ["--set", "data.name=cifar10", f"data.root={tmp_path / 'nodata'}", "train.epochs=1"]
    argv += ["train.lr_epochs=[1]", "--set", 'sweep.measure.name=["magnitude"]']
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 1
    failed = [ln for ln in err.splitlines() if ln.startswith("failed")]
    assert len(failed) == 1 and "failed  2 runs" in failed[0], err
    assert "CIFAR-10 not found" in failed[0]
    assert "--set data.download=true" in failed[0] and "--download " not in failed[0]
    assert not [ln for ln in out.splitlines() if ln.startswith("failed")]


def test_unwritable_runs_dir_is_refused_before_any_worker_starts(grid, capsys):
    """Class 3: a sweep into a missing sub-folder of a read-only file system: one line."""
    code = main(["sweep", str(grid), "--runs-dir", "/sys/gfverify-none/runs", "--workers", "0"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot write runs directory /sys/gfverify-none/runs" in line


@pytest.mark.parametrize(
    ("flags", "message", "want", "unwanted"),
    [
        ({"--no-resume"}, "delete it (or run with resume=False) to restart", "--no-resume", "="),
        (
            {"--set"},
            "not found; pass --download (DataSpec.download=True) or place it",
            "pass --set data.download=true",
            "--download",
        ),
        (
            {"--set", "--download"},
            "md5 check failed; re-fetch it with --download, or set verify_md5=False for a",
            "pass --set data.verify_md5=false",
            "verify_md5=False",
        ),
    ],
)
def test_advice_names_flags_the_command_has(flags, message, want, unwanted):
    """Class 8: library advice is spelled as the printing command's own flags."""
    from gfverify.errors import cli_advice

    text = cli_advice(message, flags)
    assert want in text and unwanted not in text.replace(want, "")
