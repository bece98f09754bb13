"""gfverify's measures as a Torch-Pruning importance.

    imp = Importance("grasp", batches)
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.3,
                                  global_pruning=True, ignored_layers=[model.classifier])
    pruner.step()

Given a pruning group, :class:`Importance` returns one score per channel of the group's root:
gfverify's filter score (:func:`gfverify.measures.score`, filter granularity, with the given
options) of the prunable layer in the group, and for a coupled group (residual add) the
members' scores combined as gfverify's own full-mode pruning combines them
(:func:`gfverify.prune.combine_coupled`: √(Σ s²) for magnitude, Σ s otherwise). A layer whose
filter is a unit of G channels (it feeds a grouped conv with G groups) gives each channel its
unit's score, so Torch-Pruning's mean over channel groups returns that score. A group with no
layer gfverify can prune (the classifier, layers :func:`gfverify.groups.unprunable` lists)
gets ``None``, which Torch-Pruning skips.

Attention heads, where Torch-Pruning removes them (``MetaPruner(..., num_heads={qkv: H},
prune_num_heads=True)`` on a hand-written attention whose fused ``qkv`` Linear feeds
``reshape(B, N, 3, H, d)``): pass those layers as ``qkv_layers``. gfverify's own analysis leaves
such a layer out (its channels pass through the reshape and unbind), so :class:`Importance`
scores it on its own: channel c of the attention output is the filter unit {c, c + E, c + 2E}
of q, k and v rows (E = out_features / 3), scored like any filter by the measure (for a
measure with an outer function, of the unit's summed contributions: magnitude
√(Σ over the three rows of θ²)); Torch-Pruning averages those over a head's d channels and
removes the heads with the lowest mean. After ``pruner.step()`` the module's own head count
must be set by hand (``attn.num_heads = pruner.num_heads[attn.qkv]``), as Torch-Pruning's
documentation says.

Scores are computed once per model state (parameter shapes and in-place versions) and reused
for every group of one ``pruner.step()``; BatchNorm is in eval mode while scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from gfverify.errors import ModelError
from gfverify.flow import Batch
from gfverify.groups import FilterGroup, analyze
from gfverify.measures import get_measure, score
from gfverify.prune import combine_coupled


class Importance(tp.importance.Importance):
    """Torch-Pruning importance backed by gfverify measure ``measure`` on ``batches``.

    ``example_input`` (default: the first sample of ``batches``) traces gfverify's filter
    groups; ``qkv_layers`` are fused q/k/v Linears whose heads Torch-Pruning may remove (module
    docstring); ``score_options`` go to :func:`gfverify.measures.score` (e.g. ``samples``,
    ``include_bn``, ``hg_params``)."""

    def __init__(
        self,
        measure: str,
        batches: Sequence[Batch],
        example_input: Tensor | None = None,
        qkv_layers: Sequence[nn.Module] = (),
        **score_options: Any,
    ) -> None:
        self.measure = get_measure(measure).name
        self.batches = list(batches)
        self.example_input = example_input
        self.qkv_layers = list(qkv_layers)
        self.score_options = score_options
        self._key: tuple | None = None
        self._ranked: dict[str, Tensor] = {}
        self._groups: dict = {}

    @staticmethod
    def _state_key(model: nn.Module) -> tuple:
        return tuple(
            (n, tuple(p.shape), p._version, p.data_ptr()) for n, p in model.named_parameters()
        )

    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        """Layer -> per-*channel* score of every layer gfverify ranks (coupled members all
        carry their group's combined score)."""
        key = self._state_key(model)
        if key == self._key:
            return self._ranked
        x = self.example_input if self.example_input is not None else self.batches[0][0][:1]
        info = analyze(model, x)
        groups = {k: g for k, g in info.groups.items() if k not in info.output_layers}
        groups.update(self._qkv_groups(model))
        raw = score(
            model, self.measure, self.batches, "filter", groups=groups, **self.score_options
        )
        reduce = get_measure(self.measure).reduce
        per_unit = {k: v.detach().double() for k, v in raw.items()}
        for grp in info.coupled:
            combined = combine_coupled(per_unit, grp, reduce)
            for m in grp:
                per_unit[m] = combined
        self._ranked = {k: v.repeat(groups[k].channel_groups) for k, v in per_unit.items()}
        self._groups = groups
        self._key = key
        return self._ranked

    def _qkv_groups(self, model: nn.Module) -> dict[str, FilterGroup]:
        """A :class:`FilterGroup` per fused qkv Linear: num_filters = E = out_features / 3
        units of channel_groups = 3 rows (q, k and v of one attention-output channel)."""
        names = {m: n for n, m in model.named_modules()}
        out = {}
        for layer in self.qkv_layers:
            name = names.get(layer)
            if name is None or not isinstance(layer, nn.Linear):
                raise ModelError(f"qkv_layers: {layer!r} is not a Linear of this model")
            if layer.out_features % 3:
                raise ModelError(
                    f"qkv layer {name!r}: {layer.out_features} outputs are not q, k and v of "
                    "equal width"
                )
            out[name] = FilterGroup(
                name=name,
                weight=f"{name}.weight",
                bias=f"{name}.bias" if layer.bias is not None else None,
                bn=None,
                bn_weight=None,
                bn_bias=None,
                tied=(),
                num_filters=layer.out_features // 3,
                channel_groups=3,
            )
        return out

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> Tensor | None:
        model = group._DG.model
        ranked = self.scores(model)
        names = {m: n for n, m in model.named_modules()}
        root_idxs = group[0].idxs
        width = len(root_idxs)
        position = {int(r): j for j, r in enumerate(root_idxs)}
        for item in group.items:
            target = item.dep.target.module
            name = names.get(target) if isinstance(target, nn.Module) else None
            if name not in ranked or not group._DG.is_out_channel_pruning_fn(item.dep.handler):
                continue
            s = ranked[name]
            out = torch.empty(width, dtype=torch.float64)
            for i, r in zip(item.idxs, item.root_idxs):
                out[position[int(r)]] = s[int(i)]
            dev = group[0].dep.target.module
            device = next(dev.parameters()).device if isinstance(dev, nn.Module) else None
            return out.to(device) if device is not None else out
        return None
