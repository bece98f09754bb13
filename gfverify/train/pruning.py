"""One pruning round: scores → global ranking → surgery → optimizer rebuild.

**Counting.** A *filter* is one output channel of a prunable layer (every producing layer except
the classifier: VGG's 10 convs, MobileNet's stem + 13 pointwise convs, ResNet-56's 57 convs
incl. stem and projection shortcuts). N₀ = Σ original widths. A filter is *alive* unless it was
removed or masked (masked channels count as pruned, as the official "pruned %" does). Round k
(0-based) prunes n = :func:`gfverify.schedule.filters_to_prune` (N₀, alive, schedule, k)
filters, so after the last round round(N₀·(1 − P)) filters are alive whenever floors allow.

**Budget with** ``prune.count_tied_twice`` (the official MobileNet quirk): the official code
ranks every channel that feeds a depthwise conv twice and its budget counts ranking ENTRIES,
n = int(p_k · E) with E = alive filters + their tied duplicates (``ranking.total_entries``) and
p_k the schedule's per-round fraction (:meth:`Schedule.fractions`); a selected duplicate uses up
one unit and removes nothing. The round then is :func:`gfverify.ranking.plan_from_fraction`, and
``RoundPlan.n_requested`` / ``n_selected`` / ``shortfall`` count entries. (Counting the budget
in filters while duplicates use it up removed about half the official number: 328 instead of
614 filters in round 1 of MobileNet-V1's 25-round 75 % schedule.) The truncation compounds over
rounds, as in the official code; the closed-form target above applies only without the quirk.

**Ranking** (:func:`plan_round`). Scores of the alive filters only (masked channels are left
out, so re-selecting a dead channel never uses up the budget) go to
:func:`gfverify.ranking.plan_global` with floors ``default_floor(original width)``,
``floor_by = prune.floor`` and the model's protected layers (ResNet-56: the stem).

- ``mode="paper"`` (ResNet, official): every layer is ranked on its own; block-internal layers
  are removed, residual-coupled layers (block outputs, shortcuts) are masked.
- ``mode="full"``: a residual-coupled group loses a channel in all its members at once. The
  group is ranked under its representative (first member) with a combined score, and removing
  one coupled channel uses up one unit of n per member filter; channels are taken whole, so
  the count may overshoot n by less than one group (:func:`_full_mode_plan`). A group with a
  protected member is protected. Combined score of channel c from the members' scores s_m[c]:
  √(Σ_m s_m[c]²) for √-reduced measures (magnitude: the norm of the union of the filters,
  exact), Σ_m s_m[c] for sum-reduced ones (exact: the union's sum), and Σ_m s_m[c] for
  |·|-reduced ones (an upper bound of the union's |Σ|, a documented approximation).

**EMA tracking** (``prune.ema_batches`` = k > 0, :class:`ScoreEMA`): during the training epoch
that precedes a round, after every SGD step t the measure's per-filter scores s_t are computed
on that step's (augmented) training batch with the scoring protocol (eval-mode BatchNorm,
measure temperature), and m_t = α·s_t + (1 − α)·m_{t−1}, α = 2/(k + 1), m_1 = s_1. The round
ranks m_T instead of scores on the scoring batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gfverify.config import RunConfig
from gfverify.errors import ModelError
from gfverify.groups import FilterGroup
from gfverify.measures import get_measure, score
from gfverify.prune import combine_coupled, coupled_plan  # noqa: F401 (re-exported)
from gfverify.ranking import plan_from_fraction, plan_global
from gfverify.schedule import Schedule, filters_to_prune
from gfverify.surgery import Mode, PruneRecord, PruningHistory, prune_filters, rebuild_sgd


@dataclass(frozen=True)
class PruneSetup:
    """What stays fixed over a run's rounds (computed on the dense model)."""

    mode: Mode
    protected: frozenset[str]
    coupled: tuple[tuple[str, ...], ...]
    original_widths: dict[str, int]
    floor_by: str
    schedule: Schedule
    #: source layer -> the depthwise layers tied to its channels (dense model)
    ties: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: rank each source layer with ``ties`` twice (the official MobileNet quirk)
    count_tied_twice: bool = False

    @property
    def total_original(self) -> int:
        """N₀: filters of all prunable layers of the dense model."""
        return sum(self.original_widths.values())


def alive_indices(
    widths: Mapping[str, int], masked: Mapping[str, list[int]]
) -> dict[str, list[int]]:
    """Layer -> its unmasked channel positions (current numbering)."""
    out = {}
    for name, width in widths.items():
        dead = set(masked.get(name, ()))
        out[name] = [i for i in range(width) if i not in dead]
    return out


def count_alive(widths: Mapping[str, int], masked: Mapping[str, list[int]]) -> int:
    """Σ_layers (width − masked channels)."""
    return sum(len(v) for v in alive_indices(widths, masked).values())


def measure_scores(
    model: nn.Module,
    config: RunConfig,
    batches: list[tuple[Tensor, Tensor]],
    groups: Mapping[str, FilterGroup],
    params_init: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """``measures.score`` of ``measure.name`` per filter with the config's options (samples,
    temperatures — None = the measure's defaults —, include_bn, use_init, hvp_method)."""
    m = config.measure
    return score(
        model,
        m.name,
        batches,
        "filter",
        samples=m.samples,
        temperature=m.temperature,
        train_temperature=config.train.temperature,
        hg_temperature=m.hg_temperature,
        include_bn=m.include_bn,
        use_init=m.use_init,
        hvp_method=m.hvp_method,
        params_init=dict(params_init) if params_init is not None else None,
        seed=config.seed,
        groups=dict(groups),
    )


class ScoreEMA:
    """m_t = α·s_t + (1 − α)·m_{t−1} with α = 2/(k + 1) and m_1 = s_1 (float64)."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"EMA span must be >= 1, got {k}")
        self.alpha = 2.0 / (k + 1)
        self.value: dict[str, Tensor] | None = None
        self.count = 0

    def update(self, scores: Mapping[str, Tensor]) -> None:
        s = {n: v.detach().to(torch.float64) for n, v in scores.items()}
        if self.value is None:
            self.value = {n: v.clone() for n, v in s.items()}
        else:
            a = self.alpha
            self.value = {n: a * s[n] + (1 - a) * self.value[n] for n in self.value}
        self.count += 1


@dataclass(frozen=True)
class RoundPlan:
    """A round's decision: ``plan`` = layer -> current channel indices to remove or mask
    (non-empty layers only), ``n_requested`` filters asked for by the schedule, ``n_selected``
    filters the plan prunes (both in ranking entries with ``count_tied_twice``),
    ``shortfall`` = max(0, requested − selected) (floors, protection), ``alive_before``
    alive filters before the round."""

    plan: dict[str, Tensor]
    n_requested: int
    n_selected: int
    shortfall: int
    alive_before: int


def _full_mode_plan(
    scores: Mapping[str, Tensor],
    setup: PruneSetup,
    widths: Mapping[str, int],
    n: int,
    measure_name: str,
) -> tuple[dict[str, list[int]], int]:
    """Full mode: whole coupled channels (weight |group| filters each) in ranking order.

    :func:`plan_global` with an unlimited budget gives the eligible channels of every ranked
    layer (floors, protection); they are taken in ascending (score, layer position, index)
    order, the ranking's own key, while fewer than ``n`` filters are selected, so the last
    channel may overshoot ``n`` by less than its group's size.
    """
    return coupled_plan(
        scores,
        setup.coupled,
        widths,
        n,
        get_measure(measure_name).reduce,
        original_widths=setup.original_widths,
        protected=setup.protected,
        floor_by=setup.floor_by,
    )


def plan_round(
    scores: Mapping[str, Tensor],
    setup: PruneSetup,
    widths: Mapping[str, int],
    masked: Mapping[str, list[int]],
    round_index: int,
    measure_name: str,
) -> RoundPlan:
    """Which filters round ``round_index`` prunes (module docstring: counting and ranking)."""
    missing = sorted(set(widths) - set(scores))
    if missing:
        raise ModelError(f"no importance scores for layer {missing[0]!r}")
    alive = alive_indices(widths, masked)
    alive_total = sum(len(v) for v in alive.values())
    n = filters_to_prune(setup.total_original, alive_total, setup.schedule, round_index)
    if setup.mode == "full" and setup.coupled:
        if any(masked.values()):
            raise ModelError("full-mode pruning of a model with masked channels")
        chosen, selected = _full_mode_plan(scores, setup, widths, n, measure_name)
        plan = {k: torch.tensor(v, dtype=torch.long) for k, v in chosen.items()}
    else:
        compressed = {
            name: scores[name].double()[torch.tensor(alive[name], dtype=torch.long)]
            for name in widths
        }
        options = {
            "original_widths": setup.original_widths,
            "protected": {p for p in setup.protected if p in compressed},
            "floor_by": setup.floor_by,
            "ties": {k: v for k, v in setup.ties.items() if k in compressed},
            "count_tied_twice": setup.count_tied_twice,
        }
        if setup.count_tied_twice and options["ties"]:
            # The official budget counts ranking entries (each tied channel twice):
            # n = int(p_k · entries), exactly as ranking.plan_from_fraction (module docstring).
            p_k = setup.schedule.fractions()[round_index]
            ranking = plan_from_fraction(compressed, p_k, **options)
            n, selected = ranking.n_requested, ranking.n_selected
        else:
            ranking = plan_global(compressed, n, **options)
            selected = ranking.n_removed
        plan = {
            k: torch.tensor(alive[k], dtype=torch.long)[v]
            for k, v in ranking.remove.items()
            if v.numel()
        }
    return RoundPlan(
        plan=plan,
        n_requested=n,
        n_selected=selected,
        shortfall=max(0, n - selected),
        alive_before=alive_total,
    )


def apply_round(
    model: nn.Module,
    optimizer: torch.optim.SGD,
    plan: Mapping[str, Tensor],
    setup: PruneSetup,
    example: Tensor,
    history: PruningHistory,
    preserve_momentum: bool,
) -> tuple[PruneRecord, torch.optim.SGD]:
    """Surgery (``prune_filters`` in ``setup.mode``, appended to ``history``) and the rebuilt
    optimizer (``rebuild_sgd``: momentum carried over if ``preserve_momentum``, else reset)."""
    old = dict(model.named_parameters())
    record = prune_filters(model, dict(plan), example, setup.mode, history)
    new_opt = rebuild_sgd(model, optimizer, old, record.kept_index_map, preserve_momentum)
    return record, new_opt
