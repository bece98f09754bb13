"""``gfverify report``: one self-contained HTML page of verdicts, figures and tables.

:mod:`~gfverify.report.build` reads claims JSON files and run directories into dataclasses,
:mod:`~gfverify.report.figures` draws inline SVG, ``templates/report.html`` lays the page out.
The page has no scripts and no external resources: it opens from disk, offline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gfverify.report.build import INDICATIVE_SCALES, ClaimRow, Gap, ReportData, collect
from gfverify.report.figures import FigureOut, identity_figures, run_figures

__all__ = ["Gap", "ReportData", "collect", "render_html", "write_report"]

_TEMPLATES = Path(__file__).parent / "templates"
_VERDICT_ORDER = ("pass", "supported", "inconclusive", "skipped", "contradicted", "error", "fail")


def _num(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _css(value: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(value).lower())


def claim_summary(rows: Sequence[ClaimRow]) -> list[dict[str, Any]]:
    """Per claim id, in first-seen order: statement, kind, number of cases, verdict counts and
    the median observed order of convergence (identity claims with a step ladder)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(
            r.id,
            {
                "id": r.id,
                "statement": r.statement,
                "kind": r.kind,
                "cases": 0,
                "v": {},
                "orders": [],
            },
        )
        s["cases"] += 1
        s["v"][r.verdict] = s["v"].get(r.verdict, 0) + 1
        if r.observed_order is not None and math.isfinite(r.observed_order):
            s["orders"].append(r.observed_order)
    for s in out.values():
        rank = {v: i for i, v in enumerate(_VERDICT_ORDER)}
        s["verdicts"] = dict(sorted(s.pop("v").items(), key=lambda kv: rank.get(kv[0], 99)))
        orders = sorted(s.pop("orders"))
        s["order"] = orders[len(orders) // 2] if orders else None
    return list(out.values())


def render_html(
    data: ReportData,
    figures: tuple[list[FigureOut], list[FigureOut]] | None = None,
    runs_dirs: Sequence[str] = (),
) -> str:
    """The page for ``data`` (figures drawn here unless given)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, pct=_pct, css=_css)
    ident, runs = figures if figures is not None else (identity_figures(data), run_figures(data))
    claims_gaps = [g.why for g in data.gaps if g.where == "claims" or g.why.startswith("claims")]
    return env.get_template("report.html").render(
        data=data,
        summary=claim_summary(data.claims),
        claims_gap="; ".join(claims_gaps) or "no claim results",
        identity_figures=ident,
        run_figures=runs,
        runs_dirs=list(runs_dirs),
        indicative_scales=INDICATIVE_SCALES,
    )


def write_report(
    out: str | Path,
    runs_dirs: Sequence[str | Path] = (),
    claims_paths: Sequence[str | Path] = (),
    *,
    title: str = "gfverify report",
    known_commands: Mapping[str, str] | None = None,
    extra_gaps: Sequence[Gap] = (),
    report_command: str | None = None,
    strict: bool = False,
) -> tuple[Path, ReportData]:
    """Collect, draw and write the page to ``out`` (atomically); returns the path and data.

    ``strict``: the inputs were named by the user; one that cannot be used raises GfverifyError
    and nothing is written (:func:`~gfverify.report.build.collect`). The output's folder is
    checked for writability before anything is read; a failed write saves the page elsewhere
    and says where (:func:`gfverify.io.write_or_salvage`).
    """
    from gfverify import io as gio

    path = gio.check_writable(out, what="report")
    data = collect(
        runs_dirs,
        claims_paths,
        title=title,
        known_commands=known_commands,
        extra_gaps=extra_gaps,
        report_command=report_command,
        strict=strict,
    )
    html = render_html(data, runs_dirs=[str(d) for d in runs_dirs])
    path.parent.mkdir(parents=True, exist_ok=True)
    gio.write_or_salvage(path, html, what="report")
    return path, data
