"""The paper's Table 1 layout from finished runs (spec/paper.md §4, layout [REC]).

One line per (dataset, network, width, target ratio): the unpruned base accuracy and, per
importance measure, the final-epoch test accuracy, each ``mean ± std`` over seeds with
``mean = Σx_i/n`` and ``std = sqrt(Σ(x_i − mean)²/(n − 1))`` (none for n = 1: shown as
``mean (n=1)``). A run is a baseline when ``prune.ratio == 0`` (whatever its measure); it is
matched to the pruned lines of the same dataset, network and width.

Beside it, per (line, measure), the details the paper's layout lists: n, final test accuracy,
the best epoch **chosen on the held-out validation split only** (its validation accuracy and
epoch; never the best test epoch), the achieved pruned fraction of filters, and the params and
MACs after pruning (means, and as a fraction of the dense network).

Rows are the tidy dicts of :func:`gfverify.runs.collect_results` or
:meth:`gfverify.report.build.Run.row` (dotted config keys + result fields).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The paper's five measures, in its column order (§1.3).
MEASURES: tuple[str, ...] = (
    "magnitude",
    "loss_preservation",
    "biased_loss_preservation",
    "grasp",
    "gradient_norm_preservation",
)
MEASURE_LABELS = {
    "magnitude": "magnitude",
    "loss_preservation": "loss-pres.",
    "biased_loss_preservation": "biased loss-pres.",
    "grasp": "GraSP (T=200)",
    "gradient_norm_preservation": "grad-norm pres. (T=1)",
}
BASELINE = "unpruned"
_LINE_KEYS = ("data.name", "model.name", "model.width_mult")


@dataclass(frozen=True)
class Stat:
    """``mean ± std`` (sample std) of n finite values."""

    n: int
    mean: float | None
    std: float | None

    @classmethod
    def of(cls, values: Sequence[Any]) -> Stat:
        xs = [float(v) for v in values if _finite(v)]
        if not xs:
            return cls(0, None, None)
        m = sum(xs) / len(xs)
        if len(xs) == 1:  # a sample std needs two values: none, rather than a false 0
            return cls(1, m, None)
        var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
        return cls(len(xs), m, math.sqrt(var))

    def text(self, scale: float = 100.0, digits: int = 2) -> str:
        """``mean ± std`` scaled (accuracies as %); ``mean (n=1)`` for one value (no spread to
        show); ``—`` without values."""
        if self.mean is None:
            return "—"
        if self.std is None:
            return f"{self.mean * scale:.{digits}f} (n=1)"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


@dataclass
class Cell:
    """One measure (or the baseline) on one Table 1 line."""

    measure: str
    seeds: tuple[Any, ...]
    test_acc: Stat
    best_val_acc: Stat
    best_val_epochs: tuple[int, ...]
    pruned_fraction: Stat
    params: Stat
    macs: Stat
    params_kept: Stat
    macs_kept: Stat
    seconds: Stat


@dataclass
class Line:
    """One Table 1 line: dataset, network, width, target ratio, baseline and measure cells."""

    dataset: str
    model: str
    width_mult: Any
    ratio: float
    baseline: Cell | None
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.dataset} / {self.model} ×{self.width_mult}"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _ratio(num: Any, den: Any) -> float | None:
    return float(num) / float(den) if _finite(num) and _finite(den) and den else None


def _cell(measure: str, rows: Sequence[Mapping[str, Any]]) -> Cell:
    def col(key: str) -> list[Any]:
        return [r.get(key) for r in rows]

    return Cell(
        measure=measure,
        seeds=tuple(sorted((r.get("seed") for r in rows), key=str)),
        test_acc=Stat.of(col("final_test_acc")),
        best_val_acc=Stat.of(col("best_val_acc")),
        best_val_epochs=tuple(int(e) for e in col("best_val_epoch") if _finite(e)),
        pruned_fraction=Stat.of(col("pruned_fraction")),
        params=Stat.of(col("params")),
        macs=Stat.of(col("macs")),
        params_kept=Stat.of([_ratio(r.get("params"), r.get("dense_params")) for r in rows]),
        macs_kept=Stat.of([_ratio(r.get("macs"), r.get("dense_macs")) for r in rows]),
        seconds=Stat.of(col("seconds")),
    )


def table1(rows: Sequence[Mapping[str, Any]]) -> list[Line]:
    """Group finished-run rows into Table 1 lines (sorted by dataset, network, width, ratio);
    rows without ``final_test_acc`` are ignored."""
    rows = [r for r in rows if "final_test_acc" in r]
    base: dict[tuple, list] = {}
    pruned: dict[tuple, dict[str, list]] = {}
    for r in rows:
        key = tuple(r.get(k) for k in _LINE_KEYS)
        ratio = r.get("prune.ratio")
        if not ratio:
            base.setdefault(key, []).append(r)
        else:
            pruned.setdefault((*key, float(ratio)), {}).setdefault(
                str(r.get("measure.name")), []
            ).append(r)
    lines: list[Line] = []
    for key in sorted(pruned, key=lambda k: tuple(str(x) for x in k)):
        by_measure = pruned[key]
        order = [m for m in MEASURES if m in by_measure] + sorted(
            m for m in by_measure if m not in MEASURES
        )
        b = base.get(key[:3])
        lines.append(
            Line(
                dataset=str(key[0]),
                model=str(key[1]),
                width_mult=key[2],
                ratio=key[3],
                baseline=_cell(BASELINE, b) if b else None,
                cells={m: _cell(m, by_measure[m]) for m in order},
            )
        )
    for key in sorted(set(base) - {k[:3] for k in pruned}, key=lambda k: tuple(map(str, k))):
        lines.append(Line(str(key[0]), str(key[1]), key[2], 0.0, _cell(BASELINE, base[key])))
    return lines


def measure_columns(lines: Sequence[Line]) -> list[tuple[str, str]]:
    """(measure, label) of every measure on some line: the paper's five in its order, then
    any others sorted."""
    present = {m for ln in lines for m in ln.cells}
    order = [m for m in MEASURES if m in present] + sorted(present - set(MEASURES))
    return [(m, MEASURE_LABELS.get(m, m)) for m in order]


@dataclass
class Table1:
    """The lines and the measure columns, as the report page lays them out."""

    lines: list[Line]
    columns: list[tuple[str, str]]

    def __bool__(self) -> bool:
        return bool(self.lines)


def build_table1(rows: Sequence[Mapping[str, Any]]) -> Table1:
    """:func:`table1` with its :func:`measure_columns`."""
    lines = table1(rows)
    return Table1(lines, measure_columns(lines))


def _grid(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)])


def _count(stat: Stat, kept: Stat) -> str:
    if stat.mean is None:
        return "—"
    pct = f" ({kept.mean * 100:.1f}%)" if kept.mean is not None else ""
    return f"{stat.mean:,.0f}{pct}"


def _epochs(cell: Cell) -> str:
    return ",".join(map(str, cell.best_val_epochs)) or "—"


def format_table1(lines: Sequence[Line]) -> str:
    """Plain text: the Table 1 grid (final test accuracy %, mean ± std over seeds), then one
    detail line per cell."""
    if not lines:
        return "no finished runs for Table 1"
    columns = measure_columns(lines)
    measures = [m for m, _ in columns]
    header = ["dataset", "model", "width", "target pruned", "base acc"]
    header += [label for _, label in columns]
    body = []
    for ln in lines:
        row = [ln.dataset, ln.model, f"×{ln.width_mult}", f"{ln.ratio:.0%}"]
        row.append(ln.baseline.test_acc.text() if ln.baseline else "—")
        row += [ln.cells[m].test_acc.text() if m in ln.cells else "—" for m in measures]
        body.append(row)
    out = [
        "Table 1: final-epoch test accuracy (%), mean ± std over seeds",
        _grid(header, body),
        "",
        "Details: n seeds; best epoch chosen on the held-out validation split only (its val"
        " acc, epochs);",
        "achieved pruned fraction of filters; params and MACs after pruning (mean; % of dense).",
    ]
    dh = ["dataset", "model", "width", "measure", "n", "test acc", "best val acc", "best ep."]
    dh += ["pruned", "params after", "MACs after", "s/run"]
    db = []
    for ln in lines:
        for c in ([ln.baseline] if ln.baseline else []) + list(ln.cells.values()):
            pf = c.pruned_fraction
            db.append(
                [
                    ln.dataset,
                    ln.model,
                    f"×{ln.width_mult}",
                    MEASURE_LABELS.get(c.measure, c.measure),
                    str(c.test_acc.n),
                    c.test_acc.text(),
                    c.best_val_acc.text(),
                    _epochs(c),
                    pf.text(digits=1) if pf.mean is not None else "—",
                    _count(c.params, c.params_kept),
                    _count(c.macs, c.macs_kept),
                    f"{c.seconds.mean:.0f}" if c.seconds.mean is not None else "—",
                ]
            )
    out.append(_grid(dh, db))
    return "\n".join(out)
