"""Run directories: one resumable, crash-safe directory per run, and the tidy results table.

Layout of ``<runs_dir>/<run_id>/``::

    config.json     resolved config (config_to_dict), written once
    env.json        python/torch/numpy versions, git commit, host, device, determinism flags
    status.json     {"state": running|failed|interrupted|finished, "epoch", "reason", ...}
    metrics.jsonl   one JSON line per epoch (appended + fsync'd)
    checkpoint.pt   checksummed checkpoint (gfverify.io format); its header records how many
                    metric lines it covers, so a resume trims lines logged after it
    result.json     the train function's final dict; its presence means "finished"
    lock            flock'ed while a process works on the run

:func:`execute` is the one entry point: skip if finished, refuse if the stored config differs,
skip as "busy" if another process holds the lock, else call ``train_fn(config, run_dir)``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import math
import operator
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from gfverify import io as gio
from gfverify.config import (
    RunConfig,
    config_keys,
    config_to_dict,
    flatten_config,
    identity_keys,
    run_id,
)
from gfverify.errors import CheckpointError, ConfigError, GfverifyError, GfverifyWarning

__all__ = [
    "RunDir",
    "RunResult",
    "RunFailedError",
    "TrainFn",
    "execute",
    "resolve_train_fn",
    "run_path",
    "check_config_matches",
    "is_finished",
    "result_state",
    "Terminated",
    "read_result",
    "read_status",
    "read_metrics",
    "collect_results",
    "aggregate",
    "results_table",
    "write_csv",
    "DEFAULT_TRAIN_FN",
]

DEFAULT_TRAIN_FN = "gfverify.train:run_training"
CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
RESULT_FILE = "result.json"
LOCK_FILE = "lock"
_RESERVED = {CONFIG_FILE, ENV_FILE, STATUS_FILE, METRICS_FILE, CHECKPOINT_FILE, RESULT_FILE}

TrainFn = Callable[[RunConfig, "RunDir"], Mapping[str, Any]]
#: Called with each metrics record right after :meth:`RunDir.log_epoch` wrote it.
EpochHook = Callable[[Mapping[str, Any]], None]
#: env.json keys a train function may report (``update_env``) that describe determinism; they
#: are kept in the ``determinism`` block too, so that env.json never says two things.
DETERMINISM_KEYS = (
    "deterministic_algorithms",
    "cudnn_deterministic",
    "cudnn_benchmark",
    "matmul_allow_tf32",
    "cudnn_allow_tf32",
    "num_threads",
    "cpu_capability",
)


class RunFailedError(GfverifyError):
    """The train function raised a non-gfverify exception; the run is marked failed."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------------------------
# environment record


@lru_cache(maxsize=1)
def _git_info() -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    info: dict[str, Any] = {"git_commit": None, "git_dirty": None}
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if dirty.returncode == 0:
                info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(config: RunConfig | None = None) -> dict[str, Any]:
    """Versions, host, git commit and (if torch is imported) device and determinism flags.

    Does not import torch itself: versions come from package metadata.
    """
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "pid": os.getpid(),
        "time": _now(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "torchvision": _version("torchvision"),
        "torch_pruning": _version("torch-pruning"),
        "gfverify": _version("gfverify"),
        **_git_info(),
        "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM_") and "JOB" in k}
        or None,
    }
    if config is not None:
        env["device"] = config.device
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            env["cuda_available"] = bool(torch.cuda.is_available())
            if env["cuda_available"]:
                env["cuda_devices"] = [
                    torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
                ]
                env["cuda"] = torch.version.cuda
            env["determinism"] = {
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "num_threads": torch.get_num_threads(),
                # runs on different kernels round differently, and trajectories diverge
                "cpu_capability": cpu_capability(),
            }
        except Exception as exc:  # noqa: BLE001 - the record must never break a run
            env["determinism_error"] = f"{type(exc).__name__}: {exc}"
    return env


# --------------------------------------------------------------------------------------------
# run directory handle


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`execute`. ``status``: finished (ran now), skipped (already finished),
    busy (another process holds the run), failed (only returned by sweeps)."""

    run_id: str
    path: Path
    status: Literal["finished", "skipped", "busy", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None


class RunDir:
    """Handle given to ``train_fn``: logging, checkpoints and resume state of one run.

    ``completed_epochs()`` is the epoch of the last logged metrics line. After a resume it
    agrees with the checkpoint: lines logged after the last checkpoint are trimmed.
    """

    def __init__(self, path: str | Path, config: RunConfig) -> None:
        self.path = Path(path)
        self.config = config
        self.run_id = self.path.name
        self._metrics: list[dict[str, Any]] = gio.read_jsonl(self.metrics_path)
        self._attempt = 0
        self._started = time.time()
        self.epoch_hooks: list[EpochHook] = []

    # paths
    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    def artifact_path(self, name: str) -> Path:
        """Path for an extra file of the run (e.g. ``widths.json``); reserved names refused."""
        if name in _RESERVED or name == LOCK_FILE or "/" in name or name.startswith("."):
            raise GfverifyError(f"artifact name {name!r} is reserved or not a plain file name")
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write an extra JSON artifact."""
        path = self.artifact_path(name)
        gio.atomic_write_json(path, obj)
        return path

    # metrics
    def completed_epochs(self) -> int:
        """Epoch number of the last logged metrics line (0 if none)."""
        if not self._metrics:
            return 0
        return int(self._metrics[-1].get("epoch", len(self._metrics)))

    def metrics(self) -> list[dict[str, Any]]:
        """All logged metric lines (copies)."""
        return [dict(m) for m in self._metrics]

    def log_epoch(self, metrics: Mapping[str, Any]) -> None:
        """Append one epoch's metrics; ``epoch`` defaults to ``completed_epochs() + 1`` and must
        increase. Also refreshes status.json (state running, epoch)."""
        record = dict(metrics)
        epoch = record.setdefault("epoch", self.completed_epochs() + 1)
        try:
            if isinstance(epoch, bool):
                raise TypeError
            epoch = record["epoch"] = operator.index(epoch)
        except TypeError:
            raise GfverifyError(f"log_epoch: 'epoch' must be an int, got {epoch!r}") from None
        if epoch <= self.completed_epochs():
            raise GfverifyError(
                f"log_epoch: epoch {epoch} is not after the last logged epoch"
                f" {self.completed_epochs()} (run {self.run_id})"
            )
        gio.append_jsonl(self.metrics_path, record)
        self._metrics.append(record)
        self.set_status("running", last_metrics=_scalars(record))
        for hook in self.epoch_hooks:
            _safe(lambda hook=hook: hook(dict(record)))  # progress display must not break a run

    # checkpoints
    def save_checkpoint(self, state: Any) -> None:
        """Atomically save ``state`` (torch.save + sha256); records the covered metric lines."""
        meta = {
            "run_id": self.run_id,
            "epoch": self.completed_epochs(),
            "metrics_lines": len(self._metrics),
            "time": _now(),
        }
        gio.save_checkpoint(self.checkpoint_path, state, meta=meta)

    def load_checkpoint(self, *, map_location: Any = "cpu", weights_only: bool = True) -> Any:
        """The last saved state, or None if none; raises CheckpointError if it is corrupt."""
        if not self.checkpoint_path.exists():
            return None
        return gio.load_checkpoint(
            self.checkpoint_path, map_location=map_location, weights_only=weights_only
        )

    def _reconcile(self, resume: bool) -> None:
        """Make metrics agree with the checkpoint: keep the lines it covers, drop the rest.

        Without a usable resume point (``resume=False`` or no checkpoint) the run starts over.
        """
        if not resume:
            for name in (CHECKPOINT_FILE, METRICS_FILE):
                (self.path / name).unlink(missing_ok=True)
            self._metrics = []
            return
        keep = 0
        if self.checkpoint_path.exists():
            try:
                meta = gio.read_checkpoint_meta(self.checkpoint_path)
            except CheckpointError as exc:
                raise CheckpointError(
                    f"{exc}; delete it (or run with resume=False) to restart run {self.run_id}"
                ) from None
            if meta.get("run_id", self.run_id) != self.run_id:
                raise CheckpointError(
                    f"checkpoint {self.checkpoint_path} belongs to run {meta.get('run_id')!r},"
                    f" not {self.run_id}"
                )
            keep = int(meta.get("metrics_lines", 0))
            if keep > len(self._metrics):
                raise CheckpointError(
                    f"checkpoint {self.checkpoint_path} covers {keep} metric lines but"
                    f" {self.metrics_path.name} has only {len(self._metrics)}"
                )
        if keep != len(self._metrics) or (
            self.metrics_path.exists() and not self.metrics_path.read_bytes().endswith(b"\n")
        ):
            self._metrics = self._metrics[:keep]
            text = "".join(gio._dumps(m, indent=None) + "\n" for m in self._metrics)
            gio.atomic_write_text(self.metrics_path, text)

    # status / env
    def set_status(self, state: str, **fields: Any) -> None:
        """Atomically write status.json: state, epoch, attempt, host, pid, time, extras."""
        status = {
            "state": state,
            "run_id": self.run_id,
            "epoch": self.completed_epochs(),
            "attempt": self._attempt,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "updated": _now(),
            "elapsed_s": round(time.time() - self._started, 3),
            **fields,
        }
        gio.atomic_write_json(self.path / STATUS_FILE, status)

    def update_env(self, **fields: Any) -> None:
        """Add entries to env.json (e.g. the resolved device) for the current attempt."""
        update_env(self.path, **fields)

    def _write_env(self) -> None:
        previous = _read_json_or(self.path / ENV_FILE, {})
        history = list(previous.get("history", []))
        if previous:
            history.append(
                {k: previous.get(k) for k in ("time", "hostname", "git_commit", "torch", "device")}
            )
        self._attempt = len(history) + 1
        env = environment(self.config)
        env["attempt"] = self._attempt
        env["history"] = history
        if isinstance(previous.get("segments"), list):
            env["segments"] = previous["segments"]
        gio.atomic_write_json(self.path / ENV_FILE, env)

    def _record_segment(self) -> None:
        """Append this attempt to env.json ``segments`` (attempt, first epoch, thread count,
        host, time). A resume under another thread count than an earlier segment that did
        work changes floating-point reductions: warn (GfverifyWarning) and record
        ``thread_counts`` (every count the run's epochs were computed under) and
        ``mixed_threads: true``."""
        env = _read_json_or(self.path / ENV_FILE, {})
        start = self.completed_epochs()
        threads = _thread_count()
        segments = [s for s in env.get("segments", []) if isinstance(s, dict)]
        worked = [s for s in segments if int(s.get("from_epoch", 0)) < start]
        segments.append(
            {
                "attempt": self._attempt,
                "from_epoch": start,
                "num_threads": threads,
                "hostname": socket.gethostname(),
                "cpu": cpu_model(),
                "cpu_capability": cpu_capability(),
                "time": _now(),
            }
        )
        counts = sorted({s.get("num_threads") for s in [*worked, segments[-1]]}, key=str)
        env["segments"] = segments
        env["thread_counts"] = counts
        env["mixed_threads"] = len(counts) > 1
        gio.atomic_write_json(self.path / ENV_FILE, env)
        if len(counts) > 1:
            earlier = ", ".join(str(c) for c in counts if c != threads)
            warnings.warn(
                f"run {self.run_id} resumes at epoch {start} under {threads} thread(s); its"
                f" earlier epochs ran under {earlier}, so its result may differ from an"
                f" uninterrupted run (recorded in {self.path / ENV_FILE}: segments)",
                GfverifyWarning,
                stacklevel=2,
            )

    def _refresh_env(self) -> None:
        """Refresh what the process can tell after the run (CUDA); determinism values the train
        function reported (``update_env``) win over the process state now."""
        env = _read_json_or(self.path / ENV_FILE, {})
        fresh = environment(self.config)
        for key in ("cuda_available", "cuda_devices", "cuda"):
            if key in fresh:
                env[key] = fresh[key]
        if "determinism" in fresh:
            block = dict(fresh["determinism"])
            block.update(env.get("determinism") or {})
            block.update({k: env[k] for k in DETERMINISM_KEYS if k in env})
            env["determinism"] = block
        gio.atomic_write_json(self.path / ENV_FILE, env)


def update_env(run_dir: str | Path, **fields: Any) -> None:
    """Add entries to ``run_dir``'s env.json (atomically), e.g. ``command`` (the report shows
    it as the command that ran the run)."""
    path = Path(run_dir) / ENV_FILE
    env = _read_json_or(path, {})
    env.update(fields)
    reported = {k: fields[k] for k in DETERMINISM_KEYS if k in fields}
    if reported:  # one truth: the determinism block agrees with what the run reported
        env["determinism"] = {**(env.get("determinism") or {}), **reported}
    gio.atomic_write_json(path, env)


def cpu_capability() -> str | None:
    """The SIMD level of ATen's CPU kernels (``ATEN_CPU_CAPABILITY`` overrides it) if torch is
    imported, else None (this module does not import torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    with contextlib.suppress(Exception):
        return str(torch.backends.cpu.get_cpu_capability())
    return None


def _thread_count() -> int | None:
    """torch's intra-op thread count if torch is imported, else OMP_NUM_THREADS, else None."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            return int(torch.get_num_threads())
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return int(os.environ["OMP_NUM_THREADS"])
    return None


def _scalars(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))}


def _read_json_or(path: Path, default: Any) -> Any:
    try:
        return gio.read_json(path)
    except (FileNotFoundError, ValueError):
        return default


# --------------------------------------------------------------------------------------------
# execute


def resolve_train_fn(train_fn: TrainFn | str | None) -> TrainFn:
    """A callable, or ``"pkg.module:attr"`` imported by name (default: gfverify.train)."""
    if train_fn is None:
        train_fn = DEFAULT_TRAIN_FN
    if callable(train_fn):
        return train_fn
    if not isinstance(train_fn, str) or ":" not in train_fn:
        raise GfverifyError(f"train_fn must be a callable or 'pkg.module:attr', got {train_fn!r}")
    module_name, _, attr = train_fn.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise GfverifyError(f"cannot import train_fn {train_fn!r}: {exc}") from None
    if not callable(obj):
        raise GfverifyError(f"train_fn {train_fn!r} is not callable")
    return obj


def run_path(config: RunConfig, runs_dir: str | Path) -> Path:
    """``runs_dir / run_id(config)``."""
    return Path(runs_dir) / run_id(config)


def result_state(path: str | Path) -> Literal["none", "ok", "corrupt"]:
    """``ok``: result.json holds a JSON object; ``corrupt``: it exists but does not (truncated,
    overwritten, not an object); ``none``: there is none."""
    file = Path(path) / RESULT_FILE
    if not file.exists():
        return "none"
    try:
        return "ok" if isinstance(gio.read_json(file), Mapping) else "corrupt"
    except (OSError, ValueError):
        return "corrupt"


def is_finished(path: str | Path) -> bool:
    """A run is finished iff its result.json holds a result (a corrupt one does not count: the
    run is run again, resuming from its checkpoint, and result.json is rewritten)."""
    return result_state(path) == "ok"


class Terminated(SystemExit):
    """SIGTERM arrived while a run was executing (e.g. ``kill``, a scheduler's preemption)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by signal {signal.Signals(self.signum).name}"


@contextlib.contextmanager
def _terminate_as_exception() -> Any:
    """Inside the block SIGTERM raises :class:`Terminated` (so the run records "interrupted"
    and releases its lock) instead of killing the process with status.json still "running".

    Only from the main thread, and only where SIGTERM has its default action: a handler someone
    else installed (submitit's, a user's) is left in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):  # pragma: no cover
        yield
        return
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _normal(value: Any) -> Any:
    """Lists and tuples compare equal (JSON has no tuples)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def check_config_matches(config: RunConfig, path: str | Path) -> None:
    """Raise ConfigError if ``path/config.json`` exists and disagrees with ``config``.

    Compared: the identity fields (those hashed into the run id) of the *resolved* configs, so
    a changed default is caught. A key missing from the stored file (a field added later) must
    be at its default now; a stored key that no longer exists is a change.
    """
    stored_path = Path(path) / CONFIG_FILE
    if not stored_path.exists():
        return
    try:
        stored = gio.read_json(stored_path)
    except ValueError:
        raise ConfigError(f"{stored_path} is not valid JSON") from None
    flat_stored = _flatten_raw(stored)
    current = flatten_config(config)
    default = flatten_config(RunConfig())
    ident = set(identity_keys())
    rid = Path(path).name
    for key in sorted(set(flat_stored) | ident):
        if key not in current:
            raise ConfigError(
                f"config changed under existing run id {rid}: stored key '{key}' no longer exists"
            )
        if key not in ident:
            continue
        want = flat_stored.get(key, default[key])
        if _normal(want) != _normal(current[key]):
            raise ConfigError(
                f"config changed under existing run id {rid}: '{key}' is {current[key]!r} now,"
                f" {want!r} in {stored_path}"
            )


def _flatten_raw(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, Mapping):
            for sk, sv in v.items():
                out[f"{k}.{sk}"] = sv
        else:
            out[k] = v
    return out


def _nonfinite_fields(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the non-finite floats in a (nested) result dict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [prefix]
    if isinstance(obj, Mapping):
        return [
            p
            for k, v in obj.items()
            for p in _nonfinite_fields(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    return []


def execute(
    config: RunConfig,
    runs_dir: str | Path,
    train_fn: TrainFn | str | None = None,
    resume: bool = True,
    on_epoch: EpochHook | None = None,
) -> RunResult:
    """Run ``config`` in ``runs_dir/<run_id>`` unless already finished or busy.

    ``on_epoch(record)`` (optional) is called after each logged epoch (progress display).
    The run directory's writability is checked first (one-line GfverifyError, nothing made).
    A result.json that is not a JSON object is ignored with a warning: the run resumes from its
    checkpoint and the result is written again. SIGTERM during the run marks it interrupted.

    1. result.json exists -> ``skipped`` (the stored result is returned; a killed writer's
       temporaries are removed if the lock is free).
    2. config.json exists but differs (identity fields) -> ConfigError.
    3. lock held by another process -> ``busy``.
    4. Under the lock: a killed writer's temporaries removed, metrics trimmed to the checkpoint
       (``resume=True``) or wiped, env and status written, ``result = train_fn(config,
       RunDir)``, result.json written, status finished. An exception marks status failed (with
       epoch and reason) and is re-raised as a GfverifyError (RunFailedError wraps foreign
       exceptions); KeyboardInterrupt/SystemExit (e.g. SLURM preemption) mark it interrupted
       and propagate unchanged.
    """
    path = run_path(config, runs_dir)
    rid = path.name
    if is_finished(path):
        # Tidying is best effort: a finished run on read-only storage is still just skipped.
        with contextlib.suppress(OSError), gio.file_lock(path / LOCK_FILE, blocking=False) as held:
            if held:  # a kill after result.json may have left a temporary
                gio.remove_temporaries(path)
        return RunResult(rid, path, "skipped", read_result(path))
    check_config_matches(config, path)
    fn = resolve_train_fn(train_fn)
    gio.check_writable(path, directory=True, what="run directory")
    path.mkdir(parents=True, exist_ok=True)
    with gio.file_lock(path / LOCK_FILE, blocking=False) as held, _terminate_as_exception():
        if not held:
            return RunResult(rid, path, "busy")
        if is_finished(path):  # finished by another process between the check and the lock
            return RunResult(rid, path, "skipped", read_result(path))
        check_config_matches(config, path)
        gio.remove_temporaries(path)  # a killed writer's
        if result_state(path) == "corrupt":
            warnings.warn(
                f"run {rid}: {path / RESULT_FILE} is corrupt (not a JSON object); running it"
                " again from its checkpoint to rewrite it",
                GfverifyWarning,
                stacklevel=2,
            )
        if not (path / CONFIG_FILE).exists():
            gio.atomic_write_json(path / CONFIG_FILE, config_to_dict(config))
        run = RunDir(path, config)
        if on_epoch is not None:
            run.epoch_hooks.append(on_epoch)
        try:
            run._write_env()
            run._reconcile(resume)
            run._record_segment()
            run.set_status("running", resumed_from=run.completed_epochs())
            result = fn(config, run)
            if not isinstance(result, Mapping):
                raise RunFailedError(
                    f"run {rid}: train_fn returned {type(result).__name__}, expected a dict"
                )
            result = dict(result)
            # A finished computation is never lost to a failed write: it is saved elsewhere
            # and the error names that file (gio.write_or_salvage).
            gio.write_or_salvage(path / RESULT_FILE, gio._dumps(result) + "\n", what="result")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            _safe(run._refresh_env)
            kind = type(exc).__name__
            _safe(lambda: run.set_status("failed", reason=reason[:500], error_type=kind))
            if isinstance(exc, GfverifyError):
                raise
            raise RunFailedError(
                f"run {rid} failed at epoch {run.completed_epochs()}: {reason}"
            ) from exc
        except BaseException as exc:
            kind = str(exc) if isinstance(exc, Terminated) else type(exc).__name__
            _safe(lambda: run.set_status("interrupted", reason=kind))
            raise
        _safe(run._refresh_env)
        _safe(lambda: run.set_status("finished", nonfinite=_nonfinite_fields(result) or None))
        return RunResult(rid, path, "finished", result)


def _safe(fn: Callable[[], Any]) -> None:
    """Best-effort bookkeeping that must not mask the real outcome."""
    try:
        fn()
    except Exception:  # noqa: BLE001
        pass


def read_result(path: str | Path) -> dict[str, Any] | None:
    """result.json of a run directory, or None if unfinished."""
    return _read_json_or(Path(path) / RESULT_FILE, None)


def read_status(path: str | Path) -> dict[str, Any] | None:
    """status.json of a run directory, or None."""
    return _read_json_or(Path(path) / STATUS_FILE, None)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl of a run directory (complete lines only)."""
    return gio.read_jsonl(Path(path) / METRICS_FILE)


# --------------------------------------------------------------------------------------------
# results


def _flatten_result(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            out.update(_flatten_result(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def collect_results(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One tidy row per finished run: ``run_id``, ``run_dir``, every dotted config key (stored
    value, or today's default for keys added since), then the result fields (nested dicts
    flattened with dots; a result key that collides with a config key gets ``result.``)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    defaults = flatten_config(RunConfig())
    rows: list[dict[str, Any]] = []
    for path in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if not is_finished(path) or not (path / CONFIG_FILE).exists():
            continue
        result = _read_json_or(path / RESULT_FILE, None)
        stored = _read_json_or(path / CONFIG_FILE, None)
        if not isinstance(result, Mapping) or not isinstance(stored, Mapping):
            continue
        row: dict[str, Any] = {"run_id": path.name, "run_dir": str(path)}
        flat = _flatten_raw(stored)
        for key in list(defaults) + [k for k in flat if k not in defaults]:
            value = flat.get(key, defaults.get(key))
            row[key] = tuple(value) if isinstance(value, list) else value
        for key, value in _flatten_result(result).items():
            row[f"result.{key}" if key in row else key] = value
        rows.append(row)
    return rows


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = ("data.name", "model.name", "measure.name"),
    metric: str = "final_test_acc",
    check_homogeneous: bool = True,
) -> list[dict[str, Any]]:
    """Per group: ``n`` finite values x_i of ``metric``, ``mean = Σx_i/n``,
    ``std = sqrt(Σ(x_i-mean)²/(n-1))`` (sample std; 0 for n = 1), ``excluded`` = rows where the
    metric is missing or non-finite. Groups are sorted by their key.

    ``check_homogeneous``: raise GfverifyError if runs in one group differ in an identity config
    key other than ``seed`` (so a mean never silently mixes, e.g., two pruning ratios).
    """
    ident = set(identity_keys()) - set(group_by) - {"seed"}
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in group_by)
        groups.setdefault(key, []).append(row)
    out: list[dict[str, Any]] = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        members = groups[key]
        if check_homogeneous:
            differing = sorted(
                k for k in ident if len({repr(m.get(k)) for m in members if k in m}) > 1
            )
            if differing:
                label = ", ".join(f"{g}={v}" for g, v in zip(group_by, key))
                raise GfverifyError(
                    f"group ({label}) mixes runs that differ in {', '.join(differing)};"
                    " add them to group_by"
                )
        values = [v for v in (_finite_number(m.get(metric)) for m in members) if v is not None]
        n = len(values)
        mean = sum(values) / n if n else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        out.append(
            {
                **dict(zip(group_by, key)),
                "n": n,
                "mean": mean,
                "std": std if n else math.nan,
                "excluded": len(members) - n,
                "seeds": sorted({m.get("seed") for m in members}, key=str),
            }
        )
    return out


def results_table(
    rows: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = ("data.name", "model.name", "measure.name"),
    metric: str = "final_test_acc",
    fmt: str = ".4g",
) -> str:
    """Plain-text table: one line per group with ``mean ± std`` of ``metric`` over seeds and n
    (see :func:`aggregate`)."""
    agg = aggregate(rows, group_by, metric)
    header = [*group_by, f"{metric} (mean ± std)", "n"]
    show_excluded = any(a["excluded"] for a in agg)
    if show_excluded:
        header.append("excluded")
    body = []
    for a in agg:
        cell = "—" if a["n"] == 0 else f"{format(a['mean'], fmt)} ± {format(a['std'], fmt)}"
        line = [str(a[g]) for g in group_by] + [cell, str(a["n"])]
        if show_excluded:
            line.append(str(a["excluded"]))
        body.append(line)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt_line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt_line(header), sep, *map(fmt_line, body)])


def write_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rows as CSV atomically; columns = union of keys (config keys first, then others in
    first-seen order); tuples/lists/dicts as JSON."""
    import csv
    import io as _io
    import json

    rows = list(rows)
    order = ["run_id", "run_dir", *config_keys()]
    columns: list[str] = [c for c in order if any(c in r for r in rows)]
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow(
            [
                json.dumps(list(v) if isinstance(v, tuple) else v)
                if isinstance(v, (list, tuple, dict))
                else ("" if v is None else v)
                for v in (r.get(c) for c in columns)
            ]
        )
    path = Path(path)
    gio.atomic_write_text(path, buf.getvalue())
    return path
