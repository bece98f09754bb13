"""The report's figures: one function per figure, each returning inline SVG text.

A figure whose data is absent raises :class:`Unavailable` with a short reason;
:func:`identity_figures` / :func:`run_figures` turn that (or any drawing error) into a
"not available: <why>" note, so the page always renders. Drawing uses
matplotlib's object API (``matplotlib.figure.Figure``, Agg/SVG canvases, no pyplot state).

Raw series of statistical claims are read from ``details`` (or ``details["series"]`` /
``details["raw"]``, a mapping or a list of per-epoch records) under :data:`SERIES_NAMES`.
"""

from __future__ import annotations

import io
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from gfverify.report.build import METRIC_FIELDS, ClaimRow, ReportData, Run, number

matplotlib.use("Agg")

#: Raw-series keys read from statistical claims (first match wins), per role: gfverify's S3
#: (epoch, tau_taylor_fo per seed) and F1 (t, tau, predicted/realised_norm_rate per seed);
#: per-filter ``importance`` / ``loss_change`` pairs, if a claim records them, give S3's scatter.
SERIES_NAMES: dict[str, tuple[str, ...]] = {
    "importance": ("importance",),
    "loss_change": ("loss_change",),
    "time": ("epoch", "t"),
    "predicted": ("predicted_norm_rate", "predicted"),
    "observed": ("realised_norm_rate", "observed"),
    "tau": ("tau_taylor_fo", "tau", "kendall_tau"),
}

#: Per-epoch metrics holding the value just before / after a pruning round's surgery.
PRUNE_JUMPS: dict[str, tuple[str, str]] = {
    "theta_sq": ("prune_theta_sq_before", "prune_theta_sq_after"),
    "grad_sq": ("prune_grad_sq_before", "prune_grad_sq_after"),
}

VERDICT_COLOURS = {
    "pass": "#1a7f37",
    "supported": "#1a7f37",
    "fail": "#cf222e",
    "contradicted": "#cf222e",
    "inconclusive": "#bf8700",
    "skipped": "#6e7781",
    "error": "#8250df",
}


class Unavailable(Exception):
    """The figure's data is absent; ``str(exc)`` says why (one short line)."""


@dataclass
class FigureOut:
    """One figure slot of the page: inline SVG, or a note saying why it is not available."""

    id: str
    title: str
    caption: str
    svg: str | None = None
    note: str | None = None


# --------------------------------------------------------------------------------------------
# helpers


def svg_text(fig: Figure, fig_id: str) -> str:
    """``fig`` as an inline ``<svg>`` element: no XML prologue, metadata or namespace URLs, and
    every internal id prefixed with ``fig_id`` so several figures can share one page."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": fig_id}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)
    text = re.sub(r'(\bid="|url\(#|href="#)', lambda m: m.group(1) + fig_id + "-", text)
    return text.replace("<svg ", f'<svg role="img" aria-label="{fig_id}" ', 1)


def _figure(width: float = 9.0, height: float = 3.6, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _colours(names: Iterable[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(names)))}


def _positive_pairs(xs: Sequence[Any], ys: Sequence[Any]) -> list[tuple[float, float]]:
    pairs = [(number(x), number(y)) for x, y in zip(xs, ys)]
    return [(x, y) for x, y in pairs if x and y and x > 0 and y > 0 and math.isfinite(x * y)]


def _slope_reference(
    ax: Any,
    cases: Sequence[Sequence[tuple[float, float]]],
    p: float,
    style: str = "k--",
    label: str | None = None,
) -> None:
    """Draw y = C·h^p over the steps of the median case (cases ranked by e/h^p at their finest
    step), with C half that case's constant: parallel to an O(h^p) case, not on top of it."""
    ranked = sorted(cases, key=lambda pts: pts[-1][1] / pts[-1][0] ** p)
    pts = ranked[len(ranked) // 2]
    (h_min, e_min), h_max = pts[-1], pts[0][0]
    c = 0.5 * e_min / h_min**p
    lo, hi = min(h_min, h_max), max(h_min, h_max)
    label = label or f"slope {p:g} (O(h^{p:g}))"
    ax.plot([lo, hi], [c * lo**p, c * hi**p], style, lw=1.2, label=label)


def _columns(obj: Any) -> Mapping[str, Any] | None:
    """A mapping as is; a list of records (dicts) as columns ``{key: [values]}``."""
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, list) and obj and all(isinstance(x, Mapping) for x in obj):
        keys = dict.fromkeys(k for x in obj for k in x)
        return {k: [x.get(k) for x in obj] for k in keys}
    return None


def series(details: Mapping[str, Any], role: str) -> tuple[str, list[Any]] | None:
    """``(name, list)`` for ``role`` (see :data:`SERIES_NAMES`) from ``details`` or from
    ``details['series']`` / ``details['raw']`` (a mapping or a list of records)."""
    places = [details] + [c for c in (_columns(details.get(k)) for k in ("series", "raw")) if c]
    for place in places:
        for name in SERIES_NAMES[role]:
            value = place.get(name)
            if isinstance(value, list) and value:
                return name, value
    return None


def _rows(rows: Sequence[ClaimRow], claim: str) -> list[ClaimRow]:
    return [r for r in rows if r.id == claim or r.id.startswith(claim + "-")]


def _group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Finished runs by 'measure' (prefixed with dataset/network when there are several)."""
    combos = {(r.dataset, r.network) for r in runs}
    out: dict[str, list[Run]] = {}
    for r in runs:
        label = r.measure if len(combos) == 1 else f"{r.dataset}/{r.network}/{r.measure}"
        out.setdefault(label, []).append(r)
    return out


def _mean_curve(
    runs: Sequence[Run], metric: str
) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """Epochs present in every run, with the mean, min and max of ``metric`` over the runs."""
    curves = [c for c in (r.series(metric) for r in runs) if c is not None]
    if not curves:
        return None
    common = sorted(set.intersection(*(set(c[0]) for c in curves)))
    if not common:
        return None
    table = [dict(zip(*c)) for c in curves]
    values = [[t[e] for t in table] for e in common]
    return (
        common,
        [sum(v) / len(v) for v in values],
        [min(v) for v in values],
        [max(v) for v in values],
    )


def _shade_pruning(ax: Any, runs: Sequence[Run]) -> None:
    spans = {r.pruning_epochs for r in runs if r.pruning_epochs[1] >= r.pruning_epochs[0]}
    for i, (first, last) in enumerate(sorted(spans)):
        ax.axvspan(
            first - 0.5,
            last + 0.5,
            color="0.85",
            zorder=0,
            label="pruning rounds" if i == 0 else None,
        )


def _jumps(
    ax: Any, members: Sequence[Run], fields: tuple[str, str], colour: Any, legend: bool
) -> None:
    """At each pruning epoch: the mean value just before (○) and just after (●) surgery."""
    before, after = _mean_curve(members, fields[0]), _mean_curve(members, fields[1])
    if before is None or after is None:
        return
    b, a = dict(zip(before[0], before[1])), dict(zip(after[0], after[1]))
    epochs = sorted(set(b) & set(a))
    for e in epochs:
        ax.plot([e, e], [b[e], a[e]], color=colour, lw=0.8)
    ax.plot(
        epochs,
        [b[e] for e in epochs],
        "o",
        mfc="white",
        color=colour,
        ms=4,
        label="before surgery" if legend else None,
    )
    ax.plot(
        epochs,
        [a[e] for e in epochs],
        "o",
        color=colour,
        ms=4,
        label="after surgery" if legend else None,
    )


def _curves_panel(
    ax: Any,
    runs: Sequence[Run],
    metric: str,
    ylabel: str,
    log: bool = False,
    jumps: tuple[str, str] | None = None,
) -> bool:
    groups = _group_runs(runs)
    colours = _colours(groups)
    drawn = False
    lows, highs = [], []
    for label, members in sorted(groups.items()):
        curve = _mean_curve(members, metric)
        if curve is None:
            continue
        epochs, mean, lo, hi = curve
        lows.append(min(lo))
        highs.append(max(hi))
        ax.plot(epochs, mean, color=colours[label], label=f"{label} (n={len(members)})", lw=1.5)
        if len(members) > 1:
            ax.fill_between(epochs, lo, hi, color=colours[label], alpha=0.15, lw=0)
        if jumps:
            _jumps(ax, members, jumps, colours[label], legend=not drawn)
        drawn = True
    if drawn:
        _shade_pruning(ax, runs)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if log and min(lows) > 0 and max(highs) > 10 * min(lows):
            ax.set_yscale("log")  # only when the values span more than a decade
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    else:
        looked = ", ".join(_metric_names(metric))
        ax.text(
            0.5,
            0.5,
            f"not available: no '{looked}' in metrics",
            ha="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
    return drawn


def _metric_names(metric: str) -> tuple[str, ...]:
    return METRIC_FIELDS.get(metric, (metric,))


def _need_runs(runs: Sequence[Run]) -> list[Run]:
    finished = [r for r in runs if r.finished]
    if not finished:
        raise Unavailable("no finished runs")
    return finished


# --------------------------------------------------------------------------------------------
# the figures


#: Markers by verdict (colour tells the cases apart, the marker tells pass from fail).
VERDICT_MARKERS = {"pass": "o", "fail": "X"}
#: A case whose observed order is further than this from the method's order has its rounding
#: floor and tolerance drawn next to it.
ORDER_SLACK = 0.15
#: An identity passes when its observed order is within ±ORDER_BAND of the method's order p
#: (and its finest error within tolerance): gfverify.claims.numerics.ConvergenceStudy.order_ok.
ORDER_BAND = 0.5


def case_colours(n: int) -> list[Any]:
    """``n`` colours, pairwise distinct (tab10, then tab20, then a sampled hsv wheel)."""
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["hsv"]
    return [cmap(i / n) for i in range(n)]


def _problem(r: ClaimRow) -> str:
    problem = r.details.get("problem")
    if isinstance(problem, str) and problem:
        return problem
    return r.case.split("/", 1)[0] if "/" in r.case else r.case


def identity_convergence(claim: str, rows: Sequence[ClaimRow]) -> str:
    """Relative error vs step size (log-log) for every case of identity ``claim``, with a
    reference line of slope p = the method's order (2 for central differences: O(h²)) and a
    dotted one of slope p − :data:`ORDER_BAND`, the lowest observed order that passes.

    Every case has its own colour (marker: ○ pass, ✕ fail). Each problem's step ladder is
    scaled to that problem's time scale, so the cases form one cluster per problem: each
    cluster is labelled with its problem. A case whose observed order is off the method's by
    more than :data:`ORDER_SLACK` has its rounding floor (dotted, ``floor / scale``) and its
    tolerance (a bar at the finest step, ``tolerance / scale``) drawn in its colour: an error
    that reaches the floor flattens the slope, and the verdict is error ≤ tolerance.
    """
    cases = [r for r in _rows(rows, claim) if isinstance(r.details.get("steps"), list)]
    fig, (ax,) = _figure(6.8, 4.6)
    drawn: list[list[tuple[float, float]]] = []
    orders: list[float] = []
    clusters: dict[str, list[tuple[float, float]]] = {}
    colours = case_colours(len(cases))
    label_cases = len(cases) <= 12
    floors_drawn = 0
    for r, colour in zip(cases, colours):
        ys = r.details.get("relative_errors") or r.details.get("errors") or []
        pairs = _positive_pairs(r.details["steps"], ys)
        if len(pairs) < 2:
            continue
        xs, es = zip(*pairs)
        marker = VERDICT_MARKERS.get(r.verdict, "s")
        label = f"{r.case} ({r.verdict})" if label_cases else None
        ax.plot(xs, es, marker=marker, ls="-", color=colour, lw=1, ms=4, alpha=0.85, label=label)
        drawn.append(pairs)
        order = r.detail("method_order") or 2.0
        orders.append(order)
        clusters.setdefault(_problem(r), []).extend(pairs)
        observed = r.observed_order
        if observed is not None and abs(observed - order) > ORDER_SLACK:
            floors_drawn += _draw_floor(ax, r, colour)
    if not drawn:
        raise Unavailable(f"no case of {claim} has steps and errors in its details")
    p = sorted(orders)[len(orders) // 2]
    _slope_reference(ax, drawn, p)
    low = p - ORDER_BAND
    _slope_reference(ax, drawn, low, "k:", f"slope {low:g}: lowest order that passes")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if len(clusters) > 1:
        for problem, pts in clusters.items():
            x = math.exp(sum(math.log(x) for x, _ in pts) / len(pts))
            y = max(e for _, e in pts)
            ax.annotate(
                problem,
                (x, y),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color="0.25",
            )
    unit = "flow time step h" if claim not in ("T1", "T2") else "pruning amount s"
    ax.set_xlabel(f"{unit} (scaled per problem: one labelled cluster per problem)")
    ax.set_ylabel("relative error")
    observed = sorted(o for o in (r.observed_order for r in cases) if o is not None)
    med = f", median observed order {observed[len(observed) // 2]:.2f}" if observed else ""
    ax.set_title(f"{claim}: {len(drawn)} case(s){med}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    title = "○ pass, ✕ fail" if label_cases else "colour: case; ○ pass, ✕ fail"
    if floors_drawn:
        title += "\nthin dotted: a case's rounding floor; ▬: its tolerance"
    ax.legend(fontsize=6, title=title, title_fontsize=6)
    return svg_text(fig, f"fig-identity-{claim}")


def _draw_floor(ax: Any, r: ClaimRow, colour: Any) -> int:
    """Draw ``floor/scale`` (dotted) over the steps and ``tolerance/scale`` at the finest step
    for case ``r``; returns 1 if anything was drawn."""
    scale = r.detail("scale")
    floor = r.details.get("floor")
    steps = r.details.get("steps") or []
    if not scale or scale <= 0:
        return 0
    drew = 0
    if isinstance(floor, list):
        pairs = _positive_pairs(steps, [number(f) / scale if number(f) else None for f in floor])
        if len(pairs) >= 2:
            xs, fs = zip(*pairs)
            ax.plot(xs, fs, ":", color=colour, lw=1.2)
            drew = 1
    absolute = r.detail("tolerance")  # details: absolute; the record's own: relative
    tol = absolute / scale if absolute else r.tolerance
    finest = min((number(h) for h in steps if number(h)), default=None)
    if tol and tol > 0 and finest:
        ax.plot([finest / 1.6, finest * 1.6], [tol] * 2, "-", color=colour, lw=3, alpha=0.6)
        order = r.observed_order
        ax.annotate(
            f"order {order:.2f}: {r.verdict} on error vs tolerance"
            if order is not None
            else "tolerance",
            (finest * 1.6, tol),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=6,
            color=colour,
        )
        drew = 1
    return drew


def h1_agreement(rows: Sequence[ClaimRow]) -> str:
    """H1: Hv entries from torch.func against double backward (y = x line), and the
    finite-difference relative error vs step (log-log, slope-2 reference)."""
    cases = [r for r in _rows(rows, "H1") if isinstance(r.details.get("hv_torch_func"), list)]
    pairs = [
        (a, b)
        for r in cases
        for a, b in zip(r.details["hv_torch_func"], r.details.get("hv_double_backward") or [])
        if number(a) is not None and number(b) is not None
    ]
    if not pairs:
        raise Unavailable("no H1 result with hv_torch_func / hv_double_backward entries")
    fig, (ax, ax2) = _figure(9.0, 3.8, 2)
    xs, ys = [number(a) for a, _ in pairs], [number(b) for _, b in pairs]
    ax.scatter(xs, ys, s=6, alpha=0.6)
    lim = max(abs(v) for v in xs + ys) or 1.0  # type: ignore[arg-type, operator]
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1, label="y = x")
    worst = max(abs(a - b) for a, b in zip(xs, ys))  # type: ignore[operator]
    ax.set_title(f"H1: {len(pairs)} entries, max |difference| {worst:.2e}", fontsize=10)
    ax.set_xlabel("(Hv)ᵢ via torch.func")
    ax.set_ylabel("(Hv)ᵢ via double backward")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fd_cases = []
    for r in cases:
        fd = _positive_pairs(r.details.get("fd_steps") or [], r.details.get("fd_rel_errors") or [])
        if len(fd) >= 2:
            ax2.plot(*zip(*fd), "o-", lw=1, ms=3, alpha=0.8)
            fd_cases.append(fd)
    if fd_cases:
        _slope_reference(ax2, fd_cases, 2.0)
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("finite-difference step")
        ax2.set_ylabel("relative error of FD Hv")
        ax2.set_title("finite differences of g", fontsize=10)
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=7)
    else:
        ax2.text(
            0.5,
            0.5,
            "not available: no fd_steps / fd_rel_errors",
            ha="center",
            transform=ax2.transAxes,
        )
        ax2.set_axis_off()
    return svg_text(fig, "fig-h1")


def train_test_curves(runs: Sequence[Run]) -> str:
    """Train loss and test accuracy per epoch, mean over seeds (band: min–max) per measure."""
    runs = _need_runs(runs)
    fig, (ax, ax2) = _figure(10.0, 3.8, 2)
    a = _curves_panel(ax, runs, "train_loss", "train loss", log=True)
    b = _curves_panel(ax2, runs, "test_acc", "test accuracy")
    if not (a or b):
        raise Unavailable("metrics.jsonl has neither train loss nor test accuracy")
    return svg_text(fig, "fig-curves")


def norms_around_pruning(runs: Sequence[Run]) -> str:
    """‖θ‖² and ‖g‖² per epoch, mean over seeds per measure, pruning rounds shaded; at each
    round the values just before and after surgery (:data:`PRUNE_JUMPS`) when logged."""
    runs = _need_runs(runs)
    fig, (ax, ax2) = _figure(10.0, 3.8, 2)
    a = _curves_panel(ax, runs, "theta_sq", "‖θ‖²", jumps=PRUNE_JUMPS["theta_sq"])
    b = _curves_panel(ax2, runs, "grad_sq", "‖g‖²", log=True, jumps=PRUNE_JUMPS["grad_sq"])
    if not (a or b):
        names = ", ".join(_metric_names("theta_sq") + _metric_names("grad_sq"))
        raise Unavailable(f"metrics.jsonl has no ‖θ‖² or ‖g‖² fields (looked for {names})")
    return svg_text(fig, "fig-norms")


def kept_widths(runs: Sequence[Run]) -> str:
    """Kept filters per layer per measure (fraction of the dense width when recorded, else
    counts), mean over seeds; one panel per dataset/network."""
    runs = [r for r in _need_runs(runs) if r.widths]
    if not runs:
        raise Unavailable("no finished run records widths (result 'widths')")
    combos = sorted({(r.dataset, r.network) for r in runs})[:4]
    fig = Figure(figsize=(10.0, 3.4 * len(combos)), layout="constrained")
    axes = fig.subplots(len(combos), 1, squeeze=False)[:, 0]
    colours = _colours(r.measure for r in runs)
    for ax, combo in zip(axes, combos):
        members = [r for r in runs if (r.dataset, r.network) == combo]
        layers = sorted({k for r in members for k in r.widths["kept"]}, key=_natural)  # type: ignore[index]
        measures = sorted({r.measure for r in members})
        fraction = all(set(layers) <= set(r.widths["dense"]) for r in members)  # type: ignore[index]
        width = 0.8 / len(measures)
        for j, m in enumerate(measures):
            ms = [r for r in members if r.measure == m]
            vals = []
            for layer in layers:
                xs = [
                    r.widths["kept"][layer] / (r.widths["dense"][layer] if fraction else 1.0)  # type: ignore[index]
                    for r in ms
                    if layer in r.widths["kept"]  # type: ignore[index]
                ]
                vals.append(sum(xs) / len(xs) if xs else 0.0)
            pos = [i + (j - (len(measures) - 1) / 2) * width for i in range(len(layers))]
            ax.bar(pos, vals, width=width, color=colours[m], label=f"{m} (n={len(ms)})")
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("kept fraction" if fraction else "kept filters")
        ax.set_title(f"{combo[0]} / {combo[1]}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    return svg_text(fig, "fig-widths")


def _natural(name: str) -> list[Any]:
    """Sort key putting features.3 before features.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall τ-b = Σ_{i<j} sgn(x_i−x_j)·sgn(y_i−y_j) / √(n_x · n_y), n_x (n_y) = number of
    pairs not tied in x (y); NaN when either is 0. (No scipy import: it costs seconds.)"""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    den = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float(np.sum(sx * sy) / den) if den else math.nan


def _per_seed(values: list[Any]) -> list[list[float]]:
    """A series as per-seed lists: ``[[...], [...]]`` stays, a flat ``[...]`` is one seed."""
    rows = values if values and isinstance(values[0], list) else [values]
    return [[v if (v := number(x)) is not None else math.nan for x in row] for row in rows]


def _seed_lines(ax: Any, xs: list[Any] | None, values: list[Any], label: str, **kw: Any) -> None:
    """Each seed thin, the mean over seeds (index-aligned) thick, against ``xs`` (or index)."""
    seeds = _per_seed(values)
    n = min(len(row) for row in seeds)
    x = [number(v) for v in xs[:n]] if xs and len(xs) >= n else list(range(n))
    mean = np.nanmean(np.array([row[:n] for row in seeds]), axis=0)
    (line,) = ax.plot(x, mean, lw=1.8, label=f"{label} (n={len(seeds)})", **kw)
    if len(seeds) > 1:
        for row in seeds:
            ax.plot(x, row[:n], lw=0.6, alpha=0.35, color=line.get_color())


def _s3_scatter(ax: Any, r: ClaimRow) -> bool:
    """importance vs |ΔL| per seed (log-log), τ-b per seed computed here as S3 does."""
    imp, change = series(r.details, "importance"), series(r.details, "loss_change")
    if imp is None or change is None:
        return False
    drawn = False
    for k, (gx, gy) in enumerate(zip(_per_seed(imp[1]), _per_seed(change[1]))):
        pts = [(a, abs(b)) for a, b in zip(gx, gy) if math.isfinite(a) and math.isfinite(b)]
        if len(pts) < 2:
            continue
        tau = kendall_tau(*zip(*pts))
        shown = [(a, b) for a, b in pts if a > 0 and b > 0]
        if shown:
            ax.scatter(*zip(*shown), s=7, alpha=0.6, label=f"seed {k}: τ = {tau:.2f}")
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("importance |θ_fᵀg_f|")
        ax.set_ylabel("|actual loss change| on removing f")
        ax.set_title(f"S3: {r.case}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return drawn


def _s3_taus(ax: Any, r: ClaimRow) -> bool:
    """Kendall τ(importance, |ΔL|) over epochs: each seed thin, the mean thick."""
    tau, t = series(r.details, "tau"), series(r.details, "time")
    if tau is None:
        return False
    _seed_lines(ax, t[1] if t else None, tau[1], tau[0])
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel(t[0] if t else "index")
    ax.set_ylabel("Kendall τ")
    ax.set_title("S3: τ over training", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return True


def importance_vs_loss_change(rows: Sequence[ClaimRow]) -> str:
    """S3, from the first record with raw series: left, each filter's importance |θ_fᵀg_f|
    against the actual |ΔL_f| of removing it, with Kendall τ-b per seed; right, τ over
    epochs. Either panel may be absent; both absent: Unavailable."""
    cases = _rows(rows, "S3")
    if not cases:
        raise Unavailable("no S3 result in the claims file(s)")
    has = ("importance", "tau")
    r = next((c for c in cases if any(series(c.details, k) for k in has)), cases[0])
    fig, (ax, ax2) = _figure(10.0, 4.2, 2)
    a, b = _s3_scatter(ax, r), _s3_taus(ax2, r)
    if not (a or b):
        roles = ("importance", "loss_change", "tau")
        raise Unavailable(
            "S3 details have none of the series "
            + ", ".join("/".join(SERIES_NAMES[k]) for k in roles)
        )
    for panel, ok in ((ax, a), (ax2, b)):
        if not ok:
            panel.text(
                0.5, 0.5, "not available: series absent", ha="center", transform=panel.transAxes
            )
            panel.set_axis_off()
    return svg_text(fig, "fig-s3")


def flow_vs_sgd(rows: Sequence[ClaimRow]) -> str:
    """F1: the gradient-flow prediction of d‖θ‖²/dt against the change SGD realised (first
    record, usually the headline setting), and Kendall τ between the flow's and SGD's filter
    rankings over time, one line per setting (mean over seeds)."""
    cases = _rows(rows, "F1")
    if not cases:
        raise Unavailable("no F1 result in the claims file(s)")
    fig, (ax, ax2) = _figure(11.0, 3.8, 2)
    drawn = taus = 0
    t_name = "index"
    for r in cases:
        pred, obs = series(r.details, "predicted"), series(r.details, "observed")
        if pred and obs and not drawn:
            _seed_lines(ax, None, pred[1], f"{r.case}: flow", ls="--")
            _seed_lines(ax, None, obs[1], f"{r.case}: SGD")
            drawn += 1
        tau, t = series(r.details, "tau"), series(r.details, "time")
        if tau:
            t_name = t[0] if t else t_name
            _seed_lines(ax2, _per_seed(t[1])[0] if t else None, tau[1], r.case)
            taus += 1
    if not (drawn or taus):
        raise Unavailable("F1 details have no predicted/realised rate or Kendall τ series")
    panels = ((ax, drawn, "sample", "d‖θ‖²/dt"), (ax2, taus, t_name, "Kendall τ (flow vs SGD)"))
    for a, ok, xlabel, ylabel in panels:
        if ok:
            a.set_xlabel(xlabel)
            a.set_ylabel(ylabel)
            a.grid(alpha=0.3)
            if a is ax2:  # one line per setting: the legend goes beside the panel
                a.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            else:
                a.legend(fontsize=6)
        else:
            a.text(0.5, 0.5, "not available: series absent", ha="center", transform=a.transAxes)
            a.set_axis_off()
    ax.set_title("F1: gradient-flow prediction vs SGD", fontsize=10)
    ax2.set_title("F1: ranking agreement over time", fontsize=10)
    return svg_text(fig, "fig-f1")


#: Statistical claims drawn as paired differences per seed (S3 and F1 have their own figures).
PAIRED_CLAIMS = ("S1", "S2", "S4", "S5", "S6")


def paired_differences(claim: str, rows: Sequence[ClaimRow]) -> str:
    """One row per case of statistical ``claim``: the per-seed values the test used
    (``details.values``: paired differences, or per-seed statistics for one-sample tests) as
    dots, their mean (``effect``) with its 95% interval ``[ci_low, ci_high]`` as a bar, the
    zero line and, for non-inferiority, the margin line at ``−margin``. Colour: the verdict."""
    cases = [
        r
        for r in _rows(rows, claim)
        if r.is_statistical and isinstance(r.details.get("values"), list) and r.details["values"]
    ]
    if not cases:
        raise Unavailable(f"no case of {claim} records its per-seed values")
    fig, (ax,) = _figure(7.2, 1.2 + 0.7 * len(cases))
    labels = []
    for i, r in enumerate(cases):
        y = len(cases) - 1 - i
        values = [v for v in (number(x) for x in r.details["values"]) if v is not None]
        colour = VERDICT_COLOURS.get(r.verdict, "0.4")
        jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
        ax.plot(values, [y + j for j in jitter], "o", color=colour, ms=4, alpha=0.7)
        if r.ci is not None:
            ax.plot(list(r.ci), [y - 0.28] * 2, "-", color=colour, lw=3)
        if r.effect is not None:
            ax.plot([r.effect], [y - 0.28], "D", color="k", ms=5)
        margin = r.detail("margin")
        if r.details.get("rule") == "noninferiority" and margin:
            ax.plot([-margin] * 2, [y - 0.45, y + 0.45], "--", color="0.3", lw=1)
        n = r.n if r.n is not None else len(values)
        labels.append(f"{r.case[:48]}\n{r.verdict}, n={n}")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(range(len(cases) - 1, -1, -1), labels, fontsize=7)
    ax.set_ylim(-0.8, len(cases) - 0.2)
    ax.set_xlabel("per-seed value (dots); ◆ mean with its 95% CI (bar); dashed: margin")
    ax.set_title(f"{claim}: paired differences per seed", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return svg_text(fig, f"fig-{claim.lower()}")


def paired_figures(data: ReportData) -> list[FigureOut]:
    """A paired-differences figure for each of S1, S2, S4, S5, S6 present in the claims."""
    rows = data.claims
    present = [c for c in PAIRED_CLAIMS if any(r.id == c or r.id.startswith(c + "-") for r in rows)]
    return [
        _attempt(
            f"fig-{cid.lower()}",
            f"{cid}: paired differences per seed",
            "Dots: one seed each; ◆ and bar: mean and 95% CI of the test; the claim is"
            " supported when the bar lies right of 0 (or of the dashed margin).",
            lambda cid=cid: paired_differences(cid, rows),
        )
        for cid in present
    ]


# --------------------------------------------------------------------------------------------
# all figures of a page


def _attempt(fig_id: str, title: str, caption: str, draw: Callable[[], str]) -> FigureOut:
    try:
        return FigureOut(fig_id, title, caption, svg=draw())
    except Unavailable as exc:
        return FigureOut(fig_id, title, caption, note=f"not available: {exc}")
    except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the page
        why = f"drawing failed ({type(exc).__name__}: {exc})".splitlines()[0]
        print(f"gfverify report: warning: figure {fig_id}: {why}", file=sys.stderr)
        return FigureOut(fig_id, title, caption, note=f"not available: {why}")


def identity_figures(data: ReportData) -> list[FigureOut]:
    """One convergence figure per identity claim id with step ladders, then H1's."""
    rows = data.claims
    ids = list(
        dict.fromkeys(
            r.id for r in rows if r.kind == "identity" and isinstance(r.details.get("steps"), list)
        )
    )
    out = [
        _attempt(
            f"fig-identity-{cid}",
            f"{cid}: error vs step size",
            "Each line is one case; the dashed line has the slope of the method's order.",
            lambda cid=cid: identity_convergence(cid, rows),
        )
        for cid in ids
    ]
    if not ids:
        out.append(
            FigureOut(
                "fig-identity",
                "",  # the section heading already says what it would show
                "",
                note="not available: no identity result with step ladders",
            )
        )
    out.append(
        _attempt(
            "fig-h1",
            "H1: Hessian-vector products agree",
            "Left: torch.func vs double backward, entry by entry. Right: FD error vs step.",
            lambda: h1_agreement(rows),
        )
    )
    return out


def run_figures(data: ReportData) -> list[FigureOut]:
    """Training curves, norms, widths, and the S3 / F1 series."""
    runs, rows = data.runs, data.claims
    return [
        _attempt(
            "fig-curves",
            "Train loss and test accuracy",
            "Mean over seeds per measure; band: min–max; grey: pruning rounds.",
            lambda: train_test_curves(runs),
        ),
        _attempt(
            "fig-norms",
            "‖θ‖² and ‖g‖² around pruning",
            "Mean over seeds per measure; grey: pruning rounds; ○/●: just before/after each"
            " round's surgery.",
            lambda: norms_around_pruning(runs),
        ),
        _attempt(
            "fig-widths",
            "Kept filters per layer",
            "Mean over seeds per measure.",
            lambda: kept_widths(runs),
        ),
        _attempt(
            "fig-s3",
            "Importance vs actual loss change (S3)",
            "Per-filter scatter with Kendall τ when recorded, else τ per epoch"
            " (thin: seeds, thick: mean).",
            lambda: importance_vs_loss_change(rows),
        ),
        _attempt(
            "fig-f1",
            "Gradient flow vs SGD drift (F1)",
            "Left: predicted (dashed) vs realised (solid) d‖θ‖²/dt; right: Kendall τ of the"
            " rankings over flow time (thin: seeds, thick: mean).",
            lambda: flow_vs_sgd(rows),
        ),
        *paired_figures(data),
    ]
