"""Sweeps: local process pool, submitit job arrays, and concurrent sweeps on one directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from gfverify import io as gio
from gfverify import sweep
from gfverify.config import config_to_dict, run_id
from gfverify.errors import ConfigError, GfverifyError
from gfverify.runs import execute, read_metrics, read_status, run_path
from gfverify.sweep import SlurmOptions, SweepJob, run_sweep, submit_slurm, summarize
from tests import fake_train
from tests.fake_train import calls, grid_configs, small_config

REPO = Path(__file__).resolve().parents[1]
LIGHT = "tests.fake_train:train_light"


@pytest.fixture(autouse=True)
def _importable_from_subprocesses(monkeypatch):
    """Workers started by submitit / subprocess must import ``tests.fake_train`` by name."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{path}" if path else str(REPO))


def test_local_sweep_two_workers_then_nothing_left(tmp_path):
    configs = grid_configs()
    results = run_sweep(
        configs, tmp_path, workers=2, devices=["cpu", "mps"], train_fn=LIGHT, progress=False
    )
    assert [r.run_id for r in results] == [run_id(c) for c in configs]
    assert summarize(results) == {"finished": 4}
    for cfg, res in zip(configs, results):
        assert calls(run_path(cfg, tmp_path)) == 1
        assert res.result["device"] in ("cpu", "mps")  # assigned by the worker's slot
        assert res.result["final_test_acc"] == pytest.approx(fake_train.fake_accuracy(cfg, 3))
        assert res.result["pid"] != os.getpid()  # ran in a worker process
    again = run_sweep(configs, tmp_path, workers=2, train_fn=LIGHT, progress=False)
    assert summarize(again) == {"skipped": 4}
    assert [r.result for r in again] == [r.result for r in results]
    assert all(calls(run_path(c, tmp_path)) == 1 for c in configs)


def test_worker_slots_take_devices_round_robin(monkeypatch):
    import multiprocessing

    counter = multiprocessing.get_context("spawn").Value("i", 0)
    got = []
    for _ in range(5):
        sweep._init_worker(counter, ["cuda:0", "cuda:1"], None)
        got.append(sweep._WORKER_DEVICE)
    monkeypatch.setattr(sweep, "_WORKER_DEVICE", None)
    assert got == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]


def test_in_process_sweep_dedupes_and_keeps_explicit_devices(tmp_path):
    a, b = small_config(), small_config(**{"seed": 1, "device": "cpu"})
    results = run_sweep([a, b, a], tmp_path, workers=0, train_fn=LIGHT, progress=False)
    assert [r.status for r in results] == ["finished", "finished", "finished"]
    assert results[0] is results[2] and calls(run_path(a, tmp_path)) == 1
    assert results[1].result["device"] == "cpu"


def test_failures_are_reported_without_stopping_the_sweep(tmp_path):
    configs = grid_configs()
    results = run_sweep(
        configs, tmp_path, workers=2, train_fn="tests.fake_train:train_fail_on_grasp",
        progress=False,
    )  # fmt: skip
    by_measure = {(c.model.name, c.measure.name): r for c, r in zip(configs, results)}
    for (_, measure), res in by_measure.items():
        if measure == "grasp":
            assert res.status == "failed" and "grasp is broken" in res.error
            assert read_status(res.path)["state"] == "failed"
        else:
            assert res.status == "finished"


def test_sweep_checks_stored_configs_before_launching(tmp_path):
    cfg = small_config()
    path = run_path(cfg, tmp_path)
    path.mkdir(parents=True)
    changed = config_to_dict(cfg)
    changed["train"]["momentum"] = 0.5
    gio.atomic_write_json(path / "config.json", changed)
    with pytest.raises(ConfigError, match="config changed under existing run id"):
        run_sweep([small_config(**{"seed": 3}), cfg], tmp_path, train_fn=LIGHT, progress=False)
    assert not run_path(small_config(**{"seed": 3}), tmp_path).exists()  # nothing launched


def test_bad_sweep_arguments(tmp_path):
    cfgs = [small_config()]
    with pytest.raises(GfverifyError, match="by name"):
        run_sweep(cfgs, tmp_path, train_fn=lambda c, r: {}, progress=False)
    with pytest.raises(GfverifyError, match="launcher"):
        run_sweep(cfgs, tmp_path, launcher="k8s", progress=False)  # type: ignore[arg-type]
    with pytest.raises(GfverifyError, match="workers"):
        run_sweep(cfgs, tmp_path, workers=-1, progress=False)
    with pytest.raises(GfverifyError, match="devices only apply"):
        run_sweep(cfgs, tmp_path, launcher="slurm", devices=["cuda:0"], progress=False)
    with pytest.raises(GfverifyError, match="poll_s"):
        SlurmOptions(poll_s=0)


def test_submitit_local_executor_runs_the_array(tmp_path):
    configs = grid_configs()[:2]
    executor = submitit.LocalExecutor(tmp_path / "submitit")
    executor.update_parameters(timeout_min=2)
    opts = SlurmOptions(poll_s=0.2)
    runs = tmp_path / "runs"
    results = run_sweep(
        configs, runs, launcher="slurm", slurm=opts, executor=executor, train_fn=LIGHT,
        progress=False,
    )  # fmt: skip
    assert summarize(results) == {"finished": 2}
    for cfg, res in zip(configs, results):
        assert calls(run_path(cfg, runs)) == 1 and res.result["pid"] != os.getpid()

    def refuse(*args, **kwargs):
        raise AssertionError("the second sweep must submit nothing")

    executor.map_array = refuse
    again = run_sweep(
        configs, runs, launcher="slurm", slurm=opts, executor=executor, train_fn=LIGHT,
        progress=False,
    )  # fmt: skip
    assert summarize(again) == {"skipped": 2}


def test_checkpointable_requeue_resumes_the_run(tmp_path):
    cfg = small_config(**{"train.epochs": 4})
    with pytest.raises(GfverifyError):  # a preempted / crashed first attempt
        execute(cfg, tmp_path, train_fn=lambda c, r: fake_train.train(c, r, crash_at=2))
    job = SweepJob(str(tmp_path), "tests.fake_train:train", resume=True)
    delayed = job.checkpoint(cfg)  # what submitit requeues on timeout / preemption
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    res = delayed.result()
    assert res.status == "finished" and res.result["resumed_from"] == 2
    assert [m["epoch"] for m in read_metrics(res.path)] == [1, 2, 3, 4]


def _fake_slurm_bin(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text("#!/bin/sh\nexit 0\n")
    log = tmp_path / "sbatch.log"
    (bindir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {log}\necho "Submitted batch job 4242"\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    return bindir, log


def test_slurm_submission_uses_the_options(tmp_path, monkeypatch):
    original = os.environ.get("PATH", "")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/nonexistent")
    with pytest.raises(GfverifyError, match="sbatch not found"):
        submit_slurm(grid_configs(), tmp_path / "runs", train_fn=LIGHT)
    bindir, log = _fake_slurm_bin(tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{original}")
    opts = SlurmOptions(
        partition="gpu", time_min=90, gpus_per_node=1, cpus_per_task=6, mem_gb=20,
        array_parallelism=3, folder=str(tmp_path / "logs" / "%j"), extra={"slurm_qos": "high"},
    )  # fmt: skip
    jobs = submit_slurm(grid_configs(), tmp_path / "runs", opts, train_fn=LIGHT)
    assert len(jobs) == 4
    script = log.read_text()
    for line in (
        "--array=0-3%3",
        "--partition=gpu",
        "--time=90",
        "--gpus-per-node=1",
        "--cpus-per-task=6",
        "--mem=20GB",
        "--qos=high",
        "--signal=USR2@",  # submitit's timeout signal: checkpoint + requeue
    ):
        assert line in script, line
    with pytest.raises(GfverifyError, match="bad SLURM options"):
        sweep.make_slurm_executor(tmp_path / "l", SlurmOptions(extra={"slurm_nonsense": 1}))


def test_two_concurrent_sweeps_never_run_a_job_twice(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "GFV_FAKE_DELAY": "0.15"}
    cmd = [sys.executable, "-m", "tests.fake_train", str(runs), "1"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    counts = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outs]
    configs = grid_configs()
    assert sum(c.get("finished", 0) for c in counts) == len(configs)
    assert all(set(c) <= {"finished", "busy", "skipped"} for c in counts)
    for cfg in configs:
        path = run_path(cfg, runs)
        assert calls(path) == 1, path
        assert read_status(path)["state"] == "finished"
        assert [m["epoch"] for m in read_metrics(path)] == [1, 2, 3]
