"""Scales of the statistical claims: a scale is a sweep file ``experiments/claims_<name>.toml``.

``gfverify check --scale NAME`` trains the scale's sweep with :func:`gfverify.sweep.run_sweep`
(resumable: finished runs are skipped, an interrupted one resumes from its checkpoint;
``--workers``) into ``--runs-dir`` (default: :func:`default_runs_dir`, a cache folder keyed by
the sweep file's content), then the claims S1–S6 evaluate those runs
(:mod:`gfverify.claims.dynamics`). ``--runs-dir DIR`` without ``--scale`` evaluates the
finished runs already in DIR, wherever they were trained. Adding a scale = adding a file.

**The control arm.** A run with ``prune.ratio = 0`` and ``prune.schedule = "one_shot"`` is
the unpruned control of a one-shot experiment (its round removes nothing; see
:func:`gfverify.train.protocol.num_rounds`). Its measure is never used, so :func:`configs`
gives every such grid point the measure ``CONTROL_MEASURE``, and the duplicates collapse to
one run per seed (``gfverify sweep`` on the same file trains the duplicates as separate, equal
runs; the evaluators take the first per seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gfverify.errors import ConfigError

if TYPE_CHECKING:  # torch and the config machinery load lazily: the CLI lists scales cheaply
    from torch import nn

    from gfverify.config import RunConfig

#: Where the scale files live (the repository's ``experiments/``; override: GFVERIFY_SCALES).
SCALES_DIR = Path(
    os.environ.get("GFVERIFY_SCALES", Path(__file__).resolve().parents[2] / "experiments")
)
PREFIX = "claims_"

#: The measure name every control-arm grid point gets (the control never scores).
CONTROL_MEASURE = "magnitude"

#: The quick-scale VGG: the official CifarVGG block (Conv→ReLU→BN, no conv bias, max-pools)
#: with six convs, for 8×8 digits (three pools: 8 → 1).
VGG6_CFG: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M", 64, 64, "M")


def quick_vgg(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 8) -> nn.Module:
    """The quick scale's six-conv VGG (``model.factory = "gfverify.claims.scales:quick_vgg"``)."""
    from gfverify.models import CifarVGG

    return CifarVGG(VGG6_CFG, num_classes, width_mult, input_size)


def available(directory: Path | None = None) -> list[str]:
    """Scale names: NAME for every ``claims_NAME.toml`` in ``directory`` (sorted)."""
    d = Path(directory or SCALES_DIR)
    return sorted(p.stem[len(PREFIX) :] for p in d.glob(f"{PREFIX}*.toml"))


def scale_path(name: str, directory: Path | None = None) -> Path:
    """The sweep file of scale ``name`` (ConfigError naming the known scales if absent)."""
    path = Path(directory or SCALES_DIR) / f"{PREFIX}{name}.toml"
    if not path.is_file():
        known = ", ".join(available(directory)) or "none"
        raise ConfigError(f"unknown claims scale {name!r} (no {path}); known: {known}")
    return path


def is_control(config: RunConfig) -> bool:
    """The unpruned control arm of a one-shot experiment (ratio 0, one-shot schedule)."""
    return config.prune.ratio == 0 and config.prune.schedule == "one_shot"


def configs(path: str | Path, seeds: int | list[int] | None = None) -> list[RunConfig]:
    """The sweep's run configs, control arms normalised (module docstring), duplicates
    dropped; ``seeds``: a count n (seeds 0..n−1) or a list replacing the grid's seeds."""
    overrides: dict[str, Any] = {}
    if seeds is not None:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise ConfigError(f"--seeds must be a positive count, got {seeds}")
            seeds = list(range(seeds))
        overrides["sweep.seed"] = [int(s) for s in seeds]
    from gfverify.config import expand_grid
    from gfverify.runs import run_id

    out: list[RunConfig] = []
    seen: set[str] = set()

    for cfg in expand_grid(path, overrides):
        if is_control(cfg) and cfg.measure.name != CONTROL_MEASURE:
            cfg = dataclasses.replace(
                cfg, measure=dataclasses.replace(cfg.measure, name=CONTROL_MEASURE)
            )
        rid = run_id(cfg)
        if rid not in seen:
            seen.add(rid)
            out.append(cfg)
    return out


def default_runs_dir(path: str | Path) -> Path:
    """``$GFVERIFY_CACHE`` (default ``~/.cache/gfverify``) / ``claims`` / NAME-<sha256 of the
    file's bytes, 12 hex>: a changed sweep file trains into a fresh folder. (Run directories
    are keyed by config, so a folder holds the runs of any ``--seeds`` subset.)"""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("GFVERIFY_CACHE", Path.home() / ".cache" / "gfverify"))
    return root / "claims" / f"{path.stem[len(PREFIX) :]}-{digest}"


def train(
    name: str,
    runs_dir: str | Path | None = None,
    *,
    seeds: int | list[int] | None = None,
    workers: int = 0,
    progress: bool = True,
    directory: Path | None = None,
) -> tuple[Path, list[Path]]:
    """Run scale ``name``'s sweep (skipping finished runs); (runs dir, the run dirs of its
    configs in sweep order). Raises GfverifyError if a run failed."""
    from gfverify.errors import GfverifyError
    from gfverify.sweep import run_sweep

    path = scale_path(name, directory)
    cfgs = configs(path, seeds)
    target = Path(runs_dir) if runs_dir else default_runs_dir(path)
    from gfverify.claims.experiment import torch_threads

    # In this process: one intra-op thread, as the workers of a sweep on a small machine get
    # (tiny nets; OpenMP's spinning threads slow them down several-fold on a loaded machine).
    with torch_threads(1 if workers == 0 else None):
        results = run_sweep(cfgs, target, workers=workers, progress=progress)
    bad = [r for r in results if r.status not in ("finished", "skipped")]
    if bad:
        raise GfverifyError(
            f"{len(bad)} run(s) of scale {name!r} failed, first {bad[0].path} "
            f"({bad[0].status}); rerun to resume"
        )
    return target, [Path(r.path) for r in results]


_TRAINED: dict[tuple, tuple[Path, list[Path]]] = {}


def runs_for(options: dict[str, Any] | None) -> tuple[str | None, list[Path] | None]:
    """(runs dir, run dirs to use or None = every finished run there) from ``ctx.options``:
    ``train_scale`` (a scale name: train it, once per process) with ``runs_dir``, ``seeds``,
    ``workers``, ``progress``, ``scales_dir`` (default :data:`SCALES_DIR`); else ``runs_dir``
    alone (evaluate what is there)."""
    opts = options or {}
    name = opts.get("train_scale")
    if not name:
        rd = opts.get("runs_dir")
        return (str(rd) if rd else None), None
    seeds = opts.get("seeds")
    key = (name, str(opts.get("runs_dir")), str(seeds), str(opts.get("scales_dir")))
    if key not in _TRAINED:
        _TRAINED[key] = train(
            name,
            opts.get("runs_dir"),
            seeds=seeds,
            workers=int(opts.get("workers") or 0),
            progress=bool(opts.get("progress", True)),
            directory=opts.get("scales_dir"),
        )
    target, dirs = _TRAINED[key]
    return str(target), dirs
