"""Global filter ranking: which filters a pruning round removes (spec/paper.md §3.4–§3.6).

All candidate filters of all prunable layers are sorted together by importance, ascending,
and the lowest ``n_prune`` are removed. Ties are broken deterministically by the key

    (score, position of the layer in the ``scores`` dict, filter index)

(the official code uses NumPy's unstable ``argsort``, whose tie order is unspecified).

Per-layer floors (official ``constrain_ratios``, spec §3.6 / §6 item 11): a layer of ORIGINAL
width w keeps at least f = int(0.05·w) + 1 filters (:func:`default_floor`), or
min(f, current width) when fewer remain. The floor set is either

- ``floor_by="importance"``: the layer's f highest-scoring filters (highest key), or
- ``floor_by="index"``: the f filters with the HIGHEST CURRENT INDICES, whatever their score
  (the official behaviour: those entries get importance 1e7).

Protected layers (e.g. the ResNet-56 stem, whose importance the official code forces to 1e7)
are never pruned. If floors and protection leave fewer candidates than requested, the plan
removes all candidates and records the ``shortfall`` instead of raising.

MobileNet quirk (spec §3.6, §6 item 12): with ``count_tied_twice=True`` every layer that
feeds a depthwise layer enters the ranking twice, once as itself and once as a *virtual*
duplicate named after the tied depthwise layer (:func:`duplicate_tied`). A selected duplicate
entry uses up one unit of ``n_prune`` but removes nothing: only a layer's own entries decide
which of its filters go (the official ``mobile_pruner`` reads the prune counts of the stem and
pointwise layers only). The depthwise layer's own score is not used.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from gfverify.errors import ConfigError, ModelError

FloorBy = Literal["importance", "index"]

#: The official ``constrain_ratios`` keeps int(FLOOR_FRACTION · original width) + 1 filters.
FLOOR_FRACTION = 0.05


def default_floor(width: int) -> int:
    """Official per-layer floor: f = int(0.05 · width) + 1 (4, 7, 13, 26 for 64..512)."""
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 0:
        raise ConfigError(f"layer width must be a non-negative integer, got {width!r}")
    return int(FLOOR_FRACTION * int(width)) + 1


@dataclass(frozen=True)
class PruningPlan:
    """The outcome of one global ranking.

    - ``remove`` / ``keep``: layer -> sorted int64 indices (current numbering) of the filters to
      remove / keep; every layer of ``scores`` is present (empty tensor when nothing is removed).
    - ``counts``: layer -> number of filters removed.
    - ``n_requested``: the requested number of ranking entries to prune.
    - ``n_selected``: entries actually selected (= n_requested − shortfall); with
      ``count_tied_twice`` this includes the virtual duplicate entries.
    - ``shortfall``: entries that could not be pruned because of floors / protection.
    - ``virtual_counts``: virtual duplicate layer -> entries selected (``count_tied_twice``).
    """

    remove: dict[str, Tensor]
    keep: dict[str, Tensor]
    counts: dict[str, int]
    n_requested: int
    n_selected: int
    shortfall: int
    virtual_counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_removed(self) -> int:
        """Filters physically removed (virtual duplicate entries excluded)."""
        return sum(self.counts.values())

    @property
    def remaining(self) -> dict[str, int]:
        """Layer -> number of filters kept."""
        return {name: int(idx.numel()) for name, idx in self.keep.items()}


def _as_scores(name: str, value: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        raise ModelError(f"importance scores of layer {name!r} must be a tensor, got {value!r}")
    if value.dim() != 1:
        raise ModelError(
            f"importance scores of layer {name!r} must be 1-D (one per filter), "
            f"got shape {tuple(value.shape)}"
        )
    if value.is_complex():
        raise ModelError(f"importance scores of layer {name!r} must be real")
    s = value.detach().to(device="cpu", dtype=torch.float64)
    if torch.isnan(s).any():
        raise ModelError(f"importance scores of layer {name!r} contain NaN")
    return s


def duplicate_tied(
    scores: Mapping[str, Tensor], ties: Mapping[str, Sequence[str]]
) -> dict[str, Tensor]:
    """Scores with each tied layer's entries duplicated (the official MobileNet quirk, §6.12).

    ``ties`` maps a source layer to the names of the layers tied to its output channels (for
    MobileNet: the depthwise layer it feeds). The result has the same entries as ``scores``
    plus, right after each source layer (the official ranking order: stem, dw1, pw1, dw2, ...),
    one copy of the source's scores per tied name. Tied names must not be keys of ``scores``.
    """
    for src, tied in ties.items():
        if src not in scores:
            raise ConfigError(f"tied source layer {src!r} has no importance scores")
        if isinstance(tied, str):
            raise ConfigError(f"ties[{src!r}] must be a list of layer names, not a string")
    seen: set[str] = set()
    for tied in ties.values():
        for name in tied:
            if name in scores:
                raise ConfigError(
                    f"tied layer {name!r} also has its own scores; a tied (depthwise) layer's "
                    "own score is not ranked, drop it from scores"
                )
            if name in seen:
                raise ConfigError(f"tied layer {name!r} is tied to more than one source layer")
            seen.add(name)
    out: dict[str, Tensor] = {}
    for name, s in scores.items():
        out[name] = s
        for tied_name in ties.get(name, ()):
            out[tied_name] = s.clone()
    return out


def _floor_of(
    name: str,
    min_keep: Mapping[str, int] | None,
    original_widths: Mapping[str, int] | None,
    current: int,
) -> int:
    if min_keep is not None and name in min_keep:
        f = min_keep[name]
        if isinstance(f, bool) or not isinstance(f, numbers.Integral) or f < 0:
            raise ConfigError(f"min_keep[{name!r}] must be a non-negative integer, got {f!r}")
        return int(f)
    if original_widths is not None and name in original_widths:
        w = original_widths[name]
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < current:
            raise ConfigError(
                f"original width of layer {name!r} must be an integer >= its current width "
                f"{current}, got {w!r}"
            )
        return default_floor(int(w))
    raise ConfigError(
        f"layer {name!r} has no floor: give original_widths[{name!r}] (for the default "
        f"int(0.05*w)+1 floor) or min_keep[{name!r}]"
    )


def _candidates(s: Tensor, floor: int, floor_by: FloorBy) -> Tensor:
    """Indices of a layer's prunable filters, in ascending (score, index) order."""
    width = s.numel()
    n_cand = width - min(floor, width)
    if floor_by == "importance":
        # The floor is the top `floor` of the (score, index) order, so the candidates are the
        # bottom n_cand of it; a stable ascending sort breaks score ties by index.
        return torch.sort(s, stable=True).indices[:n_cand]
    return torch.arange(n_cand, dtype=torch.long)


def plan_global(
    scores: Mapping[str, Tensor],
    n_prune: int,
    *,
    original_widths: Mapping[str, int] | None = None,
    min_keep: Mapping[str, int] | None = None,
    protected: Set[str] = frozenset(),
    floor_by: FloorBy = "importance",
    ties: Mapping[str, Sequence[str]] | None = None,
    count_tied_twice: bool = False,
) -> PruningPlan:
    """Remove the ``n_prune`` globally lowest-importance candidate filters.

    Per layer, the floor is ``min_keep[layer]`` if given, else
    ``default_floor(original_widths[layer])``; a layer keeps at least min(floor, current width)
    filters, chosen according to ``floor_by`` (see the module docstring). ``protected`` layers
    keep everything. Candidates are sorted ascending by (score, layer position, index) and the
    first ``n_prune`` are selected; if there are fewer candidates, all are selected and the
    difference is the plan's ``shortfall``.

    ``count_tied_twice`` (spec §6 item 12, official MobileNet): the ranking also contains a
    virtual copy of each source layer in ``ties`` (:func:`duplicate_tied`), with the source's
    floor and protection; selected copies use up ``n_prune`` but remove nothing.
    """
    if isinstance(n_prune, bool) or not isinstance(n_prune, numbers.Integral) or n_prune < 0:
        raise ConfigError(f"n_prune must be a non-negative integer, got {n_prune!r}")
    n_prune = int(n_prune)
    if floor_by not in ("importance", "index"):
        raise ConfigError(f"floor_by must be 'importance' or 'index', got {floor_by!r}")
    clean = {name: _as_scores(name, s) for name, s in scores.items()}
    for label, names in (("protected", protected), ("min_keep", min_keep or {})):
        unknown = sorted(set(names) - set(clean))
        if unknown:
            raise ConfigError(f"{label} names layers without scores: {', '.join(unknown)}")
    if count_tied_twice:
        if ties is None:
            raise ConfigError("count_tied_twice=True needs ties={source layer: [tied layers]}")
        entries = duplicate_tied(clean, ties)
        source = {tied: src for src, names in ties.items() for tied in names}
    else:
        entries = clean
        source = {}

    floors = {
        name: _floor_of(name, min_keep, original_widths, s.numel())
        for name, s in clean.items()
        if name not in protected
    }

    # Candidates in (layer position, index) order; one stable sort by score then yields the
    # global order (score, layer position, index).
    cand_scores: list[Tensor] = []
    cand_layer: list[Tensor] = []
    cand_index: list[Tensor] = []
    names = list(entries)
    for pos, name in enumerate(names):
        src = source.get(name, name)
        if src in protected:
            continue
        s = entries[name]
        idx = torch.sort(_candidates(s, floors[src], floor_by)).values
        cand_scores.append(s[idx])
        cand_layer.append(torch.full((idx.numel(),), pos, dtype=torch.long))
        cand_index.append(idx)
    if cand_scores:
        all_scores = torch.cat(cand_scores)
        all_layer = torch.cat(cand_layer)
        all_index = torch.cat(cand_index)
    else:
        all_scores = torch.empty(0, dtype=torch.float64)
        all_layer = all_index = torch.empty(0, dtype=torch.long)
    order = torch.sort(all_scores, stable=True).indices
    chosen = order[:n_prune]
    n_selected = int(chosen.numel())

    remove: dict[str, Tensor] = {}
    keep: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    virtual_counts: dict[str, int] = {}
    chosen_layer = all_layer[chosen]
    chosen_index = all_index[chosen]
    for pos, name in enumerate(names):
        picked = torch.sort(chosen_index[chosen_layer == pos]).values
        if name in source:
            virtual_counts[name] = int(picked.numel())
            continue
        width = entries[name].numel()
        mask = torch.ones(width, dtype=torch.bool)
        mask[picked] = False
        remove[name] = picked.to(torch.long)
        keep[name] = torch.nonzero(mask).flatten().to(torch.long)
        counts[name] = int(picked.numel())
    return PruningPlan(
        remove=remove,
        keep=keep,
        counts=counts,
        n_requested=n_prune,
        n_selected=n_selected,
        shortfall=n_prune - n_selected,
        virtual_counts=virtual_counts,
    )


def total_entries(
    scores: Mapping[str, Tensor],
    *,
    ties: Mapping[str, Sequence[str]] | None = None,
    count_tied_twice: bool = False,
) -> int:
    """Number of ranking entries: all current filters of all layers (protected layers and
    floor filters included, as in the official ``imp_order``), plus the virtual duplicates
    when ``count_tied_twice``."""
    total = sum(int(s.numel()) for s in scores.values())
    if count_tied_twice and ties:
        total += sum(int(scores[src].numel()) * len(names) for src, names in ties.items())
    return total


def plan_from_fraction(
    scores: Mapping[str, Tensor],
    fraction: float,
    *,
    original_widths: Mapping[str, int] | None = None,
    min_keep: Mapping[str, int] | None = None,
    protected: Set[str] = frozenset(),
    floor_by: FloorBy = "importance",
    ties: Mapping[str, Sequence[str]] | None = None,
    count_tied_twice: bool = False,
) -> PruningPlan:
    """Official per-round pruning: n_prune = int(fraction · N), then :func:`plan_global`.

    N = :func:`total_entries`: every entry of the official ``imp_order``, i.e. all current
    filters, protected layers and floor filters included (and the virtual duplicates when
    ``count_tied_twice``).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise ConfigError(f"pruning fraction must be a number in [0, 1], got {fraction!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"pruning fraction {fraction!r} is outside [0, 1]")
    if count_tied_twice and ties is not None:
        for src in ties:
            if src not in scores:
                raise ConfigError(f"tied source layer {src!r} has no importance scores")
    n_total = total_entries(scores, ties=ties, count_tied_twice=count_tied_twice)
    return plan_global(
        scores,
        int(fraction * n_total),
        original_widths=original_widths,
        min_keep=min_keep,
        protected=protected,
        floor_by=floor_by,
        ties=ties,
        count_tied_twice=count_tied_twice,
    )
