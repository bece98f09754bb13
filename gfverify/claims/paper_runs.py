"""Evidence for the statistical claims at ``--scale paper``: finished training runs on disk.

Runs come from ``gfverify run``/``sweep`` (:mod:`gfverify.train`) in ``ctx.options
["runs_dir"]``. Each finished run directory gives its config (``config.json``), result
(``result.json``), per-epoch metrics (``metrics.jsonl``: ``epoch``, ``phase``,
``train_loss``, ``test_acc``, ``theta_sq``, ``grad_sq``, ``widths``, ``masked`` and, on
``prune`` epochs, ``prune_theta_sq_before/after``, ``prune_grad_sq_before/after``,
``prune_loss_before/after``) and pruning history (``history.json``: ``original_widths`` in
forward order).

Two runs are *paired* when every identity config key agrees except the measure (``measure.*``)
and they share ``seed``; the pairs of one *context* (everything but measure and seed) form
one paired sample. Nothing is ever filled in: a claim whose inputs are absent returns
*inconclusive* with a ``reason`` naming what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfverify.claims.problems import CheckContext


@dataclass
class Run:
    """One finished run: its tidy row (config keys + result), metrics lines and history."""

    row: dict[str, Any]
    metrics: list[dict[str, Any]]
    history: dict[str, Any] | None = None
    path: str = ""

    @property
    def measure(self) -> str:
        return str(self.row.get("measure.name"))

    @property
    def ratio(self) -> float:
        return float(self.row.get("prune.ratio") or 0.0)

    def first_prune_epoch(self) -> int | None:
        """The epoch whose end holds the first pruning round (None for dense runs)."""
        epochs = [int(m["epoch"]) for m in self.metrics if m.get("phase") == "prune"]
        return min(epochs) if epochs else None

    def line(self, epoch: int) -> dict[str, Any] | None:
        for m in self.metrics:
            if int(m.get("epoch", -1)) == epoch:
                return m
        return None

    def series(self, key: str, first: int, last: int) -> list[float] | None:
        """``key`` at epochs first..last (inclusive), or None if any is missing."""
        out = []
        for e in range(first, last + 1):
            m = self.line(e)
            if m is None or not isinstance(m.get(key), int | float):
                return None
            out.append(float(m[key]))
        return out


@dataclass
class Evidence:
    """The runs of ``runs_dir`` (empty with a ``reason`` when there are none)."""

    runs: list[Run] = field(default_factory=list)
    reason: str | None = None
    runs_dir: str | None = None


def load(ctx: CheckContext) -> Evidence:
    """Finished runs of ``ctx.options["runs_dir"]`` with their metrics and histories."""
    from gfverify.runs import collect_results, read_metrics

    runs_dir = (ctx.options or {}).get("runs_dir")
    if not runs_dir:
        return Evidence(
            reason="the paper scale reads finished training runs, but no runs directory was "
            "given (ctx.options['runs_dir'], CLI --runs-dir)"
        )
    if not Path(runs_dir).is_dir():
        return Evidence(reason=f"runs directory {runs_dir} does not exist", runs_dir=str(runs_dir))
    runs = []
    for row in collect_results(runs_dir):
        path = Path(row["run_dir"])
        hist_path = path / "history.json"
        history = json.loads(hist_path.read_text()) if hist_path.exists() else None
        runs.append(Run(dict(row), read_metrics(path), history, str(path)))
    if not runs:
        return Evidence(reason=f"no finished runs in {runs_dir}", runs_dir=str(runs_dir))
    return Evidence(runs, None, str(runs_dir))


def _context_keys() -> list[str]:
    from gfverify.config import identity_keys

    return [k for k in identity_keys() if not k.startswith("measure.") and k != "seed"]


def context_of(run: Run, ignore: Sequence[str] = ()) -> tuple:
    """The run's context: identity config keys except measure, seed and ``ignore`` prefixes."""
    keys = [k for k in _context_keys() if not any(k.startswith(p) for p in ignore)]
    return tuple((k, _hashable(run.row.get(k))) for k in keys)


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def describe_context(ctx_key: tuple) -> str:
    """A short label of a context: dataset / model / ratio / schedule."""
    d = dict(ctx_key)
    parts = [
        str(d.get("data.name")),
        str(d.get("model.name")),
        f"ratio={d.get('prune.ratio')}",
        f"{d.get('prune.schedule')}x{d.get('prune.rounds')}",
    ]
    return "/".join(parts)


def paired(
    runs: Iterable[Run],
    select_a: Callable[[Run], bool],
    select_b: Callable[[Run], bool],
    ignore: Sequence[str] = (),
) -> dict[tuple, list[tuple[Run, Run]]]:
    """context -> [(run a, run b) with the same seed], seeds ascending; a context keeps only
    seeds present on both sides (the first run found per side and seed)."""
    a_runs: dict[tuple, dict[int, Run]] = {}
    b_runs: dict[tuple, dict[int, Run]] = {}
    for r in runs:
        seed = int(r.row.get("seed", 0))
        for sel, store, ign in ((select_a, a_runs, ignore), (select_b, b_runs, ignore)):
            if sel(r):
                store.setdefault(context_of(r, ign), {}).setdefault(seed, r)
    out: dict[tuple, list[tuple[Run, Run]]] = {}
    for key, a_by_seed in a_runs.items():
        b_by_seed = b_runs.get(key, {})
        seeds = sorted(set(a_by_seed) & set(b_by_seed))
        if seeds:
            out[key] = [(a_by_seed[s], b_by_seed[s]) for s in seeds]
    return out


def by_measure(name: str) -> Callable[[Run], bool]:
    """Select pruned runs (ratio > 0) of measure ``name``."""
    return lambda r: r.measure == name and r.ratio > 0


def dense(r: Run) -> bool:
    """Select dense baselines (ratio 0: no pruning round)."""
    return r.ratio == 0
