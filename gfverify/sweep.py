"""Sweeps: many run configs through :func:`gfverify.runs.execute`, locally or on SLURM.

Every job is ``execute(config, runs_dir, train_fn, resume=True)``, so a sweep is idempotent:
finished runs are skipped, partial runs resume from their checkpoint, and the per-run lock
makes two sweeps over the same directory share the work instead of duplicating it (a run held
by another process is reported ``busy`` and left to it).

- ``launcher="local"``: a process pool (spawn) of ``workers`` processes; worker k uses device
  ``devices[k % len(devices)]`` for every job it takes (one or more workers per device).
- ``launcher="slurm"``: a submitit job array (``executor.map_array``) of a Checkpointable
  callable; on timeout/preemption submitit requeues it and ``execute`` resumes the run.

``train_fn`` must be importable by the workers: pass ``"pkg.module:attr"`` (or a top-level
function). ``None`` means ``gfverify.train:run_training``. Workers are *spawned*, so a script
that calls :func:`run_sweep` needs the usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit

from gfverify import io as gio
from gfverify.config import RunConfig, run_id
from gfverify.errors import GfverifyError
from gfverify.runs import (
    RunResult,
    TrainFn,
    check_config_matches,
    execute,
    is_finished,
    read_result,
)

__all__ = [
    "SlurmOptions",
    "SweepJob",
    "run_sweep",
    "submit_slurm",
    "make_slurm_executor",
    "default_devices",
    "summarize",
]


@dataclass(frozen=True)
class SlurmOptions:
    """SLURM resources per job (one run per job) for submitit's AutoExecutor.

    ``max_num_timeout``: how many times a timed-out/preempted job is requeued; ``poll_s``: how
    often the waiting sweep polls job states; ``extra``: further AutoExecutor parameters, e.g.
    ``{"slurm_qos": "high", "slurm_constraint": "a100"}``.
    """

    partition: str | None = None
    time_min: int = 12 * 60
    gpus_per_node: int = 1
    cpus_per_task: int = 4
    mem_gb: int = 32
    array_parallelism: int = 64
    max_num_timeout: int = 3
    job_name: str = "gfverify"
    folder: str | None = None
    poll_s: float = 15.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("time_min", "cpus_per_task", "mem_gb", "array_parallelism"):
            if getattr(self, name) < 1:
                raise GfverifyError(f"SlurmOptions.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gpus_per_node", "max_num_timeout"):
            if getattr(self, name) < 0:
                raise GfverifyError(f"SlurmOptions.{name} must be >= 0, got {getattr(self, name)}")
        if self.poll_s <= 0:
            raise GfverifyError(f"SlurmOptions.poll_s must be > 0, got {self.poll_s}")


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {text}"[:500]


def _run_one(
    config: RunConfig, runs_dir: str, train_fn: TrainFn | str | None, resume: bool
) -> RunResult:
    """``execute`` with every failure turned into a ``failed`` RunResult (status.json has it)."""
    try:
        return execute(config, runs_dir, train_fn=train_fn, resume=resume)
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the sweep
        path = Path(runs_dir) / run_id(config)
        return RunResult(path.name, path, "failed", error=_one_line(exc))


# --------------------------------------------------------------------------------------------
# local pool

_WORKER_DEVICE: str | None = None
#: Seconds a worker whose parent died gets to record its run as interrupted before it exits.
ORPHAN_GRACE_S = 10.0


def _die_with_parent(grace_s: float = ORPHAN_GRACE_S) -> bool:
    """In a spawned worker: a daemon thread waits on the parent's sentinel (readable once the
    parent is gone, however it died, kill -9 included). Then SIGTERM goes to this process's
    main thread (``execute`` records the run "interrupted" and releases its lock), and after
    ``grace_s`` the process exits regardless. Returns False where there is no parent process
    to watch (not a multiprocessing child)."""
    parent = multiprocessing.parent_process()
    if parent is None or getattr(parent, "sentinel", None) is None:
        return False
    sentinel = parent.sentinel

    def watch() -> None:
        try:
            multiprocessing.connection.wait([sentinel])
        except OSError:
            pass
        try:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        except (OSError, ValueError, AttributeError):
            os._exit(1)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="gfverify-parent-watch", daemon=True).start()
    return True


def _init_worker(counter: Any, devices: Sequence[str], threads: int | None) -> None:
    """Pool initializer: worker k (in start order) takes ``devices[k % len(devices)]``; the
    worker dies with the sweep that started it (:func:`_die_with_parent`)."""
    _die_with_parent()
    global _WORKER_DEVICE
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    _WORKER_DEVICE = devices[k % len(devices)]
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))


def _local_job(
    config: RunConfig,
    runs_dir: str,
    train_fn: TrainFn | str | None,
    resume: bool,
    assign_device: bool,
) -> RunResult:
    if assign_device and _WORKER_DEVICE is not None:
        config = dataclasses.replace(config, device=_WORKER_DEVICE)  # device is not identity
    return _run_one(config, runs_dir, train_fn, resume)


def default_devices() -> list[str]:
    """``cuda:0 .. cuda:{n-1}`` if CUDA is available, else ``["cpu"]``."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / broken driver: fall back to CPU
        pass
    return ["cpu"]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=not enabled or total == 0)


def _run_local(
    pending: Sequence[RunConfig],
    runs_dir: str,
    train_fn: TrainFn | str | None,
    resume: bool,
    workers: int,
    devices: Sequence[str] | None,
    progress: bool,
) -> dict[str, RunResult]:
    assign_explicit = devices is not None
    devices = list(devices) if devices is not None else default_devices()
    if not devices:
        raise GfverifyError("devices must be a non-empty list like ['cuda:0', 'cuda:1'] or ['cpu']")
    threads = None
    if workers > 0 and all(d == "cpu" for d in devices):
        threads = max(1, (os.cpu_count() or 1) // workers)  # no oversubscription of CPU workers
    results: dict[str, RunResult] = {}
    counts: Counter[str] = Counter()
    if workers == 0:  # in-process, sequential (debugging)
        global _WORKER_DEVICE
        _WORKER_DEVICE = devices[0]
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    with _progress(len(pending), "sweep", progress) as bar:
        if workers == 0:
            for cfg in pending:
                assign = assign_explicit or cfg.device == "auto"
                res = _local_job(cfg, runs_dir, train_fn, resume, assign)
                results[res.run_id] = res
                counts[res.status] += 1
                bar.update(1)
                bar.set_postfix(counts)
            return results
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(counter, devices, threads),
        ) as pool:
            futures = {
                pool.submit(
                    _local_job,
                    cfg,
                    runs_dir,
                    train_fn,
                    resume,
                    assign_explicit or cfg.device == "auto",
                ): cfg
                for cfg in pending
            }
            try:
                for fut in as_completed(futures):
                    cfg = futures[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # noqa: BLE001 - e.g. a worker died
                        path = Path(runs_dir) / run_id(cfg)
                        res = RunResult(path.name, path, "failed", error=_one_line(exc))
                    results[res.run_id] = res
                    counts[res.status] += 1
                    bar.update(1)
                    bar.set_postfix(counts)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return results


# --------------------------------------------------------------------------------------------
# SLURM (submitit)


class SweepJob(submitit.helpers.Checkpointable):
    """The callable each array task runs: ``execute(config, runs_dir, train_fn, resume)``.

    Checkpointable: on timeout or preemption submitit calls :meth:`checkpoint`, which resubmits
    the same call; the requeued task resumes the run from its run directory.
    """

    def __init__(
        self, runs_dir: str, train_fn: TrainFn | str | None = None, resume: bool = True
    ) -> None:
        self.runs_dir = str(runs_dir)
        self.train_fn = train_fn
        self.resume = resume

    def __call__(self, config: RunConfig) -> RunResult:
        return _run_one(config, self.runs_dir, self.train_fn, self.resume)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue with the same config and ``resume=True`` (state lives in the run dir)."""
        self.resume = True
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def make_slurm_executor(
    folder: str | Path, options: SlurmOptions, cluster: str | None = "slurm"
) -> submitit.AutoExecutor:
    """A submitit AutoExecutor with ``options`` mapped to its parameters."""
    executor = submitit.AutoExecutor(
        folder=str(folder), cluster=cluster, slurm_max_num_timeout=options.max_num_timeout
    )
    params: dict[str, Any] = {
        "name": options.job_name,
        "timeout_min": options.time_min,
        "gpus_per_node": options.gpus_per_node,
        "cpus_per_task": options.cpus_per_task,
        "mem_gb": options.mem_gb,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": options.array_parallelism,
    }
    if options.partition:
        params["slurm_partition"] = options.partition
    params.update(options.extra)
    try:
        executor.update_parameters(**params)
    except (ValueError, NameError, AssertionError) as exc:
        raise GfverifyError(f"bad SLURM options: {_one_line(exc)}") from None
    return executor


def submit_slurm(
    configs: Sequence[RunConfig],
    runs_dir: str | Path,
    options: SlurmOptions | None = None,
    executor: Any = None,
    train_fn: TrainFn | str | None = None,
    resume: bool = True,
) -> list[Any]:
    """Submit one array task per config and return the submitit jobs without waiting."""
    options = options or SlurmOptions()
    if executor is None:
        if shutil.which("sbatch") is None:
            raise GfverifyError(
                "launcher='slurm' needs SLURM (sbatch not found on PATH); use launcher='local'"
                " or pass a submitit executor"
            )
        folder = options.folder or str(Path(runs_dir) / "_submitit" / "%j")
        executor = make_slurm_executor(folder, options)
    if not configs:
        return []
    return executor.map_array(SweepJob(str(runs_dir), train_fn, resume), list(configs))


def _run_slurm(
    pending: Sequence[RunConfig],
    runs_dir: str,
    train_fn: TrainFn | str | None,
    resume: bool,
    options: SlurmOptions,
    executor: Any,
    progress: bool,
) -> dict[str, RunResult]:
    jobs = submit_slurm(pending, runs_dir, options, executor, train_fn, resume)
    index = {id(job): i for i, job in enumerate(jobs)}
    results: dict[str, RunResult] = {}
    counts: Counter[str] = Counter()
    with _progress(len(jobs), "sweep (slurm)", progress) as bar:
        for job in submitit.helpers.as_completed(jobs, poll_frequency=options.poll_s):
            cfg = pending[index[id(job)]]
            try:
                res = job.result()
            except Exception as exc:  # noqa: BLE001 - failed/cancelled task
                path = Path(runs_dir) / run_id(cfg)
                res = RunResult(path.name, path, "failed", error=_one_line(exc))
            results[res.run_id] = res
            counts[res.status] += 1
            bar.update(1)
            bar.set_postfix(counts)
    return results


# --------------------------------------------------------------------------------------------
# entry point


def _check_train_fn(train_fn: TrainFn | str | None) -> None:
    if train_fn is None or isinstance(train_fn, str):
        return
    try:
        pickle.dumps(train_fn)
    except Exception:  # noqa: BLE001
        raise GfverifyError(
            f"train_fn {train_fn!r} cannot be sent to worker processes; pass it by name as"
            " 'pkg.module:function'"
        ) from None


def run_sweep(
    configs: Iterable[RunConfig],
    runs_dir: str | Path,
    launcher: Literal["local", "slurm"] = "local",
    workers: int = 1,
    devices: Sequence[str] | None = None,
    slurm: SlurmOptions | None = None,
    executor: Any = None,
    train_fn: TrainFn | str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> list[RunResult]:
    """Run every config (one job each) and return one RunResult per input config, in order.

    Before launching: duplicate configs (same run id) collapse to one job, a stored config that
    disagrees raises ConfigError, finished runs are ``skipped`` without starting a worker.
    ``devices=None`` (local): ``default_devices()``, applied to configs with ``device="auto"``;
    explicit ``devices`` override every config's device (device is not part of the run id).
    ``workers=0`` runs the jobs sequentially in this process.
    """
    configs = list(configs)
    runs_dir = Path(runs_dir)
    if launcher not in ("local", "slurm"):
        raise GfverifyError(f"launcher must be 'local' or 'slurm', got {launcher!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise GfverifyError(f"workers must be an int >= 0, got {workers!r}")
    if launcher == "slurm" and devices is not None:
        raise GfverifyError(
            "devices only apply to launcher='local'; SLURM gives each job its own GPUs"
            " (SlurmOptions.gpus_per_node)"
        )
    _check_train_fn(train_fn)
    gio.check_writable(runs_dir, directory=True, what="runs directory")
    runs_dir.mkdir(parents=True, exist_ok=True)
    ids = [run_id(c) for c in configs]
    unique: dict[str, RunConfig] = {}
    for rid, cfg in zip(ids, configs):
        unique.setdefault(rid, cfg)
    results: dict[str, RunResult] = {}
    pending: list[RunConfig] = []
    for rid, cfg in unique.items():
        path = runs_dir / rid
        check_config_matches(cfg, path)
        if is_finished(path):
            results[rid] = RunResult(rid, path, "skipped", read_result(path))
        else:
            pending.append(cfg)
    if pending:
        if launcher == "local":
            done = _run_local(pending, str(runs_dir), train_fn, resume, workers, devices, progress)
        else:
            options = slurm or SlurmOptions()
            done = _run_slurm(pending, str(runs_dir), train_fn, resume, options, executor, progress)
        results.update(done)
    return [results[rid] for rid in ids]


def summarize(results: Iterable[RunResult]) -> dict[str, int]:
    """Counts by status, e.g. ``{"finished": 3, "skipped": 1}``."""
    return dict(Counter(r.status for r in results))
