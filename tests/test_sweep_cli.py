"""``gfverify sweep`` and ``gfverify results`` end to end, with the fake train function."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gfverify.cli import main
from gfverify.config import expand_grid, run_id
from gfverify.runs import read_status, run_path
from tests import fake_train
from tests.fake_train import calls

REPO = Path(__file__).resolve().parents[1]
LIGHT = "tests.fake_train:train_light"

GRID = """
    [train]
    epochs = 3
    lrs = [0.1]
    lr_epochs = [3]
    [prune]
    rounds = 1
    [model]
    name = "vgg13"
    [sweep]
    "measure.name" = ["magnitude", "grasp"]
    seed = [0, 1]
"""


@pytest.fixture(autouse=True)
def _importable_from_workers(monkeypatch):
    """Spawned workers and subprocesses must import ``tests.fake_train`` by name."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{path}" if path else str(REPO))


@pytest.fixture
def grid(tmp_path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(GRID))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gfverify: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_local_sweep_two_workers_then_results_mean_std_and_csv(grid, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, out, _ = run_cli(
        capsys, "sweep", grid, "--workers", "2", "--devices", "cpu", "--runs-dir", runs,
        "--train-fn", LIGHT, "--quiet",
    )  # fmt: skip
    assert code == 0, out
    assert "4 runs in" in out and "4 finished" in out
    configs = expand_grid(grid)
    assert len(configs) == 4
    for cfg in configs:
        assert calls(run_path(cfg, runs)) == 1
        assert read_status(run_path(cfg, runs))["state"] == "finished"

    # repeating the command runs nothing
    code, out, _ = run_cli(
        capsys, "sweep", grid, "--workers", "2", "--runs-dir", runs, "--train-fn", LIGHT,
        "--quiet",
    )  # fmt: skip
    assert code == 0 and "4 skipped" in out
    assert all(calls(run_path(c, runs)) == 1 for c in configs)

    csv_path = tmp_path / "out" / "runs.csv"
    summary_path = tmp_path / "out" / "summary.csv"
    code, out, _ = run_cli(
        capsys, "results", runs, "--csv", csv_path, "--summary-csv", summary_path
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["data.name", "model.name", "measure.name"]
    for measure in ("magnitude", "grasp"):
        accs = [fake_train.fake_accuracy(c, 3) for c in configs if c.measure.name == measure]
        assert len(accs) == 2 and accs[0] != accs[1]  # seeds differ, so std > 0
        line = next(ln for ln in lines if f" {measure} " in ln)
        assert f"{np.mean(accs):.4g} ± {np.std(accs, ddof=1):.4g}" in line
        assert line.split()[-1] == "2"
    assert "4 finished run(s)" in out

    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["run_id"] for r in rows) == sorted(run_id(c) for c in configs)
    by_id = {r["run_id"]: r for r in rows}
    for cfg in configs:
        row = by_id[run_id(cfg)]
        assert float(row["final_test_acc"]) == pytest.approx(fake_train.fake_accuracy(cfg, 3))
        assert row["measure.name"] == cfg.measure.name and int(row["seed"]) == cfg.seed
        assert row["device"] == "cpu" and int(row["pid"]) != os.getpid()  # ran in a worker
    with summary_path.open() as fh:
        summary = {r["measure.name"]: r for r in csv.DictReader(fh)}
    assert set(summary) == {"magnitude", "grasp"}
    assert all(r["n"] == "2" and r["metric"] == "final_test_acc" for r in summary.values())


def test_dry_run_lists_runs_and_states_without_running(grid, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, out, _ = run_cli(capsys, "sweep", grid, "--dry-run", "--runs-dir", runs)
    assert code == 0
    for cfg in expand_grid(grid):
        line = next(ln for ln in out.splitlines() if run_id(cfg) in ln)
        assert line.split()[2] == "new" and cfg.measure.name in line
    assert "0 finished, 4 to run" in out
    assert "prune.rounds=1" in out  # the common non-default settings are named
    assert not runs.exists()  # a dry run creates nothing

    # one finished run, one failed run: the dry run tells them apart
    code, _, _ = run_cli(
        capsys, "sweep", grid, "--workers", "0", "--runs-dir", runs, "--quiet",
        "--set", "sweep.seed=[0]", "--train-fn", "tests.fake_train:train_fail_on_grasp",
    )  # fmt: skip
    assert code == 1  # a failed run makes the sweep exit 1
    code, out, _ = run_cli(capsys, "sweep", grid, "--dry-run", "--runs-dir", runs)
    assert code == 0
    states = {}
    for cfg in expand_grid(grid):
        line = next(ln for ln in out.splitlines() if run_id(cfg) in ln)
        states[(cfg.measure.name, cfg.seed)] = line.split()[2]
    assert states == {
        ("magnitude", 0): "finished",
        ("grasp", 0): "failed",
        ("magnitude", 1): "new",
        ("grasp", 1): "new",
    }
    assert "1 finished, 3 to run (1 of them resume a started run)" in out


def test_dry_run_tells_a_dead_running_run_from_a_live_one(grid, tmp_path, capsys):
    from gfverify import io as gio

    runs = tmp_path / "runs"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    configs = expand_grid(grid)
    for cfg, pid in ((configs[0], dead.pid), (configs[1], os.getpid())):
        path = run_path(cfg, runs)
        path.mkdir(parents=True)
        status = {"state": "running", "epoch": 2, "pid": pid, "hostname": socket.gethostname()}
        gio.atomic_write_json(path / "status.json", status)
    code, out, _ = run_cli(capsys, "sweep", grid, "--dry-run", "--runs-dir", runs)
    assert code == 0
    states = [next(ln for ln in out.splitlines() if run_id(c) in ln).split()[2] for c in configs]
    assert states == ["stale@2", "running@2", "new", "new"]


def test_set_overrides_reach_every_run(grid, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, out, _ = run_cli(
        capsys, "sweep", grid, "--dry-run", "--runs-dir", runs,
        "--set", "sweep.seed=[0,1,2]", "train.momentum=0.5",
    )  # fmt: skip
    assert code == 0
    expected = expand_grid(grid, ["sweep.seed=[0,1,2]", "train.momentum=0.5"])
    assert len(expected) == 6 and all(c.train.momentum == 0.5 for c in expected)
    assert all(run_id(c) in out for c in expected)
    assert "6 runs in" in out and "train.momentum=0.5" in out


def test_slurm_dry_run_and_missing_sbatch(grid, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    code, out, _ = run_cli(
        capsys, "sweep", grid, "--launcher", "slurm", "--dry-run", "--runs-dir", runs,
        "--partition", "gpu", "--time-min", "90", "--gpus-per-node", "2", "--cpus-per-task",
        "6", "--mem-gb", "20", "--array-parallelism", "3",
    )  # fmt: skip
    assert code == 0
    assert "would submit 4 array tasks to partition gpu: 90 min, 2 GPU(s), 6 CPUs, 20 GB" in out
    assert "at most 3 at once" in out and not runs.exists()

    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    code, _, err = run_cli(
        capsys, "sweep", grid, "--launcher", "slurm", "--runs-dir", runs, "--train-fn", LIGHT
    )
    assert_one_line_error(code, err, "sbatch not found")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--set", "train.epochz=3"], ["unknown config key 'train.epochz'", "train.epochs"]),
        (["--set", "train.epochs"], ["must look like key=value"]),
        (["--set", "sweep.seed=3"], ["non-empty list"]),
        (["--devices", "gpu0"], ["--devices entry 'gpu0'"]),
        (["--devices", "cuda:0,,cuda:1"], ["comma-separated"]),
        (["--launcher", "slurm", "--devices", "cuda:0"], ["--devices only applies"]),
        (["--partition", "gpu"], ["SLURM options (--partition) need --launcher slurm"]),
        (["--launcher", "slurm", "--time-min", "0"], ["--time-min must be >= 1"]),
        (["--workers", "-1"], ["--workers must be >= 0"]),
        (["--train-fn", "tests.fake_train:nope"], ["cannot import train_fn"]),
    ],
)
def test_bad_sweep_inputs_exit_2_with_one_line(grid, tmp_path, capsys, extra, needles):
    code, _, err = run_cli(capsys, "sweep", grid, "--runs-dir", tmp_path / "runs", *extra)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "runs").exists()


def test_missing_or_bad_config_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", tmp_path / "nope.toml", "--dry-run")
    assert_one_line_error(code, err, "config file not found", "nope.toml")
    code, _, err = run_cli(capsys, "sweep", tmp_path, "--dry-run")
    assert_one_line_error(code, err, "not a file")
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\n"model.nam" = ["vgg13"]\n')
    code, _, err = run_cli(capsys, "sweep", bad, "--dry-run")
    assert_one_line_error(code, err, "unknown config key 'model.nam'")


def test_stored_config_conflict_is_reported_by_dry_run_and_sweep(grid, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, _ = run_cli(
        capsys, "sweep", grid, "--workers", "0", "--runs-dir", runs, "--train-fn", LIGHT,
        "--quiet", "--set", "sweep.seed=[0]", 'sweep.measure.name=["magnitude"]',
    )  # fmt: skip
    assert code == 0
    cfg = expand_grid(grid, ["sweep.seed=[0]", 'sweep.measure.name=["magnitude"]'])[0]
    stored = run_path(cfg, runs) / "config.json"
    stored.write_text(stored.read_text().replace('"momentum": 0.9', '"momentum": 0.5'))
    (run_path(cfg, runs) / "result.json").unlink()
    code, out, err = run_cli(capsys, "sweep", grid, "--dry-run", "--runs-dir", runs)
    line = next(ln for ln in out.splitlines() if run_id(cfg) in ln)
    assert line.split()[2] == "conflict"
    assert_one_line_error(code, err, "different config stored", run_id(cfg))
    code, _, err = run_cli(
        capsys, "sweep", grid, "--runs-dir", runs, "--train-fn", LIGHT, "--quiet"
    )
    assert_one_line_error(code, err, "config changed under existing run id")


def test_results_bad_inputs(grid, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = run_cli(capsys, "results", runs)
    assert_one_line_error(code, err, "runs directory not found")
    runs.mkdir()
    code, _, err = run_cli(capsys, "results", runs)
    assert_one_line_error(code, err, "no finished runs", "0 run directories", "gfverify sweep")
    run_cli(
        capsys, "sweep", grid, "--workers", "0", "--runs-dir", runs, "--quiet",
        "--train-fn", "tests.fake_train:train_fail_on_grasp",
    )  # fmt: skip
    code, out, _ = run_cli(capsys, "results", runs)
    assert code == 0 and "2 unfinished run(s) not shown" in out and "grasp" not in out
    code, _, err = run_cli(capsys, "results", runs, "--metric", "final_tst_acc")
    assert_one_line_error(code, err, "metric 'final_tst_acc'", "final_test_acc")
    code, _, err = run_cli(capsys, "results", runs, "--group-by", "model.nme")
    assert_one_line_error(code, err, "unknown --group-by key 'model.nme'", "model.name")


def test_results_groups_by_varying_keys_unless_told(tmp_path, capsys):
    path = tmp_path / "ratios.toml"
    path.write_text(
        textwrap.dedent(GRID).replace(
            '"measure.name" = ["magnitude", "grasp"]', '"prune.ratio" = [0.5, 0.75]'
        )
    )
    runs = tmp_path / "runs"
    code, _, _ = run_cli(
        capsys, "sweep", path, "--workers", "0", "--runs-dir", runs, "--train-fn", LIGHT,
        "--quiet",
    )  # fmt: skip
    assert code == 0
    code, out, _ = run_cli(capsys, "results", runs)
    assert code == 0
    header, _, *body = out.strip().splitlines()[:4]
    assert "prune.ratio" in header.split()  # added automatically: the ratio varies
    assert [ln.split()[3] for ln in body] == ["0.5", "0.75"]
    # an explicit grouping that mixes ratios is refused, with the key named
    code, _, err = run_cli(capsys, "results", runs, "--group-by", "model.name,measure.name")
    assert_one_line_error(code, err, "differ in prune.ratio")
    code, out, _ = run_cli(capsys, "results", runs, "--group-by", "prune.ratio")
    assert code == 0 and out.splitlines()[0].split()[0] == "prune.ratio"


def test_entry_point_one_line_error_in_a_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gfverify.cli", "sweep", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gfverify: error: config file not found: {tmp_path / 'missing.toml'}"
    ]
