"""Reliability of ``gfverify run``: bad input, corrupt state, crashes and failing disks.

Decisions asserted here:

- Bad input exits non-zero with exactly one stderr line naming the problem. Errors found while
  reading the config (unknown key, wrong type, out-of-range value, unknown measure, unknown
  model) write nothing: no run directory. Errors only found when the run starts (missing
  dataset) leave a run directory holding exactly config.json, env.json, lock and a complete
  ``failed`` status.json naming the error: no checkpoint, metrics or result, no temporaries.
- A corrupt or truncated checkpoint is refused by its checksum before loading; the file is left
  byte-for-byte as it was. A config changed under an existing run id touches nothing.
- kill -9 at a random point, then resume: result and final weights are bit-identical to an
  uninterrupted run (CPU, one thread).
- A write failing with ENOSPC / a read-only run directory: one-line GfverifyError, the previous
  checkpoint still verifies and loads, the metrics are intact, no temporaries; a later resume
  ends bit-identical to an uninterrupted run.

- A NaN loss through the CLI: one line, status failed naming epoch and batch.

Already covered elsewhere (not repeated): NaN loss in-process, two-process determinism and a
kill at a fixed point (tests/test_train.py), checkpoint format corruption and config-change
rules through ``execute`` (tests/test_runs.py).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify import io as gio
from gfverify.config import config_to_dict, load_config
from gfverify.errors import GfverifyError
from gfverify.runs import RunDir, execute, read_metrics, read_result, read_status, run_path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.toml"
EPOCHS = 4
#: A tiny version of the smoke run: VGG-13 at 1/8 width, 2 batches of 16 per epoch, 2 rounds.
TINY = [
    "model.width_mult=0.125",
    "measure.samples=32",
    "measure.batch_size=16",
    "prune.rounds=2",
    f"train.epochs={EPOCHS}",
    "train.lrs=[0.1]",
    f"train.lr_epochs=[{EPOCHS}]",
    "train.batch_size=16",
    "train.max_batches_per_epoch=2",
    'device="cpu"',
]
RUN_FILES = {"config.json", "env.json", "lock", "status.json"}


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GFVERIFY_NO_PROGRESS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _cli_argv(runs: Path, extra: list[str]) -> list[str]:
    sets = [a for s in TINY + extra for a in ("--set", s)]
    return [sys.executable, "-m", "gfverify.cli", "run", str(SMOKE), "--runs-dir", str(runs), *sets]


def _spawn(runs: Path, extra: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        _cli_argv(runs, list(extra)),
        env=_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _config(extra: list[str] = ()):
    return load_config(SMOKE, TINY + list(extra))


def _weights(path: Path) -> dict:
    return gio.load_checkpoint(path / "checkpoint.pt")


def _assert_same_final(ref: Path, other: Path) -> None:
    a, b = _weights(ref), _weights(other)
    assert a["epoch"] == b["epoch"] == EPOCHS
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"] == b["history"]
    ra, rb = read_result(ref), read_result(other)
    for r in (ra, rb):
        r.pop("seconds")
    assert ra == rb
    ma, mb = read_metrics(ref), read_metrics(other)
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]


def _no_temporaries(path: Path) -> None:
    assert not [p.name for p in path.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny config, in this process."""
    runs = tmp_path_factory.mktemp("reference")
    assert execute(_config(), runs).status == "finished"
    return run_path(_config(), runs)


# --------------------------------------------------------------------------- bad input


def _existing_run(runs: Path, extra: list[str] = ()) -> Path:
    """A run directory as a killed run leaves it: config, one metrics line, a checkpoint."""
    config = _config(extra)
    path = run_path(config, runs)
    path.mkdir(parents=True)
    gio.atomic_write_json(path / "config.json", config_to_dict(config))
    run = RunDir(path, config)
    run.log_epoch({"epoch": 1, "train_loss": 1.0})
    run.save_checkpoint({"epoch": 1, "model": {"w": torch.arange(1000.0)}})
    return path


def _truncate(ck: Path) -> None:
    ck.write_bytes(ck.read_bytes()[:-7])


def _flip(ck: Path) -> None:
    data = bytearray(ck.read_bytes())
    data[-100] ^= 0x01
    ck.write_bytes(bytes(data))


BAD = {
    # name: (--set overrides, stderr must contain, run directory expected)
    "unknown_key": (["train.epochz=3"], "train.epochz", False),
    "wrong_type": (['train.epochs="three"'], "train.epochs", False),
    "ratio_range": (["prune.ratio=1.5"], "prune.ratio", False),
    "unknown_measure": (['measure.name="no_such_measure"'], "no_such_measure", False),
    "unknown_model": (['model.name="no_such_model"'], "no_such_model", False),
    "dataset_missing": (['data.name="cifar10"', 'data.root="{empty}"'], "CIFAR-10", True),
}


DAMAGED: dict[str, bytes] = {}
#: Cases run as their own ``python -m gfverify.cli`` process; the others share one process
#: that calls ``gfverify.cli.main(argv)`` per case (each process start imports torch, which
#: costs ~5-10 s on a loaded 2-core machine).
OWN_PROCESS = ("unknown_key", "nan")

_DRIVER = """
import contextlib, io, json, sys
from gfverify.cli import main
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    out[name] = [rc, err.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """name -> (exit status, stderr, runs dir) of every CLI failure case."""
    root = tmp_path_factory.mktemp("cli")
    (root / "empty").mkdir()
    cases: dict[str, tuple[list[str], Path]] = {}
    for name, (extra, _, _) in BAD.items():
        cases[name] = ([e.format(empty=root / "empty") for e in extra], root / name)
    for name, damage in (("truncated", _truncate), ("bitflip", _flip)):
        ck = _existing_run(root / name) / "checkpoint.pt"
        damage(ck)
        DAMAGED[name] = ck.read_bytes()
        cases[name] = ([], root / name)
    stored = config_to_dict(_config())
    stored["train"]["weight_decay"] = 5e-4  # as if run with another weight decay
    path = run_path(_config(), root / "changed")
    path.mkdir(parents=True)
    gio.atomic_write_json(path / "config.json", stored)
    cases["changed"] = ([], root / "changed")
    nan = ['model.factory="tests.test_train:nan_net"', "model.input_size=8"]
    cases["nan"] = (nan, root / "nan")

    own = {n: _spawn(cases[n][1], cases[n][0]) for n in OWN_PROCESS}
    shared = {n: _cli_argv(r, e)[3:] for n, (e, r) in cases.items() if n not in OWN_PROCESS}
    driver = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(shared)],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert driver.returncode == 0, driver.stderr[-2000:]
    out = {n: (rc, err, cases[n][1]) for n, (rc, err) in json.loads(driver.stdout).items()}
    for name, proc in own.items():
        _, stderr = proc.communicate(timeout=300)
        out[name] = (proc.returncode, stderr, cases[name][1])
    return out


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gfverify: error: ")
    return lines[0]


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_nothing_half_written(cli_outcomes, name):
    rc, stderr, runs = cli_outcomes[name]
    _, names, creates_dir = BAD[name]
    assert rc not in (0, None)
    assert names in _one_line(stderr)
    if not creates_dir:
        assert not runs.exists() or not any(runs.iterdir())
        return
    (path,) = runs.iterdir()
    assert {p.name for p in path.iterdir()} == RUN_FILES
    status = read_status(path)
    assert status["state"] == "failed" and status["epoch"] == 0
    assert names in status["reason"] and status["error_type"] in ("ModelError", "DataError")


@pytest.mark.parametrize("name", ["truncated", "bitflip"])
def test_corrupt_checkpoint_is_refused_by_checksum(cli_outcomes, name):
    rc, stderr, runs = cli_outcomes[name]
    line = _one_line(stderr)
    assert rc not in (0, None)
    assert "checkpoint" in line and ("truncated" if name == "truncated" else "sha256") in line
    (path,) = runs.iterdir()
    # the damaged file is left exactly as damaged (not overwritten, not loaded)
    assert (path / "checkpoint.pt").read_bytes() == DAMAGED[name]
    assert [m["epoch"] for m in read_metrics(path)] == [1]
    assert not (path / "result.json").exists()
    status = read_status(path)
    assert status["state"] == "failed" and status["error_type"] == "CheckpointError"


def test_changed_config_under_existing_run_id_touches_nothing(cli_outcomes):
    rc, stderr, runs = cli_outcomes["changed"]
    line = _one_line(stderr)
    assert rc not in (0, None)
    assert "config changed under existing run id" in line and "train.weight_decay" in line
    (path,) = runs.iterdir()
    assert [p.name for p in path.iterdir()] == ["config.json"]
    assert gio.read_json(path / "config.json")["train"]["weight_decay"] == 5e-4


def test_non_finite_loss_via_cli_marks_the_run_failed(cli_outcomes):
    rc, stderr, runs = cli_outcomes["nan"]
    line = _one_line(stderr)
    assert rc not in (0, None)
    assert "training loss became nan at epoch 1, batch 2" in line
    (path,) = runs.iterdir()
    status = read_status(path)
    assert status["state"] == "failed" and status["error_type"] == "NonFiniteLossError"
    assert status["epoch"] == 0 and "epoch 1, batch 2" in status["reason"]
    assert not (path / "result.json").exists() and not (path / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- kill -9


@settings(max_examples=2, deadline=None)
@given(lines=st.integers(0, EPOCHS - 2), delay=st.floats(0.0, 0.3))
def test_kill_9_anywhere_then_resume_is_bit_identical(reference, lines, delay):
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        path = run_path(_config(), runs)
        victim = _spawn(runs)
        deadline = time.time() + 240
        while victim.poll() is None and time.time() < deadline:
            started = (path / "status.json").exists()  # set up, about to train epoch 1
            if (started and lines == 0) or len(read_metrics(path)) >= max(lines, 1):
                time.sleep(delay)
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        _, stderr = victim.communicate(timeout=60)
        assert victim.returncode in (-signal.SIGKILL, 0), stderr[-2000:]
        resumed = execute(_config(), runs)
        assert resumed.status in ("finished", "skipped")
        assert [m["epoch"] for m in read_metrics(path)] == list(range(1, EPOCHS + 1))
        _assert_same_final(reference, path)
        _no_temporaries(path)


# --------------------------------------------------------------------------- failing disk


def _inject(monkeypatch, path: Path, kind: str) -> None:
    """From the moment metrics.jsonl has 2 lines, writes in ``path`` fail.

    ``enospc``: the checkpoint's temporary file takes half the bytes, then ENOSPC.
    ``readonly``: chmod 0o555 on the run directory (as root, which ignores permissions,
    creating a file in it raises EROFS instead).
    """
    armed = lambda: len(read_metrics(path)) >= 2  # noqa: E731
    real_open, real_fdopen = os.open, os.fdopen

    if kind == "enospc":

        class Full:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self.fh, name)

        def fdopen(fd, *args, **kwargs):
            fh = real_fdopen(fd, *args, **kwargs)
            target = os.readlink(f"/proc/self/fd/{fd}")
            return Full(fh) if ".checkpoint.pt." in target and armed() else fh

        monkeypatch.setattr(gio.os, "fdopen", fdopen)
        return

    if os.geteuid() != 0:

        def open_(p, flags, *a, **k):
            if armed() and Path(p).parent == path:
                os.chmod(path, 0o555)  # the real permission check then refuses the file
            return real_open(p, flags, *a, **k)

        monkeypatch.setattr(gio.os, "open", open_)
        return

    def open_root(p, flags, *a, **k):
        if armed() and Path(p).parent == path and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))
        return real_open(p, flags, *a, **k)

    monkeypatch.setattr(gio.os, "open", open_root)


@pytest.mark.parametrize("kind", ["enospc", "readonly"])
def test_failing_disk_fails_cleanly_and_keeps_the_last_checkpoint(
    reference, tmp_path, monkeypatch, kind
):
    config = _config()
    path = run_path(config, tmp_path)
    with monkeypatch.context() as mp:
        _inject(mp, path, kind)
        with pytest.raises(GfverifyError) as info:
            execute(config, tmp_path)
    os.chmod(path, 0o755)
    message = str(info.value)
    assert "\n" not in message
    assert os.strerror(errno.ENOSPC if kind == "enospc" else errno.EROFS) in message or (
        kind == "readonly" and os.strerror(errno.EACCES) in message
    )
    _no_temporaries(path)
    state = gio.load_checkpoint(path / "checkpoint.pt")  # verifies size and sha256
    assert state["epoch"] == 1
    ref = read_metrics(reference)
    got = read_metrics(path)
    assert 1 <= len(got) <= 2
    assert [m["train_loss"] for m in got] == [m["train_loss"] for m in ref[: len(got)]]
    assert not (path / "result.json").exists()
    # the disk recovers: the run resumes from epoch 1 and ends as if nothing had happened
    assert execute(config, tmp_path).status == "finished"
    _assert_same_final(reference, path)
