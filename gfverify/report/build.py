"""Collect the report's inputs (claims JSON files, run directories) into typed records.

Nothing here draws: :mod:`gfverify.report.figures` draws and ``templates/report.html`` lays out.
Every problem with an input (a missing directory, another ``schema_version``, corrupt JSON, an
unfinished run) becomes a :class:`Gap` with a one-line reason instead of an exception, so the
page always renders and names what it could not show.

Statistics: a results group's accuracy is ``mean ± sample std`` over seeds, computed by
:func:`gfverify.runs.aggregate` (the same numbers as ``gfverify results``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfverify.claims.base import SCHEMA_VERSION
from gfverify.config import RunConfig, flatten_config, identity_keys
from gfverify.errors import GfverifyError
from gfverify.runs import (
    CONFIG_FILE,
    ENV_FILE,
    METRICS_FILE,
    RESULT_FILE,
    STATUS_FILE,
    aggregate,
    read_metrics,
)

#: Per-epoch metric names the figures read, each with the names accepted for it in
#: ``metrics.jsonl`` (first match wins): gfverify.train's names, then the claims lab's.
METRIC_FIELDS: dict[str, tuple[str, ...]] = {
    "train_loss": ("train_loss", "loss"),
    "test_acc": ("test_acc",),
    "theta_sq": ("theta_sq", "theta_norm_sq"),
    "grad_sq": ("grad_sq", "grad_norm_sq"),
}

#: Result fields (``result.json``, as gfverify.train writes it) by their report names.
RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    "final_test_acc": ("final_test_acc",),
    "macs": ("macs",),
    "params": ("params",),
    "macs_dense": ("dense_macs",),
    "params_dense": ("dense_params",),
}

#: Kept filters per layer: result ``widths`` (layer -> filters) minus result ``masked`` (the
#: filters zeroed in place); dense widths from result ``original_widths`` or the run's
#: ``history.json`` ``original_widths`` (what gfverify.train writes).
HISTORY_FILE = "history.json"

GROUP_BY: tuple[str, ...] = ("data.name", "model.name", "measure.name")


@dataclass(frozen=True)
class Gap:
    """Something the report could not show: where (a file or section) and why (one line)."""

    where: str
    why: str

    def line(self) -> str:
        return f"{self.where}: {self.why}"


# --------------------------------------------------------------------------------------------
# claims


@dataclass
class ClaimRow:
    """One result of ``gfverify check --json`` (see :class:`gfverify.claims.ClaimResult`)."""

    id: str
    statement: str
    kind: str
    case: str
    verdict: str
    passed: bool
    measured: float | None
    expected: float | None
    error: float | None
    tolerance: float | None
    details: dict[str, Any]
    source: str = ""

    def detail(self, key: str) -> float | None:
        return number(self.details.get(key))

    @property
    def effect(self) -> float | None:
        return self.detail("effect")

    @property
    def ci(self) -> tuple[float, float] | None:
        lo, hi = self.detail("ci_low"), self.detail("ci_high")
        return None if lo is None or hi is None else (lo, hi)

    @property
    def n(self) -> int | None:
        value = self.detail("n_seeds")
        if value is None:
            value = self.detail("n")
        return None if value is None else int(value)

    @property
    def observed_order(self) -> float | None:
        order = self.detail("observed_order")
        return order if order is not None else self.detail("fd_observed_order")

    @property
    def is_statistical(self) -> bool:
        return self.kind == "statistical"

    @property
    def expected_text(self) -> str | None:
        """What a statistical row expects, in words: ``details.prediction``, else the test's
        rule (``effect > 0``; ``effect > −margin`` for non-inferiority). None for others (the
        number ``expected`` is shown). A statistical record's numeric ``expected`` (1 = "the
        claim should hold") is never shown as a value."""
        if not self.is_statistical:
            return None
        prediction = self.details.get("prediction")
        if isinstance(prediction, str) and prediction.strip():
            return prediction.strip()
        margin = self.detail("margin")
        if self.details.get("rule") == "noninferiority" and margin:
            return f"effect > −{margin:.3g}"
        return "effect > 0"


#: Scales whose claims are indicative only (small nets, few seeds, short schedules).
INDICATIVE_SCALES = ("quick",)


@dataclass
class ClaimsFile:
    """A parsed claims JSON: its header and rows."""

    path: str
    created: str
    command: str
    scale: str
    environment: dict[str, Any]
    rows: list[ClaimRow]


def number(value: Any) -> float | None:
    """A float from a JSON value; the strings 'nan', 'inf', '-inf' (``ClaimResult.to_json``)
    become floats; anything else non-numeric becomes None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf"):
        return float(value)
    return None


def _read_json(path: Path, what: str) -> tuple[Any, Gap | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, Gap(str(path), f"{what} not found")
    except json.JSONDecodeError as exc:
        return None, Gap(str(path), f"{what} is not valid JSON ({exc.msg}, line {exc.lineno})")
    except (OSError, UnicodeDecodeError) as exc:
        return None, Gap(str(path), f"{what} cannot be read ({type(exc).__name__})")


def _claim_row(raw: Mapping[str, Any], source: str) -> ClaimRow:
    details = raw.get("details") or {}
    if not isinstance(details, Mapping):
        raise TypeError("details is not an object")
    passed = bool(raw["passed"])
    return ClaimRow(
        id=str(raw["id"]),
        statement=str(raw.get("statement", "")),
        kind=str(raw.get("kind", "identity")),
        case=str(raw.get("case", "")),
        verdict=str(raw.get("verdict") or ("pass" if passed else "fail")),
        passed=passed,
        measured=number(raw.get("measured")),
        expected=number(raw.get("expected")),
        error=number(raw.get("error")),
        tolerance=number(raw.get("tolerance")),
        details=dict(details),
        source=source,
    )


def load_claims(path: str | Path) -> tuple[ClaimsFile | None, list[Gap]]:
    """Parse a ``gfverify check --json`` file; refuse another ``schema_version``.

    Malformed single results are skipped (each named as a gap); the rest are kept.
    """
    path = Path(path)
    raw, gap = _read_json(path, "claims file")
    if gap:
        return None, [gap]
    if not isinstance(raw, Mapping):
        return None, [Gap(str(path), "claims file is not a JSON object")]
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        why = f"claims file has schema_version {version!r}; this report reads {SCHEMA_VERSION}"
        return None, [Gap(str(path), why)]
    results = raw.get("results")
    if not isinstance(results, list):
        return None, [Gap(str(path), "claims file has no 'results' list")]
    rows: list[ClaimRow] = []
    gaps: list[Gap] = []
    for i, item in enumerate(results):
        try:
            rows.append(_claim_row(item, path.name))
        except (KeyError, TypeError, ValueError) as exc:
            gaps.append(Gap(str(path), f"result {i} is malformed ({type(exc).__name__}: {exc})"))
    env = raw.get("environment")
    claims = ClaimsFile(
        path=str(path),
        created=str(raw.get("created", "")),
        command=str(raw.get("command", "")),
        scale=str(raw.get("scale", "")),
        environment=dict(env) if isinstance(env, Mapping) else {},
        rows=rows,
    )
    return claims, gaps


# --------------------------------------------------------------------------------------------
# runs


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def first_present(record: Mapping[str, Any], names: Iterable[str]) -> tuple[str, Any] | None:
    """``(name, value)`` of the first of ``names`` present in ``record`` (not None)."""
    for name in names:
        if record.get(name) is not None:
            return name, record[name]
    return None


@dataclass
class Run:
    """One run directory: stored config (dotted keys, today's defaults filled in), result
    (flattened), per-epoch metrics, env.json and status.json."""

    run_id: str
    path: str
    runs_dir: str
    config: dict[str, Any]
    raw_config: dict[str, Any]
    result: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    env: dict[str, Any]
    status: dict[str, Any]
    widths: dict[str, dict[str, float]] | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def dataset(self) -> str:
        return str(self.config.get("data.name"))

    @property
    def network(self) -> str:
        return str(self.config.get("model.name"))

    @property
    def measure(self) -> str:
        return str(self.config.get("measure.name"))

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def device(self) -> str:
        """The device the run used: result ``device_resolved``, else env.json / config."""
        found = first_present({**self.env, **(self.result or {})}, ("device_resolved", "device"))
        return str(found[1]) if found else str(self.config.get("device"))

    @property
    def pruning_epochs(self) -> tuple[int, int]:
        """First and last epoch with a pruning round: warmup+1 .. warmup+rounds (an empty
        range, last < first, for an unpruned run: prune.ratio = 0)."""
        warmup = int(self.config.get("train.warmup_epochs") or 0)
        rounds = int(self.config.get("prune.rounds") or 0) if self.config.get("prune.ratio") else 0
        return warmup + 1, warmup + rounds

    def series(self, name: str) -> tuple[list[float], list[float]] | None:
        """``(epochs, values)`` of metric ``name`` (see :data:`METRIC_FIELDS`), or None."""
        names = METRIC_FIELDS.get(name, (name,))
        for key in names:
            pairs = [
                (float(m["epoch"]), number(m.get(key)))
                for m in self.metrics
                if number(m.get("epoch")) is not None and number(m.get(key)) is not None
            ]
            if pairs:
                return [p[0] for p in pairs], [p[1] for p in pairs]  # type: ignore[misc]
        return None

    def result_value(self, name: str) -> float | None:
        """A numeric result field by its report name (see :data:`RESULT_FIELDS`)."""
        found = first_present(self.result or {}, RESULT_FIELDS.get(name, (name,)))
        return None if found is None else number(found[1])

    def row(self) -> dict[str, Any]:
        """The tidy row :func:`gfverify.runs.aggregate` groups (config keys + result fields,
        plus the report's result names resolved through :data:`RESULT_FIELDS`)."""
        row: dict[str, Any] = {"run_id": self.run_id, "run_dir": self.path, **self.config}
        for key, value in (self.result or {}).items():
            row[f"result.{key}" if key in row else key] = value
        for name in RESULT_FIELDS:
            row[f"report.{name}"] = self.result_value(name)
        return row


def _counts(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): number(v) for k, v in value.items() if number(v) is not None}  # type: ignore[misc]


def _widths(path: Path, result: Mapping[str, Any]) -> dict[str, dict[str, float]] | None:
    """``{"kept": {layer: n}, "dense": {layer: n}}`` (dense may be empty), or None: kept =
    ``widths`` − ``masked`` per layer (see :data:`HISTORY_FILE` above)."""
    value = result.get("widths")
    if not isinstance(value, Mapping) or not value:
        return None
    masked = _counts(result.get("masked"))
    kept = {k: v - masked.get(k, 0.0) for k, v in _counts(value).items()}
    dense = _counts(result.get("original_widths"))
    if not dense:
        history, _ = _read_json(path / HISTORY_FILE, HISTORY_FILE)
        if isinstance(history, Mapping):
            dense = _counts(history.get("original_widths"))
    return {"kept": kept, "dense": dense} if kept else None


def load_run(
    path: str | Path, defaults: Mapping[str, Any] | None = None
) -> tuple[Run | None, Gap | None]:
    """Read one run directory; a corrupt or missing config/result is a gap."""
    path = Path(path)
    stored, gap = _read_json(path / CONFIG_FILE, CONFIG_FILE)
    if gap:
        return None, gap
    if not isinstance(stored, Mapping):
        return None, Gap(str(path / CONFIG_FILE), "config is not a JSON object")
    config = dict(defaults if defaults is not None else flatten_config(RunConfig()))
    config.update(_flatten(stored))
    env, _ = _read_json(path / ENV_FILE, ENV_FILE)
    status, _ = _read_json(path / STATUS_FILE, STATUS_FILE)
    result = None
    gap = None
    if (path / RESULT_FILE).exists():
        result, gap = _read_json(path / RESULT_FILE, RESULT_FILE)
        if gap is None and not isinstance(result, Mapping):
            result, gap = None, Gap(str(path / RESULT_FILE), "result is not a JSON object")
    run = Run(
        run_id=path.name,
        path=str(path),
        runs_dir=str(path.parent),
        config=config,
        raw_config=dict(stored),
        result=_flatten(result) if isinstance(result, Mapping) else None,
        metrics=read_metrics(path),
        env=dict(env) if isinstance(env, Mapping) else {},
        status=dict(status) if isinstance(status, Mapping) else {},
    )
    if run.result is not None:
        run.widths = _widths(path, result)  # type: ignore[arg-type]
        if run.env.get("mixed_threads"):  # resumed under another thread count (runs.py)
            counts = ", ".join(str(c) for c in run.env.get("thread_counts") or [])
            gap = Gap(
                f"run {run.run_id}",
                f"shown, but its epochs ran under different thread counts ({counts}): its"
                " numbers may differ from an uninterrupted run",
            )
    elif gap is None:
        state = run.status.get("state", "no status")
        why = f"not finished (state {state}, epoch {run.status.get('epoch', '?')}"
        reason = run.status.get("reason")
        gap = Gap(f"run {run.run_id}", why + (f": {reason})" if reason else ")"))
    return run, gap


def load_runs(runs_dir: str | Path) -> tuple[list[Run], list[Gap]]:
    """Every run directory under ``runs_dir`` (finished or not), with gaps for the others."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return [], [Gap(str(runs_dir), "runs directory does not exist")]
    markers = (CONFIG_FILE, STATUS_FILE, METRICS_FILE, RESULT_FILE)
    dirs = sorted(
        p for p in runs_dir.iterdir() if p.is_dir() and any((p / m).exists() for m in markers)
    )
    if not dirs:
        return [], [Gap(str(runs_dir), "runs directory contains no run directories")]
    defaults = flatten_config(RunConfig())
    runs: list[Run] = []
    gaps: list[Gap] = []
    for path in dirs:
        run, gap = load_run(path, defaults)
        if run is not None:
            runs.append(run)
        if gap is not None:
            gaps.append(gap)
    if not any(r.finished for r in runs):
        gaps.append(Gap(str(runs_dir), "no finished runs (no result.json)"))
    return runs, gaps


# --------------------------------------------------------------------------------------------
# results table and the paper's orderings


@dataclass
class ResultGroup:
    """One results-table line: mean ± sample std of the final test accuracy over seeds, and
    the mean MACs / params kept (fractions of the dense model when it is recorded)."""

    key: dict[str, Any]
    n: int
    mean: float
    std: float
    seeds: list[Any]
    excluded: int
    macs: float | None = None
    params: float | None = None
    macs_kept: float | None = None
    params_kept: float | None = None


@dataclass(frozen=True)
class Ordering:
    """A paper result about final accuracy: measure ``better`` ≥ measure ``worse``."""

    better: str
    worse: str
    claim: str
    why: str
    metric: str = "final_test_acc"


#: The paper's expected orderings of final test accuracy checked in the results table.
ORDERINGS: tuple[Ordering, ...] = (
    Ordering(
        "gradient_norm_preservation",
        "grasp",
        "S5",
        "GraSP raises ‖g‖² and ends less accurate than gradient-norm preservation (§5)",
    ),
    Ordering(
        "biased_loss_preservation",
        "loss_preservation",
        "S4",
        "biased loss-preservation |θ²g| at least matches loss-preservation |θg| (§4)",
    ),
)


@dataclass
class OrderingCheck:
    """An ordering evaluated in one context (dataset, network, other varying keys)."""

    ordering: Ordering
    context: dict[str, Any]
    status: str  # "met", "not met" or "not available"
    better_mean: float | None = None
    worse_mean: float | None = None
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.better_mean is None or self.worse_mean is None:
            return None
        return self.better_mean - self.worse_mean


def varying_keys(
    rows: Sequence[Mapping[str, Any]], group_by: Sequence[str] = GROUP_BY
) -> list[str]:
    """Identity config keys (other than ``group_by`` and ``seed``) with >1 value across rows:
    they become extra table columns, so a mean never mixes, e.g., two pruning ratios."""
    skip = set(group_by) | {"seed"}
    return [k for k in identity_keys() if k not in skip and len({repr(r.get(k)) for r in rows}) > 1]


def _mean_of(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [v for v in (number(r.get(key)) for r in rows) if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def results_groups(runs: Sequence[Run]) -> tuple[list[str], list[ResultGroup]]:
    """Group finished runs by dataset × network × measure (+ varying keys); return the group
    columns and the groups, sorted."""
    rows = [r.row() for r in runs if r.finished]
    if not rows:
        return list(GROUP_BY), []
    group_by = [*GROUP_BY, *varying_keys(rows)]
    groups: list[ResultGroup] = []
    for agg in aggregate(rows, group_by, "report.final_test_acc"):
        key = {k: agg[k] for k in group_by}
        members = [r for r in rows if all(r.get(k) == v for k, v in key.items())]
        macs, params = _mean_of(members, "report.macs"), _mean_of(members, "report.params")
        macs_dense = _mean_of(members, "report.macs_dense")
        params_dense = _mean_of(members, "report.params_dense")
        groups.append(
            ResultGroup(
                key=key,
                n=agg["n"],
                mean=agg["mean"],
                std=agg["std"],
                seeds=agg["seeds"],
                excluded=agg["excluded"],
                macs=macs,
                params=params,
                macs_kept=macs / macs_dense if macs is not None and macs_dense else None,
                params_kept=params / params_dense if params is not None and params_dense else None,
            )
        )
    return group_by, groups


def check_orderings(
    groups: Sequence[ResultGroup], orderings: Sequence[Ordering] = ORDERINGS
) -> list[OrderingCheck]:
    """Each ordering in each context where either measure ran: met iff mean(better) ≥
    mean(worse); 'not available' when one side has no finite result there."""
    contexts: dict[str, dict[str, Any]] = {}
    by_context: dict[str, dict[str, ResultGroup]] = {}
    for g in groups:
        ctx = {k: v for k, v in g.key.items() if k != "measure.name"}
        label = repr(sorted(ctx.items(), key=lambda kv: kv[0]))
        contexts[label] = ctx
        by_context.setdefault(label, {})[str(g.key["measure.name"])] = g
    checks: list[OrderingCheck] = []
    for o in orderings:
        found = False
        for label, measures in by_context.items():
            better, worse = measures.get(o.better), measures.get(o.worse)
            if better is None and worse is None:
                continue
            found = True
            ctx = contexts[label]
            missing = [
                m for m, g in ((o.better, better), (o.worse, worse)) if g is None or g.n == 0
            ]
            if missing:
                note = f"not available: no finished runs of {', '.join(missing)} here"
                checks.append(OrderingCheck(o, ctx, "not available", note=note))
                continue
            met = better.mean >= worse.mean  # type: ignore[union-attr]
            checks.append(
                OrderingCheck(
                    o,
                    ctx,
                    "met" if met else "not met",
                    better.mean,  # type: ignore[union-attr]
                    worse.mean,  # type: ignore[union-attr]
                    note=f"n = {better.n} vs {worse.n} seeds",  # type: ignore[union-attr]
                )
            )
        if not found:
            note = f"not available: no runs of {o.better} or {o.worse}"
            checks.append(OrderingCheck(o, {}, "not available", note=note))
    return checks


# --------------------------------------------------------------------------------------------
# reproducibility


def to_toml(config: Mapping[str, Any]) -> str:
    """A nested config dict as TOML: top-level keys, then one table per section; None values
    are left out (every optional config field defaults to None)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v), ensure_ascii=False)

    lines = [
        f"{k} = {value(v)}"
        for k, v in config.items()
        if not isinstance(v, Mapping) and v is not None
    ]
    for section, table in config.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


@dataclass
class Command:
    """How to regenerate something: the command, and the config file it reads (if needed)."""

    what: str
    command: str
    config_name: str = ""
    config_toml: str = ""
    recorded: bool = True


def run_command(run: Run, known: Mapping[str, str] | None = None) -> Command:
    """The command recorded for the run (env.json 'command'/'argv', or ``known[run_id]``),
    else ``gfverify run <run_id>.toml --runs-dir <dir>`` with that TOML (the stored config)."""
    what = f"run {run.run_id} ({run.dataset} / {run.network} / {run.measure}, seed {run.seed})"
    recorded = first_present(run.env, ("command", "argv"))
    if recorded is not None:
        cmd = recorded[1]
        return Command(what, " ".join(map(str, cmd)) if isinstance(cmd, list) else str(cmd))
    if known and run.run_id in known:
        return Command(what, known[run.run_id])
    name = f"{run.run_id}.toml"
    return Command(
        what,
        f"gfverify run {name} --runs-dir {run.runs_dir}",
        config_name=name,
        config_toml=to_toml(run.raw_config),
        recorded=False,
    )


# --------------------------------------------------------------------------------------------
# everything together


@dataclass
class ReportData:
    """All inputs of one report page."""

    title: str
    created: str
    claims_files: list[ClaimsFile]
    runs: list[Run]
    group_columns: list[str]
    groups: list[ResultGroup]
    orderings: list[OrderingCheck]
    commands: list[Command]
    environment: dict[str, list[str]]
    gaps: list[Gap] = field(default_factory=list)
    #: The paper's Table 1 layout of the finished runs (empty without pruned runs).
    table1: Any = None

    @property
    def claims(self) -> list[ClaimRow]:
        return [row for f in self.claims_files for row in f.rows]

    @property
    def finished_runs(self) -> list[Run]:
        return [r for r in self.runs if r.finished]


def _environment(claims: Sequence[ClaimsFile], runs: Sequence[Run]) -> dict[str, list[str]]:
    """Label -> distinct values (with where they come from) over claims files and runs."""
    env: dict[str, dict[str, list[str]]] = {}

    def add(label: str, value: Any, source: str) -> None:
        if value in (None, "", []):
            return
        env.setdefault(label, {}).setdefault(str(value), []).append(source)

    for c in claims:
        src = Path(c.path).name
        e = c.environment
        for label, key in (("gfverify", "gfverify"), ("torch", "torch"), ("python", "python")):
            add(label, e.get(key), src)
        add("device", e.get("device"), src)
        add("CPU", e.get("cpu"), src)
        add("CPU kernels (ATen)", e.get("cpu_capability"), src)
        add("git commit", e.get("git_commit"), src)
        add("platform", e.get("platform"), src)
    for r in runs:
        src = f"run {r.run_id}"
        e = r.env
        for label in ("gfverify", "torch", "python"):
            add(label, e.get(label), src)
        add("device", r.device, src)
        commit = e.get("git_commit")
        if commit and e.get("git_dirty"):
            commit = f"{commit} (uncommitted changes)"
        add("git commit", commit, src)
        add("platform", e.get("platform"), src)
        if str(r.device).startswith("cpu"):
            add("CPU", e.get("cpu"), src)
            add("CPU kernels (ATen)", (e.get("determinism") or {}).get("cpu_capability"), src)
    out: dict[str, list[str]] = {}
    for label, values in env.items():
        values = _merge_local_versions(values) if label in ("torch", "gfverify") else values
        out[label] = [f"{v}  [{_sources(s)}]" if len(values) > 1 else v for v, s in values.items()]
    seeds = sorted({r.seed for r in runs if r.finished}, key=str)
    if seeds:
        out["seeds"] = [", ".join(map(str, seeds))]
    configs: dict[str, int] = {}
    for r in runs:
        c = r.config
        label = (
            f"{r.dataset} / {r.network} / {r.measure}: ratio {c.get('prune.ratio')},"
            f" {c.get('prune.rounds')} rounds, {c.get('train.epochs')} epochs"
        )
        configs[label] = configs.get(label, 0) + 1
    if configs:
        out["configs"] = [f"{k} (×{n})" if n > 1 else k for k, n in configs.items()]
    return out


def _merge_local_versions(values: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """One entry per version: ``2.14.1`` (package metadata) and ``2.14.1+cu130``
    (``torch.__version__``) are the same install; the longer spelling is kept."""
    merged: dict[str, tuple[str, list[str]]] = {}
    for value, sources in values.items():
        base = value.split("+", 1)[0]
        shown, seen = merged.get(base, (value, []))
        merged[base] = (max(shown, value, key=len), seen + list(sources))
    return {shown: sources for shown, sources in merged.values()}


def _sources(sources: Sequence[str]) -> str:
    return ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")


def collect(
    runs_dirs: Sequence[str | Path] = (),
    claims_paths: Sequence[str | Path] = (),
    *,
    title: str = "gfverify report",
    known_commands: Mapping[str, str] | None = None,
    extra_gaps: Sequence[Gap] = (),
    report_command: str | None = None,
    strict: bool = False,
) -> ReportData:
    """Read every claims file and run directory into a :class:`ReportData`.

    ``strict=False``: never raises for a bad input, each becomes a gap. ``strict=True`` (inputs
    the user named): a claims file that cannot be used at all (missing, unreadable, not JSON,
    another schema) or a runs directory that is missing or holds no run directory raises one
    GfverifyError naming every such input, before anything is drawn or written.
    """
    gaps = list(extra_gaps)
    unusable: list[str] = []
    claims_files: list[ClaimsFile] = []
    for path in claims_paths:
        cf, g = load_claims(path)
        gaps += g
        if cf is not None:
            claims_files.append(cf)
        else:
            unusable += [x.line() for x in g[:1]]
    runs: list[Run] = []
    for d in runs_dirs:
        rs, g = load_runs(d)
        runs += rs
        gaps += g
        if not rs:
            unusable += [x.line() for x in g[:1]] or [f"{d}: no runs"]
    if strict and unusable:
        raise GfverifyError(
            f"{len(unusable)} named input(s) cannot be used, so no report was written: "
            + "; ".join(unusable)
        )
    if not claims_paths:
        gaps.append(Gap("claims", "no claims file given"))
    if not runs_dirs:
        gaps.append(Gap("runs", "no runs directory given"))
    try:
        group_columns, groups = results_groups(runs)
    except GfverifyError as exc:
        gaps.append(Gap("results table", str(exc)))
        group_columns, groups = list(GROUP_BY), []
    commands = [
        Command(f"claims in {Path(c.path).name} (scale {c.scale or '?'})", c.command)
        for c in claims_files
        if c.command
    ]
    commands += [run_command(r, known_commands) for r in runs if r.finished]
    if report_command:
        commands.append(Command("this page", report_command))
    return ReportData(
        title=title,
        created=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        claims_files=claims_files,
        runs=runs,
        group_columns=group_columns,
        groups=groups,
        orderings=check_orderings(groups),
        commands=commands,
        environment=_environment(claims_files, runs),
        gaps=gaps,
        table1=_table1(runs),
    )


def _table1(runs: Sequence[Run]) -> Any:
    """The Table 1 section's data (:mod:`gfverify.report.table1`) from the finished runs."""
    from gfverify.report.table1 import build_table1

    return build_table1([r.row() for r in runs if r.finished])
