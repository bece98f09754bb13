"""Physical filter removal, residual-output masks, pruning history and optimizer transplant.

Removal goes through torch-pruning's ``DependencyGraph`` (pinned 1.6.1), driven by **our**
indices (never its importances): removing filter ``f`` of a producing layer ``P`` removes
``P.weight[f]``, ``P.bias[f]``, the entries ``f`` of its BatchNorm (γ, β, running mean/var),
the channel ``f`` of every tied depthwise conv and its BN, and the input channel(s) that carry
``f`` in every consumer (next conv's ``weight[:, f]``, a Linear's columns after a flatten).
Surviving weights are copied exactly (``index_select``); nothing is re-initialised.

**What removal is equivalent to** (checked in ``tests/test_surgery.py`` to ~1e-12 in float64,
eval mode): the physically pruned network computes the same function as the unpruned one in
which the removed channels are set to zero *at the inputs of their consumers* — the layers
whose input channels the surgery deletes (:func:`pruning_reference`). Everything the
removed channel passes through on the way (its BN, its activation, pooling, a tied depthwise
conv and its BN) is removed with it, so zeroing earlier is *not* equivalent in general: e.g.
with ``softplus`` (act(0) ≠ 0), or through a tied depthwise conv + BN (whose output at a zero
input is β − γμ/σ ≠ 0). When every op between the mask point and the consumers maps 0 to 0 —
Conv→BN→ReLU/tanh, VGG's Conv→ReLU→BN→max-pool, and no tied depthwise conv — it is the same as
zeroing the channel right after the layer's BatchNorm (:func:`zeroed_after_bn`).

**Residual adds.** Layers whose outputs are added (ResNet block outputs, projection shortcuts,
the stem) share channel indices: a *coupled group* (:func:`gfverify.groups.coupled_groups`),
listed in forward order; its first member is the group's **representative**.

- ``mode="paper"`` (the official code, spec §3.6): layers outside coupled groups (ResNet's
  block-internal ``conv1``) are physically removed; channels of coupled layers are **masked**:
  the layer's weight rows and bias, its BN γ, β and running mean are set to 0 (running var to
  1), and a fixed 0/1 :class:`ChannelMask` multiplies the output of the BN (of the layer itself
  when it has no BN). With γ = β = 0 the BN output of the channel is exactly 0 in eval *and*
  train mode, the mask keeps it 0, and the gradients of all these entries are exactly 0, so
  they stay 0 under SGD with weight decay. The mask is a child module ``channel_mask`` of the
  BN applied by a forward hook, so module and parameter names do not change and the mask is
  saved in the ``state_dict`` (``<bn>.channel_mask.mask``).
- ``mode="full"``: a coupled group loses a channel in all its members at once. The plan lists
  the channel under the group's representative; listing a non-representative member raises
  :class:`ModelError`. Uncoupled layers are removed as in ``paper`` mode.

Indices in a plan are the layer's **current** channel positions. Every layer keeps at least one
unmasked channel (:class:`ModelError` otherwise).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from gfverify.errors import CheckpointError, ConfigError, ModelError
from gfverify.groups import (
    DEPTHWISE_ATTR,
    FilterGroup,
    GraphInfo,
    analyze,
    analyze_with_graph,
    default_example_input,
    is_depthwise,
    is_producer,
    pruning_group,
)

Mode = Literal["full", "paper"]
Plan = Mapping[str, Tensor | list[int]]
MASK_ATTR = "channel_mask"


# --------------------------------------------------------------------------- channel masks


class ChannelMask(nn.Module):
    """y = x · m, with a fixed 0/1 buffer ``m`` over dim 1 (channels). ``producer`` names the
    producing layer whose channels it masks and ``channel_groups`` its
    :attr:`~gfverify.groups.FilterGroup.channel_groups` G: filter unit k is the channels
    {k + i·C/G} (plain attributes, not saved)."""

    def __init__(
        self,
        num_channels: int,
        producer: str = "",
        dtype: torch.dtype | None = None,
        channel_groups: int = 1,
    ):
        super().__init__()
        self.register_buffer("mask", torch.ones(num_channels, dtype=dtype))
        self.producer = producer
        self.channel_groups = channel_groups
        self.bypass_in_trace = False  # set by gfverify.groups while tracing the graph

    def masked_units(self) -> list[int]:
        """The masked filter units (current positions): channel c belongs to unit c mod C/G,
        and units are masked whole."""
        unit = self.mask.numel() // self.channel_groups
        return sorted({int(c) % unit for c in (self.mask == 0).nonzero().flatten().tolist()})

    def forward(self, x: Tensor) -> Tensor:
        if self.bypass_in_trace:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.mask.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        alive = int(self.mask.count_nonzero())
        return f"{alive}/{self.mask.numel()} channels, producer={self.producer!r}"


def _apply_channel_mask(module: nn.Module, args: object, output: Tensor) -> Tensor | None:
    """Forward hook: the module's output times its ``channel_mask``."""
    mask = getattr(module, MASK_ATTR)
    return None if mask.bypass_in_trace else mask(output)


def _mask_point(model: nn.Module, group: FilterGroup) -> nn.Module:
    return model.get_submodule(group.bn if group.bn is not None else group.name)


def _ensure_mask(point: nn.Module, group: FilterGroup, like: Tensor) -> ChannelMask:
    mask = getattr(point, MASK_ATTR, None)
    if mask is None:
        mask = ChannelMask(
            group.num_channels, group.name, dtype=like.dtype, channel_groups=group.channel_groups
        ).to(like.device)
        point.add_module(MASK_ATTR, mask)
        point.register_forward_hook(_apply_channel_mask)
    return mask


def masked_channels(model: nn.Module) -> dict[str, list[int]]:
    """Producing layer name -> its masked filters (current positions; for a layer whose
    filters are units of G channels, the masked units), for layers that carry a
    :class:`ChannelMask` with at least one zero."""
    out: dict[str, list[int]] = {}
    for _, m in model.named_modules():
        if isinstance(m, ChannelMask):
            zero = m.masked_units()
            if zero:
                out[m.producer] = zero
    return out


def layer_widths(model: nn.Module, example_input: Tensor | None = None) -> dict[str, int]:
    """Prunable layer name -> its current number of output channels (masked ones included)."""
    info = analyze(model, example_input)
    return {n: g.num_filters for n, g in info.groups.items() if n not in info.output_layers}


# --------------------------------------------------------------------------- records


@dataclass
class ParamSurgery:
    """How one parameter tensor was changed by one call of :func:`prune_filters`.

    ``kept[d]``: the pre-surgery positions along dim ``d`` that survive, in their new order
    (new = old.index_select(d, kept[d]) for each sliced dim). ``zeroed[d]``: post-surgery
    positions along dim ``d`` set to zero by masking.
    """

    kept: dict[int, list[int]] = field(default_factory=dict)
    zeroed: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class PruneRecord:
    """One round of surgery. Indices are the layers' current positions at that round.

    ``removed``: producing layer -> physically removed output channels (in ``full`` mode every
    member of a coupled group is listed). ``masked``: producing layer -> masked channels.
    ``widths_before``: every prunable layer's width before the round. ``*_original``: the same
    indices in the layers' original (unpruned) numbering, filled by
    :meth:`PruningHistory.append`. ``kept_index_map``: per parameter, what the surgery did
    (for :func:`rebuild_sgd`); not serialised.
    """

    mode: str
    plan: dict[str, list[int]]
    removed: dict[str, list[int]]
    masked: dict[str, list[int]]
    widths_before: dict[str, int]
    removed_original: dict[str, list[int]] = field(default_factory=dict)
    masked_original: dict[str, list[int]] = field(default_factory=dict)
    kept_index_map: dict[str, ParamSurgery] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (without ``kept_index_map``)."""
        d = asdict(self)
        d.pop("kept_index_map")
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PruneRecord:
        keys = ("mode", "plan", "removed", "masked", "widths_before")
        try:
            kw = {k: d[k] for k in keys}
        except KeyError as e:
            raise CheckpointError(f"pruning record lacks key {e.args[0]!r}") from None
        kw["removed_original"] = d.get("removed_original", {})
        kw["masked_original"] = d.get("masked_original", {})
        return cls(**kw)


@dataclass
class PruningHistory:
    """All rounds applied to a model, in order; ``{architecture, history, state_dict}`` is
    enough to rebuild the pruned model (:func:`load_pruned`)."""

    rounds: list[PruneRecord] = field(default_factory=list)
    original_widths: dict[str, int] = field(default_factory=dict)
    #: layer -> original index of each current channel
    index_map: dict[str, list[int]] = field(default_factory=dict)

    def append(self, record: PruneRecord) -> PruneRecord:
        """Add ``record``, filling its ``*_original`` fields from the running index map."""
        if not self.rounds:
            self.original_widths = dict(record.widths_before)
            self.index_map = {n: list(range(w)) for n, w in record.widths_before.items()}
        for name, width in record.widths_before.items():
            cur = self.index_map.get(name)
            if cur is None or len(cur) != width:
                raise ModelError(
                    f"pruning history does not match the model: layer {name!r} has width "
                    f"{width}, history expects {None if cur is None else len(cur)}"
                )
        record.removed_original = {
            n: [self.index_map[n][i] for i in idx] for n, idx in record.removed.items()
        }
        record.masked_original = {
            n: [self.index_map[n][i] for i in idx] for n, idx in record.masked.items()
        }
        for n, idx in record.removed.items():
            gone = set(idx)
            self.index_map[n] = [o for i, o in enumerate(self.index_map[n]) if i not in gone]
        self.rounds.append(record)
        return record

    def to_dict(self) -> dict:
        return {"rounds": [r.to_dict() for r in self.rounds]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> PruningHistory:
        if "rounds" not in d:
            raise CheckpointError("pruning history lacks key 'rounds'")
        hist = cls()
        for r in d["rounds"]:
            hist.append(PruneRecord.from_dict(r))
        return hist

    @classmethod
    def from_json(cls, text: str) -> PruningHistory:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------- surgery


def _as_index_list(name: str, idx: Tensor | list[int], width: int) -> list[int]:
    t = torch.as_tensor(idx)
    if t.dim() != 1 or (t.numel() and (t.is_floating_point() or t.is_complex())):
        raise ModelError(f"plan for layer {name!r} must be a 1-D tensor of integer indices")
    out = [int(i) for i in t.tolist()]
    if len(set(out)) != len(out):
        raise ModelError(f"plan for layer {name!r} lists a channel twice")
    bad = [i for i in out if not 0 <= i < width]
    if bad:
        raise ModelError(f"plan for layer {name!r}: index {bad[0]} out of range [0, {width})")
    return sorted(out)


def _own_tensors(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    out = {f"{prefix}.{n}": p for n, p in module.named_parameters(recurse=False)}
    out.update({f"{prefix}.{n}": b for n, b in module.named_buffers(recurse=False)})
    return out


def _resolve(model: nn.Module, info: GraphInfo, plan: Plan, mode: str) -> tuple[dict, dict]:
    """Split a plan into (to remove, to mask), both ``{layer: sorted current indices}``."""
    if mode not in ("full", "paper"):
        raise ConfigError(f"surgery mode must be 'full' or 'paper', got {mode!r}")
    coupled_of = {n: grp for grp in info.coupled for n in grp}
    masked_now = masked_channels(model)
    remove: dict[str, list[int]] = {}
    mask: dict[str, list[int]] = {}
    for name, raw in plan.items():
        if name in info.skipped:
            raise ModelError(f"plan names a layer that cannot be pruned: {info.skipped[name]}")
        if name not in info.groups or name in info.output_layers:
            raise ModelError(f"plan names {name!r}, which is not a prunable layer")
        idx = _as_index_list(name, raw, info.groups[name].num_filters)
        if not idx:
            continue
        grp = coupled_of.get(name)
        if grp is not None and mode == "paper":
            mask[name] = idx
        elif grp is not None and name != grp[0]:
            raise ModelError(
                f"layer {name!r} is coupled by a residual add; in full mode list its channels "
                f"under the group's representative {grp[0]!r}"
            )
        else:
            remove[name] = idx
    # every layer keeps at least one unmasked channel
    for name, idx in {**remove, **mask}.items():
        members = coupled_of.get(name, (name,)) if name in remove else (name,)
        for member in members:
            dead = set(masked_now.get(member, [])) | set(idx)
            if len(dead) >= info.groups[member].num_filters:
                raise ModelError(
                    f"plan would leave layer {member!r} without an unmasked channel "
                    f"(width {info.groups[member].num_filters})"
                )
    return remove, mask


def _remove(
    model: nn.Module,
    graph: object,
    fgroup: FilterGroup,
    idx: list[int],
    names: dict[nn.Module, str],
    kept: dict[str, ParamSurgery],
    removed: dict[str, list[int]],
) -> None:
    """Remove filters ``idx`` of layer ``fgroup.name`` (their channels,
    :meth:`FilterGroup.channels`) and everything tied to them; compose the per-parameter
    kept-index maps and slice any :class:`ChannelMask` along."""
    module = model.get_submodule(fgroup.name)
    group = pruning_group(graph, module, fgroup.channels(idx))
    touched: dict[str, list[int]] = {}
    for item in group.items:
        tmod = item.dep.target.module
        if not isinstance(tmod, nn.Module) or tmod not in names:
            continue
        tname = names[tmod]
        idxs = sorted(int(i) for i in item.idxs)
        if tname in touched and touched[tname] != idxs:
            raise ModelError(f"layer {tname!r} is cut twice with different indices")
        touched[tname] = idxs
        if is_producer(tmod) and graph.is_out_channel_pruning_fn(item.dep.handler):
            removed[tname] = sorted({i % fgroup.num_filters for i in idxs})
    before = {}
    for tname in touched:
        before.update(_own_tensors(model.get_submodule(tname), tname))
        if is_depthwise(model.get_submodule(tname)):  # stays tied even when cut to 1 channel
            setattr(model.get_submodule(tname), DEPTHWISE_ATTR, True)
    conv_groups = {t: getattr(model.get_submodule(t), "groups", 1) for t in touched}
    group.prune(record_history=False)
    params = dict(model.named_parameters())
    for tname, idxs in touched.items():
        tmod = model.get_submodule(tname)
        after = _own_tensors(tmod, tname)
        for pname, new in after.items():
            old_shape = before[pname].shape
            for dim, (o, n) in enumerate(zip(old_shape, new.shape)):
                if o == n:
                    continue
                gone = set(idxs)
                if dim == 1 and conv_groups[tname] > 1:
                    # grouped conv input: dim 1 holds one group's o = C_in / G channels, and
                    # channel c is local position c mod o of group c // o; the cut takes the
                    # same local positions in every group
                    gone = {i % o for i in gone}
                if o - n != len(gone):
                    raise ModelError(f"unexpected cut of {pname!r} along dim {dim}")
                keep_local = [i for i in range(o) if i not in gone]
                if pname in params:
                    ps = kept.setdefault(pname, ParamSurgery())
                    prev = ps.kept.get(dim, list(range(o)))
                    ps.kept[dim] = [prev[i] for i in keep_local]
        mask = getattr(tmod, MASK_ATTR, None)
        if isinstance(mask, ChannelMask):
            width = tmod.num_features if isinstance(tmod, _BatchNorm) else tmod.weight.shape[0]
            if mask.mask.numel() != width:
                gone = set(idxs)
                keep_local = [i for i in range(mask.mask.numel()) if i not in gone]
                mask.mask = mask.mask[keep_local].clone()


@torch.no_grad()
def _mask(
    model: nn.Module, group: FilterGroup, idx: list[int], kept: dict[str, ParamSurgery]
) -> None:
    """Zero the layer's rows, BN γ/β/mean (var := 1) at the channels of filters ``idx``
    (:meth:`FilterGroup.channels`) and set its mask to 0 there."""
    producer = model.get_submodule(group.name)
    channels = group.channels(idx)
    t = torch.tensor(channels, dtype=torch.long, device=producer.weight.device)
    for pname in (group.weight, group.bias, group.bn_weight, group.bn_bias):
        if pname is None:
            continue
        p = model.get_parameter(pname)
        p.index_fill_(0, t, 0.0)
        ps = kept.setdefault(pname, ParamSurgery())
        ps.zeroed[0] = sorted(set(ps.zeroed.get(0, [])) | set(channels))
    if group.bn is not None:
        bn = model.get_submodule(group.bn)
        if bn.running_mean is not None:
            bn.running_mean.index_fill_(0, t, 0.0)
            bn.running_var.index_fill_(0, t, 1.0)
    mask = _ensure_mask(_mask_point(model, group), group, producer.weight)
    mask.mask.index_fill_(0, t, 0.0)


def prune_filters(
    model: nn.Module,
    plan: Plan,
    example_input: Tensor | None = None,
    mode: Mode = "full",
    history: PruningHistory | None = None,
) -> PruneRecord:
    """Apply ``plan`` ({layer: current filter indices}) to ``model`` in place; see the module
    docstring for what is removed, what is masked and the equivalence it satisfies.

    Cut parameters become new ``nn.Parameter`` objects (masked ones are edited in place), so
    an optimizer must be rebuilt afterwards: :func:`rebuild_sgd` with ``record.kept_index_map``.
    Returns the :class:`PruneRecord`, also appended to ``history`` when given.
    """
    info, graph = analyze_with_graph(model, example_input)
    remove, mask = _resolve(model, info, plan, mode)
    widths = {n: g.num_filters for n, g in info.groups.items() if n not in info.output_layers}
    kept: dict[str, ParamSurgery] = {}
    removed: dict[str, list[int]] = {}
    if remove:
        names = {m: n for n, m in model.named_modules()}
        for name, idx in remove.items():
            _remove(model, graph, info.groups[name], idx, names, kept, removed)
    for name, idx in mask.items():
        _mask(model, info.groups[name], idx, kept)
    record = PruneRecord(
        mode=mode,
        plan={n: _as_index_list(n, v, info.groups[n].num_filters) for n, v in plan.items()},
        removed={n: removed[n] for n in info.order if n in removed},
        masked={n: mask[n] for n in info.order if n in mask},
        widths_before=widths,
        kept_index_map=kept,
    )
    if history is not None:
        history.append(record)
    return record


def replay(model: nn.Module, history: PruningHistory, example_input: Tensor | None = None):
    """Re-apply every round of ``history`` to a freshly built ``model`` (in place) and return
    it. Raises :class:`CheckpointError` if a round removes or masks other channels than
    recorded (the history does not belong to this architecture)."""
    for k, rec in enumerate(history.rounds):
        plan = {n: torch.tensor(v, dtype=torch.long) for n, v in rec.plan.items()}
        try:
            new = prune_filters(model, plan, example_input, rec.mode)
        except ModelError as e:
            raise CheckpointError(f"pruning history round {k} does not apply: {e}") from None
        if new.removed != rec.removed or new.masked != rec.masked:
            raise CheckpointError(f"pruning history round {k} gives different channels on replay")
    return model


def load_pruned(
    model: nn.Module,
    history: PruningHistory,
    state_dict: Mapping[str, Tensor],
    example_input: Tensor | None = None,
) -> nn.Module:
    """``replay`` then ``load_state_dict(strict=True)``: a fresh model becomes the saved one."""
    replay(model, history, example_input)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"state_dict does not fit the replayed model: {first[-1]}") from None
    return model


# --------------------------------------------------------------------------- optimizer


def rebuild_sgd(
    model: nn.Module,
    old_optimizer: torch.optim.Optimizer,
    old_param_names: Mapping[str, Tensor],
    kept_index_map: Mapping[str, ParamSurgery],
    preserve_momentum: bool,
) -> torch.optim.SGD:
    """A new ``torch.optim.SGD`` over the model's current parameters with the old optimizer's
    hyper-parameters and param groups (matched by parameter name).

    ``old_param_names``: name -> parameter object *before* surgery (``dict(model.named_
    parameters())`` taken before :func:`prune_filters`). With ``preserve_momentum`` each
    momentum buffer b becomes b.index_select(d, kept[d]) for every dim the surgery cut, then 0
    at the masked (``zeroed``) positions; otherwise buffers start fresh (the official default).
    """
    if not isinstance(old_optimizer, torch.optim.SGD):
        raise ConfigError(
            f"rebuild_sgd needs a torch.optim.SGD, got {type(old_optimizer).__name__}"
        )
    name_of = {id(p): n for n, p in old_param_names.items()}
    new_params = dict(model.named_parameters())
    groups = []
    for g in old_optimizer.param_groups:
        names = []
        for p in g["params"]:
            if id(p) not in name_of:
                raise ModelError("old optimizer holds a parameter missing from old_param_names")
            names.append(name_of[id(p)])
        missing = [n for n in names if n not in new_params]
        if missing:
            raise ModelError(f"parameter {missing[0]!r} no longer exists in the model")
        opts = {k: v for k, v in g.items() if k != "params"}
        groups.append({"params": [new_params[n] for n in names], **opts})
    new_opt = torch.optim.SGD(groups, **old_optimizer.defaults)
    if not preserve_momentum:
        return new_opt
    for n, old_p in old_param_names.items():
        buf = old_optimizer.state.get(old_p, {}).get("momentum_buffer")
        if buf is None or n not in new_params:
            continue
        ps = kept_index_map.get(n, ParamSurgery())
        for dim, keep in sorted(ps.kept.items()):
            buf = buf.index_select(dim, torch.tensor(keep, dtype=torch.long, device=buf.device))
        buf = buf.clone()
        for dim, zero in ps.zeroed.items():
            buf.index_fill_(dim, torch.tensor(zero, dtype=torch.long, device=buf.device), 0.0)
        if buf.shape != new_params[n].shape:
            raise ModelError(f"momentum of {n!r} does not fit the pruned parameter")
        new_opt.state[new_params[n]]["momentum_buffer"] = buf
    return new_opt


def random_plan(
    model: nn.Module,
    example_input: Tensor | None = None,
    mode: Mode = "full",
    generator: torch.Generator | None = None,
    fraction: float | None = None,
) -> dict[str, Tensor]:
    """A seeded random plan over the prunable layers, each keeping at least one filter.

    Every prunable layer with 2 or more filters gets ``int(fraction · filters)`` distinct
    random indices, or a uniformly random count in [0, filters − 1] when ``fraction`` is None.
    In ``full`` mode only the representative (first member) of a coupled group is planned,
    since :func:`prune_filters` removes its channels from every member. Raises ModelError
    when the model has no prunable layer.
    """
    if fraction is not None and not 0.0 <= fraction < 1.0:
        raise ConfigError(f"plan fraction must lie in [0, 1), got {fraction!r}")
    info = analyze(model, example_input)
    if not set(info.groups) - info.output_layers:
        raise ModelError(f"model {type(model).__name__} has no prunable layer")
    skip = {n for grp in info.coupled for n in grp[1:]} if mode == "full" else set()
    plan = {}
    for name, group in info.groups.items():
        if name in info.output_layers or name in skip or group.num_filters < 2:
            continue
        n = group.num_filters
        if fraction is None:
            k = int(torch.randint(0, n, (1,), generator=generator))
        else:
            k = int(fraction * n)
        plan[name] = torch.randperm(n, generator=generator)[:k]
    return plan


# --------------------------------------------------------------------------- references


def consumer_inputs(
    model: nn.Module, plan: Plan, example_input: Tensor | None = None, mode: Mode = "full"
) -> dict[str, list[int]]:
    """Consumer module name -> the input channels (dim 1 of its input) that
    ``prune_filters(model, plan, example_input, mode)`` would delete (masked layers delete
    none). Read-only: the model is not changed."""
    info, graph = analyze_with_graph(model, example_input)
    remove, _ = _resolve(model, info, plan, mode)
    names = {m: n for n, m in model.named_modules()}
    out: dict[str, set[int]] = {}
    for name, idx in remove.items():
        module = model.get_submodule(name)
        group = pruning_group(graph, module, info.groups[name].channels(idx))
        for item in group.items:
            tmod = item.dep.target.module
            if (
                isinstance(tmod, nn.Module)
                and tmod in names
                and is_producer(tmod)
                and graph.is_in_channel_pruning_fn(item.dep.handler)
            ):
                out.setdefault(names[tmod], set()).update(int(i) for i in item.idxs)
    return {n: sorted(v) for n, v in out.items()}


def _zero_channels(x: Tensor, idx: list[int], dim: int = 1) -> Tensor:
    x = x.clone()
    x.index_fill_(dim, torch.tensor(idx, dtype=torch.long, device=x.device), 0)
    return x


def _after_bn_targets(
    model: nn.Module, plan: Plan, x: Tensor, mode: str, which: str
) -> dict[str, list[int]]:
    info = analyze(model, x)
    remove, mask = _resolve(model, info, plan, mode)
    coupled_of = {n: grp for grp in info.coupled for n in grp}
    chosen = {"all": {**remove, **mask}, "masked": mask}[which]
    targets: dict[str, list[int]] = {}
    for name, idx in chosen.items():
        members = coupled_of.get(name, (name,)) if name in remove else (name,)
        for member in members:
            targets[info.groups[member].bn or member] = info.groups[member].channels(idx)
    return targets


@contextmanager
def _hooked(model: nn.Module, pre: Mapping[str, list[int]], post: Mapping[str, list[int]]):
    handles = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda m, args, idx=idx: (
                _zero_channels(args[0], idx, -1 if isinstance(m, nn.Linear) else 1),
                *args[1:],
            )
        )
        for n, idx in pre.items()
    ] + [
        model.get_submodule(n).register_forward_hook(
            lambda m, args, out, idx=idx: _zero_channels(out, idx)
        )
        for n, idx in post.items()
    ]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


@contextmanager
def pruning_reference(
    model: nn.Module, plan: Plan, example_input: Tensor | None = None, mode: Mode = "full"
) -> Iterator[nn.Module]:
    """Within the block the *unpruned* ``model`` computes what ``prune_filters(model, plan,
    example_input, mode)`` would make of it (exactly, up to summation order): channels to be
    removed are zeroed at their consumers' inputs, channels to be masked right after their BN.
    """
    x = default_example_input(model) if example_input is None else example_input
    pre = consumer_inputs(model, plan, x, mode)
    post = _after_bn_targets(model, plan, x, mode, "masked")
    with _hooked(model, pre, post):
        yield model


@contextmanager
def zeroed_after_bn(
    model: nn.Module, plan: Plan, example_input: Tensor | None = None, mode: Mode = "full"
) -> Iterator[nn.Module]:
    """Within the block every planned channel is zeroed right after its layer's BN (after the
    layer itself when it has no BN); in ``full`` mode a representative's channels are zeroed in
    every member of its coupled group. Equals pruning when all ops between that point and the
    consumers map 0 to 0 (module docstring)."""
    x = default_example_input(model) if example_input is None else example_input
    with _hooked(model, {}, _after_bn_targets(model, plan, x, mode, "all")):
        yield model
