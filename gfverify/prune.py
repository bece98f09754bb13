"""Prune any model by importance scores: plan and surgery with coupled layers handled.

The public call for "remove these filters by these scores":

    result = gfverify.prune.prune(model, scores, fraction=0.3, measure="grasp")

``scores`` is what :func:`gfverify.measures.score` returns at filter granularity (layer ->
one score per filter, lowest pruned first). The same planning code runs inside the trainer
(:func:`gfverify.train.pruning.plan_round` calls :func:`coupled_plan` and
:func:`combine_coupled` in ``full`` mode).

**Counting.** N = Σ current widths of the ranked layers (prunable layers with scores; the
classifier and the layers :func:`gfverify.groups.unprunable` lists are left out, each with its
reason in ``PruneResult.skipped``). ``fraction`` asks for n = int(fraction · N) filters.

**Coupled layers** (``mode="full"``, residual adds, concatenations are coupled by
torch-pruning's graph): a coupled group loses a channel in all members at once, ranked under
its representative (first member) with the combined score (:func:`combine_coupled`):
√(Σ_m s_m[c]²) for √-reduced measures (magnitude: the norm of the union of the filters),
Σ_m s_m[c] otherwise (exact for sum-reduced measures; for |·|-reduced ones an upper bound of
the union's |Σ|). With ``count="filters"`` (the trainer's) removing one coupled channel uses
up |group| filters of n and the last channel may overshoot n by less than one group; with
``count="channels"`` (Torch-Pruning's ``MetaPruner`` count) every coupled channel is one entry
and N counts each group once. Depthwise convs tied to a layer's channels are cut with it.
``mode="paper"``: every layer is ranked on its own and coupled layers are masked, not removed
(:func:`gfverify.surgery.prune_filters`).

**Floors.** Each ranked layer keeps at least ``min_keep`` filters (an int for all layers, a
dict per layer); ``None`` = the official floor int(0.05 · original width) + 1
(:func:`gfverify.ranking.default_floor`).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from gfverify.errors import ConfigError, ModelError
from gfverify.groups import analyze
from gfverify.ranking import FloorBy, plan_global
from gfverify.surgery import Mode, PruneRecord, PruningHistory, prune_filters

Reduce = Literal["sum", "abs", "sqrt"]
Count = Literal["filters", "channels"]


def combine_coupled(scores: Mapping[str, Tensor], members: tuple[str, ...], reduce: str) -> Tensor:
    """Score of a coupled group's channels from its members' scores s_m: √(Σ_m s_m²) for
    ``reduce == "sqrt"``, else Σ_m s_m (module docstring)."""
    stack = torch.stack([scores[m].to(torch.float64) for m in members])
    if reduce == "sqrt":
        return stack.pow(2).sum(dim=0).sqrt()
    return stack.sum(dim=0)


def coupled_plan(
    scores: Mapping[str, Tensor],
    coupled: tuple[tuple[str, ...], ...],
    widths: Mapping[str, int],
    n: int,
    reduce: str,
    *,
    original_widths: Mapping[str, int] | None = None,
    min_keep: Mapping[str, int] | None = None,
    protected: Set[str] = frozenset(),
    floor_by: FloorBy = "importance",
    count: Count = "filters",
) -> tuple[dict[str, list[int]], int]:
    """Full mode: whole coupled channels in ranking order, and the number of entries selected.

    Layers of ``widths`` are ranked, coupled groups under their representative with
    :func:`combine_coupled`. :func:`gfverify.ranking.plan_global` with an unlimited budget
    gives the eligible channels (floors: ``min_keep`` else ``default_floor(original_widths)``;
    a group with a protected member is protected); they are taken in ascending (score, layer
    position, index) order while fewer than ``n`` entries are selected, an entry being one
    filter per member (``count="filters"``) or one per channel (``count="channels"``).
    Returns (representative -> sorted indices, entries selected).
    """
    if count not in ("filters", "channels"):
        raise ConfigError(f"count must be 'filters' or 'channels', got {count!r}")
    members = {m for g in coupled for m in g[1:]}
    group_of = {g[0]: g for g in coupled}
    ranked = {
        name: combine_coupled(scores, group_of[name], reduce)
        if name in group_of
        else scores[name].double()
        for name in widths
        if name not in members
    }
    prot = {g[0] for g in coupled if set(g) & set(protected)}
    prot |= {p for p in protected if p in ranked}
    keep = None if min_keep is None else {k: v for k, v in min_keep.items() if k in ranked}
    eligible = plan_global(
        ranked,
        sum(widths.values()),
        original_widths=original_widths,
        min_keep=keep,
        protected=prot,
        floor_by=floor_by,
    )
    order = sorted(
        (float(ranked[name][i]), pos, int(i), name)
        for pos, name in enumerate(ranked)
        for i in eligible.remove[name].tolist()
    )
    chosen: dict[str, list[int]] = {}
    selected = 0
    for _, _, i, name in order:
        if selected >= n:
            break
        chosen.setdefault(name, []).append(i)
        selected += len(group_of.get(name, (name,))) if count == "filters" else 1
    return {k: sorted(v) for k, v in chosen.items()}, selected


@dataclass(frozen=True)
class PrunePlan:
    """Which filters a pruning call removes.

    ``plan``: layer -> current filter indices (full mode: coupled groups under their
    representative), non-empty layers only. ``n_requested`` / ``n_selected``: entries asked
    for / selected (``shortfall`` = the difference, from floors). ``total``: N, the entries
    ranked. ``skipped``: layer -> why it was not ranked (unprunable, or no scores).
    """

    plan: dict[str, Tensor]
    n_requested: int
    n_selected: int
    total: int
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def shortfall(self) -> int:
        return max(0, self.n_requested - self.n_selected)


@dataclass(frozen=True)
class PruneResult:
    """A pruning call's plan and the surgery's record (``None`` for an empty plan)."""

    plan: PrunePlan
    record: PruneRecord | None


def _reduce_of(measure: str | None, reduce: str | None) -> str:
    if reduce is not None:
        if reduce not in ("sum", "abs", "sqrt"):
            raise ConfigError(f"reduce must be 'sum', 'abs' or 'sqrt', got {reduce!r}")
        return reduce
    if measure is None:
        return "sum"
    from gfverify.measures import get_measure

    return get_measure(measure).reduce


def plan_pruning(
    model: nn.Module,
    scores: Mapping[str, Tensor],
    fraction: float | None = None,
    *,
    n: int | None = None,
    example_input: Tensor | None = None,
    mode: Mode = "full",
    measure: str | None = None,
    reduce: Reduce | None = None,
    min_keep: int | Mapping[str, int] | None = None,
    protected: Set[str] = frozenset(),
    floor_by: FloorBy = "importance",
    count: Count = "filters",
) -> PrunePlan:
    """The :class:`PrunePlan` for ``fraction`` (n = int(fraction · N)) or ``n`` entries.

    ``measure`` (or ``reduce``) sets how coupled members' scores combine (module docstring).
    Scores of layers that are not prunable are ignored; a prunable layer without scores (or a
    coupled group with a member without scores) is not ranked; both are listed in ``skipped``.
    """
    if (fraction is None) == (n is None):
        raise ConfigError("give exactly one of fraction and n")
    if fraction is not None and not (isinstance(fraction, float | int) and 0 <= fraction <= 1):
        raise ConfigError(f"pruning fraction must be a number in [0, 1], got {fraction!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ConfigError(f"n must be a non-negative integer, got {n!r}")
    if mode not in ("full", "paper"):
        raise ConfigError(f"mode must be 'full' or 'paper', got {mode!r}")
    red = _reduce_of(measure, reduce)
    info = analyze(model, example_input)
    skipped = dict(info.skipped)
    prunable = {k: g for k, g in info.groups.items() if k not in info.output_layers}
    for name, s in scores.items():
        if name in prunable and tuple(torch.as_tensor(s).shape) != (prunable[name].num_filters,):
            raise ModelError(
                f"scores of layer {name!r} have shape {tuple(torch.as_tensor(s).shape)}; "
                f"expected ({prunable[name].num_filters},), one per filter"
            )
    coupled = info.coupled if mode == "full" else ()
    for grp in coupled:
        if any(m not in scores for m in grp):
            for m in grp:
                skipped.setdefault(m, f"layer {m!r}: its coupled group has members without scores")
    for name in prunable:
        if name not in scores:
            skipped.setdefault(name, f"layer {name!r} has no scores")
    widths = {k: g.num_filters for k, g in prunable.items() if k not in skipped}
    coupled = tuple(g for g in coupled if not set(g) & set(skipped))
    if isinstance(min_keep, int):
        keep: dict[str, int] | None = {k: min_keep for k in widths}
    else:
        keep = None if min_keep is None else dict(min_keep)
    rest = {m for g in coupled for m in g[1:]}
    if count == "channels":
        total = sum(w for k, w in widths.items() if k not in rest)
    else:
        total = sum(widths.values())
    target = int(fraction * total) if fraction is not None else int(n)
    clean = {k: torch.as_tensor(scores[k]).detach().double().cpu() for k in widths}
    if coupled:
        chosen, selected = coupled_plan(
            clean,
            coupled,
            widths,
            target,
            red,
            original_widths=widths,
            min_keep=keep,
            protected=protected,
            floor_by=floor_by,
            count=count,
        )
    else:
        ranking = plan_global(
            clean,
            target,
            original_widths=widths,
            min_keep={k: v for k, v in keep.items() if k in clean} if keep else None,
            protected={p for p in protected if p in clean},
            floor_by=floor_by,
        )
        chosen = {k: v.tolist() for k, v in ranking.remove.items() if v.numel()}
        selected = ranking.n_removed
    plan = {k: torch.tensor(v, dtype=torch.long) for k, v in chosen.items() if v}
    return PrunePlan(plan, target, selected, total, skipped)


def prune(
    model: nn.Module,
    scores: Mapping[str, Tensor] | None = None,
    fraction: float | None = None,
    *,
    plan: PrunePlan | Mapping[str, Tensor | list[int]] | None = None,
    n: int | None = None,
    example_input: Tensor | None = None,
    mode: Mode = "full",
    measure: str | None = None,
    reduce: Reduce | None = None,
    min_keep: int | Mapping[str, int] | None = None,
    protected: Set[str] = frozenset(),
    floor_by: FloorBy = "importance",
    count: Count = "filters",
    history: PruningHistory | None = None,
) -> PruneResult:
    """Remove filters from ``model`` in place: by ``scores`` and ``fraction`` (or ``n``), via
    :func:`plan_pruning`, or by a given ``plan`` ({layer: current indices}, coupled groups under
    their representative); then :func:`gfverify.surgery.prune_filters` (coupled members,
    tied depthwise convs, BatchNorms and consumers' input channels cut along). Returns the
    plan and the surgery record (appended to ``history`` when given)."""
    if plan is None:
        if scores is None:
            raise ConfigError("give scores (with fraction or n) or a plan")
        chosen = plan_pruning(
            model,
            scores,
            fraction,
            n=n,
            example_input=example_input,
            mode=mode,
            measure=measure,
            reduce=reduce,
            min_keep=min_keep,
            protected=protected,
            floor_by=floor_by,
            count=count,
        )
    elif isinstance(plan, PrunePlan):
        chosen = plan
    else:
        given = {k: torch.as_tensor(v, dtype=torch.long) for k, v in plan.items()}
        size = sum(int(v.numel()) for v in given.values())
        chosen = PrunePlan(given, size, size, size)
    if not any(v.numel() for v in chosen.plan.values()):
        return PruneResult(chosen, None)
    record = prune_filters(model, chosen.plan, example_input, mode, history)
    return PruneResult(chosen, record)
