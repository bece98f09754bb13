"""Shared helpers for benchmarks: wall-clock timing, machine identity, memory, environment.

Timing uses ``time.perf_counter`` around each call and synchronises CUDA before and after when
a GPU is in use, so a GPU kernel's time is counted in the call that launched it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_device() -> torch.device:
    """The device benchmarks run on: the first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "repeats": len(samples),
        "samples_s": [round(x, 6) for x in samples],
    }


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns ``{"median_s", "min_s", "repeats", "samples_s"}`` over the timed calls (wall clock,
    seconds; ``samples_s`` lists every timed call in order).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - start)
    return _summary(samples)


def timeit_interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Time several functions round-robin: each round calls every function once, in order.

    On a shared machine whose load drifts, interleaving exposes every function to the same
    load, so ratios of their medians are fairer than timing one function after another.
    Returns ``{name: {"median_s", "min_s", "repeats", "samples_s"}}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            samples[name].append(time.perf_counter() - start)
    return {name: _summary(s) for name, s in samples.items()}


def slugify(text: str) -> str:
    """Lower-case ``text`` and collapse every run of characters outside [a-z0-9.] into ``-``."""
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    return slug or "unknown"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or socket.gethostname()


def machine_name() -> str:
    """``cuda-<gpu name>`` on a GPU machine, else ``cpu-<cpu model>-<cores>c`` (slugified)."""
    if torch.cuda.is_available():
        return "cuda-" + slugify(torch.cuda.get_device_name(0))
    return f"cpu-{slugify(cpu_model())}-{os.cpu_count() or 0}c"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or ``None`` where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository (read-only git)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def now_iso() -> str:
    """The current local time, ISO 8601 with the UTC offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """Everything that makes timings comparable or not: versions, device, threads, load, git."""
    device = default_device()
    env: dict[str, Any] = {
        "machine": machine_name(),
        "date": now_iso(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": load_average(),
        "git": git_commit(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env
